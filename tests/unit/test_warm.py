"""Warm kernels: the pool's identity and option, and a pool on this machine serving a kernel
(remote/warm.py, remote/warmpool.py; over SSH in tests/integration/test_warm.py)."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from ssh_ipykernel import options as o
from ssh_ipykernel.exceptions import UsageError
from ssh_ipykernel.remote import launch, warm
from ssh_ipykernel.remote.protocol import AgentParams, BootstrapError


def test_the_pool_is_chosen_by_python_environment_and_directory_not_by_per_start_values():
    env = {"PATH": "/usr/bin", "HOME": "/home/u", "SSH_CONNECTION": "1 2 3 4", "JPY_PARENT_PID": "7",
           "JPY_SESSION_NAME": "a.ipynb"}
    path = warm.pool_socket("/run/x", "/env/bin/python", env, "/home/u")
    assert path.startswith("/run/x/warm-") and path.endswith(".sock")
    same = dict(env, SSH_CONNECTION="5 6 7 8", JPY_PARENT_PID="8", JPY_SESSION_NAME="b.ipynb", SSH_CLIENT="x")
    assert warm.pool_socket("/run/x", "/env/bin/python", same, "/home/u") == path
    for changed in ({"python": "/other/bin/python"}, {"cwd": "/tmp"}, {"env": dict(env, PYTHONPATH="/p")},
                    {"env": dict(env, SIK_PRE="1")}):
        args = {"python": "/env/bin/python", "env": env, "cwd": "/home/u", **changed}
        assert warm.pool_socket("/run/x", args["python"], args["env"], args["cwd"]) != path, changed


def test_each_host_has_its_own_pools_in_a_shared_home(monkeypatch):
    env = {"PATH": "/usr/bin"}
    monkeypatch.setattr(warm.socket, "gethostname", lambda: "node1")
    one = warm.pool_socket("/home/u/rt", "/env/bin/python", env, "/home/u")
    monkeypatch.setattr(warm.socket, "gethostname", lambda: "node2")
    assert warm.pool_socket("/home/u/rt", "/env/bin/python", env, "/home/u") != one


def test_only_the_default_kernel_is_started_warm():
    py = "/env/bin/python"
    assert warm.is_default_ipykernel([py, "-m", "ipykernel_launcher", "-f", "/r/k.json"], py)
    assert not warm.is_default_ipykernel(["/other/python", "-m", "ipykernel_launcher", "-f", "/r/k.json"], py)
    assert not warm.is_default_ipykernel([py, "-m", "ipykernel_launcher", "-f", "/r/k.json", "--x"], py)
    assert not warm.is_default_ipykernel(["julia", "-i", "/r/k.json"], py)


@pytest.mark.parametrize("text, seconds", [("10m", 600.0), ("0", 0.0), ("90", 90.0), ("off", None), ("OFF ", None)])
def test_warm_option(text, seconds):
    assert o.parse_warm(text) == seconds


def test_warm_option_refuses_what_is_not_a_duration():
    with pytest.raises(UsageError, match="--warm 'soon'.*'off'"):
        o.parse_warm("soon")


def test_warm_is_written_into_the_kernelspec_only_when_not_the_default():
    base = {"host": "btest"}
    assert "--warm" not in o.ProxyOptions.from_params(base).argv()
    assert o.ProxyOptions.from_params(base).launch.params()["warm"] == 600.0
    argv = o.ProxyOptions.from_params({**base, "warm": "off"}).argv()
    assert argv[argv.index("--warm") + 1] == "off"
    assert o.ProxyOptions.from_params({**base, "warm": "off"}).launch.params()["warm"] is None


@pytest.mark.parametrize("value", [-1, "10", True, [1]])
def test_the_agent_refuses_a_malformed_warm(value):
    params = AgentParams.start(kernel_id="k", key="x", warm=value).to_dict()
    with pytest.raises(BootstrapError, match="warm"):
        AgentParams.from_dict(params)


@pytest.mark.timeout(60)
def test_a_pool_on_this_machine_forks_a_kernel_and_ends_when_idle(tmp_path):
    """The pool, run with this python: a kernel it forks answers, is in its own process group,
    has the request's environment and working directory, and the pool ends once idle."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    python = sys.executable
    env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()), JPY_SESSION_NAME="n.ipynb", SIK_WARM_UNIT="1")
    path = warm.pool_socket(str(runtime), python, env, str(tmp_path))
    notes = []
    assert warm.ensure_pool(path, python=python, env=env, cwd=str(tmp_path), idle=1.0, timeout=30,
                            note=notes.append), notes
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    connection_file = str(runtime / "kernel-ssh-unit.json")
    write_connection_file(connection_file, transport="ipc", ip=str(runtime / "k"), key=b"not-on-a-command-line")
    log = connection_file[:-5] + ".log"
    open(log, "w").close()
    argv = [python, "-m", "ipykernel_launcher", "-f", connection_file]
    kernel = warm.start_kernel(path, argv=argv, env=env, cwd=str(tmp_path), log_file=log, note=notes.append,
                               iopub_hwm=launch.IOPUB_HWM)
    assert kernel is not None, notes
    deadline = time.monotonic() + 10  # what ps shows: set by the child as it starts
    while True:
        with open(f"/proc/{kernel.pid}/cmdline", "rb") as f:
            shown = f.read().rstrip(b"\0").decode().split("\0")
        if shown == argv or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert shown == argv
    client = BlockingKernelClient()
    client.load_connection_file(connection_file)
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        msg_id = client.execute("import os, sys, json; from ipykernel.kernelapp import IPKernelApp as A; "
                                "print(json.dumps([os.getpgid(0) == os.getpid(), "
                                "os.getcwd(), os.environ['SIK_WARM_UNIT'], __session__, sys.argv[1:], "
                                "getattr(sys, 'orig_argv', None), A.instance().iopub_thread.socket.sndhwm, "
                                "[m for m in sys.modules if m.startswith('ssh_ipykernel_remote')], "
                                "[type(f).__name__ for f in sys.meta_path if not isinstance(f, type)]]))")
        while True:
            msg = client.get_iopub_msg(timeout=20)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        seen = json.loads(msg["content"]["text"])
        assert seen[:5] == [True, str(tmp_path), "1", "n.ipynb", ["-f", connection_file]]
        orig_argv, hwm, shipped, finders = seen[5:]
        assert orig_argv in (argv, None) and hwm == launch.IOPUB_HWM  # as launch.py makes them
        assert shipped == [] and "ShippedModules" not in finders, (shipped, finders)  # the pool's own: gone
        client.shutdown()
    finally:
        client.stop_channels()
    assert kernel.wait(20) == 0
    kernel.sock.close()  # the keeper's end: the pool is idle from now on
    deadline = time.monotonic() + 15
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name in os.listdir(runtime) if name.startswith("warm-")]


def test_the_pool_is_shipped_with_launch_py_and_uses_it():
    """The warm kernel's launch tweaks are launch.py's, the cold launcher's (test_kernelcmd.py):
    the pool's program carries that module as it is, and the pool calls its functions."""
    import ast

    from ssh_ipykernel.remote import launch, loader, warmpool

    program = warm.pool_program().decode("utf-8")
    tree = ast.parse(program)
    call = tree.body[-1].value
    assert isinstance(call, ast.Call) and call.func.id == "run" and ast.literal_eval(call.args[1]) == "warmpool"
    shipped = ast.literal_eval(call.args[0])
    for name, module in (("launch", launch), ("warmpool", warmpool)):
        assert shipped[name] == (f"ssh_ipykernel/remote/{name}.py", open(module.__file__).read())
    assert program.startswith(open(loader.__file__).read())
    for name in ("queue_iopub", "show_command_line"):
        assert getattr(warmpool, name) is getattr(launch, name)
        assert not hasattr(warm, name)


def lock_holder(lock_file: str) -> int:
    """The pid holding an flock on ``lock_file`` (/proc/locks), 0 if none."""
    inode = os.stat(lock_file).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "FLOCK" in fields and fields[-3].endswith(":%d" % inode):
                return int(fields[-4])
    return 0


@pytest.mark.timeout(60)
def test_sigterm_retires_a_pool_and_its_kernels_keep_running(tmp_path):
    import signal

    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    python = sys.executable
    env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
    path = warm.pool_socket(str(runtime), python, env, str(tmp_path))
    notes = []
    assert warm.ensure_pool(path, python=python, env=env, cwd=str(tmp_path), idle=600, timeout=30,
                            note=notes.append), notes
    pool = lock_holder(path[:-5] + ".lock")
    assert pool > 0
    connection_file = str(runtime / "kernel-ssh-term.json")
    write_connection_file(connection_file, transport="ipc", ip=str(runtime / "k"), key=b"k")
    log = connection_file[:-5] + ".log"
    open(log, "w").close()
    kernel = warm.start_kernel(path, argv=[python, "-m", "ipykernel_launcher", "-f", connection_file], env=env,
                               cwd=str(tmp_path), log_file=log, note=notes.append)
    assert kernel is not None, notes
    os.kill(pool, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), "a retired pool takes no more requests"
    client = BlockingKernelClient()
    client.load_connection_file(connection_file)
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)  # the kernel it forked runs on
        client.shutdown()
    finally:
        client.stop_channels()
    assert kernel.wait(20) == 0
    deadline = time.monotonic() + 10  # and the pool ends with its last kernel, idle time or not
    while os.path.exists(f"/proc/{pool}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pool}") or "Z" in open(f"/proc/{pool}/stat").read().split(")")[1][:3]
