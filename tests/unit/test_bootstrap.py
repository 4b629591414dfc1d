"""The remote agent, run locally through the same sh wrapper and loader the remote uses."""
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest

from ssh_ipykernel.launcher import agent_stdin, build_remote_command
from ssh_ipykernel.remote import protocol
from ssh_ipykernel.remote.protocol import BootstrapError, kernel_environment, validate_params

KEY = "0123456789abcdef-secret-" + uuid.uuid4().hex


def params(**over):
    p = {"protocol": 1, "kernel_id": "abc-123", "key": KEY, "signature_scheme": "hmac-sha256",
         "kernel_name": "", "env": {}}
    p.update(over)
    return p


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "JSON object"),
        (params(protocol=99), "protocol"),
        (params(kernel_id="../../etc/passwd"), "kernel_id"),
        (params(key=None), "key"),
        (params(env={"A B": "x"}), "not valid"),
        (params(env={"A": 1}), "not a string"),
        (params(proxy_timeout=-1), "proxy_timeout"),
    ],
)
def test_params_are_validated(bad, words):
    with pytest.raises(BootstrapError) as e:
        validate_params(bad)
    assert e.value.code == "bad_params" and words in e.value.message


def test_kernel_environment_drops_parent_pid_and_adds_user_values():
    env = kernel_environment({"JPY_PARENT_PID": "1", "HOME": "/h"}, {"X": "a 'b' $c"})
    assert env == {"HOME": "/h", "X": "a 'b' $c"}


class AgentRun:
    """The agent as a child process, spoken to like the proxy does."""

    def __init__(self, tmp_path, p):
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", build_remote_command(sys.executable)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self.proc.stdin.write(agent_stdin(p))
        self.proc.stdin.flush()

    def event(self, timeout=30):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no event from the agent"
        line = self.proc.stdout.readline()
        assert line, f"agent ended: {self.proc.wait()} {self.proc.stderr.read()!r}"
        event = json.loads(line)
        if event.get("event") == "ready":
            self.kernel_pid = event["pid"]
        return event

    def send(self, op):
        self.proc.stdin.write(json.dumps({"op": op}).encode() + b"\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        # A failed test must not leave its kernel behind (the agent above was killed hard).
        if getattr(self, "kernel_pid", None) and alive(self.kernel_pid):
            os.killpg(self.kernel_pid, 9)


@pytest.fixture
def agent(tmp_path):
    runs = []

    def start(**over):
        run = AgentRun(tmp_path, params(**over))
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def client_for(ready):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(dict(ready["ports"], ip="127.0.0.1", key=KEY.encode(), transport="tcp",
                                 signature_scheme="hmac-sha256"))
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.timeout(120)
def test_agent_runs_interrupts_and_shuts_down_a_kernel(agent, tmp_path):
    run = agent(env={"SIK_VALUE": "a 'quoted' $(value) with spaces"})
    ready = run.event()
    assert ready["event"] == "ready", ready
    cf = ready["connection_file"]
    assert stat.S_IMODE(os.stat(cf).st_mode) == 0o600
    with open(cf) as f:
        info = json.load(f)
    assert info["key"] == KEY and info["ip"] == "127.0.0.1"
    assert {k: info[k] for k in ready["ports"]} == ready["ports"]
    # The key must not be visible in any process's command line.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert KEY.encode() not in f.read()
            except OSError:
                pass
    kc = client_for(ready)
    try:
        reply = kc.execute_interactive("import os; v = os.environ['SIK_VALUE']; print(v)", timeout=30)
        assert reply["content"]["status"] == "ok"
        kc.execute("import time; time.sleep(60)")
        time.sleep(1)
        t0 = time.monotonic()
        run.send("interrupt")
        reply = kc.get_shell_msg(timeout=20)
        while reply["msg_type"] != "execute_reply" or reply["content"]["status"] == "ok":
            reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - t0 < 10
        reply = kc.execute_interactive("assert v == \"a 'quoted' $(value) with spaces\"", timeout=30)
        assert reply["content"]["status"] == "ok"  # state survived the interrupt
    finally:
        kc.stop_channels()
    run.send("shutdown")
    exited = run.event()
    assert exited == {"event": "exited", "returncode": 0, "reason": "requested"}
    assert run.proc.wait(10) == 0
    assert not os.path.exists(cf)
    assert not os.path.exists(cf[:-5] + ".log")
    assert not alive(ready["pid"])


@pytest.mark.timeout(120)
def test_agent_shuts_the_kernel_down_when_the_proxy_disappears(agent):
    run = agent()
    ready = run.event()
    run.proc.stdin.close()  # what a dropped SSH session looks like from the remote
    assert run.event() == {"event": "exited", "returncode": 0, "reason": "proxy_gone"}
    assert not os.path.exists(ready["connection_file"])
    assert not alive(ready["pid"])


@pytest.mark.timeout(60)
def test_agent_ends_the_kernel_when_the_proxy_falls_silent(agent):
    """A cut network gives no EOF: silence past proxy_timeout must end the kernel too."""
    run = agent(proxy_timeout=2)
    ready = run.event()
    t0 = time.monotonic()
    exited = run.event(timeout=30)
    assert exited["reason"] == "proxy_silent"
    assert 2 <= time.monotonic() - t0 < 10
    assert not os.path.exists(ready["connection_file"])
    assert not alive(ready["pid"])


@pytest.mark.timeout(60)
def test_keepalives_keep_the_kernel(agent):
    run = agent(proxy_timeout=2)
    ready = run.event()
    for _ in range(8):
        run.send("keepalive")
        time.sleep(0.5)
    assert alive(ready["pid"])
    run.send("shutdown")
    assert run.event()["reason"] == "requested"


def test_a_crashing_agent_takes_its_kernel_with_it(tmp_path, monkeypatch):
    """Even a bug in the agent after launch must not orphan the kernel."""
    from ssh_ipykernel.remote import agent as agent_module, bootstrap as boot

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(boot.sys, "stdin", type("S", (), {"buffer": None})())
    monkeypatch.setattr(boot, "read_params", lambda stream: params())
    launched = []
    real_launch = agent_module.Agent.launch

    def launch(self):
        real_launch(self)
        launched.append(self)

    def broken_ready_event(self):
        raise RuntimeError("bug")

    monkeypatch.setattr(agent_module.Agent, "launch", launch)
    monkeypatch.setattr(agent_module.Agent, "ready_event", broken_ready_event)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGINT)}
    try:
        with pytest.raises(RuntimeError, match="bug"):
            boot.main()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    (a,) = launched
    assert a.proc.wait(10) == -9
    assert not os.path.exists(a.connection_file)


@pytest.mark.timeout(60)
def test_agent_reports_a_kernel_that_dies(agent):
    run = agent()
    ready = run.event()
    os.kill(ready["pid"], 9)
    exited = run.event()
    assert exited == {"event": "exited", "returncode": -9, "reason": ""}
    assert not os.path.exists(ready["connection_file"])


def test_agent_rejects_bad_params_with_its_exit_code(agent):
    run = agent(kernel_id="../x")
    event = run.event()
    assert event["event"] == "error" and event["code"] == "bad_params"
    assert run.proc.wait(10) == protocol.EXIT_BAD_PARAMS
