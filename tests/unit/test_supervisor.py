"""The tunnel supervisor's I/O around its policy (the policy itself: test_policy.py; the fault behaviour:
tests/integration/test_reconnect.py)."""
import logging
import socket
import time

from ssh_ipykernel.netwatch import NetworkWatch
from ssh_ipykernel.signals import SignalRelay
from ssh_ipykernel.supervisor import Supervisor


class _Stub:
    """Just enough of a transport/kernel/channels for the supervisor's constructor."""

    forwards = []
    host = "h"

    def probe_address(self):
        return None


def supervisor(signals):
    stub = _Stub()
    return Supervisor(kernel=stub, transport=stub, channels=stub, new_transport=lambda t: stub,
                      signals=signals, log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                      secret="s", grace=60, client_timeout=30, attach_timeout=10)


def test_probe_returns_as_soon_as_the_host_answers_or_refuses(monkeypatch):
    """Answered and refused both mean "the host is there" (None at once); a host that does not
    answer keeps the probe waiting until PROBE_MAX_WAIT, so a quick None is not a timeout."""
    from ssh_ipykernel import reachability

    monkeypatch.setattr(reachability, "PROBE_MAX_WAIT", 2.0)
    with SignalRelay() as signals, socket.socket() as listener, socket.socket() as silent:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        s = supervisor(signals)
        t0 = time.monotonic()
        assert s._wait_reachable(("127.0.0.1", port)) is None
        answered = time.monotonic() - t0
        listener.settimeout(1)
        listener.accept()[0].close()  # the probe really connected

        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        t0 = time.monotonic()
        assert s._wait_reachable(("127.0.0.1", closed_port)) is None  # refused: sshd down, host up
        refused = time.monotonic() - t0

        # A listener whose queue is full drops further SYNs without a word: no answer at all.
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        fillers = [socket.create_connection(silent.getsockname(), timeout=1)]  # queue of one: full
        t0 = time.monotonic()
        assert s._wait_reachable(silent.getsockname()) is None
        unanswered = time.monotonic() - t0
        for f in fillers:
            f.close()
    assert answered < 0.5 and refused < 0.5, (answered, refused)
    assert 1.9 < unanswered < 4, unanswered


# -- the I/O shell around policy.py: events in, actions performed ----------------------------------
class _Recorder(_Stub):
    """A kernel, channels and transport that record what the supervisor does to them."""

    def __init__(self, calls, drained="", connect_errors=()):
        self.calls = calls
        self.drained = drained
        self.connect_errors = list(connect_errors)

    def close(self, **kw):
        self.calls.append(("close", kw))

    def suspend(self):
        self.calls.append(("suspend", {}))

    def drain(self):
        self.calls.append(("drain", {}))
        return self.drained

    def connect(self):
        raise self.connect_errors.pop(0)

    def wait_for_login(self, deadline, wake_fd=None):
        self.calls.append(("wait_for_login", {}))
        return 0.01  # somebody logged in 10 ms ago


class _Deaf(NetworkWatch):
    """No network changes heard (as on macOS): this machine's own would cut backoffs short."""

    def __init__(self):
        self._sock = None


def recorded(signals, calls, **kw):
    stub = _Recorder(calls, **kw)
    states = []
    s = Supervisor(kernel=stub, transport=stub, channels=stub, new_transport=lambda t: stub,
                   signals=signals, log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                   secret="s", grace=60, client_timeout=30, attach_timeout=10,
                   on_state=lambda sup: states.append(sup.state.value), network_watch=_Deaf)
    return s, states


def test_a_lost_session_closes_everything_and_says_what_the_connection_said(caplog):
    from ssh_ipykernel import policy

    calls = []
    with SignalRelay() as signals, caplog.at_level(logging.INFO, logger="t"):
        s, states = recorded(signals, calls, drained="Connection reset by peer\n")
        assert s._dispatch(policy.SessionEOF()) is None
    assert [c for c, _ in calls] == ["drain", "close", "suspend", "close"]
    assert calls[-1] == ("close", {"lost": True})
    assert states == ["reconnecting"]
    assert caplog.messages == [("reconnecting: connection to h lost (the SSH session ended: Connection reset by "
                                "peer); reconnecting, the kernel is kept up to 60 s")]


def test_reconnect_attempts_until_the_keeper_is_found_gone(caplog):
    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel import policy

    calls = []
    errors = [exc.SSHConnectionRefusedError("refused"), exc.KernelGoneError("the remote kernel on h is gone")]
    with SignalRelay() as signals, caplog.at_level(logging.INFO, logger="t"):
        s, states = recorded(signals, calls, connect_errors=errors)
        s._dispatch(policy.MasterEOF())
        t0 = time.monotonic()
        assert s.run() == 1
    assert 0.25 <= time.monotonic() - t0 < 2  # BACKOFF_FIRST after the refused attempt
    assert states == ["reconnecting", "stopped"]
    assert caplog.messages[1:] == [
        "reconnect attempt 1 failed after 0 s offline: refused",
        "stopped: the remote kernel on h is gone; exiting so that Jupyter starts a new kernel",
    ]


def test_a_kernel_that_died_is_the_supervisors_error_and_exit_code(caplog):
    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel import policy

    with SignalRelay() as signals:
        s = supervisor(signals)
        assert s._dispatch(policy.KeeperExited(0, None)) == 0 and s.error is None
        s = supervisor(signals)
        with caplog.at_level(logging.ERROR, logger="t"):
            assert s._dispatch(policy.KeeperExited(-9, "died")) == 1
    assert type(s.error) is exc.KernelDiedError and s.error.exit_code == 1 and s.error.host == "h"
    assert s.error.message == "the remote kernel died (killed by signal 9); exiting so that Jupyter restarts it"
    assert caplog.messages[-1] == "stopped: " + s.error.message  # the log line is unchanged


def test_a_login_prompt_while_reconnecting_waits_for_the_login_then_attempts_at_once(caplog):
    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel import policy

    calls = []
    errors = [exc.LoginRequiredError("logging in to h needs a person. Run `ssh-ipykernel login h`", detail="Password:"),
              exc.KernelGoneError("the remote kernel on h is gone")]
    with SignalRelay() as signals, caplog.at_level(logging.INFO, logger="t"):
        s, states = recorded(signals, calls, connect_errors=errors)
        s._dispatch(policy.MasterEOF())
        t0 = time.monotonic()
        assert s.run() == 1
    assert time.monotonic() - t0 < 1  # no backoff after the login
    assert states == ["reconnecting", "waiting for login", "reconnecting", "stopped"]
    assert ("wait_for_login", {}) in calls
    assert caplog.messages[1:3] == [
        "waiting for login: logging in to h needs a person. Run `ssh-ipykernel login h`; the kernel is kept up to "
        "60 s and reattaches as soon as somebody logs in",
        "reconnecting: logged in to h (noticed 0.010 s after the login); reattaching",
    ]


class _FakeWatch:
    """A NetworkWatch whose 'kernel' is the test: readable once something was sent."""

    def __init__(self):
        self.r, self.w = socket.socketpair()

    def fileno(self):
        return self.r.fileno()

    def changes(self):
        self.r.setblocking(False)
        try:
            return ["link 3 up"] if self.r.recv(100) else []
        except BlockingIOError:
            return []


def test_a_network_change_cuts_a_network_backoff_short_and_keeps_others(caplog):
    from dataclasses import replace

    from ssh_ipykernel import policy

    with SignalRelay() as signals, caplog.at_level(logging.DEBUG, logger="t"):
        for failure, cut_short in ((policy.Failure.NETWORK, True), (policy.Failure.OTHER, False)):
            s = supervisor(signals)
            now = time.monotonic()
            s.status = replace(s.status, state=policy.State.RECONNECTING, attempt=3, attempt_started=now,
                               failed=policy.AttemptFailed(failure, "x"))
            s._dispatch(policy.Tick())
            assert isinstance(s._next, policy.WaitUntil) and s._next.at > now + 0.5
            s.network = watch = _FakeWatch()
            watch.w.send(b"x")
            t0 = time.monotonic()
            assert s._wait(min(s._next.at, t0 + 1.0)) is None
            assert (time.monotonic() - t0 < 0.3) == cut_short
    assert "network changed (link 3 up): trying again now" in caplog.text
