"""The supervisor's policy: what to do next, as a pure function of its state and an event.

``step(status, event, now) -> (new status, actions)``. Nothing here reads a clock, touches a
descriptor or logs: the time comes in as ``now`` (monotonic and wall clock), and what should
happen goes out as data (actions), which supervisor.py performs in order. So every transition
below is unit tested without a network (tests/unit/test_policy.py).

States (the proxy's start-up, before the supervisor, is CONNECTING)::

    UP -> RECONNECTING -> UP -> ... -> STOPPING -> STOPPED
                       \\-> STOPPED (stop signal, keeper gone, offline past the grace period)
          RECONNECTING -> WAITING_FOR_LOGIN -> RECONNECTING (a new connection needs a person)

While UP (and STOPPING) the supervisor's select loop reports what it sees: data from the
keeper's session (Heard), the kernel's end (KeeperExited), end-of-file of the session or of the
connection (SessionEOF, MasterEOF), signals, and a Tick after every wake-up; the policy answers
with pings, loss detection, the shutdown deadline and when to wake up next. While RECONNECTING
each Tick asks for the next step of a round: settle the last attempt's failure (backoff,
report), wait out the backoff, wait for the host to answer a TCP connect (when it can be
probed), give up if the keeper has surely ended the kernel, else make an attempt, whose outcome
is the next event.

On a host whose login needs a person (a password, a one-time code) an attempt that meets the
login prompt (Failure.LOGIN) is not retried: WAITING_FOR_LOGIN says once what to run
(``ssh-ipykernel login``) and waits for the login (AwaitLogin) within the grace period; the
login (LoggedIn) is followed by an attempt at once. A change of the local network (NetworkChanged: a link up, an address or a
route added) ends a backoff earned by a network failure, so the next step comes at once.
"""
from __future__ import annotations

import enum
import logging
import signal
from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple, Union

from . import exceptions as exc
from .remote.protocol import kernel_kept_for
from .state import State  # noqa: F401 - the policy's states (defined there, light for the proxy's start)

#: How long the keeper gets to shut the kernel down after SIGTERM before we cut the session.
SHUTDOWN_TIMEOUT = 10.0
#: The proxy pings the keeper this often ...
PING_INTERVAL = 2.0
#: ... and declares the connection lost after this much silence.
LOSS_TIMEOUT = 6.0
#: After a suspend the connection is checked with this much less patience (a 3 s deadline).
SUSPEND_LOSS_TIMEOUT = 3.0
#: ssh ConnectTimeout of a reconnect attempt: short, so that SYNs keep going out.
RECONNECT_CONNECT_TIMEOUT = 2.0
#: Backoff between attempts that failed fast: first delay, and caps by kind of failure.
BACKOFF_FIRST = 0.25
BACKOFF_CAP_NETWORK = 1.0
BACKOFF_CAP_OTHER = 30.0
#: A still-failing reconnect is reported this often (the first failure is always reported).
REPORT_EVERY = 30.0
#: A jump of the wall clock against the monotonic one this large means we were suspended.
SUSPEND_JUMP = 5.0
#: A wait for a login wakes up at least this often (the give-up clock is the wall clock, which a
#: suspend moves).
LOGIN_TICK = 60.0
#: Past the keeper's own limit (protocol.kernel_kept_for): its tick, its shutdown ladder and
#: the two hosts' clocks.
GIVE_UP_MARGIN = 30.0


class Failure(enum.Enum):
    """What kind of failure a reconnect attempt met: it decides the backoff."""

    TIMEOUT = "timeout"  # the host did not answer: no backoff if the attempt itself waited
    NETWORK = "network"  # failed fast: refused, unresolvable, dropped (backoff up to 1 s)
    OTHER = "other"  # host key, authentication, a busy local port (backoff up to 30 s, warned)
    LOGIN = "login"  # a new connection needs a person: wait for `ssh-ipykernel login`, no retries


def failure_of(error: exc.SSHKernelError) -> Failure:
    """The kind of a reconnect attempt's error."""
    if isinstance(error, exc.LoginRequiredError):
        return Failure.LOGIN
    if isinstance(error, exc.ConnectionTimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, (exc.HostNotFoundError, exc.SSHConnectionRefusedError, exc.ConnectionLostError)):
        return Failure.NETWORK
    return Failure.OTHER


@dataclass(frozen=True)
class Now:
    """Both clocks, read once by the caller: ``mono`` for timers, ``wall`` for the give-up
    clock (a suspended laptop's sleep counts, as it does on the remote) and suspend detection."""

    mono: float
    wall: float


@dataclass(frozen=True)
class Config:
    """What the policy needs to know of the proxy: fixed for its life."""

    host: str  # for the log lines
    grace: Optional[float]  # the keeper's grace period; None: never ends the kernel
    client_timeout: float  # the keeper's silence limit for a client
    owns_kernel: bool = True  # False for `ssh-ipykernel connect`: stop signals only disconnect
    can_probe: bool = True  # the host can be probed with a TCP connect while the network is down


@dataclass(frozen=True)
class Status:
    """The supervisor's state; see ``initial`` and ``step``. Times are monotonic unless named wall."""

    config: Config
    state: State
    reconnects: int = 0
    # UP / STOPPING
    last_heard: float = 0.0
    next_ping: float = 0.0
    clock_offset: float = 0.0  # wall - monotonic when last looked at
    shutdown_deadline: Optional[float] = None
    # RECONNECTING
    lost_at: float = 0.0
    lost_wall: float = 0.0
    attempt: int = 0
    retry_at: float = 0.0  # no attempt before this
    probed: bool = False  # this round has waited for the host to answer
    attempt_started: float = 0.0
    failed: Optional["AttemptFailed"] = None  # the last attempt's failure, settled at the next Tick
    backoff_network: bool = True  # the backoff until retry_at is for a network failure (NetworkChanged ends it)
    last_report: float = 0.0
    interrupt_pending: bool = False  # SIGINT came while the connection was down: sent once it is back

    def give_up_at(self) -> Optional[float]:
        """Wall-clock time after which the keeper has surely ended the kernel (None: never)."""
        kept = kernel_kept_for(self.config.grace, self.config.client_timeout)
        return None if kept is None else self.lost_wall + kept + GIVE_UP_MARGIN


# -- events ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """Time passed (the loop woke up): timers are checked; RECONNECTING: the next step."""


@dataclass(frozen=True)
class Heard:
    """The keeper's session said something (any event, a pong included)."""


@dataclass(frozen=True)
class KeeperExited:
    """The keeper's ``exited`` event: the kernel ended."""

    returncode: object
    reason: object = None


@dataclass(frozen=True)
class SessionEOF:
    """The keeper's session ended (sshd dropped it, the connection died)."""


@dataclass(frozen=True)
class MasterEOF:
    """The connection itself ended (the ssh master exited, paramiko's transport thread ended)."""


@dataclass(frozen=True)
class Signal:
    """SIGINT, SIGTERM, SIGHUP or SIGQUIT reached the proxy."""

    signum: int


@dataclass(frozen=True)
class StopRequested:
    """A stop signal arrived during start-up, before the supervisor ran."""

    why: str = "stop requested during start-up"


@dataclass(frozen=True)
class Reachable:
    """The wait for the host to answer a TCP connect ended (it answered, or long enough)."""


@dataclass(frozen=True)
class AttemptSucceeded:
    """Connected, forwarding and attached to the same keeper again."""


@dataclass(frozen=True)
class AttemptFailed:
    failure: Failure
    error: str


@dataclass(frozen=True)
class KernelGone:
    """The attempt reached the host, but no keeper answers: the kernel has ended."""

    error: exc.KernelGoneError


@dataclass(frozen=True)
class LoggedIn:
    """Somebody logged in (``ssh-ipykernel login``): the host's connection is up again."""

    noticed: float = 0.0  # seconds between the login and this proxy noticing it


@dataclass(frozen=True)
class AttemptCancelled:
    """A stop signal aborted the attempt in the middle (SIGTERM/SIGHUP raise in it)."""


@dataclass(frozen=True)
class NetworkChanged:
    """The local network changed in a way that may bring the host back (netwatch.py: a link
    up, an address or a route added or removed). Heard while RECONNECTING only."""

    what: str = ""


Event = Union[Tick, Heard, KeeperExited, SessionEOF, MasterEOF, Signal, StopRequested, Reachable,
              AttemptSucceeded, AttemptFailed, KernelGone, AttemptCancelled, LoggedIn, NetworkChanged]


# -- actions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendPing:
    pass


@dataclass(frozen=True)
class SendInterrupt:
    pass


@dataclass(frozen=True)
class SendShutdown:
    pass


@dataclass(frozen=True)
class Detach:
    """Tell the keeper we leave for good, and log how to reattach (that line needs the
    session's details, so the supervisor writes it; it is the transition to STOPPED)."""


@dataclass(frozen=True)
class ConfirmAlive:
    """Tell the transport the connection was just heard through (transport.confirm_alive)."""


@dataclass(frozen=True)
class Close:
    """End the session, the forwards and our hold on the connection; ``lost``: the connection
    may be dead (close(lost=True) ends it if it does not answer). ``drain``: read what the
    connection has to say first; it fills DETAIL in the next Log."""

    lost: bool
    drain: bool = False


@dataclass(frozen=True)
class WaitUntil:
    """Sleep (still answering signals and, while UP, the session) until this monotonic time."""

    at: float


@dataclass(frozen=True)
class AwaitReachable:
    """Wait until the host answers a TCP connect (reachability.py); then report Reachable."""


@dataclass(frozen=True)
class AwaitLogin:
    """Wait until somebody logs in (then report LoggedIn), a stop signal, or ``until``
    (monotonic; then Tick). Never makes a connection itself."""

    until: float


@dataclass(frozen=True)
class Attempt:
    """Try to reconnect; stop signals abort it. Report its outcome. ``interrupt_first``: once
    the keeper is reached, interrupt the kernel before the channels resume (an interrupt asked
    for during the outage is for what ran then, not for a request queued meanwhile)."""

    interrupt_first: bool = False


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    args: Tuple[object, ...] = ()


@dataclass(frozen=True)
class Notify:
    """The state changed: publish it (the state file of `ssh-ipykernel status`)."""


@dataclass(frozen=True)
class Exit:
    """Stop serving with this exit code; ``error``: why the kernel is given up, if it is (the
    proxy records it)."""

    code: int
    error: Optional[exc.SSHKernelError] = field(default=None, compare=False)


Action = Union[SendPing, SendInterrupt, SendShutdown, Detach, ConfirmAlive, Close, WaitUntil,
               AwaitReachable, AwaitLogin, Attempt, Log, Notify, Exit]

@dataclass(frozen=True)
class Detail:
    """In a Log's args: ": <what the connection said>" (read by the Close(drain=True) before
    it), or "" if it said nothing. Only the I/O side can know it."""


DETAIL = Detail()


def initial(config: Config, now: Now) -> Status:
    """The state once the kernel is up and forwarded."""
    return _up(Status(config=config, state=State.UP), now)


def step(status: Status, event: Event, now: Now) -> Tuple[Status, List[Action]]:
    """The new state and what to do, in order. Events a state does not expect change nothing."""
    if status.state is State.CONNECTING:
        msg = "the supervisor starts once the kernel is up"
        raise ValueError(msg)
    if status.state is State.STOPPED:
        return status, []
    if status.state is State.WAITING_FOR_LOGIN:
        return _waiting_for_login(status, event, now)
    if status.state is State.RECONNECTING:
        return _reconnecting(status, event, now)
    return _serving(status, event, now)


# -- UP / STOPPING ---------------------------------------------------------------------------------
def _serving(s: Status, event: Event, now: Now) -> Tuple[Status, List[Action]]:
    stopping = s.state is State.STOPPING
    if isinstance(event, Tick):
        return _tick(s, now)
    if isinstance(event, Heard):
        return replace(s, last_heard=now.mono), [ConfirmAlive()]
    if isinstance(event, KeeperExited):
        return _exited(s, event)
    if isinstance(event, (SessionEOF, MasterEOF)):
        if stopping:
            return replace(s, state=State.STOPPED), [Exit(0)]
        why = "the SSH session ended" if isinstance(event, SessionEOF) else "the SSH connection ended"
        return _lost(s, why, now)
    if isinstance(event, Signal):
        return _signal(s, event.signum, now)
    if isinstance(event, StopRequested) and not stopping:
        return _begin_stop(s, event.why, now)
    return s, []


def _tick(s: Status, now: Now) -> Tuple[Status, List[Action]]:
    actions: List[Action] = []
    last_heard, next_ping = s.last_heard, s.next_ping
    offset = now.wall - now.mono
    if offset - s.clock_offset > SUSPEND_JUMP:
        # Back from a suspend: the connection may be long dead. Ask now, and do not wait the
        # full loss timeout for the answer.
        actions.append(Log(logging.INFO, "clock jumped %.0f s (suspended?); checking the connection",
                           (offset - s.clock_offset,)))
        last_heard = min(last_heard, now.mono - LOSS_TIMEOUT + SUSPEND_LOSS_TIMEOUT)
        next_ping = now.mono
    s = replace(s, clock_offset=offset, last_heard=last_heard, next_ping=next_ping)
    if s.shutdown_deadline is not None and now.mono >= s.shutdown_deadline:
        actions += [Log(logging.WARNING, "the kernel did not shut down in %.0f s; leaving it to its keeper",
                        (SHUTDOWN_TIMEOUT,)), Exit(0)]
        return replace(s, state=State.STOPPED), actions
    if now.mono - last_heard > LOSS_TIMEOUT:
        s, more = _lost(s, f"no answer for {now.mono - last_heard:.1f} s", now)
        return s, actions + more
    if now.mono >= next_ping:
        actions.append(SendPing())
        next_ping = now.mono + PING_INTERVAL
        s = replace(s, next_ping=next_ping)
    wake = min(next_ping, last_heard + LOSS_TIMEOUT, s.shutdown_deadline or next_ping)
    actions.append(WaitUntil(wake))
    return s, actions


def _signal(s: Status, signum: int, now: Now) -> Tuple[Status, List[Action]]:
    name = signal.Signals(signum).name
    if not s.config.owns_kernel:
        return _enter(s, State.STOPPED, "%s: disconnecting; the kernel keeps running", name, after=(Exit(0),))
    if signum == signal.SIGINT:
        return s, [Log(logging.INFO, "interrupting the kernel"), SendInterrupt()]
    if signum == signal.SIGQUIT:
        return replace(s, state=State.STOPPED), [Detach(), Exit(0)]
    if s.state is State.STOPPING:
        return s, []
    return _begin_stop(s, f"{name}: shutting the kernel down", now)


def _begin_stop(s: Status, why: str, now: Now) -> Tuple[Status, List[Action]]:
    s = replace(s, shutdown_deadline=now.mono + SHUTDOWN_TIMEOUT)
    return _enter(s, State.STOPPING, "%s", why, before=(SendShutdown(),))


def _exited(s: Status, event: KeeperExited) -> Tuple[Status, List[Action]]:
    returncode, reason = event.returncode, event.reason
    if not s.config.owns_kernel:
        return _enter(s, State.STOPPED, "the kernel ended (%s)", reason or f"exit code {returncode}", after=(Exit(0),))
    if returncode == 0 or reason in ("requested", "terminated"):
        return _enter(s, State.STOPPED, "kernel exited (%s)",
                      f"exit code {returncode}" if returncode == 0 else reason, after=(Exit(0),))
    how = (
        f"killed by signal {-returncode}" if isinstance(returncode, int) and returncode < 0
        else f"exit code {returncode}"
    )
    return _give_up(s, exc.KernelDiedError(f"the remote kernel died ({how}); exiting so that Jupyter restarts it",
                                           host=s.config.host))


def _lost(s: Status, why: str, now: Now) -> Tuple[Status, List[Action]]:
    s = replace(s, lost_at=now.mono, lost_wall=now.wall)
    if s.state is State.STOPPING:
        return replace(s, state=State.STOPPED), [
            Close(lost=False, drain=True),
            Log(logging.WARNING, "connection lost while stopping (%s); the keeper finishes the shutdown", (why,)),
            Exit(0),
        ]
    grace = s.config.grace
    kept = "as long as it takes" if grace is None else f"up to {grace:.0f} s"
    s = replace(s, attempt=0, retry_at=now.mono, probed=False, last_report=0.0, backoff_network=True)
    return _enter(s, State.RECONNECTING, "connection to %s lost (%s%s); reconnecting, the kernel is kept %s",
                  s.config.host, why, DETAIL, kept, level=logging.WARNING, before=(Close(lost=True, drain=True),))


# -- RECONNECTING ----------------------------------------------------------------------------------
def _reconnecting(s: Status, event: Event, now: Now) -> Tuple[Status, List[Action]]:
    if isinstance(event, Tick):
        return _next_attempt(s, now)
    if isinstance(event, Reachable):
        return replace(s, probed=True), []
    if isinstance(event, NetworkChanged):
        return _network_changed(s, event, now)
    if isinstance(event, AttemptSucceeded):
        interrupted = s.interrupt_pending
        s = _up(replace(s, reconnects=s.reconnects + 1, interrupt_pending=False), now)
        s, actions = _enter(s, State.UP, "reconnected after %.2f s (attempt %d, reconnect #%d)",
                            now.mono - s.lost_at, s.attempt, s.reconnects)
        if interrupted:
            actions.append(Log(logging.INFO, "interrupted the kernel as asked during the outage, before the "
                                             "channels resumed"))
        return s, actions
    if isinstance(event, AttemptFailed) and event.failure is Failure.LOGIN:
        grace = s.config.grace
        kept = "as long as it takes" if grace is None else f"up to {grace:.0f} s"
        return _enter(replace(s, failed=None), State.WAITING_FOR_LOGIN,
                      "%s; the kernel is kept %s and reattaches as soon as somebody logs in", event.error, kept,
                      level=logging.WARNING, before=(Close(lost=True),))
    if isinstance(event, AttemptFailed):
        # A connection that let the attempt fail is not joined again. Settled at the next Tick,
        # after the close (which may wait for the connection's answer).
        return replace(s, failed=event), [Close(lost=True)]
    if isinstance(event, KernelGone):
        e = event.error
        return _give_up(s, exc.KernelGoneError(f"{e.message}; exiting so that Jupyter starts a new kernel",
                                               host=e.host, detail=e.detail, detail_label=e.detail_label))
    if isinstance(event, AttemptCancelled):
        return _enter(s, State.STOPPED, "stopped while reconnecting; the remote kernel is shut down by "
                      "its keeper when the grace period ends", after=(Exit(0),))
    if isinstance(event, Signal):
        if event.signum == signal.SIGINT:
            if s.interrupt_pending:
                return s, []
            return replace(s, interrupt_pending=True), [Log(
                logging.WARNING, "interrupt asked for while the connection is down: the kernel is interrupted "
                "as soon as the connection is back, before anything sent meanwhile reaches it")]
        return _enter(s, State.STOPPED, "%s while reconnecting; the remote kernel is shut down "
                      "by its keeper when the grace period ends", signal.Signals(event.signum).name,
                      after=(Exit(0),))
    return s, []


def _next_attempt(s: Status, now: Now) -> Tuple[Status, List[Action]]:
    actions: List[Action] = []
    if s.failed is not None:
        s, actions = _settle(s, s.failed, now)
    if now.mono < s.retry_at:
        return s, actions + [WaitUntil(s.retry_at)]
    if s.config.can_probe and not s.probed:
        return s, actions + [AwaitReachable()]
    if _past_grace(s, now):
        return _offline_too_long(s, now)
    return (replace(s, attempt=s.attempt + 1, attempt_started=now.mono, probed=False),
            actions + [Attempt(interrupt_first=s.interrupt_pending)])


def _waiting_for_login(s: Status, event: Event, now: Now) -> Tuple[Status, List[Action]]:
    if isinstance(event, Tick):
        if _past_grace(s, now):
            return _offline_too_long(s, now)
        give_up = s.give_up_at()
        left = LOGIN_TICK if give_up is None else max(0.0, min(LOGIN_TICK, give_up - now.wall))
        return s, [AwaitLogin(now.mono + left)]
    if isinstance(event, LoggedIn):
        s = replace(s, retry_at=now.mono, probed=True)  # the login has just reached the host
        return _enter(s, State.RECONNECTING, "logged in to %s (noticed %.3f s after the login); reattaching",
                      s.config.host, event.noticed)
    if isinstance(event, Signal):
        return _reconnecting(s, event, now)
    return s, []


def _past_grace(s: Status, now: Now) -> bool:
    give_up = s.give_up_at()
    return give_up is not None and now.wall > give_up


def _offline_too_long(s: Status, now: Now) -> Tuple[Status, List[Action]]:
    host = s.config.host
    return _give_up(s, exc.ConnectionLostError(f"no connection to {host} for {now.wall - s.lost_wall:.0f} s, "
                                               f"longer than the kernel's grace period; exiting", host=host))


def _network_changed(s: Status, event: NetworkChanged, now: Now) -> Tuple[Status, List[Action]]:
    """The network the last attempt failed on has changed: the backoff it earned is void (the
    next Tick probes the host, or tries, at once). A failure that was not the network's (host
    key, authentication, a busy port) keeps its backoff: a new network does not fix it."""
    if now.mono >= s.retry_at or not s.backoff_network:
        return s, []
    return replace(s, retry_at=now.mono), [
        Log(logging.DEBUG, "network changed (%s): trying again now instead of in %.2f s",
            (event.what or "?", s.retry_at - now.mono))]


def _settle(s: Status, event: AttemptFailed, now: Now) -> Tuple[Status, List[Action]]:
    """A failed attempt, once abandoned (the time that took counts as the attempt's): when to
    try again, and whether to say so."""
    actions: List[Action] = []
    network = event.failure is not Failure.OTHER
    if event.failure is Failure.TIMEOUT and now.mono - s.attempt_started >= RECONNECT_CONNECT_TIMEOUT * 0.8:
        delay = 0.0  # the attempt itself waited; the next SYN should go out now
    else:
        cap = BACKOFF_CAP_NETWORK if network else BACKOFF_CAP_OTHER
        delay = min(cap, BACKOFF_FIRST * 2 ** min(s.attempt - 1, 16))
    last_report = s.last_report
    if s.attempt == 1 or now.mono - last_report >= REPORT_EVERY or not network:
        last_report = now.mono
        actions.append(Log(logging.INFO if network else logging.WARNING,
                           "reconnect attempt %d failed after %.0f s offline: %s",
                           (s.attempt, now.mono - s.lost_at, event.error)))
    return replace(s, retry_at=now.mono + delay, last_report=last_report, failed=None,
                   backoff_network=network), actions


# -- helpers ---------------------------------------------------------------------------------------
def _give_up(s: Status, error: exc.SSHKernelError) -> Tuple[Status, List[Action]]:
    """Stop for ``error``: logged, and the exit (its exit code) carries it."""
    return _enter(s, State.STOPPED, "%s", str(error), level=logging.ERROR, after=(Exit(error.exit_code, error),))


def _up(s: Status, now: Now) -> Status:
    """Serving (again): heard just now, next ping in PING_INTERVAL."""
    return replace(s, state=State.UP, last_heard=now.mono, next_ping=now.mono + PING_INTERVAL,
                   clock_offset=now.wall - now.mono, shutdown_deadline=None)


def _enter(s: Status, state: State, message: str, *args: object, level: int = logging.INFO,
           before: Tuple[Action, ...] = (), after: Tuple[Action, ...] = ()) -> Tuple[Status, List[Action]]:
    """A transition: its log line ("<state>: ...") and the state published, between the
    actions that go ``before`` and ``after`` it."""
    return replace(s, state=state), [*before, Log(level, "%s: " + message, (state.value, *args)), Notify(), *after]
