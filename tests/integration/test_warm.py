"""Warm kernels (remote/warm.py, remote/warmpool.py): forked by the host's warm pool, and
indistinguishable from a kernel started cold."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pytest

from kernels import (Kernel, accepted_logins, end_masters, iopub_back_after, manage, shutdown_all,
                     wait_remote_clean)

POOL_PATTERN = r"^ssh_ipykernel-warm-pool "
WARM_LINE = " s (warm)\n"  # the proxy's "launched in ..." line of a warm kernel
#: ... of a warm kernel that a restart started through the agent server (remote/agentserver.py)
RESTARTED_LINE = " s (warm, through the agent server)\n"
SERVER_PATTERN = r"^ssh_ipykernel-restart-server "

#: What a kernel shows of itself, compared field by field between a warm and a cold kernel.
SNAPSHOT = """
import json as _j, os as _o, sys as _s
def _target(fd):
    try:
        return _o.readlink("/proc/self/fd/" + fd)
    except OSError:  # the listing's own
        return ""
print(_j.dumps({
    "environ": dict(_o.environ), "path": _s.path, "argv": _s.argv,
    "orig_argv": getattr(_s, "orig_argv", None), "cwd": _o.getcwd(),
    "modules": sorted(_s.modules), "own_group": _o.getpgid(0) == _o.getpid(),
    "meta_path": [getattr(f, "__qualname__", type(f).__qualname__) for f in _s.meta_path],
    "own_session": _o.getsid(0) == _o.getpid(), "session": __session__,
    "executable": _s.executable, "flags": list(_s.flags), "umask": _o.umask(0o22),
    "signals": {n: str(__import__("signal").getsignal(getattr(__import__("signal"), n)))
                for n in ("SIGINT", "SIGTERM", "SIGCHLD", "SIGHUP", "SIGPIPE")},
    "stdio": [_target(str(fd)).split("[")[0] for fd in (0, 1, 2)],  # ipykernel pipes 1 and 2
    "pool_fds": [t for t in map(_target, _o.listdir("/proc/self/fd")) if "warm-" in t],
    "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").decode().split("\\0"),
    "parent_handle": __import__("ipykernel.kernelapp").kernelapp.IPKernelApp.instance().parent_handle,
}))
del _j, _o, _s, _target
"""
#: Differ between any two kernels, warm or cold (each has its own keeper, SSH session and file).
PER_KERNEL = {"JPY_PARENT_PID", "SSH_CLIENT", "SSH_CONNECTION", "JPY_SESSION_NAME"}


def pools(host) -> List[int]:
    return host.remote_pids(POOL_PATTERN)


def pool_sockets(host) -> set:
    out = host.run(f"ls -A {host.runtime_dir} 2>/dev/null | grep '^warm-' || true").stdout.split()
    return {name for name in out if name.endswith(".sock")}


def wait_for_new_pool(host, before: set, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = pool_sockets(host) - before
        if new:
            return new.pop()
        time.sleep(0.2)
    raise AssertionError(f"no warm pool appeared within {timeout} s")


def start(prefix: Path, name: str, log: Path, session: str) -> Kernel:
    k = Kernel(prefix, name, log)
    k._log_file = open(k.log_path, "ab")  # noqa: SIM115 - closed by Kernel.shutdown
    k.km.start_kernel(env=dict(os.environ, JPY_SESSION_NAME=session), stdout=k._log_file, stderr=k._log_file)
    k.wait_ready()
    return k


def snapshot(k: Kernel) -> Dict[str, Any]:
    content, out, _ = k.execute(SNAPSHOT)
    assert content["status"] == "ok", content
    return json.loads(out)


def launches(k: Kernel, count: int = 1, timeout: float = 10) -> str:
    """The proxy's log once it holds ``count`` launch lines (a restart's arrives with its kernel)."""
    deadline = time.monotonic() + timeout
    while k.log().count("launched in") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return k.log()


def started_warm(k: Kernel) -> bool:
    return WARM_LINE in launches(k)


def kernel_with_its_own_pool(ssh_host, tmp_path, kernels, warm: str) -> "tuple[Kernel, str, set]":
    """A kernel of a configuration of its own (a new tag) with ``--warm warm``: the kernel, its
    pool's socket name and the pool's pid (a set of one)."""
    tag = uuid.uuid4().hex[:8]
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix, "--env", f"SIK_TAG={tag}",
           "--warm", warm)
    before_pids, before = set(pools(ssh_host)), pool_sockets(ssh_host)
    k = start(prefix, "ssh_btest", tmp_path / "k.log", "a.ipynb")
    kernels.append(k)
    sock = wait_for_new_pool(ssh_host, before)
    mine = set(pools(ssh_host)) - before_pids
    assert len(mine) == 1, mine
    return k, sock, mine


@pytest.fixture
def kernels(ssh_host, jupyter_env, tmp_path):
    started: List[Kernel] = []
    yield started
    shutdown_all(started)
    assert not wait_remote_clean(ssh_host)


def test_a_warm_kernel_is_indistinguishable_from_a_cold_one(ssh_host, tmp_path, kernels):
    tag = uuid.uuid4().hex[:8]  # a configuration (and so a pool) of this test's own
    workdir = f"{ssh_host.home}/warm-{tag}"
    assert ssh_host.run(f"mkdir -p {workdir}").returncode == 0
    common = ["--python", ssh_host.env_prefix, "--env", f"SIK_TAG={tag}", "--env", "SIK_SPACES=a b  c",
              "--workdir", workdir, "--pre-command", f"export SIK_PRE=pre-{tag}; cd /tmp"]
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, *common, "--warm", "1m", "--name", "w")
    manage(ssh_host, prefix, "--host", ssh_host.alias, *common, "--warm", "off", "--name", "c")
    before = pool_sockets(ssh_host)
    first = start(prefix, "w", tmp_path / "first.log", "/nb/first.ipynb")
    kernels.append(first)
    assert not started_warm(first)
    wait_for_new_pool(ssh_host, before)
    warm = start(prefix, "w", tmp_path / "warm.log", "/nb/warm.ipynb")
    kernels.append(warm)
    assert started_warm(warm), warm.log()
    cold = start(prefix, "c", tmp_path / "cold.log", "/nb/cold.ipynb")
    kernels.append(cold)
    assert not started_warm(cold)

    w, c = snapshot(warm), snapshot(cold)
    assert w["session"] == "/nb/warm.ipynb" and c["session"] == "/nb/cold.ipynb"
    assert w["environ"]["JPY_SESSION_NAME"] == "/nb/warm.ipynb"
    assert w["environ"]["SIK_TAG"] == tag and w["environ"]["SIK_SPACES"] == "a b  c"
    assert w["environ"]["SIK_PRE"] == f"pre-{tag}"
    assert w["cwd"] == workdir and w["own_group"] and w["own_session"]
    assert w["stdio"][0] == "/dev/null" and w["pool_fds"] == []
    assert w["parent_handle"] == int(w["environ"]["JPY_PARENT_PID"])
    assert w["argv"][1:] == ["-f", w["argv"][2]] and "kernel-ssh-" in w["argv"][2]
    assert w["cmdline"][1:] == ["-m", "ipykernel_launcher", "-f", w["argv"][2]]
    for snap in (w, c):
        for name in PER_KERNEL:
            assert name in snap["environ"], name
            del snap["environ"][name]
        snap["argv"][2] = snap["cmdline"][4] = snap["parent_handle"] = snap["session"] = "<per kernel>"
        if snap["orig_argv"]:
            snap["orig_argv"][4] = "<per kernel>"
    for field in w:
        assert w[field] == c[field], (field, sorted(set(map(str, w[field])) ^ set(map(str, c[field])))
                                      if isinstance(w[field], (list, dict)) else (w[field], c[field]))


def test_interrupt_and_restart_of_a_warm_kernel(ssh_host, tmp_path, kernels):
    tag = uuid.uuid4().hex[:8]
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix, "--env", f"SIK_TAG={tag}")
    before = pool_sockets(ssh_host)
    first = start(prefix, "ssh_btest", tmp_path / "first.log", "a.ipynb")
    kernels.append(first)
    wait_for_new_pool(ssh_host, before)
    t0 = time.monotonic()
    first.km.restart_kernel(now=False)
    first.kc.wait_for_ready(timeout=30)
    restart = time.monotonic() - t0
    # jupyter_client's wait_for_ready can return on an IOPub message of the old kernel, before its
    # SUB has resubscribed (libzmq resends a subscription only once the client polls IOPub): a
    # cell sent at once would go unseen.
    iopub_back_after(first, time.monotonic())
    assert RESTARTED_LINE in launches(first, 2), first.log()
    # An interrupt reaches the warm kernel's own process group: a cell and its `!` children stop.
    msg_id = first.kc.execute("import subprocess, time; subprocess.run(['sleep', '60'])")
    first.wait_busy(msg_id)
    time.sleep(0.5)
    assert first.interrupt_cell(msg_id, timeout=10) < 5
    assert first.value("1 + 1") == "2"
    print(f"restart took {restart:.2f} s")


def test_the_pool_ends_after_its_idle_time_and_leaves_nothing(ssh_host, tmp_path, kernels):
    k, sock, mine = kernel_with_its_own_pool(ssh_host, tmp_path, kernels, "3s")
    # While a kernel lives, the pool stays, however long its idle time.
    time.sleep(4)
    assert set(pools(ssh_host)) >= mine
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=30)
    assert RESTARTED_LINE in launches(k, 2), k.log()
    mode = ssh_host.run(f"stat -c %a {ssh_host.runtime_dir}/{sock}").stdout.strip()
    assert mode == "600", mode
    k.shutdown()
    kernels.remove(k)
    assert not wait_remote_clean(ssh_host)
    deadline = time.monotonic() + 15
    while (set(pools(ssh_host)) & mine or sock[:-5] in " ".join(pool_sockets(ssh_host))) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not set(pools(ssh_host)) & mine
    left = ssh_host.run(f"ls -A {ssh_host.runtime_dir} | grep '^{sock[:-5]}' || true").stdout.split()
    assert not left, left


def test_a_changed_environment_is_picked_up(ssh_host, tmp_path, kernels):
    """A package installed where the kernel imports from: the pool stops serving, the next
    kernel starts cold and sees it."""
    tag = uuid.uuid4().hex[:8]
    libdir = f"{ssh_host.home}/warm-lib-{tag}"
    assert ssh_host.run(f"mkdir -p {libdir}").returncode == 0
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix,
           "--env", f"PYTHONPATH={libdir}")
    before = pool_sockets(ssh_host)
    k = start(prefix, "ssh_btest", tmp_path / "k.log", "a.ipynb")
    kernels.append(k)
    wait_for_new_pool(ssh_host, before)
    time.sleep(1.1)  # a later mtime on file systems with coarse timestamps
    assert ssh_host.run(f"echo 'VALUE = 42' > {libdir}/sikwarmmod_{tag}.py").returncode == 0
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=30)
    iopub_back_after(k, time.monotonic())  # output of a cell sent at once could go before IOPub is back
    restarted = launches(k, 2).split("launched in")[2]
    assert " s (through the agent server)\n" in restarted, k.log()  # the agent server, a cold kernel
    assert k.value(f"__import__('sikwarmmod_{tag}').VALUE") == "42"


def test_a_restart_goes_through_the_agent_server_and_keeps_the_kernels_environment(ssh_host, tmp_path, kernels):
    """Jupyter's restart is a new proxy: it asks the agent server its kernel's start left on the
    host (no ssh client, no remote shell or python); the new kernel is what a restart through
    a new session gives, environment and all. Without the server (killed), the restart takes
    the usual way. The server's socket is the user's alone, and it ends --warm after its last use."""
    tag = uuid.uuid4().hex[:8]
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix, "--env", f"SIK_TAG={tag}",
           "--pre-command", f"export SIK_PRE=pre-{tag}", "--warm", "4s")
    servers_before = set(ssh_host.remote_pids(SERVER_PATTERN))
    k = start(prefix, "ssh_btest", tmp_path / "k.log", "/nb/a.ipynb")
    kernels.append(k)
    before = snapshot(k)
    mine = set(ssh_host.remote_pids(SERVER_PATTERN)) - servers_before
    assert len(mine) == 1, mine
    shown = status_pool(next(iter(mine)))  # status lists it with the host's pools
    assert shown["state"] == "restart server" and shown["python"] and shown["rss_mb"] > 1, shown
    server = re.findall(r"agent-[0-9a-f]+\.sock", ssh_host.run(f"ls -A {ssh_host.runtime_dir}").stdout)
    assert server and all(ssh_host.run(f"stat -c %a {ssh_host.runtime_dir}/{name}").stdout.strip() == "600"
                          for name in server), server

    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=30)
    iopub_back_after(k, time.monotonic())
    assert RESTARTED_LINE in launches(k, 2), k.log()
    after = snapshot(k)
    assert after["environ"]["SIK_PRE"] == f"pre-{tag}" and after["session"] == "/nb/a.ipynb"
    for snap in (before, after):
        for name in PER_KERNEL - {"JPY_SESSION_NAME"}:
            del snap["environ"][name]
        snap["argv"][2] = snap["cmdline"][4] = snap["parent_handle"] = "<per kernel>"
        if snap["orig_argv"]:
            snap["orig_argv"][4] = "<per kernel>"
    for field in before:
        assert before[field] == after[field], (field, before[field], after[field])

    # Without its server (gone), a restart starts an agent session as before.
    for pid in mine:
        ssh_host.run(f"kill -9 {pid}")
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=30)
    iopub_back_after(k, time.monotonic())
    third = launches(k, 3).split("launched in")[3]
    assert "agent server" not in third and third.endswith(" s (warm)\n") or " s (warm)\n" in third, k.log()
    assert k.value("1 + 1") == "2"
    k.shutdown()
    kernels.remove(k)
    # The new server (the third start made one) ends --warm after the host's last kernel ended
    # and it last served; while another test's kernel runs there (one kept for its grace
    # period), it stays for that one's restart.
    deadline = time.monotonic() + 20
    while set(ssh_host.remote_pids(SERVER_PATTERN)) - servers_before and time.monotonic() < deadline:
        time.sleep(0.3)
    others = ssh_host.run(f"ls -A {ssh_host.runtime_dir} | grep '^kernel-ssh-.*\\.sock$' || true").stdout.split()
    assert bool(set(ssh_host.remote_pids(SERVER_PATTERN)) - servers_before) == bool(others), others


def status(*args: str) -> subprocess.CompletedProcess:
    """``ssh-ipykernel status ARGS``, as a user runs it."""
    r = subprocess.run([sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", "status", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def status_pool(pid: int) -> Dict[str, Any]:
    """The entry of ``status --json`` for the pool ``pid`` (an AssertionError if it has none)."""
    found = [p for p in json.loads(status("--json").stdout)["warm_pools"] if p.get("pid") == pid]
    assert len(found) == 1, found
    return found[0]


def test_status_shows_the_pool_on_the_host_until_it_ends(ssh_host, tmp_path, kernels, jupyter_env):
    """`ssh-ipykernel status` asks the host (over the connection that is up) about its pools:
    the pool's real pid, python, memory and kernels, and when it ends; then it is gone."""
    k, sock, mine = kernel_with_its_own_pool(ssh_host, tmp_path, kernels, "8s")
    pid = mine.pop()
    kernel_pid = k.remote_pid()

    t0 = time.monotonic()
    running = status_pool(pid)
    print(f"status --json with one host asked took {time.monotonic() - t0:.2f} s")
    assert running["asked"] and running["host"] == "btest" and running["remote_hostname"] == ssh_host.hostname
    assert running["socket"].endswith("/" + sock) and running["state"] == "serving"
    assert running["python"].startswith(ssh_host.env_prefix + "/bin/python"), running
    assert (running["kernels"], running["kernel_pids"], running["ends_in"]) == (1, [kernel_pid], None), running
    row = [line for line in status().stdout.splitlines() if re.match(rf"btest .* {pid} ", line)]
    assert len(row) == 1 and re.search(r" MB +1 +while kernels run$", row[0]), row

    k.shutdown()
    kernels.remove(k)
    assert not wait_remote_clean(ssh_host)
    idle = status_pool(pid)
    assert idle["kernels"] == 0 and 0 < idle["ends_in"] <= 8, idle
    rss = int(ssh_host.run(f"ps -o rss= -p {pid}").stdout)  # kB, as ps on the host says
    assert idle["rss_mb"] > 15 and abs(idle["rss_mb"] * 1024 - rss) < 0.1 * rss, (idle["rss_mb"], rss)
    text = status().stdout
    assert re.search(rf"\nbtest \({re.escape(ssh_host.hostname)}\) +{pid} +\S+/bin/python\S* +\d+ MB +0 +in [1-8] s "
                     rf"\(\d\d:\d\d\)\n", text), text
    assert "Warm pools" in text

    deadline = time.monotonic() + 20
    while pid in pools(ssh_host) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert pid not in pools(ssh_host), "the pool outlived its --warm time"
    data = json.loads(status("--json").stdout)
    assert not [p for p in data["warm_pools"] if p.get("pid") == pid or (p.get("socket") or "").endswith(sock)], data
    records = list((jupyter_env.runtime / "ssh_ipykernel").glob("pool-*.json"))
    assert not records, "the record of a pool the host says is gone is removed"


def test_status_never_logs_in_to_ask_about_pools(ssh_host, tmp_path, kernels, jupyter_env):
    """With no connection up, the host is not asked: status says when its pool is expected to
    end, and the host's sshd saw no login."""
    k, sock, mine = kernel_with_its_own_pool(ssh_host, tmp_path, kernels, "2m")
    k.shutdown()
    kernels.remove(k)
    ended = time.time()
    try:
        assert not wait_remote_clean(ssh_host)
        end_masters(str(jupyter_env.runtime))
        logins = accepted_logins(ssh_host)
        text = status().stdout
        expected = {time.strftime("%H:%M", time.localtime(ended + 120 + d)) for d in (-1, 0, 1)}
        line = [line for line in text.splitlines() if line.startswith("btest: ")]
        assert len(line) == 1 and re.fullmatch(r"btest: not connected, pool expected to end by (\d\d:\d\d)", line[0]), text
        assert line[0][-5:] in expected, (line, expected)
        entry = [p for p in json.loads(status("--json").stdout)["warm_pools"] if p["host"] == "btest"]
        assert len(entry) == 1 and not entry[0]["asked"] and abs(entry[0]["expected_end"] - (ended + 120)) < 5, entry
        time.sleep(0.5)
        assert accepted_logins(ssh_host) == logins, "status logged in to ask"
    finally:
        for pid in mine:  # retire it now rather than in 2 min
            ssh_host.run(f"kill {pid}")


@pytest.mark.parametrize("transport", ["paramiko"], indirect=True)
def test_status_of_a_host_reached_with_paramiko_says_what_it_expects(ssh_host, tmp_path, kernels, transport):
    """No shared connection to ask through (and here no ssh client at all): the pool's line
    comes from the record, while the kernel runs and after."""
    k, sock, mine = kernel_with_its_own_pool(ssh_host, tmp_path, kernels, "1m")
    try:
        lines = [line for line in status().stdout.splitlines() if line.startswith("btest: ")]
        assert lines == ["btest: not shown for paramiko (its connections are the kernels' own; no shared one to "
                         "ask through), pool kept while its kernels run"], lines
        k.shutdown()
        kernels.remove(k)
        lines = [line for line in status().stdout.splitlines() if line.startswith("btest: ")]
        assert len(lines) == 1 and re.search(r"\), pool expected to end by \d\d:\d\d$", lines[0]), lines
    finally:
        for pid in mine:
            ssh_host.run(f"kill {pid}")
