"""Warm kernels (remote/warm.py, remote/warmpool.py): forked by the host's warm pool, and
indistinguishable from a kernel started cold."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pytest

from kernels import Kernel, iopub_back_after, manage, shutdown_all, wait_remote_clean

POOL_PATTERN = r"^ssh_ipykernel-warm-pool "
WARM_LINE = " s (warm)\n"  # the proxy's "launched in ..." line of a warm kernel

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
    assert launches(first, 2).count(WARM_LINE) == 1, first.log()
    # An interrupt reaches the warm kernel's own process group: a cell and its `!` children stop.
    msg_id = first.kc.execute("import subprocess, time; subprocess.run(['sleep', '60'])")
    first.wait_busy(msg_id)
    time.sleep(0.5)
    assert first.interrupt_cell(msg_id, timeout=10) < 5
    assert first.value("1 + 1") == "2"
    print(f"restart took {restart:.2f} s")


def test_the_pool_ends_after_its_idle_time_and_leaves_nothing(ssh_host, tmp_path, kernels):
    tag = uuid.uuid4().hex[:8]
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix, "--env", f"SIK_TAG={tag}",
           "--warm", "3s")
    before_pids, before = set(pools(ssh_host)), pool_sockets(ssh_host)
    k = start(prefix, "ssh_btest", tmp_path / "k.log", "a.ipynb")
    kernels.append(k)
    sock = wait_for_new_pool(ssh_host, before)
    mine = set(pools(ssh_host)) - before_pids
    assert len(mine) == 1, mine
    # While a kernel lives, the pool stays, however long its idle time.
    time.sleep(4)
    assert set(pools(ssh_host)) >= mine
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=30)
    assert WARM_LINE in launches(k, 2), k.log()
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
    assert WARM_LINE not in launches(k, 2), k.log()
    assert k.value(f"__import__('sikwarmmod_{tag}').VALUE") == "42"
