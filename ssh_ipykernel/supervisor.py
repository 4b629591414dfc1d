"""The tunnel supervisor: keeps one remote kernel reachable at the same local ports.

States (one log line per transition, with timings and the reconnect count):

    CONNECTING -> UP -> RECONNECTING -> UP -> ... -> STOPPING -> STOPPED

While UP, one select() loop waits on the keeper's events, the session's stderr, the
transport's descriptor (the ssh master's control socket: end-of-file when it exits) and the
signal wakeup socket, and pings the keeper every PING_INTERVAL seconds.
The connection counts as lost when the session ends (the master exited, sshd dropped it), when
the master exits, or when nothing arrives for LOSS_TIMEOUT seconds (a cut link gives no EOF).

RECONNECTING tears down what is left of this proxy's use of the connection (``close(lost=True)``:
a shared connection that does not answer any more is ended for everyone, one that does is kept)
and tries again: the host's connection (a new one with a short ConnectTimeout if none is up), an
``attach`` session to the same keeper (same kernel pid, same state), and the same forwards. A timed-out attempt is retried at once (each attempt puts a fresh SYN on
the wire, so the first one after the network returns gets through within about a second);
errors that fail fast back off exponentially, capped. The proxy never exits because of the
network: only when the kernel ends, when its keeper is gone (the grace period ran out), or when
it is told to stop. See docs/architecture.md.
"""
from __future__ import annotations

import enum
import logging
import selectors
import signal
import time
from typing import Callable, Dict, List, Optional

from . import exceptions as exc
from .log import log_ssh_output, relay_remote_output
from .reachability import wait_reachable
from .remote.protocol import Event
from .session.client import RemoteKernel
from .signals import SignalRelay
from .transport.base import Forward, Transport
from .tunnels import Tunnels

logger = logging.getLogger(__name__)

#: How long the keeper gets to shut the kernel down after SIGTERM before we cut the session.
SHUTDOWN_TIMEOUT = 10.0
#: The proxy pings the keeper this often ...
PING_INTERVAL = 2.0
#: ... and declares the connection lost after this much silence.
LOSS_TIMEOUT = 6.0
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


class State(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    RECONNECTING = "reconnecting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor:
    """Serve a started kernel until it ends; reconnect whenever the connection is lost."""

    def __init__(
        self,
        *,
        kernel: RemoteKernel,
        transport: Transport,
        tunnels: Tunnels,
        new_transport: Callable[[float], Transport],
        signals: SignalRelay,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        secret: str,
        grace: Optional[float],
        client_timeout: float,
        attach_timeout: float,
        on_state: Callable[["Supervisor"], None] = lambda s: None,
        owns_kernel: bool = True,
    ) -> None:
        self.kernel = kernel
        self.transport = transport
        self.tunnels = tunnels
        self.forwards: List[Forward] = list(tunnels.forwards)
        self.new_transport = new_transport
        self.signals = signals
        self.log = log
        self.secret = secret
        self.grace = grace
        self.client_timeout = client_timeout
        self.attach_timeout = attach_timeout
        self.on_state = on_state
        # False for `ssh-ipykernel connect`: somebody else's kernel, which we never interrupt or
        # shut down; every stop signal just disconnects.
        self.owns_kernel = owns_kernel
        self.state = State.UP
        self.since = time.monotonic()
        self.reconnects = 0
        #: Why the kernel is being given up, once it is (the exit code is its exit_code).
        self.error: Optional[exc.SSHKernelError] = None
        self.shutdown_deadline: Optional[float] = None
        self._lost_at = 0.0  # monotonic
        self._lost_wall = 0.0  # wall clock: counts a suspended laptop's sleep, as the remote does
        # Found out now, while connected: name resolution may not work once the network is gone.
        self.probe_target = transport.probe_address()

    # -- states -------------------------------------------------------------------------------------
    def _enter(self, state: State, message: str, *args: object, level: int = logging.INFO) -> None:
        self.state = state
        self.since = time.monotonic()
        self.log.log(level, "%s: " + message, state.value, *args)
        self.on_state(self)

    def run(self, *, stop: bool = False) -> int:
        """Serve until the kernel ends or we are told to stop; return the exit code."""
        if stop:
            self._begin_stop("stop requested during start-up")
        try:
            while True:
                if self.state is State.RECONNECTING:
                    code = self._reconnect()
                else:
                    code = self._serve()
                if code is not None:
                    return code
        finally:
            self.close()

    def close(self) -> None:
        """Release the session, the forwards and the connection (the kernel is not touched)."""
        self.kernel.close()
        self.tunnels.close()
        self.transport.close()

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
        last_heard = time.monotonic()
        next_ping = last_heard + PING_INTERVAL
        clock_offset = time.time() - time.monotonic()
        try:
            while True:
                code = self._handle_events(kernel.take_events())
                if code is not None:
                    return code
                now = time.monotonic()
                offset = time.time() - now
                if offset - clock_offset > SUSPEND_JUMP:
                    # Back from a suspend: the connection may be long dead. Ask now, and do not
                    # wait the full loss timeout for the answer.
                    self.log.info("clock jumped %.0f s (suspended?); checking the connection", offset - clock_offset)
                    last_heard = min(last_heard, now - LOSS_TIMEOUT + 3.0)
                    next_ping = now
                clock_offset = offset
                if self.shutdown_deadline is not None and now >= self.shutdown_deadline:
                    self.log.warning("the kernel did not shut down in %.0f s; leaving it to its keeper", SHUTDOWN_TIMEOUT)
                    return 0
                if now - last_heard > LOSS_TIMEOUT:
                    return self._lost(f"no answer for {now - last_heard:.1f} s")
                if now >= next_ping:
                    kernel.ping()
                    next_ping = now + PING_INTERVAL
                wake = min(next_ping, last_heard + LOSS_TIMEOUT, self.shutdown_deadline or next_ping)
                for key, _ in sel.select(max(0.0, wake - now)):
                    if key.data == "signal":
                        code = self._on_signals(self.signals.pending())
                        if code is not None:
                            return code
                    elif key.data == "master":
                        log_ssh_output(self.log, self.transport.drain())
                        if not self.transport.alive():
                            sel.unregister(key.fd)
                            if self.state is State.STOPPING:
                                return 0
                            return self._lost("the SSH connection ended")  # the master exited, or paramiko's transport
                    elif key.data == "session":
                        got = kernel.read(key.fd)
                        if got.stderr:
                            relay_remote_output(got.stderr, self.secret)
                        if got.closed:
                            sel.unregister(key.fd)
                        if not got.heard and not got.ended:
                            continue  # stderr only
                        last_heard = time.monotonic()
                        if got.heard:
                            self.transport.confirm_alive()
                        code = self._handle_events(got.events)
                        if code is not None:
                            return code
                        if got.ended:
                            if self.state is State.STOPPING:
                                return 0
                            return self._lost("the SSH session ended")
        finally:
            sel.close()

    def _on_signals(self, signums: List[int]) -> Optional[int]:
        if not self.owns_kernel and signums:
            self._enter(State.STOPPED, "%s: disconnecting; the kernel keeps running",
                        signal.Signals(signums[0]).name)
            return 0
        for signum in signums:
            if signum == signal.SIGINT:
                self.log.info("interrupting the kernel")
                self.kernel.interrupt()
            elif signum == signal.SIGQUIT:
                return self._detach()
            elif self.state is not State.STOPPING:
                self._begin_stop(f"{signal.Signals(signum).name}: shutting the kernel down")
        return None

    def _begin_stop(self, why: str) -> None:
        self.kernel.request_shutdown()
        self.shutdown_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        self._enter(State.STOPPING, "%s", why)

    def _detach(self) -> int:
        info = self.kernel.info
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

    def _exited(self, event: Dict[str, object]) -> int:
        returncode = event.get("returncode")
        reason = event.get("reason")
        if not self.owns_kernel:
            self._enter(State.STOPPED, "the kernel ended (%s)", reason or f"exit code {returncode}")
            return 0
        if returncode == 0 or reason in ("requested", "terminated"):
            self._enter(State.STOPPED, "kernel exited (%s)", f"exit code {returncode}" if returncode == 0 else reason)
            return 0
        how = (
            f"killed by signal {-returncode}" if isinstance(returncode, int) and returncode < 0
            else f"exit code {returncode}"
        )
        return self._give_up(exc.KernelDiedError(
            f"the remote kernel died ({how}); exiting so that Jupyter restarts it", host=self.kernel.host))

    def _give_up(self, error: exc.SSHKernelError) -> int:
        """Stop for ``error`` (logged, kept in ``self.error``); its exit code."""
        self.error = error
        self._enter(State.STOPPED, "%s", error, level=logging.ERROR)
        return error.exit_code

    #: What each keeper event means here (protocol.Event); pong only counts as hearing from it.
    _EVENT_HANDLERS: Dict[str, Callable[["Supervisor", Dict[str, object]], Optional[int]]] = {
        Event.LOG: _on_log,
        Event.EXITED: _exited,
        Event.PONG: lambda self, event: None,
    }

    # -- RECONNECTING -------------------------------------------------------------------------------
    def _lost(self, why: str) -> Optional[int]:
        self._lost_at, self._lost_wall = time.monotonic(), time.time()
        detail = self.transport.drain().strip()
        self.kernel.close()
        self.tunnels.close()
        self.transport.close(lost=self.state is not State.STOPPING)
        if self.state is State.STOPPING:
            self.log.warning("connection lost while stopping (%s); the keeper finishes the shutdown", why)
            return 0
        kept = "as long as it takes" if self.grace is None else f"up to {self.grace:.0f} s"
        self._enter(State.RECONNECTING, "connection to %s lost (%s%s); reconnecting, the kernel is kept %s",
                    self.kernel.host, why, f": {detail}" if detail else "", kept, level=logging.WARNING)
        return None

    def _give_up_at(self) -> Optional[float]:
        """Wall-clock time after which the keeper has surely ended the kernel."""
        if self.grace is None:
            return None
        return self._lost_wall + self.client_timeout + self.grace + 30.0

    def _reconnect(self) -> Optional[int]:
        attempt, delay, last_report = 0, 0.0, 0.0
        while True:
            if delay:
                code = self._wait(delay)
                if code is not None:
                    return code
            if self.probe_target is not None:
                code = self._wait_reachable(self.probe_target)
                if code is not None:
                    return code
            give_up = self._give_up_at()
            if give_up is not None and time.time() > give_up:
                return self._give_up(exc.ConnectionLostError(
                    f"no connection to {self.kernel.host} for {time.time() - self._lost_wall:.0f} s, longer than "
                    f"the kernel's grace period; exiting", host=self.kernel.host))
            attempt += 1
            started = time.monotonic()
            try:
                self._attempt()
            except exc.Cancelled:
                self._enter(State.STOPPED, "stopped while reconnecting; the remote kernel is shut down by "
                            "its keeper when the grace period ends")
                return 0
            except exc.KernelGoneError as e:
                return self._give_up(exc.KernelGoneError(f"{e.message}; exiting so that Jupyter starts a new kernel",
                                                         host=e.host, detail=e.detail, detail_label=e.detail_label))
            except exc.SSHKernelError as e:
                self._abandon_attempt()
                network = isinstance(e, (exc.HostNotFoundError, exc.SSHConnectionRefusedError,
                                         exc.ConnectionTimeoutError, exc.ConnectionLostError))
                if isinstance(e, exc.ConnectionTimeoutError) and \
                        time.monotonic() - started >= RECONNECT_CONNECT_TIMEOUT * 0.8:
                    delay = 0.0  # the attempt itself waited; the next SYN should go out now
                else:
                    cap = BACKOFF_CAP_NETWORK if network else BACKOFF_CAP_OTHER
                    delay = min(cap, BACKOFF_FIRST * 2 ** min(attempt - 1, 16))
                now = time.monotonic()
                if attempt == 1 or now - last_report >= REPORT_EVERY or not network:
                    last_report = now
                    self.log.log(logging.INFO if network else logging.WARNING,
                                 "reconnect attempt %d failed after %.0f s offline: %s",
                                 attempt, now - self._lost_at, e)
                continue
            self.reconnects += 1
            self._enter(State.UP, "reconnected after %.2f s (attempt %d, reconnect #%d)",
                        time.monotonic() - self._lost_at, attempt, self.reconnects)
            return None

    def _attempt(self) -> None:
        """One try: connect, forward, attach to the keeper. Stop signals abort it (Cancelled)."""
        self.signals.raise_on_stop = True
        try:
            self.transport = self.new_transport(RECONNECT_CONNECT_TIMEOUT)
            self.transport.connect()
            # Forwards first: the kernel's remote ports have not changed, so the clients can talk
            # to it again while the attach session is still starting the remote python.
            self.tunnels = Tunnels(self.transport, self.forwards)
            self.tunnels.open(iopub_first=True)
            self.kernel.attach(self.transport, self.attach_timeout)
        finally:
            self.signals.raise_on_stop = False

    def _abandon_attempt(self) -> None:
        self.kernel.close()
        self.tunnels.close()
        # A shared connection that let this attempt time out must not be joined again.
        self.transport.close(lost=True)

    def _wait_reachable(self, target: "tuple[str, int]") -> Optional[int]:
        """Until the host answers a TCP connect (reachability.py); a stop signal meanwhile
        ends the wait with the exit code it calls for."""
        return wait_reachable(target, self.signals.fileno(),
                              lambda: self._stop_while_reconnecting(self.signals.pending()))

    def _stop_while_reconnecting(self, signums: List[int]) -> Optional[int]:
        for signum in signums:
            if signum == signal.SIGINT:
                self.log.warning("cannot interrupt the kernel while reconnecting")
            else:
                self._enter(State.STOPPED, "%s while reconnecting; the remote kernel is shut down "
                            "by its keeper when the grace period ends", signal.Signals(signum).name)
                return 0
        return None

    def _wait(self, delay: float) -> Optional[int]:
        """Sleep between attempts, still answering signals."""
        deadline = time.monotonic() + delay
        with selectors.DefaultSelector() as sel:
            sel.register(self.signals.fileno(), selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return None
                code = self._stop_while_reconnecting(self.signals.pending())
                if code is not None:
                    return code
