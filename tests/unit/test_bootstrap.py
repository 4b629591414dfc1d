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

from ssh_ipykernel.session.bundle import agent_stdin
from ssh_ipykernel.session.startcmd import build_remote_command
from ssh_ipykernel.remote import protocol
from ssh_ipykernel.remote.protocol import BootstrapError, kernel_environment, validate_params

KEY = "0123456789abcdef-secret-" + uuid.uuid4().hex


def params(**over):
    p = {"protocol": protocol.PROTOCOL, "kernel_id": "abc-123", "key": KEY,
         "signature_scheme": "hmac-sha256", "kernel_name": "", "env": {}, "grace": 300}
    p.update(over)
    return p


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "JSON object"),
        (params(protocol=1), "protocol"),
        (params(kernel_id="../../etc/passwd"), "kernel_id"),
        (params(key=None), "key"),
        (params(env={"A B": "x"}), "not valid"),
        (params(env={"A": 1}), "not a string"),
        (params(grace=-1), "grace"),
        (params(client_timeout=0), "client_timeout"),
        (params(mode="detonate"), "mode"),
        (params(mode="attach", socket="/etc/passwd"), "socket"),
    ],
)
def test_params_are_validated(bad, words):
    with pytest.raises(BootstrapError) as e:
        validate_params(bad)
    assert e.value.code == "bad_params" and words in e.value.message


def test_kernel_environment_names_the_keeper_as_parent_and_adds_user_values():
    env = kernel_environment({"JPY_PARENT_PID": "1", "HOME": "/h"}, {"X": "a 'b' $c"}, 4242)
    assert env == {"HOME": "/h", "X": "a 'b' $c", "JPY_PARENT_PID": "4242"}


class AgentRun:
    """One SSH session of the agent as a child process, spoken to like the proxy does."""

    def __init__(self, tmp_path, p):
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", build_remote_command(sys.executable)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            bufsize=0,  # unbuffered: select() on the pipe must see every line readline() has not read
        )
        self.proc.stdin.write(agent_stdin(p))
        self.proc.stdin.flush()

    def event(self, timeout=30, skip=("log", "pong")):
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, "no event from the agent"
            line = self.proc.stdout.readline()
            assert line, f"agent ended: {self.proc.wait()} {self.proc.stderr.read()!r}"
            event = json.loads(line)
            if event.get("event") not in skip:
                return event

    def send(self, op):
        self.proc.stdin.write(json.dumps({"op": op}).encode() + b"\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def agent(tmp_path):
    """Start sessions; at the end, kill every keeper and kernel they reported."""
    runs, pids = [], []

    def start(**over):
        run = AgentRun(tmp_path, params(**over))
        runs.append(run)
        real_event = run.event

        def event(*args, **kwargs):
            e = real_event(*args, **kwargs)
            if e.get("event") == "ready":
                pids.extend([e["keeper_pid"], e["pid"]])
            return e

        run.event = event
        return run

    yield start
    for run in runs:
        run.close()
    for pid in pids:  # a failed test must not leave its daemons behind
        if alive(pid):
            os.kill(pid, 9)


def attach(tmp_path, ready, **over):
    return AgentRun(tmp_path, dict({"protocol": protocol.PROTOCOL, "mode": "attach",
                                    "kernel_id": ready["kernel_id"], "socket": ready["socket"]}, **over))


def wait_gone(pid, timeout=20):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def client_for(ready):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_file(ready["connection_file"])  # the kernel's own sockets, on this machine
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_agent_runs_interrupts_and_shuts_down_a_kernel(agent, tmp_path):
    run = agent(env={"SIK_VALUE": "a 'quoted' $(value) with spaces"})
    ready = run.event()
    assert ready["event"] == "ready", ready
    cf = ready["connection_file"]
    assert stat.S_IMODE(os.stat(cf).st_mode) == 0o600
    with open(cf) as f:
        info = json.load(f)
    assert info["key"] == KEY and info["transport"] == "ipc" == ready["transport"]
    assert {k: info[k] for k in ready["ports"]} == ready["ports"]
    sockets = os.path.dirname(info["ip"])  # the kernel's unix sockets, in a directory of its own
    assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o700
    assert sorted(os.listdir(sockets)) == [f"k-{n}" for n in range(1, 6)]
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
        # ipykernel aborts what reaches it while it still aborts the queue after an error
        # (stop_on_error): on a loaded machine the next request can land in that window.
        for _ in range(3):
            reply = kc.execute_interactive("assert v == \"a 'quoted' $(value) with spaces\"", timeout=30)
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.2)
        assert reply["content"]["status"] == "ok"  # state survived the interrupt
    finally:
        kc.stop_channels()
    run.send("shutdown")
    exited = run.event()
    assert exited == {"event": "exited", "returncode": 0, "reason": "requested"}
    assert run.proc.wait(10) == 0
    assert not os.path.exists(cf)
    assert not os.path.exists(cf[:-5] + ".log")
    assert not os.path.exists(sockets)
    assert not alive(ready["pid"])


@pytest.mark.timeout(120)
def test_the_kernel_outlives_its_session_and_a_new_one_attaches(agent, tmp_path):
    run = agent()
    ready = run.event()
    assert stat.S_IMODE(os.stat(ready["socket"]).st_mode) & 0o077 == 0
    run.proc.stdin.close()  # what a dropped SSH session looks like from the remote
    assert run.proc.wait(10) == 0  # the session ends; the keeper does not hold it open
    time.sleep(1)
    assert alive(ready["pid"]) and alive(ready["keeper_pid"])
    again = attach(tmp_path, ready)
    try:
        hello = again.event()
        assert hello["event"] == "ready" and hello["pid"] == ready["pid"], hello
        again.send("ping")
        assert again.event(skip=("log",)) == {"event": "pong"}
        again.send("shutdown")
        exited = again.event()
        # 0 normally; SIGTERM when the kernel did not acknowledge shutdown_request within 1 s
        # (a loaded machine): either way the keeper ended it because it was asked to.
        assert exited["event"] == "exited" and exited["reason"] == "requested" and exited["returncode"] in (0, -15)
        assert again.proc.wait(10) == 0
    finally:
        again.close()
    assert wait_gone(ready["keeper_pid"]) and not alive(ready["pid"])
    for path in (ready["connection_file"], ready["socket"], ready["connection_file"][:-5] + ".log"):
        assert not os.path.exists(path)


@pytest.mark.timeout(60)
def test_two_sessions_at_once_both_hear_the_kernel_end(agent, tmp_path):
    run = agent()
    ready = run.event()
    other = attach(tmp_path, ready)
    try:
        assert other.event()["pid"] == ready["pid"]
        os.kill(ready["pid"], 9)
        for session in (run, other):
            assert session.event() == {"event": "exited", "returncode": -9, "reason": ""}
    finally:
        other.close()
    assert not os.path.exists(ready["connection_file"])


@pytest.mark.timeout(60)
def test_the_grace_period_ends_an_abandoned_kernel(agent):
    run = agent(grace=1)
    ready = run.event()
    t0 = time.monotonic()
    run.proc.stdin.close()
    assert wait_gone(ready["pid"]) and wait_gone(ready["keeper_pid"])
    assert 1 <= time.monotonic() - t0 < 15
    assert not os.path.exists(ready["connection_file"]) and not os.path.exists(ready["socket"])


@pytest.mark.timeout(60)
def test_a_silent_session_counts_as_gone(agent):
    """A cut network gives no EOF: a session silent past client_timeout is dropped, then grace."""
    # The keeper hears the session first when it connects, before the kernel is ready: the
    # silence counts from before the session starts, not from the ready event.
    t0 = time.monotonic()
    run = agent(grace=0, client_timeout=2)
    ready = run.event()
    assert run.proc.wait(30) == 0  # dropped by the keeper: its relay ends
    assert 2 <= time.monotonic() - t0 < 15
    assert wait_gone(ready["pid"]) and wait_gone(ready["keeper_pid"])
    assert not os.path.exists(ready["connection_file"])


@pytest.mark.timeout(90)
def test_the_keeper_ends_a_silent_proxys_kernel_within_kernel_kept_for(agent):
    """The proxy's give-up clock (policy.py) rests on protocol.kernel_kept_for: a kernel whose
    proxy went silent is ended after that long, and before the proxy gives up on it."""
    from ssh_ipykernel import policy

    grace, client_timeout = 1, 2
    run = agent(grace=grace, client_timeout=client_timeout)
    ready = run.event()
    t0 = time.monotonic()  # the session's last word: it says nothing from here on
    assert wait_gone(ready["pid"], timeout=60)
    took = time.monotonic() - t0
    kept = protocol.kernel_kept_for(grace, client_timeout)
    assert kept - 0.5 <= took < kept + policy.GIVE_UP_MARGIN


@pytest.mark.timeout(60)
def test_pings_keep_the_session(agent):
    run = agent(grace=0, client_timeout=5)
    ready = run.event()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:  # longer than client_timeout
        run.send("ping")
        assert run.event(skip=("log",)) == {"event": "pong"}
        time.sleep(0.5)
    assert alive(ready["pid"])
    run.send("shutdown")
    assert run.event()["reason"] == "requested"


@pytest.mark.timeout(60)
def test_the_keeper_answers_an_unknown_op_with_an_error_and_carries_on(agent):
    run = agent(grace=0)
    ready = run.event()
    run.send("detonate")
    error = run.event()
    assert error["event"] == "error" and error["code"] == "bad_op" and "detonate" in error["message"]
    run.proc.stdin.write(b'{"op": "replaced"}\n')  # a known op without its field
    run.proc.stdin.flush()
    assert run.event()["code"] == "bad_op"
    run.send("ping")
    assert run.event(skip=("log",)) == {"event": "pong"}
    assert alive(ready["pid"])
    run.send("shutdown")
    assert run.event()["reason"] == "requested"


@pytest.mark.timeout(60)
def test_grace_never_keeps_the_kernel_without_sessions(agent, tmp_path):
    run = agent(grace=None)
    ready = run.event()
    run.proc.stdin.close()
    time.sleep(3)
    assert alive(ready["pid"])
    again = attach(tmp_path, ready)
    try:
        assert again.event()["pid"] == ready["pid"]
        again.send("shutdown")
        assert again.event()["reason"] == "requested"
    finally:
        again.close()


@pytest.mark.timeout(60)
def test_a_killed_keeper_takes_its_kernel_along_and_its_files_are_swept(agent, tmp_path):
    run = agent()
    ready = run.event()
    client_for(ready).stop_channels()  # booted: its parent poller runs
    os.kill(ready["keeper_pid"], 9)
    assert wait_gone(ready["pid"], timeout=15)  # ipykernel watches its parent (JPY_PARENT_PID)
    assert os.path.exists(ready["connection_file"])
    gone = attach(tmp_path, ready)
    event = gone.event()
    assert event["event"] == "error" and event["code"] == "no_kernel", event
    assert gone.proc.wait(10) == protocol.EXIT_NO_KERNEL
    second = agent(kernel_id="second")
    second_ready = second.event()
    assert not os.path.exists(ready["connection_file"])  # swept by the next start
    assert not os.path.exists(ready["socket"])
    second.send("shutdown")
    assert second.event()["reason"] == "requested"
    assert second_ready["pid"] != ready["pid"]


def test_a_crashing_keeper_takes_its_kernel_with_it(tmp_path, monkeypatch):
    """Even a bug in the keeper after launch must not orphan the kernel."""
    import socket as socket_module

    from ssh_ipykernel.remote import agent as agent_module, bootstrap as boot, keeper as keeper_module

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    a = agent_module.Agent(validate_params(params()))
    a.prepare()
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(str(tmp_path / "k.sock"))
    listener.listen(1)

    def broken_watch(self, now):
        raise RuntimeError("bug")

    monkeypatch.setattr(keeper_module.Keeper, "_watch", broken_watch)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(RuntimeError, match="bug"):
            boot.run_keeper(a, listener, grace=10, client_timeout=10)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
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
    assert wait_gone(ready["keeper_pid"])


def test_agent_rejects_bad_params_with_its_exit_code(agent):
    run = agent(kernel_id="../x")
    event = run.event()
    assert event["event"] == "error" and event["code"] == "bad_params"
    assert run.proc.wait(10) == protocol.EXIT_BAD_PARAMS


@pytest.mark.timeout(60)
def test_a_restarted_kernel_retires_its_predecessor_but_not_a_namesake(agent):
    """Jupyter's hard restart kills the proxy and starts a new kernel on the same connection file."""
    first = agent(kernel_id="same")
    first_ready = first.event()
    namesake = agent(kernel_id="same", key="another machine's key")
    namesake_ready = namesake.event()
    assert alive(first_ready["pid"])  # same id, other key: not ours to end
    first.proc.stdin.close()  # the old proxy is gone (killed): its session ends
    restarted = agent(kernel_id="same")
    restarted_ready = restarted.event()
    assert wait_gone(first_ready["pid"], timeout=40) and wait_gone(first_ready["keeper_pid"])
    assert not os.path.exists(first_ready["connection_file"])
    assert alive(namesake_ready["pid"]) and alive(restarted_ready["pid"])
    for run in (namesake, restarted):
        run.send("shutdown")
        assert run.event()["reason"] == "requested"


def test_reader_gone_tells_a_closed_pipe_or_socket_from_an_open_one():
    """Before it starts a kernel, the agent looks whether its stdout still has a reader: sshd
    closes it when the proxy gave up while the remote shell ran a slow --pre-command."""
    import socket as socketmod

    from ssh_ipykernel.remote.bootstrap import reader_gone

    r, w = os.pipe()
    try:
        assert not reader_gone(w)
        os.close(r)
        assert reader_gone(w)
    finally:
        os.close(w)
    a, b = socketmod.socketpair()
    with a:
        assert not reader_gone(a.fileno())
        b.close()
        assert reader_gone(a.fileno())
