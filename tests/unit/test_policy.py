"""The supervisor's policy (policy.py), table-driven: state, event and clocks in; state and
actions out. No network, no root: the real faults are in tests/integration/test_reconnect.py."""
from __future__ import annotations

import logging
import signal
from dataclasses import replace
from typing import List, NamedTuple, Optional, Tuple

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel import policy as p
from ssh_ipykernel.policy import (
    DETAIL, Attempt, AttemptCancelled, AttemptFailed, AttemptSucceeded, AwaitReachable, Close, Config,
    ConfirmAlive, Detach, Exit, Failure, Heard, KeeperExited, KernelGone, Log, MasterEOF, NetworkChanged, Notify,
    Now, Reachable, SendInterrupt, SendPing, SendShutdown, SessionEOF, Signal, State, Status, StopRequested, Tick,
    WaitUntil,
)
from ssh_ipykernel.remote.protocol import kernel_kept_for

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
INT, TERM, HUP, QUIT = signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT
OFFSET = 1_700_000_000.0  # wall - monotonic while nobody suspends the machine
T0 = 1000.0  # monotonic time the supervisor started (UP) or the connection was lost (RECONNECTING)

CFG = Config(host="btest", grace=600.0, client_timeout=30.0)
GUEST = replace(CFG, owns_kernel=False)  # ssh-ipykernel connect
NO_PROBE = replace(CFG, can_probe=False)  # behind a ProxyJump: no TCP probe


def at(mono: float, jump: float = 0.0) -> Now:
    """The clocks at monotonic ``mono``, the wall clock ``jump`` seconds ahead of it (a suspend)."""
    return Now(mono=mono, wall=mono + OFFSET + jump)


def up(config: Config = CFG, **fields: object) -> Status:
    return replace(p.initial(config, at(T0)), **fields)


def stopping(config: Config = CFG, **fields: object) -> Status:
    return replace(up(config), state=State.STOPPING, shutdown_deadline=T0 + p.SHUTDOWN_TIMEOUT, **fields)


def reconnecting(config: Config = CFG, **fields: object) -> Status:
    """Lost at T0 (wall T0 + OFFSET); by default nothing tried yet."""
    base = replace(up(config), state=State.RECONNECTING, lost_at=T0, lost_wall=T0 + OFFSET, retry_at=T0)
    return replace(base, **fields)


def stopped(config: Config = CFG) -> Status:
    return replace(up(config), state=State.STOPPED)


def lost_line(why: str, kept: str = "up to 600 s") -> List[object]:
    return [Close(lost=True, drain=True),
            Log(WARNING, "%s: connection to %s lost (%s%s); reconnecting, the kernel is kept %s",
                ("reconnecting", "btest", why, DETAIL, kept)),
            Notify()]


def enter(state: State, message: str, *args: object, level: int = INFO) -> List[object]:
    return [Log(level, "%s: " + message, (state.value, *args)), Notify()]


def given_up(message: str, code: int) -> List[object]:
    """The kernel given up for an error: its message logged, its exit code (the error is checked
    by test_row: Exit compares by code only)."""
    return enter(State.STOPPED, "%s", message, level=ERROR) + [Exit(code)]


REFUSED = AttemptFailed(Failure.NETWORK, "refused")
DENIED = AttemptFailed(Failure.OTHER, "denied")
TIMED_OUT = AttemptFailed(Failure.TIMEOUT, "no answer")
GONE = exc.KernelGoneError("the remote kernel on btest is gone", host="btest", detail="no keeper at the socket",
                           detail_label="detail")
OFFLINE_INTERRUPT = ("interrupt asked for while the connection is down: the kernel is interrupted as soon as the "
                     "connection is back, before anything sent meanwhile reaches it")
RECONNECTING_STOP = "%s while reconnecting; the remote kernel is shut down by its keeper when the grace period ends"


class Row(NamedTuple):
    name: str
    status: Status
    event: p.Event
    now: Now
    state: State
    actions: List[object]
    error: Optional[type] = None  # the error the Exit carries (its message is the log line's)


ROWS = [
    # -- UP: pings, loss, suspend --------------------------------------------------------------
    Row("up: nothing due yet", up(), Tick(), at(T0 + 1), State.UP, [WaitUntil(T0 + 2)]),
    Row("up: ping due", up(), Tick(), at(T0 + 2), State.UP, [SendPing(), WaitUntil(T0 + 4)]),
    Row("up: wake for the loss deadline before the next ping", up(last_heard=T0 - 5), Tick(), at(T0 + 0.5),
        State.UP, [WaitUntil(T0 + 1)]),
    Row("up: 6.0 s of silence is not yet a loss", up(last_heard=T0, next_ping=T0 + 8), Tick(), at(T0 + 6),
        State.UP, [WaitUntil(T0 + 6)]),
    Row("up: 6.5 s of silence is", up(), Tick(), at(T0 + 6.5), State.RECONNECTING,
        lost_line("no answer for 6.5 s")),
    Row("up: loss with grace never", up(replace(CFG, grace=None)), Tick(), at(T0 + 7), State.RECONNECTING,
        lost_line("no answer for 7.0 s", "as long as it takes")),
    Row("up: the clock jumped (suspend): ping now, 3 s to answer", up(), Tick(), at(T0 + 1, jump=60),
        State.UP, [Log(INFO, "clock jumped %.0f s (suspended?); checking the connection", (60.0,)),
                   SendPing(), WaitUntil(T0 + 3)]),  # next ping; the loss at T0 + 4
    Row("up: a 5 s jump is not a suspend", up(), Tick(), at(T0 + 1, jump=5), State.UP, [WaitUntil(T0 + 2)]),
    Row("up: the wall clock set back is not a suspend", up(), Tick(), at(T0 + 1, jump=-3600), State.UP,
        [WaitUntil(T0 + 2)]),
    Row("up: heard", up(), Heard(), at(T0 + 1), State.UP, [ConfirmAlive()]),
    Row("up: session EOF", up(), SessionEOF(), at(T0 + 1), State.RECONNECTING,
        lost_line("the SSH session ended")),
    Row("up: master EOF", up(), MasterEOF(), at(T0 + 1), State.RECONNECTING,
        lost_line("the SSH connection ended")),
    # -- UP: the kernel's end -> exit code ---------------------------------------------------------
    Row("up: kernel exit 0", up(), KeeperExited(0), at(T0), State.STOPPED,
        enter(State.STOPPED, "kernel exited (%s)", "exit code 0") + [Exit(0)]),
    Row("up: shutdown asked for, rc 1", up(), KeeperExited(1, "requested"), at(T0), State.STOPPED,
        enter(State.STOPPED, "kernel exited (%s)", "requested") + [Exit(0)]),
    Row("up: keeper's SIGTERM", up(), KeeperExited(-15, "terminated"), at(T0), State.STOPPED,
        enter(State.STOPPED, "kernel exited (%s)", "terminated") + [Exit(0)]),
    Row("up: kernel died", up(), KeeperExited(1), at(T0), State.STOPPED,
        given_up("the remote kernel died (exit code 1); exiting so that Jupyter restarts it", 1),
        exc.KernelDiedError),
    Row("up: kernel killed", up(), KeeperExited(-9), at(T0), State.STOPPED,
        given_up("the remote kernel died (killed by signal 9); exiting so that Jupyter restarts it", 1),
        exc.KernelDiedError),
    Row("up: ended by the grace period", up(), KeeperExited(-15, "grace_expired"), at(T0), State.STOPPED,
        given_up("the remote kernel died (killed by signal 15); exiting so that Jupyter restarts it", 1),
        exc.KernelDiedError),
    Row("connect: the kernel ended", up(GUEST), KeeperExited(1), at(T0), State.STOPPED,
        enter(State.STOPPED, "the kernel ended (%s)", "exit code 1") + [Exit(0)]),
    Row("connect: the kernel was shut down", up(GUEST), KeeperExited(0, "requested"), at(T0), State.STOPPED,
        enter(State.STOPPED, "the kernel ended (%s)", "requested") + [Exit(0)]),
    # -- UP: signals -------------------------------------------------------------------------------
    Row("up: SIGINT", up(), Signal(INT), at(T0), State.UP, [Log(INFO, "interrupting the kernel"), SendInterrupt()]),
    Row("up: SIGTERM", up(), Signal(TERM), at(T0), State.STOPPING,
        [SendShutdown()] + enter(State.STOPPING, "%s", "SIGTERM: shutting the kernel down")),
    Row("up: SIGHUP", up(), Signal(HUP), at(T0), State.STOPPING,
        [SendShutdown()] + enter(State.STOPPING, "%s", "SIGHUP: shutting the kernel down")),
    Row("up: SIGQUIT", up(), Signal(QUIT), at(T0), State.STOPPED, [Detach(), Exit(0)]),
    Row("up: stop during start-up", up(), StopRequested(), at(T0), State.STOPPING,
        [SendShutdown()] + enter(State.STOPPING, "%s", "stop requested during start-up")),
    *(Row(f"connect: {signal.Signals(s).name}", up(GUEST), Signal(s), at(T0), State.STOPPED,
          enter(State.STOPPED, "%s: disconnecting; the kernel keeps running", signal.Signals(s).name) + [Exit(0)])
      for s in (INT, TERM, HUP, QUIT)),
    # -- STOPPING -----------------------------------------------------------------------------------
    Row("stopping: wake at the shutdown deadline", stopping(last_heard=T0 + 8, next_ping=T0 + 11), Tick(),
        at(T0 + 9), State.STOPPING, [WaitUntil(T0 + 10)]),
    Row("stopping: still pinging", stopping(), Tick(), at(T0 + 2), State.STOPPING, [SendPing(), WaitUntil(T0 + 4)]),
    Row("stopping: shutdown deadline", stopping(last_heard=T0 + 9.5), Tick(), at(T0 + 10), State.STOPPED,
        [Log(WARNING, "the kernel did not shut down in %.0f s; leaving it to its keeper", (10.0,)), Exit(0)]),
    Row("stopping: silence", stopping(), Tick(), at(T0 + 7), State.STOPPED,
        [Close(lost=False, drain=True),
         Log(WARNING, "connection lost while stopping (%s); the keeper finishes the shutdown",
             ("no answer for 7.0 s",)),
         Exit(0)]),
    Row("stopping: session EOF", stopping(), SessionEOF(), at(T0 + 1), State.STOPPED, [Exit(0)]),
    Row("stopping: master EOF", stopping(), MasterEOF(), at(T0 + 1), State.STOPPED, [Exit(0)]),
    Row("stopping: heard", stopping(), Heard(), at(T0 + 1), State.STOPPING, [ConfirmAlive()]),
    Row("stopping: the kernel exited as asked", stopping(), KeeperExited(0, "requested"), at(T0 + 1), State.STOPPED,
        enter(State.STOPPED, "kernel exited (%s)", "exit code 0") + [Exit(0)]),
    Row("stopping: SIGINT still interrupts", stopping(), Signal(INT), at(T0), State.STOPPING,
        [Log(INFO, "interrupting the kernel"), SendInterrupt()]),
    Row("stopping: a second SIGTERM", stopping(), Signal(TERM), at(T0 + 1), State.STOPPING, []),
    Row("stopping: SIGHUP", stopping(), Signal(HUP), at(T0 + 1), State.STOPPING, []),
    Row("stopping: SIGQUIT detaches", stopping(), Signal(QUIT), at(T0 + 1), State.STOPPED, [Detach(), Exit(0)]),
    Row("stopping: stop during start-up again", stopping(), StopRequested(), at(T0 + 1), State.STOPPING, []),
    # -- RECONNECTING: one round = backoff, probe, give-up check, attempt -------------------------
    Row("reconnecting: backoff", reconnecting(retry_at=T0 + 1), Tick(), at(T0 + 0.5), State.RECONNECTING,
        [WaitUntil(T0 + 1)]),
    Row("reconnecting: probe first", reconnecting(), Tick(), at(T0), State.RECONNECTING, [AwaitReachable()]),
    Row("reconnecting: host answered", reconnecting(), Reachable(), at(T0 + 1), State.RECONNECTING, []),
    Row("reconnecting: attempt", reconnecting(probed=True), Tick(), at(T0 + 1), State.RECONNECTING, [Attempt()]),
    Row("reconnecting: no probe possible", reconnecting(NO_PROBE), Tick(), at(T0), State.RECONNECTING, [Attempt()]),
    Row("reconnecting: 660 s offline is within 30 s + 600 s + 30 s", reconnecting(probed=True), Tick(),
        at(T0 + 660), State.RECONNECTING, [Attempt()]),
    Row("reconnecting: give up past it", reconnecting(probed=True), Tick(), at(T0 + 661), State.STOPPED,
        given_up("no connection to btest for 661 s, longer than the kernel's grace period; exiting", 26),
        exc.ConnectionLostError),
    Row("reconnecting: give up after a suspend (wall clock)", reconnecting(probed=True), Tick(),
        at(T0 + 10, jump=700), State.STOPPED,
        given_up("no connection to btest for 710 s, longer than the kernel's grace period; exiting", 26),
        exc.ConnectionLostError),
    Row("reconnecting: grace 0 gives up after 60 s", reconnecting(replace(CFG, grace=0.0), probed=True), Tick(),
        at(T0 + 60.5), State.STOPPED,
        given_up("no connection to btest for 60 s, longer than the kernel's grace period; exiting", 26),
        exc.ConnectionLostError),
    Row("reconnecting: grace never never gives up", reconnecting(replace(CFG, grace=None), probed=True), Tick(),
        at(T0 + 10 ** 9), State.RECONNECTING, [Attempt()]),
    Row("reconnecting: give-up checked after the probe, not before", reconnecting(), Tick(), at(T0 + 700),
        State.RECONNECTING, [AwaitReachable()]),
    Row("reconnecting: reconnected", reconnecting(attempt=3, reconnects=1), AttemptSucceeded(), at(T0 + 12.5),
        State.UP, enter(State.UP, "reconnected after %.2f s (attempt %d, reconnect #%d)", 12.5, 3, 2)),
    Row("reconnecting: a failed attempt is abandoned first", reconnecting(attempt=1),
        AttemptFailed(Failure.NETWORK, "refused"), at(T0 + 0.5), State.RECONNECTING, [Close(lost=True)]),
    Row("reconnecting: ... then reported, and backed off", reconnecting(attempt=1, failed=REFUSED), Tick(),
        at(T0 + 0.5), State.RECONNECTING,
        [Log(INFO, "reconnect attempt %d failed after %.0f s offline: %s", (1, 0.5, "refused")),
         WaitUntil(T0 + 0.75)]),
    Row("reconnecting: auth refused is a warning every time", reconnecting(attempt=5, last_report=T0 + 9,
                                                                           failed=DENIED),
        Tick(), at(T0 + 10), State.RECONNECTING,
        [Log(WARNING, "reconnect attempt %d failed after %.0f s offline: %s", (5, 10.0, "denied")),
         WaitUntil(T0 + 10 + 4)]),
    Row("reconnecting: a repeated network failure is not reported", reconnecting(attempt=5, last_report=T0 + 1,
                                                                                 failed=REFUSED),
        Tick(), at(T0 + 10), State.RECONNECTING, [WaitUntil(T0 + 11)]),
    Row("reconnecting: ... until REPORT_EVERY has passed", reconnecting(attempt=30, last_report=T0 + 1,
                                                                        attempt_started=T0 + 29, failed=TIMED_OUT),
        Tick(), at(T0 + 31), State.RECONNECTING,
        [Log(INFO, "reconnect attempt %d failed after %.0f s offline: %s", (30, 31.0, "no answer")),
         AwaitReachable()]),
    Row("reconnecting: a timeout that took its connect timeout (with the close) is retried at once",
        reconnecting(attempt=2, attempt_started=T0, last_report=T0, failed=TIMED_OUT), Tick(), at(T0 + 1.7),
        State.RECONNECTING, [AwaitReachable()]),
    Row("reconnecting: a quick timeout backs off", reconnecting(attempt=2, attempt_started=T0, last_report=T0,
                                                                failed=TIMED_OUT),
        Tick(), at(T0 + 1.5), State.RECONNECTING, [WaitUntil(T0 + 1.5 + 0.5)]),
    Row("reconnecting: keeper gone", reconnecting(attempt=2), KernelGone(GONE), at(T0 + 20), State.STOPPED,
        given_up("the remote kernel on btest is gone; exiting so that Jupyter starts a new kernel\n"
                 "  detail: no keeper at the socket", 1),
        exc.KernelGoneError),
    Row("reconnecting: attempt aborted by a stop signal", reconnecting(attempt=1), AttemptCancelled(), at(T0 + 1),
        State.STOPPED, enter(State.STOPPED, "stopped while reconnecting; the remote kernel is shut down by its "
                             "keeper when the grace period ends") + [Exit(0)]),
    Row("reconnecting: SIGINT is kept for the reconnect", reconnecting(), Signal(INT), at(T0 + 1), State.RECONNECTING,
        [Log(WARNING, OFFLINE_INTERRUPT)]),
    Row("reconnecting: a second SIGINT adds nothing", reconnecting(interrupt_pending=True), Signal(INT), at(T0 + 1),
        State.RECONNECTING, []),
    Row("reconnecting: the attempt interrupts first", reconnecting(probed=True, interrupt_pending=True), Tick(),
        at(T0 + 1), State.RECONNECTING, [Attempt(interrupt_first=True)]),
    Row("reconnecting: reconnected, interrupted", reconnecting(attempt=1, interrupt_pending=True), AttemptSucceeded(),
        at(T0 + 2), State.UP, enter(State.UP, "reconnected after %.2f s (attempt %d, reconnect #%d)", 2.0, 1, 1)
        + [Log(INFO, "interrupted the kernel as asked during the outage, before the channels resumed")]),
    *(Row(f"reconnecting: {signal.Signals(s).name}", reconnecting(config), Signal(s), at(T0 + 1), State.STOPPED,
          enter(State.STOPPED, RECONNECTING_STOP, signal.Signals(s).name) + [Exit(0)])
      for s in (TERM, HUP, QUIT) for config in (CFG, GUEST)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_row(row: Row) -> None:
    status, actions = p.step(row.status, row.event, row.now)
    assert status.state is row.state
    assert actions == row.actions
    _check_invariants(row.status, status, actions)
    error = actions[-1].error if actions and isinstance(actions[-1], Exit) else None
    if row.error is None:
        assert error is None
    else:
        assert type(error) is row.error and error.exit_code == actions[-1].code and error.host == "btest"
        assert "stopped: " + str(error) == actions[0].message % actions[0].args


def _check_invariants(before: Status, after: Status, actions: List[p.Action]) -> None:
    exits = [a for a in actions if isinstance(a, Exit)]
    assert len(exits) <= 1 and (not exits or actions[-1] is exits[0]), "Exit comes last"
    assert (after.state is State.STOPPED) == bool(exits) or before.state is State.STOPPED
    if after.state is not before.state and after.state is not State.STOPPED:
        assert Notify() in actions, "a transition is published"
    waits = [a for a in actions if isinstance(a, (WaitUntil, AwaitReachable, Attempt))]
    assert len(waits) <= 1 and (not waits or actions[-1] is waits[0])
    assert after.config == before.config


# -- every state x every event --------------------------------------------------------------------
EVENTS = [Tick(), Heard(), KeeperExited(0), KeeperExited(1), SessionEOF(), MasterEOF(), Signal(INT), Signal(TERM),
          Signal(HUP), Signal(QUIT), StopRequested(), Reachable(), AttemptSucceeded(),
          AttemptFailed(Failure.TIMEOUT, "t"), AttemptFailed(Failure.NETWORK, "n"), AttemptFailed(Failure.OTHER, "o"),
          KernelGone(exc.KernelGoneError("gone", host="btest")), AttemptCancelled(), NetworkChanged("link 3 up")]
STATES = {"up": up(), "stopping": stopping(), "reconnecting": reconnecting(attempt=1), "stopped": stopped(),
          "connect-up": up(GUEST), "connect-reconnecting": reconnecting(GUEST, attempt=1)}
#: Events a state does not expect leave it as it is, with nothing to do.
_ATTEMPT_OUTCOMES = (Reachable, AttemptSucceeded, AttemptFailed, KernelGone, AttemptCancelled)
_SESSION = (Heard, KeeperExited, SessionEOF, MasterEOF, StopRequested)


def ignored(state: str, event: p.Event) -> bool:
    if state == "stopped" or isinstance(event, NetworkChanged):  # none of STATES is in a backoff
        return True
    if state.endswith("reconnecting"):
        return isinstance(event, _SESSION)
    if state == "stopping" and (isinstance(event, StopRequested) or event in (Signal(TERM), Signal(HUP))):
        return True
    return isinstance(event, _ATTEMPT_OUTCOMES)


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_every_state_and_event(state: str, event: p.Event) -> None:
    before = STATES[state]
    after, actions = p.step(before, event, at(T0 + 1))
    _check_invariants(before, after, actions)
    if ignored(state, event):
        assert (after, actions) == (before, [])
    else:
        assert after != before or actions


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_connecting_is_not_the_supervisors(event: p.Event) -> None:
    with pytest.raises(ValueError):
        p.step(replace(up(), state=State.CONNECTING), event, at(T0))


@pytest.mark.parametrize("status", [up(), stopping(), reconnecting()], ids=["up", "stopping", "reconnecting"])
@pytest.mark.parametrize("signum", [TERM, HUP])
def test_a_stop_signal_ends_every_state_at_once_or_starts_the_shutdown(status: Status, signum: int) -> None:
    after, actions = p.step(status, Signal(signum), at(T0 + 1))
    if status.state is State.UP:
        assert after.state is State.STOPPING and actions[0] == SendShutdown()
        assert after.shutdown_deadline == T0 + 1 + p.SHUTDOWN_TIMEOUT
    elif status.state is State.STOPPING:
        assert after == status and actions == []  # the shutdown is already under way
    else:
        assert after.state is State.STOPPED and actions[-1] == Exit(0)


# -- sequences ------------------------------------------------------------------------------------
class Driver:
    """Runs the policy as the supervisor does, with a scripted world: the clock only moves when
    the policy waits (or an attempt takes ``attempt_takes`` seconds)."""

    def __init__(self, status: Status, *, now: Now) -> None:
        self.status, self.now = status, now
        self.log: List[Tuple[float, p.Action]] = []

    def step(self, event: p.Event) -> List[p.Action]:
        self.status, actions = p.step(self.status, event, self.now)
        self.log += [(self.now.mono, a) for a in actions]
        return actions

    def advance(self, seconds: float) -> None:
        self.now = Now(self.now.mono + seconds, self.now.wall + seconds)

    def attempts(self, outcome: p.Event, *, attempt_takes: float = 0.0, until: float = 1e9) -> Optional[int]:
        """Reconnect rounds, each failing with ``outcome``, until an exit or ``until`` (monotonic)."""
        while self.now.mono < until:
            actions = self.step(Tick())
            last = actions[-1] if actions else None
            if isinstance(last, Exit):
                return last.code
            if isinstance(last, WaitUntil):
                self.advance(last.at - self.now.mono)
            elif isinstance(last, AwaitReachable):
                self.step(Reachable())
            else:
                assert isinstance(last, Attempt), actions
                self.advance(attempt_takes)
                self.step(outcome)
        return None

    def delays(self) -> List[float]:
        """Time from each failure to the next attempt."""
        times = [t for t, a in self.log if isinstance(a, Attempt)]
        return [round(b - a, 3) for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("failure, delays", [
    (Failure.NETWORK, [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]),
    (Failure.OTHER, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
])
def test_backoff_grows_to_its_cap(failure: Failure, delays: List[float]) -> None:
    d = Driver(reconnecting(), now=at(T0))
    d.attempts(AttemptFailed(failure, "x"), until=T0 + sum(delays) + 0.1)
    assert d.delays()[:len(delays)] == delays


def test_an_attempt_that_waited_out_its_connect_timeout_is_retried_at_once() -> None:
    d = Driver(reconnecting(), now=at(T0))
    d.attempts(AttemptFailed(Failure.TIMEOUT, "no answer"), attempt_takes=p.RECONNECT_CONNECT_TIMEOUT, until=T0 + 20)
    assert set(d.delays()) == {p.RECONNECT_CONNECT_TIMEOUT}  # one SYN about every 2 s, no backoff on top


def test_a_quick_timeout_backs_off_as_a_network_failure() -> None:
    d = Driver(reconnecting(), now=at(T0))
    d.attempts(AttemptFailed(Failure.TIMEOUT, "no route"), attempt_takes=0.1, until=T0 + 10)
    assert d.delays()[:4] == [0.35, 0.6, 1.1, 1.1]


def test_a_failing_reconnect_is_reported_first_then_every_30_s() -> None:
    d = Driver(reconnecting(), now=at(T0))
    d.attempts(AttemptFailed(Failure.NETWORK, "refused"), until=T0 + 95)
    reported = [t - T0 for t, a in d.log if isinstance(a, Log)]
    assert reported[0] == 0.0
    gaps = [b - a for a, b in zip(reported, reported[1:])]
    assert len(gaps) == 3 and all(p.REPORT_EVERY <= g <= p.REPORT_EVERY + 1 for g in gaps), gaps


@pytest.mark.parametrize("grace, gives_up_after", [(0.0, 60.0), (600.0, 660.0), (3600.0, 3660.0), (None, None)])
def test_the_proxy_gives_up_once_the_keeper_has_surely_ended_the_kernel(grace, gives_up_after) -> None:
    d = Driver(reconnecting(replace(CFG, grace=grace)), now=at(T0))
    code = d.attempts(AttemptFailed(Failure.TIMEOUT, "no answer"), attempt_takes=2.0, until=T0 + 4000)
    if gives_up_after is None:
        assert code is None and d.status.state is State.RECONNECTING
        return
    assert code == exc.ConnectionLostError.exit_code == 26
    offline = d.now.wall - (T0 + OFFSET)
    assert gives_up_after < offline <= gives_up_after + 2.0  # at the first round past it
    assert d.status.give_up_at() == T0 + OFFSET + kernel_kept_for(grace, 30.0) + p.GIVE_UP_MARGIN


def test_a_suspend_is_noticed_within_3_s() -> None:
    d = Driver(up(), now=at(T0))
    d.now = at(T0 + 1, jump=3600)  # the lid was closed for an hour
    assert isinstance(d.step(Tick())[-1], WaitUntil)
    d.now = at(T0 + 4.1, jump=3600)
    d.step(Tick())
    assert d.status.state is State.RECONNECTING
    assert d.log[-2][1].args[2] == "no answer for 6.1 s"


def test_a_reconnect_starts_a_fresh_loss_clock() -> None:
    d = Driver(reconnecting(probed=True), now=at(T0 + 30, jump=40))
    d.step(Tick())
    d.step(AttemptSucceeded())
    assert d.status.state is State.UP and d.status.reconnects == 1
    assert d.step(Tick()) == [WaitUntil(T0 + 32)]  # no suspend seen, nothing lost, ping in 2 s


def test_the_keeper_silence_and_grace_formula() -> None:
    assert kernel_kept_for(0.0, 30.0) == 30.0
    assert kernel_kept_for(600.0, 30.0) == 630.0
    assert kernel_kept_for(None, 30.0) is None


@pytest.mark.parametrize("error, failure", [
    (exc.ConnectionTimeoutError("t"), Failure.TIMEOUT),
    (exc.SSHConnectionRefusedError("r"), Failure.NETWORK),
    (exc.HostNotFoundError("h"), Failure.NETWORK),
    (exc.ConnectionLostError("l"), Failure.NETWORK),
    (exc.AuthenticationError("a"), Failure.OTHER),
    (exc.HostKeyError("k"), Failure.OTHER),
    (exc.TunnelError("busy port"), Failure.OTHER),
    (exc.RemoteError("r"), Failure.OTHER),
])
def test_failure_kinds(error: exc.SSHKernelError, failure: Failure) -> None:
    assert p.failure_of(error) is failure


# -- hosts that need a person to log in (issue 15) ---------------------------------------------------
NEEDS_LOGIN = AttemptFailed(Failure.LOGIN, "logging in to btest needs a password ... Run `ssh-ipykernel login btest`")
WAITING = "waiting for login"


def waiting(config: Config = CFG, **fields: object) -> Status:
    return replace(reconnecting(config, attempt=2), state=State.WAITING_FOR_LOGIN, **fields)


def test_a_login_prompt_is_its_own_failure() -> None:
    assert p.failure_of(exc.LoginRequiredError("needs a person", host="btest")) is Failure.LOGIN
    assert p.failure_of(exc.AuthenticationError("refused", host="btest")) is Failure.OTHER


def test_an_attempt_that_meets_a_login_prompt_waits_for_the_login_with_one_line() -> None:
    status, actions = p.step(reconnecting(attempt=1), NEEDS_LOGIN, at(T0 + 3))
    assert status.state is State.WAITING_FOR_LOGIN
    assert actions == [Close(lost=True),
                       Log(WARNING, "%s: %s; the kernel is kept %s and reattaches as soon as somebody logs in",
                           (WAITING, NEEDS_LOGIN.error, "up to 600 s")),
                       Notify()]
    # No retry, no backoff, no more lines: the next turns only wait for the login.
    for t in (T0 + 4, T0 + 70, T0 + 130):
        status, actions = p.step(status, Tick(), at(t))
        assert actions == [p.AwaitLogin(t + p.LOGIN_TICK)]
        assert status.state is State.WAITING_FOR_LOGIN


def test_waiting_for_a_login_is_bounded_by_the_grace_period() -> None:
    give_up = waiting().give_up_at()
    assert give_up is not None
    near = give_up - OFFSET - 10  # monotonic time 10 s before the give-up
    assert p.step(waiting(), Tick(), at(near))[1] == [p.AwaitLogin(near + 10)]
    status, actions = p.step(waiting(), Tick(), at(give_up - OFFSET + 1))
    assert status.state is State.STOPPED
    assert actions[-1] == Exit(exc.ConnectionLostError.exit_code)
    assert "longer than the kernel's grace period" in actions[0].args[1]


def test_waiting_for_a_login_without_a_grace_period_waits_in_turns() -> None:
    forever = replace(CFG, grace=None)
    assert p.step(waiting(forever), Tick(), at(T0 + 99999))[1] == [p.AwaitLogin(T0 + 99999 + p.LOGIN_TICK)]


def test_a_login_is_followed_by_an_attempt_at_once() -> None:
    status, actions = p.step(waiting(), p.LoggedIn(0.05), at(T0 + 40))
    assert status.state is State.RECONNECTING
    assert actions == enter(State.RECONNECTING, "logged in to %s (noticed %.3f s after the login); reattaching",
                            "btest", 0.05)
    status, actions = p.step(status, Tick(), at(T0 + 40.01))
    assert actions == [Attempt()]  # no backoff, no reachability wait: the login just reached the host
    status, actions = p.step(status, AttemptSucceeded(), at(T0 + 41))
    assert status.state is State.UP and status.reconnects == 1


@pytest.mark.parametrize("signum", [TERM, HUP])
def test_a_stop_signal_while_waiting_for_a_login_leaves_the_kernel_to_its_keeper(signum: int) -> None:
    status, actions = p.step(waiting(), Signal(signum), at(T0 + 5))
    assert status.state is State.STOPPED and actions[-1] == Exit(0)


def test_an_interrupt_while_waiting_for_a_login_is_kept_for_the_reconnect() -> None:
    status, actions = p.step(waiting(), Signal(INT), at(T0 + 5))
    assert status.state is State.WAITING_FOR_LOGIN and status.interrupt_pending
    assert actions == [Log(WARNING, OFFLINE_INTERRUPT)]


@pytest.mark.parametrize("event", [Heard(), SessionEOF(), MasterEOF(), Reachable(), AttemptSucceeded(), TIMED_OUT])
def test_waiting_for_a_login_ignores_what_it_does_not_expect(event: p.Event) -> None:
    assert p.step(waiting(), event, at(T0 + 5)) == (waiting(), [])


# -- network changes (netwatch.py) ------------------------------------------------------------------
DEBUG = logging.DEBUG


def backing_off(failure: AttemptFailed, attempt: int = 3) -> Tuple[Status, float]:
    """RECONNECTING after attempt ``attempt`` failed with ``failure`` (settled at T0 + 1): the
    status, waiting, and the time it waits for."""
    status = reconnecting(attempt=attempt, failed=failure, attempt_started=T0 + 0.9)
    status, actions = p.step(status, Tick(), at(T0 + 1))
    assert isinstance(actions[-1], WaitUntil) and actions[-1].at > T0 + 1
    return status, actions[-1].at


@pytest.mark.parametrize("failure", [REFUSED, TIMED_OUT], ids=["refused", "timed out quickly"])
def test_a_network_change_ends_a_network_backoff(failure: AttemptFailed) -> None:
    status, until = backing_off(failure)
    after, actions = p.step(status, NetworkChanged("link 3 up"), at(T0 + 1.1))
    assert after.retry_at == T0 + 1.1
    assert actions == [Log(DEBUG, "network changed (%s): trying again now instead of in %.2f s",
                           ("link 3 up", until - (T0 + 1.1)))]
    # the next step comes at once: probe the host (then attempt)
    assert p.step(after, Tick(), at(T0 + 1.1))[1] == [AwaitReachable()]


def test_a_network_change_keeps_the_backoff_of_a_failure_that_is_not_the_networks() -> None:
    status, until = backing_off(DENIED)  # authentication refused: a new network does not fix it
    assert p.step(status, NetworkChanged("route added"), at(T0 + 1.1)) == (status, [])
    assert p.step(status, Tick(), at(T0 + 1.1))[1] == [WaitUntil(until)]


def test_a_network_change_when_nothing_waits_changes_nothing() -> None:
    status = reconnecting(attempt=1)  # due now: probing or attempting anyway
    assert p.step(status, NetworkChanged(), at(T0 + 1)) == (status, [])
    for serving in (up(), stopping()):
        assert p.step(serving, NetworkChanged("link 3 up"), at(T0 + 1)) == (serving, [])


def test_a_new_loss_backs_off_for_the_network_again() -> None:
    status, _ = backing_off(DENIED)
    status = replace(up(), reconnects=1, backoff_network=status.backoff_network)
    lost, _ = p.step(status, SessionEOF(), at(T0 + 50))
    assert lost.backoff_network


def test_the_link_coming_back_mid_backoff_means_an_attempt_within_no_time() -> None:
    """Refused at the 1 s cap for a while (the route is gone), then the link comes up 0.1 s
    into a wait: the next attempt follows the probe, not the rest of the second."""
    d = Driver(reconnecting(), now=at(T0))
    d.attempts(REFUSED, until=T0 + 5)
    actions = d.step(Tick())
    while not isinstance(actions[-1], WaitUntil):  # on to the next failure's backoff
        d.step(Reachable() if isinstance(actions[-1], AwaitReachable) else REFUSED)
        actions = d.step(Tick())
    assert actions[-1].at - d.now.mono == p.BACKOFF_CAP_NETWORK
    d.advance(0.1)
    d.step(NetworkChanged("link 3 up"))
    assert d.step(Tick()) == [AwaitReachable()]
    d.step(Reachable())
    assert d.step(Tick())[-1] == Attempt()
