"""The keeper: a daemon on the remote host that owns one kernel for the kernel's whole life.

It outlives SSH sessions on purpose. Proxies reach it through a unix socket next to the
connection file (0600 in the 0700 runtime dir), relayed by a short-lived SSH session each
(bootstrap.relay); any number may be attached at once. Protocol, JSON lines both ways:

* client -> keeper: the ops of protocol.Op (``ping``, ``interrupt``, ``shutdown``, ``detach``,
  ``keepalive``, and ``replaced`` with ``key_sha256`` from a new kernel of the same Jupyter
  kernel), dispatched by ``Keeper.HANDLERS``; anything else is answered with an ``error`` event
  (code ``bad_op``);
* keeper -> client: ``ready`` (on attach: pid, ports, versions, paths), ``pong``, ``log`` (new
  text of the kernel's log), ``exited`` (returncode, and why the keeper ended the kernel if it
  did), or ``error`` (the kernel could not be started, or a command was not understood).

The jobs are split by module: clients.py (the socket server), grace.py (the grace clock),
logrelay.py (the kernel's log), agent.py (the kernel process and its shutdown ladder); this
module is the loop that ties them together and what each command does.

With no client attached (a lost connection, a killed proxy) the kernel is kept for the grace
period, then shut down and its files removed. A client that says nothing for client_timeout
seconds counts as gone: a cut link gives no EOF.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time

from .agent import Agent
from .clients import Client, Clients
from .grace import FIRST_CLIENT_WAIT, GraceClock, describe_grace
from .logrelay import LogRelay
from .protocol import DEFAULT_CLIENT_TIMEOUT, BootstrapError, Event, Op, event_line, kernel_kept_for, parse_op
from .streams import STREAM_SNDBUF, Notice, Relay, connect_endpoint

TICK = 0.1  # how often the log is tailed and the timers checked (the kernel's exit wakes the loop)
LISTENER = "listener"  # selector data of the keeper's listening socket
EXIT_WAKER = "kernel-exit"  # selector data of the socket that wakes the loop when the kernel exits
PORTS_WAIT = 120.0  # for ipykernel to bind its ports (imports on a slow, busy host)
RELAY_MARGIN = 60.0  # beyond the proxy's give-up time (its own margin is 30 s)


class Keeper:
    """Serve the kernel's clients until the kernel ends; see the module docstring."""

    def __init__(self, agent: Agent, listener, *, grace: "float | None",
                 client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> None:
        self.agent = agent
        self.listener = listener
        self.grace = grace
        self.client_timeout = client_timeout
        self.sel = selectors.DefaultSelector()
        self.clients = Clients(self.sel, on_line=self._command, note=agent.log)
        self.clock = None  # type: GraceClock | None
        self.log_relay = LogRelay(agent.log_file)
        self._stop_signal = threading.Event()
        self.relays = {}  # type: dict  # proxy token -> its channels (streams.Relay)

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: self._stop_signal.set())
        try:
            self.agent.launch()
            if self.agent.ports_from_kernel:
                self.agent.wait_for_ports(PORTS_WAIT)
        except BootstrapError as e:
            self.agent.signal_kernel(signal.SIGKILL)
            self._report_start_error(e)
            return
        self.agent.log("kernel pid %d started%s; keeper pid %d; grace period %s" % (
            self.agent.proc.pid, " warm" if self.agent.started_warm else "", os.getpid(), describe_grace(self.grace)))
        if self.agent.transport != "ipc":
            self.agent.log(
                "this kernel listens on TCP ports (127.0.0.1: %s), which every user of this host can "
                "connect to: its messages are signed, not encrypted, so they can read its output. Kernels "
                "that speak ZeroMQ's ipc transport (ipykernel) get private unix sockets instead"
                % ", ".join(str(p) for p in sorted(self.agent.ports.values())))
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, LISTENER)
        self.sel.register(self._exit_waker(), selectors.EVENT_READ, EXIT_WAKER)
        self.clock = GraceClock(self.grace, time.monotonic())
        returncode = None
        ticked = 0.0
        while returncode is None:
            exited = False
            for key, mask in self.sel.select(TICK):
                if key.data is LISTENER:
                    client = self.clients.accept(self.listener)
                    if client is not None:
                        self.clients.send(client, Event.READY, **self.agent.ready_event())
                elif key.data is EXIT_WAKER:
                    self.sel.unregister(key.fileobj)  # it has done its one job; reap() follows
                    exited = True
                elif isinstance(key.data, tuple):  # a proxy's channels: (relay, conn)
                    key.data[0].service(key.data[1], mask)
                else:
                    self.clients.service(key.data, mask)
            # The timers once per TICK, not at every wake-up: the channels wake the loop for
            # every chunk of output, and the log is a file to open.
            now = time.monotonic()
            if exited or now - ticked >= TICK:
                ticked = now
                self._tick_relays(now)
                self._pump_log()
                returncode = self.agent.reap()
                if returncode is None:
                    self._watch(now)
        self._pump_log()
        self.agent.remove_files()  # before telling anyone: whoever hears "exited" may look
        self.clients.broadcast(Event.EXITED, returncode=returncode, reason=self.agent.end_reason)
        self.clients.flush(2.0)
        self.clients.close()
        # After "exited" has gone out: a proxy that saw its channels' stream end first would
        # take it for a lost connection.
        for relay in self.relays.values():
            relay.close()
        self.listener.close()

    def _exit_waker(self) -> socket.socket:
        """A socket that becomes readable the moment the kernel exits: a thread waits for it, so
        "exited" goes out at once instead of at the next TICK (a restart waits for it)."""
        wake_r, wake_w = socket.socketpair()
        proc = self.agent.proc

        def wait() -> None:
            try:
                proc.wait()
            except Exception:  # noqa: BLE001 - the TICK poll still notices the exit
                pass
            try:
                wake_w.send(b"x")
            except OSError:
                pass

        threading.Thread(target=wait, name="kernel-exit", daemon=True).start()
        return wake_r

    def _watch(self, now: float) -> None:
        """Timers: a stop signal, silent clients, the grace period."""
        if self._stop_signal.is_set():
            self._stop_signal.clear()
            self._shutdown("terminated")
        self.clients.drop_silent(now, self.client_timeout)
        assert self.clock is not None
        attached = bool(self.clients) or self.agent._shutdown_started.is_set()
        if self.clock.expired(now, attached=attached, note=self.agent.log):
            self.agent.log("no proxy came back within the grace period; shutting the kernel down")
            self._shutdown("grace_expired")

    def _shutdown(self, reason: str) -> None:
        threading.Thread(target=self.agent.shutdown, args=(reason,), daemon=True).start()

    # -- commands ---------------------------------------------------------------------------------
    def _command(self, client: Client, line: bytes) -> None:
        try:
            message = parse_op(line)
        except BootstrapError as e:
            self.agent.log("ignoring a command: %s" % e.message)
            self.clients.send(client, Event.ERROR, code=e.code, message=e.message)
            return
        self.HANDLERS[message["op"]](self, client, message)

    def _on_ping(self, client: Client, message: dict) -> None:
        self.clients.send(client, Event.PONG)

    def _on_interrupt(self, client: Client, message: dict) -> None:
        self.agent.interrupt()

    def _on_shutdown(self, client: Client, message: dict) -> None:
        self._shutdown("requested")

    def _on_replaced(self, client: Client, message: dict) -> None:
        # A new kernel for the same Jupyter connection file (same id, same key): Jupyter
        # restarted this one after killing its proxy (a hard restart). Nobody can use it.
        import hashlib

        if message["key_sha256"] == hashlib.sha256(self.agent.params.key.encode()).hexdigest():
            self.agent.log("replaced by a restarted kernel; shutting down")
            self._shutdown("replaced")

    def _on_detach(self, client: Client, message: dict) -> None:
        self.agent.log("proxy %d detached" % client.number)
        self.clients.drop(client)

    def _on_keepalive(self, client: Client, message: dict) -> None:
        pass  # hearing from the client is all it is for

    def _on_stream(self, client: Client, message: dict) -> None:
        """The client carries a proxy's channels from now on (streams.py): its relay (kept
        across streams by the proxy's token) adopts the proxy's conns and resends what the
        proxy lacks."""
        token = message["token"]
        relay = self.relays.get(token)
        if relay is None:
            relay = Relay(self.sel, limit=max(message["limit"], 1 << 16), note=self.agent.log,
                          open_conn=self._open_conn,
                          notice=Notice(self.agent.params.key, self.agent.params.signature_scheme))
            self.relays[token] = relay
        reply = relay.answer(message["conns"])
        sock = self.clients.release(client)
        try:
            # Fewer, larger writes of the kernel's output to sshd (the system may cap it lower).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        except OSError:
            pass
        haves = {number: value[1] for number, value in message["conns"].items()
                 if isinstance(value, list) and len(value) == 2}
        # What was dropped while the proxy was away: its log would not hear it otherwise (the
        # kernel log's lines of that time went to its old, dead session).
        dropped = {"dropped_messages": relay.dropped, "dropped_bytes": relay.dropped_bytes, "limit": relay.limit}
        relay.dropped = relay.dropped_bytes = 0
        relay.attach(sock.fileno(), sock.fileno(), haves, leftover=bytes(client.inbuf),
                     first=event_line(Event.STREAM, conns=reply, **dropped), on_end=sock.close)

    def _open_conn(self, number: int, channel: str):
        return connect_endpoint(self.agent.endpoint(channel))

    def _tick_relays(self, now: float) -> None:
        # A proxy that has been away longer than it keeps trying (it gives up on the kernel after
        # kernel_kept_for, plus its margin) will never resume its channels: free what they hold.
        kept = kernel_kept_for(self.grace, self.client_timeout)
        for token, relay in list(self.relays.items()):
            if relay.ended or (kept is not None and relay.detached_at is not None
                               and now - relay.detached_at > kept + RELAY_MARGIN):
                if not relay.ended:
                    self.agent.log("a proxy's channels were not resumed for %.0f s; dropping what they held" % (
                        now - relay.detached_at))
                relay.close()
                del self.relays[token]
            else:
                relay.tick()

    #: What each op does (protocol.Op); parse_op has refused any other.
    HANDLERS = {
        Op.PING: _on_ping,
        Op.INTERRUPT: _on_interrupt,
        Op.SHUTDOWN: _on_shutdown,
        Op.REPLACED: _on_replaced,
        Op.DETACH: _on_detach,
        Op.KEEPALIVE: _on_keepalive,
        Op.STREAM: _on_stream,
    }

    # -- the kernel's log -------------------------------------------------------------------------
    def _pump_log(self) -> None:
        """Send what the kernel (and agent.log) wrote since last time; kept while nobody listens."""
        if not self.clients:
            return
        text = self.log_relay.new_text()
        if text:
            self.clients.broadcast(Event.LOG, text=text)

    def _report_start_error(self, error: BootstrapError) -> None:
        """Tell the starting session why the kernel did not start, then clean up."""
        self.listener.settimeout(FIRST_CLIENT_WAIT)
        try:
            sock, _ = self.listener.accept()
            with sock:
                sock.sendall(event_line(Event.ERROR, code=error.code, message=error.message))
        except OSError:
            pass
        self.listener.close()
        self.agent.remove_files()
