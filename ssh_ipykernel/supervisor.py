"""The tunnel supervisor: keeps one remote kernel reachable at the same local ports.

States (one log line per transition, with timings and the reconnect count):

    CONNECTING -> UP -> RECONNECTING -> UP -> ... -> STOPPING -> STOPPED

While UP, one select() loop waits on the keeper's events, the session's stderr, the
transport's descriptor (the ssh master's control socket: end-of-file when it exits) and the
signal wakeup socket, and pings the keeper every PING_INTERVAL seconds.
The connection counts as lost when the session ends (the master exited, sshd dropped it), when
the master exits, or when nothing arrives for LOSS_TIMEOUT seconds (a cut link gives no EOF).

RECONNECTING tears down what is left of this proxy's use of the connection (``close(lost=True)``:
a shared connection that does not answer any more is ended for everyone, one that does is kept),
waits for the host to answer a TCP connect (reachability.py; a change of the local network,
netwatch.py, probes at once and ends a network failure's backoff) and tries again: the host's
connection (a new one with a short ConnectTimeout if none is up), a session to the same keeper (same kernel pid, same ports), reached directly over SSH when the
server allows it (no remote process), then the channels resumed over a new stream
(channels.py: the clients never lost their connections). A timed-out attempt is retried at once (each attempt puts a fresh SYN on
the wire, so the first one after the network returns gets through within about a second);
errors that fail fast back off exponentially, capped. The proxy never exits because of the
network: only when the kernel ends, when its keeper is gone (the grace period ran out), or when
it is told to stop. See docs/architecture.md.

What to do at each turn is decided by policy.py, a pure function of the state, an event and the
clocks; this module is its I/O: it turns what the select loops see into events and performs the
actions the policy returns.
"""
from __future__ import annotations

import logging
import selectors
import time
from typing import Callable, Dict, List, Optional, Protocol

from . import exceptions as exc
from . import policy
from .log import log_ssh_output, relay_remote_output
from .netwatch import NetworkWatch
from .policy import RECONNECT_CONNECT_TIMEOUT, SHUTDOWN_TIMEOUT, State  # noqa: F401 - proxy.py imports these here
from .reachability import wait_reachable
from .remote.protocol import Event
from .session.client import RemoteKernel
from .signals import SignalRelay
from .transport.base import Transport

logger = logging.getLogger(__name__)

#: The states in which _reconnect's loop runs.
RECONNECTING = (State.RECONNECTING, State.WAITING_FOR_LOGIN)


class Carrier(Protocol):
    """How the kernel's channels reach it: channels.Channels (resumable, through the keeper), or
    tunnels.Forwarded (the master's forwards to a kernel of somebody else's)."""

    def reopen(self, transport: Transport, kernel: RemoteKernel, timeout: float) -> None: ...

    def suspend(self) -> None: ...

    def close(self, *, forget: bool = False) -> None: ...

    def broken_fileno(self) -> Optional[int]: ...

    def take_broken(self) -> bool: ...


class Supervisor:
    """Serve a started kernel until it ends; reconnect whenever the connection is lost."""

    def __init__(
        self,
        *,
        kernel: RemoteKernel,
        transport: Transport,
        channels: "Carrier",
        new_transport: Callable[[float], Transport],
        signals: SignalRelay,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        secret: str,
        grace: Optional[float],
        client_timeout: float,
        attach_timeout: float,
        on_state: Callable[["Supervisor"], None] = lambda s: None,
        owns_kernel: bool = True,
        network_watch: Callable[[], NetworkWatch] = NetworkWatch,
    ) -> None:
        self.kernel = kernel
        self.transport = transport
        self.channels = channels
        self.new_transport = new_transport
        self.signals = signals
        self.log = log
        self.secret = secret
        self.grace = grace
        self.attach_timeout = attach_timeout
        self.on_state = on_state
        # Found out now, while connected: name resolution may not work once the network is gone.
        self.probe_target = transport.probe_address()
        # owns_kernel False for `ssh-ipykernel connect`: somebody else's kernel, which we never
        # interrupt or shut down; every stop signal just disconnects.
        config = policy.Config(host=kernel.host, grace=grace, client_timeout=client_timeout,
                               owns_kernel=owns_kernel, can_probe=self.probe_target is not None)
        self.status = policy.initial(config, _now())
        #: Why the kernel is being given up, once it is (the exit code is its exit_code).
        self.error: Optional[exc.SSHKernelError] = None
        self._detail = ""  # what the connection said before its last Close(drain=True)
        self._next: Optional[policy.Action] = None  # the last wait or attempt the policy asked for
        self.network: Optional[NetworkWatch] = None  # while RECONNECTING: changes of the local network
        self._network_watch = network_watch
        self._detached = False

    @property
    def state(self) -> State:
        return self.status.state

    @property
    def reconnects(self) -> int:
        return self.status.reconnects

    def _enter(self, state: State, message: str, *args: object, level: int = logging.INFO) -> None:
        """The log line of a transition to ``state`` (which the policy has made), then publish it."""
        self.log.log(level, "%s: " + message, state.value, *args)
        self.on_state(self)

    def run(self, *, stop: bool = False) -> int:
        """Serve until the kernel ends or we are told to stop; return the exit code."""
        try:
            if stop:
                code = self._dispatch(policy.StopRequested())
                if code is not None:
                    return code
            while True:
                if self.state in RECONNECTING:
                    code = self._reconnect()
                else:
                    code = self._serve()
                if code is not None:
                    return code
        finally:
            self.close()

    def close(self) -> None:
        """Release the session, the channels and the connection (the kernel is not touched)."""
        self.kernel.close()
        # Forget: tell the keeper this proxy's channels will not resume (a detach; connect,
        # whose stop is a disconnect). A proxy that shuts its kernel down needs not.
        self.channels.close(forget=self._detached or not self.status.config.owns_kernel)
        self.transport.close()

    # -- the policy's events in, its actions out ----------------------------------------------------
    def _dispatch(self, event: policy.Event) -> Optional[int]:
        """Let the policy decide on ``event`` and do what it says; the exit code if it says exit."""
        self._next = None
        self.status, actions = policy.step(self.status, event, _now())
        for action in actions:
            if isinstance(action, policy.Exit):
                if action.error is not None:
                    self.error = action.error
                return action.code
            self._perform(action)
        return None

    def _perform(self, action: policy.Action) -> None:
        if isinstance(action, policy.Log):
            args = tuple(self._detail_text() if isinstance(a, policy.Detail) else a for a in action.args)
            self.log.log(action.level, action.message, *args)
        elif isinstance(action, policy.Notify):
            self.on_state(self)
        elif isinstance(action, policy.SendPing):
            self.kernel.ping()
        elif isinstance(action, policy.SendInterrupt):
            self.kernel.interrupt()
        elif isinstance(action, policy.SendShutdown):
            self.kernel.request_shutdown()
        elif isinstance(action, policy.Detach):
            self._detach()
        elif isinstance(action, policy.ConfirmAlive):
            self.transport.confirm_alive()
        elif isinstance(action, policy.Close):
            self._detail = self.transport.drain().strip() if action.drain else ""
            self.kernel.close()
            self.channels.suspend()
            self.transport.close(lost=action.lost)
        else:  # WaitUntil, AwaitReachable, Attempt: done by the loop of the state
            self._next = action

    def _detail_text(self) -> str:
        return f": {self._detail}" if self._detail else ""

    # -- UP / STOPPING ------------------------------------------------------------------------------
    def _serve(self) -> Optional[int]:
        kernel = self.kernel
        sel = selectors.DefaultSelector()
        sel.register(self.signals.fileno(), selectors.EVENT_READ, "signal")
        for fd in kernel.filenos():
            sel.register(fd, selectors.EVENT_READ, "session")
        master_fd = self.transport.fileno()
        if master_fd is not None:
            sel.register(master_fd, selectors.EVENT_READ, "master")
        broken_fd = self.channels.broken_fileno()
        if broken_fd is not None:
            sel.register(broken_fd, selectors.EVENT_READ, "channels")
        try:
            while True:
                code = self._handle_events(kernel.take_events())
                if code is not None:
                    return code
                code = self._dispatch(policy.Tick())
                if code is not None or self.state is State.RECONNECTING:
                    return code
                assert isinstance(self._next, policy.WaitUntil)
                for key, _ in sel.select(max(0.0, self._next.at - time.monotonic())):
                    if key.data == "signal":
                        code = self._on_signals(self.signals.pending())
                    elif key.data == "master":
                        log_ssh_output(self.log, self.transport.drain())
                        if not self.transport.alive():
                            sel.unregister(key.fd)
                            code = self._dispatch(policy.MasterEOF())  # the master exited, or paramiko's transport
                    elif key.data == "channels":
                        # The stream ends with the kernel too: its "exited" on the session
                        # (handled at the loop's next turn) says so, else the connection is gone.
                        if self.channels.take_broken() and not kernel.exited_meanwhile(1.0):
                            self.log.info("the channels' stream to the keeper ended")
                            code = self._dispatch(policy.SessionEOF())
                    elif key.data == "session":
                        got = kernel.read(key.fd)
                        if got.stderr:
                            relay_remote_output(got.stderr, self.secret)
                        if got.closed:
                            sel.unregister(key.fd)
                        if not got.heard and not got.ended:
                            continue  # stderr only
                        if got.heard:
                            self._dispatch(policy.Heard())
                        code = self._handle_events(got.events)
                        if code is None and got.ended:
                            code = self._dispatch(policy.SessionEOF())
                    if code is not None or self.state is State.RECONNECTING:
                        return code
        finally:
            sel.close()

    def _on_signals(self, signums: List[int]) -> Optional[int]:
        """The policy's answer to each signal, in order (while UP, STOPPING or RECONNECTING)."""
        for signum in signums:
            code = self._dispatch(policy.Signal(signum))
            if code is not None:
                return code
        return None

    def _detach(self) -> int:
        info = self.kernel.info
        self._detached = True
        self.kernel.detach()
        kept = "until its grace period ends" if self.grace is None else f"for {self.grace:.0f} s"
        self._enter(
            State.STOPPED,
            "detached; kernel pid %s keeps running on %s %s. Reattach with: ssh-ipykernel connect "
            "--host %s %s", info.pid if info else "?", self.kernel.host, kept,
            self.kernel.host_spec, info.connection_file if info else "?",
        )
        return 0

    def _handle_events(self, events: List[Dict[str, object]]) -> Optional[int]:
        """Handle the keeper's events in order; the exit code once one says the kernel ended."""
        for event in events:
            handler = self._EVENT_HANDLERS.get(str(event["event"]))
            if handler is None:
                self.log.debug("keeper event: %s", event)
                continue
            code = handler(self, event)
            if code is not None:
                return code
        return None

    def _on_log(self, event: Dict[str, object]) -> None:
        relay_remote_output(str(event["text"]), self.secret)

    def _exited(self, event: Dict[str, object]) -> Optional[int]:
        return self._dispatch(policy.KeeperExited(event.get("returncode"), event.get("reason")))

    #: What each keeper event means here (protocol.Event); pong only counts as hearing from it.
    _EVENT_HANDLERS: Dict[str, Callable[["Supervisor", Dict[str, object]], Optional[int]]] = {
        Event.LOG: _on_log,
        Event.EXITED: _exited,
        Event.PONG: lambda self, event: None,
    }

    # -- RECONNECTING -------------------------------------------------------------------------------
    def _reconnect(self) -> Optional[int]:
        """Until reconnected (None) or told to exit (the code): each turn, the policy says whether
        to wait out a backoff, wait for the host to answer, wait for a login, give up, or make an
        attempt. Changes of the local network (netwatch.py; Linux) cut the waits short."""
        with self._network_watch() as network:
            self.network = network
            try:
                while self.state in RECONNECTING:
                    code = self._dispatch(policy.Tick())
                    if code is None and self.state in RECONNECTING:
                        action = self._next
                        if isinstance(action, policy.WaitUntil):
                            code = self._wait(action.at)
                        elif isinstance(action, policy.AwaitLogin):
                            noticed = self.transport.wait_for_login(action.until, wake_fd=self.signals.fileno())
                            if noticed is not None:
                                code = self._dispatch(policy.LoggedIn(noticed))
                            else:
                                code = self._on_signals(self.signals.pending())
                        elif isinstance(action, policy.AwaitReachable):
                            assert self.probe_target is not None
                            code = self._wait_reachable(self.probe_target)
                            if code is None:
                                code = self._dispatch(policy.Reachable())
                        else:
                            code = self._dispatch(self._try(action))
                    if code is not None:
                        return code
            finally:
                self.network = None
        return None

    def _try(self, action: Optional[policy.Action]) -> policy.Event:
        """One attempt, as the event that reports its outcome."""
        try:
            self._attempt(isinstance(action, policy.Attempt) and action.interrupt_first)
        except exc.Cancelled:
            return policy.AttemptCancelled()
        except exc.KernelGoneError as e:
            return policy.KernelGone(e)
        except exc.SSHKernelError as e:
            kind = policy.failure_of(e)
            # What to run is in the message; ssh's prompt (the detail) would only add a line.
            return policy.AttemptFailed(kind, e.message if kind is policy.Failure.LOGIN else str(e))
        return policy.AttemptSucceeded()

    def _attempt(self, interrupt_first: bool = False) -> None:
        """One try: connect, attach to the keeper, resume the channels. Stop signals abort it
        (Cancelled). ``interrupt_first``: interrupt the kernel before the channels resume."""
        self.signals.raise_on_stop = True
        try:
            t0 = time.monotonic()
            self.transport = self.new_transport(RECONNECT_CONNECT_TIMEOUT)
            self.transport.connect()
            t1 = time.monotonic()
            self.kernel.attach(self.transport, self.attach_timeout)
            if interrupt_first:
                self.kernel.interrupt()
            t2 = time.monotonic()
            self.channels.reopen(self.transport, self.kernel, self.attach_timeout)
            t3 = time.monotonic()
            self.log.debug("attempt: connected in %.3f s (%s), attached in %.3f s (%s), channels in %.3f s",
                           t1 - t0, "joined" if self.transport.reused else "new login", t2 - t1,
                           "direct" if self.kernel.attached_directly else "remote relay", t3 - t2)
        finally:
            self.signals.raise_on_stop = False

    def _wait_reachable(self, target: "tuple[str, int]") -> Optional[int]:
        """Until the host answers a TCP connect (reachability.py); a stop signal meanwhile
        ends the wait with the exit code it calls for. A network change probes at once."""
        return wait_reachable(target, self.signals.fileno(), lambda: self._on_signals(self.signals.pending()),
                              network=self.network)

    def _wait(self, deadline: float) -> Optional[int]:
        """Sleep until ``deadline`` (monotonic), still answering signals; a change of the local
        network goes to the policy, which may end the wait (a backoff it voids)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.signals.fileno(), selectors.EVENT_READ, "signal")
            net_fd = self.network.fileno() if self.network is not None else None
            if net_fd is not None:
                sel.register(net_fd, selectors.EVENT_READ, "network")
            while True:
                remaining = deadline - time.monotonic()
                events = sel.select(remaining) if remaining > 0 else []
                if not events:
                    return None
                for key, _ in events:
                    if key.data == "signal":
                        code = self._on_signals(self.signals.pending())
                        if code is not None:
                            return code
                    else:
                        assert self.network is not None
                        changes = self.network.changes()
                        if changes:
                            code = self._dispatch(policy.NetworkChanged(", ".join(sorted(set(changes)))))
                            if code is not None:
                                return code
                            deadline = min(deadline, self.status.retry_at)


def _now() -> policy.Now:
    """The clocks, for the policy (the only place the supervisor's decisions read them)."""
    mono = time.monotonic()
    return policy.Now(mono=mono, wall=time.time())
