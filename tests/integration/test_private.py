"""Nothing exposed (issue 13): on the remote, another user can reach none of a kernel's sockets.

The kernel listens on unix sockets in a private directory instead of TCP ports, so that nobody
else on a shared login node can talk to it or listen to its output. Checked from the host's own
namespaces (``nsenter`` into the kernel's network, mount and UTS namespaces): no TCP listener
belongs to the kernel or to its keeper; a second, unprivileged user (``sikother``) cannot connect
to any of their unix sockets nor read the kernel's connection file, and pyzmq subscribers it
points at every socket path it can find (/proc/net/unix, world-readable, lists them all) and at
every TCP listener of the host receive nothing while the kernel prints. The same subscribers run
as the kernel's own user do receive its output: the probe can see what it looks for.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Set

import pytest

from kernels import AGENT_PATTERN, Kernel, started_kernel
from nshosts import ensure_remote_user, ns_pids

OTHER_USER = "sikother"
SECRET = "sik-secret-7f3a"

#: Run on the remote as some user: tries the sockets and files it is given and every unix socket
#: path listed in /proc/net/unix; subscribes with pyzmq to all of them and to the TCP listeners;
#: prints "ready", listens for ``listen`` seconds, then prints what it got as JSON.
PROBE = r"""
import json, os, socket, sys, time
import zmq
cfg = json.loads(sys.argv[1])
out = {"uid": os.getuid(), "unix": {}, "files": {}, "zmq": {}}
paths = set(cfg["unix"])
with open("/proc/net/unix") as f:
    next(f)
    for row in f:
        fields = row.split()
        if len(fields) >= 8:
            paths.add(fields[7])
for path in sorted(paths) if cfg["connect"] else ():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect("\0" + path[1:] if path.startswith("@") else path)
        out["unix"][path] = "connected"
    except OSError as e:
        out["unix"][path] = type(e).__name__
    finally:
        s.close()
for path in cfg["files"]:
    try:
        with open(path, "rb") as f:
            out["files"][path] = "read %d bytes" % len(f.read())
    except OSError as e:
        out["files"][path] = type(e).__name__
ctx = zmq.Context()
subs = {}
endpoints = ["ipc://" + p for p in sorted(paths) if not p.startswith("@")]
endpoints += ["ipc://@" + p[1:] for p in sorted(paths) if p.startswith("@")]
endpoints += ["tcp://%s" % a for a in cfg["tcp"]]
for ep in endpoints:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(ep)
    except zmq.ZMQError as e:
        out["zmq"][ep] = "connect: %s" % e
        sub.close()
        continue
    subs[sub] = ep
poller = zmq.Poller()
for sub in subs:
    poller.register(sub, zmq.POLLIN)
print("ready", flush=True)
end = time.monotonic() + cfg["listen"]
got = {}
while time.monotonic() < end:
    for sub, _ in poller.poll(100):
        frames = sub.recv_multipart()
        got.setdefault(subs[sub], []).append(b"".join(frames).decode("utf-8", "replace")[-300:])
for ep, msgs in got.items():
    out["zmq"][ep] = msgs
print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="session")
def other_user():
    """A second, unprivileged user (users exist in every test host: the filesystem is shared)."""
    return ensure_remote_user(OTHER_USER, sudo=False)


@pytest.fixture
def open_home(ssh_host):
    """The remote user's home traversable by everyone (0755, as on many sites: the test host's
    is 0750, which alone would keep another user out of everything below it), so that only the
    kernel's own directories and files protect it; 0750 again afterwards."""
    home = ssh_host.local_home  # bind-mounted as the home inside the host
    mode = home.stat().st_mode & 0o777
    home.chmod(0o755)
    try:
        yield
    finally:
        home.chmod(mode)


@pytest.fixture
def kernel(ssh_host, tmp_path, jupyter_env):
    with started_kernel(ssh_host, tmp_path, jupyter_env, "pv") as k:
        yield k


def kernel_processes(host, kernel_pid: int) -> Set[int]:
    """The kernel, its keeper (the agent) and all their descendants, in the host's namespace."""
    parents: Dict[int, int] = {}
    for pid in ns_pids(host.namespace):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    ours = {kernel_pid, *host.remote_pids(AGENT_PATTERN)}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in ours} - ours
        ours |= more
        grew = bool(more)
    return ours


def tcp_listeners(kernel_pid: int) -> List[str]:
    """``ss -Hltnp`` in the kernel's network namespace: every TCP listener, with its processes."""
    r = subprocess.run(["nsenter", "-t", str(kernel_pid), "-n", "ss", "-Hltnp"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def listener_pids(line: str) -> Set[int]:
    return {int(pid) for pid in re.findall(r"pid=(\d+)", line)}


def unix_listeners(processes: Set[int]) -> List[str]:
    """Paths (``@name`` for abstract ones) of the listening unix sockets these processes hold; a
    path bound relative to its process's working directory is made absolute."""
    owner: Dict[str, int] = {}  # socket inode -> pid
    for pid in processes:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = str(fd.readlink()) if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    paths = []
    any_pid = next(iter(processes))
    for row in Path(f"/proc/{any_pid}/net/unix").read_text().splitlines()[1:]:
        fields = row.split()
        # Flags 00010000: __SO_ACCEPTCON, a listening socket.
        if len(fields) >= 8 and fields[6] in owner and int(fields[3], 16) & 0x10000:
            path = fields[7]
            if not path.startswith(("/", "@")):
                path = os.path.join(os.readlink(f"/proc/{owner[fields[6]]}/cwd"), path)
            paths.append(path)
    return paths


def connection_file_of(kernel_pid: int) -> str:
    argv = Path(f"/proc/{kernel_pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("-f") + 1]


def probe(host, kernel: Kernel, kernel_pid: int, user: str, *, unix: List[str], files: List[str],
          tcp: List[str], connect: bool) -> dict:
    """Run PROBE as ``user`` inside the kernel's namespaces while the kernel prints SECRET."""
    cfg = json.dumps({"unix": unix, "files": files, "tcp": tcp, "connect": connect, "listen": 8})
    command = f"{shlex.quote(host.env_python)} -c {shlex.quote(PROBE)} {shlex.quote(cfg)}"
    argv = ["nsenter", "-t", str(kernel_pid), "-m", "-n", "-u", "--", "su", user, "-s", "/bin/sh", "-c", command]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.strip() == "ready", f"the probe as {user} did not start: {first}{proc.stderr.read()}"
        time.sleep(1.5)  # the subscriptions reach the publishers
        content, out, _ = kernel.execute(
            f"import time\nfor _ in range(20):\n    print({SECRET!r}, flush=True)\n    time.sleep(0.1)")
        assert content["status"] == "ok" and SECRET in out, (content, out)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_kernel_listens_on_no_tcp_port_of_the_remote(kernel, ssh_host):
    """``ss -ltnp`` in the remote's network namespace: no listener of the kernel, its keeper or
    their children; the kernel's channels are unix sockets."""
    pid = kernel.remote_pid()
    ours = kernel_processes(ssh_host, pid)
    # ipykernel's own TCP socket: the pipe its forked subprocesses push their output into (a PULL
    # socket on 127.0.0.1: nothing can be read from it, and it takes only messages carrying a
    # secret of the kernel's). Not a channel of the kernel; the probe below tries it anyway.
    pipe = kernel.value("getattr(getattr(__import__('sys').stdout, 'pub_thread', None), '_pipe_port', 0) or 0")
    theirs = [line for line in tcp_listeners(pid)
              if listener_pids(line) & ours and line.split()[3] != f"127.0.0.1:{pipe}"]
    assert not theirs, "TCP ports the kernel's processes listen on, on the remote:\n" + "\n".join(theirs)
    assert unix_listeners(ours), "the kernel's processes listen on no unix socket either"


def test_another_user_on_the_remote_reaches_nothing_of_the_kernel(open_home, kernel, ssh_host, other_user):
    pid = kernel.remote_pid()
    ours = kernel_processes(ssh_host, pid)
    sockets = unix_listeners(ours)
    conn_file = connection_file_of(pid)
    tcp = [line.split()[3] for line in tcp_listeners(pid)]  # every listener: the probe knows no better
    # The probe sees what it looks for: the kernel's own user, subscribed the same way, gets the output.
    own = probe(ssh_host, kernel, pid, ssh_host.user, unix=sockets, files=[conn_file], tcp=tcp, connect=False)
    assert any(SECRET in msg for msgs in own["zmq"].values() if isinstance(msgs, list) for msg in msgs), \
        f"the kernel's own user, subscribed to every socket, got none of its output: {own}"
    assert own["files"][conn_file].startswith("read"), own["files"]

    other = probe(ssh_host, kernel, pid, OTHER_USER, unix=sockets, files=[conn_file], tcp=tcp, connect=True)
    assert other["uid"] == other_user.pw_uid
    print(f"\nthe kernel's unix sockets: {sockets}\nas {OTHER_USER}: {json.dumps(other, indent=1)[:3000]}")
    reached = {path: how for path, how in other["unix"].items() if path in sockets and how == "connected"}
    assert not reached, f"{OTHER_USER} connected to the kernel's unix sockets: {reached}"
    assert not other["files"][conn_file].startswith("read"), f"{OTHER_USER} read the connection file"
    heard = {ep: msgs for ep, msgs in other["zmq"].items() if isinstance(msgs, list) and msgs}
    assert not heard, f"{OTHER_USER}'s subscribers received messages: {heard}"
    # And the kernel is none the worse for the attempts.
    assert kernel.remote_pid() == pid and kernel.value("1 + 1") == "2"
