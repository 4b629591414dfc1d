"""This user's warm pools on the host, for ``ssh-ipykernel status`` (the ``pools`` mode).

Shipped like the probe (session/bundle.py sends protocol.py, warmpool.py, warm.py,
agentserver.py and this module) and run through the same loader, over a connection that is already up (remotepools.py
on the local side). It asks each pool whose socket (``warm-*.sock``) is in one of the runtime
dirs it is given for its facts (warm.pool_info: pid, python, resident memory, its kernels, when
it ends), then looks for this user's pool processes that no socket led to, by the title they
show in ``ps`` (/proc): a retired pool whose kernels still run, a pool still importing, a pool
whose runtime dir nobody told us about. It starts nothing and changes nothing; asking a pool
does not keep it alive. The agent servers (restarts) are listed with them, by their title. Output: one ``pools`` event on stdout (or ``error`` for bad
parameters, with the agent's exit code). Standard library only at module level, Python >= 3.8.
"""
from __future__ import annotations

import glob
import os
import socket
import sys
import time

from .agentserver import TITLE as SERVER_TITLE
from .protocol import BootstrapError, Event, Mode, read_params, write_event
from .warm import TITLE, pool_info
from .warmpool import rss_kb

#: How long one pool may take to answer (it answers from its select loop: milliseconds).
ASK_TIMEOUT = 1.0


def socket_pools(directories: "list[str]") -> "list[dict]":
    """The pools that answer on a ``warm-*.sock`` in ``directories``, each with ``state``
    "serving" (or "retired", if it stopped serving as we asked)."""
    found = []
    seen = set()
    for directory in directories:
        pattern = os.path.join(glob.escape(os.path.expanduser(directory)), "warm-*.sock")
        for path in sorted(glob.glob(pattern)):
            info = pool_info(path, ASK_TIMEOUT)
            if info is None or info["pid"] in seen:
                continue  # gone meanwhile, or another node's socket in a shared home
            seen.add(info["pid"])
            info["state"] = "serving" if info.get("serving") else "retired"
            found.append(info)
    return found


def _processes() -> "dict[int, tuple[int, list[bytes]]]":
    """This user's processes: pid -> (parent pid, command line). Linux only (empty elsewhere)."""
    uid = os.getuid()
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/%s/stat" % name, "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        found[int(name)] = (ppid, argv)
    return found


def process_pools(known: "set[int]") -> "list[dict]":
    """This user's pool processes not in ``known`` (found by their title): "retired" if it has
    kernels left (it ends with the last), else "starting" (importing, or ending this second)."""
    title = TITLE.encode()
    processes = _processes()
    pools = {pid for pid, (_, argv) in processes.items() if argv[0] == title}
    found = []
    for pid in sorted(pools - set(known)):
        ppid, argv = processes[pid]
        if ppid in pools:
            continue  # a kernel forked this instant, before it took its own title
        kernels = sorted(child for child, (parent, _) in processes.items() if parent == pid)
        found.append({
            "pid": pid, "python": argv[1].decode("utf-8", "replace") if len(argv) > 1 else "",
            "rss_kb": rss_kb(pid), "kernels": kernels, "ends_in": None, "serving": False,
            "state": "retired" if kernels else "starting", "socket": None,
        })
    return found


def restart_servers() -> "list[dict]":
    """This user's agent servers (remote/agentserver.py: they start a restarted kernel's agent),
    found by their title, as entries of the pools' list with ``state`` "restart server"."""
    title = SERVER_TITLE.encode()
    return [{"pid": pid, "python": argv[1].decode("utf-8", "replace") if len(argv) > 1 else "",
             "rss_kb": rss_kb(pid), "kernels": [], "ends_in": None, "serving": True, "state": "restart server",
             "socket": None}
            for pid, (_, argv) in sorted(_processes().items()) if argv[0] == title]


def list_pools(directories: "list[str]") -> "list[dict]":
    """Every warm pool of this user on this host (see the module docstring)."""
    if not directories:
        try:
            from .protocol import runtime_dir

            directories = [runtime_dir()]
        except Exception:  # noqa: BLE001 - no jupyter_core here: the processes still show
            directories = []
    found = socket_pools(directories)
    return found + process_pools({p["pid"] for p in found}) + restart_servers()


def main() -> None:
    try:
        params = read_params(sys.stdin.buffer)
        if params.mode != Mode.POOLS:
            raise BootstrapError("bad_params", "mode %r: this program only lists warm pools" % (params.mode,))
    except BootstrapError as e:
        write_event(sys.stdout.buffer, Event.ERROR, code=e.code, message=e.message)
        sys.exit(e.exit_code)
    write_event(sys.stdout.buffer, Event.POOLS, pools=list_pools(params.runtime_dirs),
                hostname=socket.gethostname(), time=time.time())


if __name__ == "__main__":
    main()
