"""The keeper: a daemon on the remote host that owns one kernel for the kernel's whole life.

It outlives SSH sessions on purpose. Proxies reach it through a unix socket next to the
connection file (0600 in the 0700 runtime dir), relayed by a short-lived SSH session each
(bootstrap.relay); any number may be attached at once. Protocol, JSON lines both ways:

* client -> keeper: ``{"op": "ping" | "interrupt" | "shutdown" | "detach"}``, and
  ``{"op": "replaced", "key_sha256": ...}`` from a new kernel of the same Jupyter kernel;
* keeper -> client: ``ready`` (on attach: pid, ports, versions, paths), ``pong``, ``log`` (new
  text of the kernel's log), ``exited`` (returncode, and why the keeper ended the kernel if it
  did), or ``error`` (the kernel could not be started).

With no client attached (a lost connection, a killed proxy) the kernel is kept for the grace
period, then shut down and its files removed. A client that says nothing for client_timeout
seconds counts as gone: a cut link gives no EOF.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import threading
import time

from .agent import Agent  # local-only
from .protocol import DEFAULT_CLIENT_TIMEOUT, BootstrapError  # local-only

TICK = 0.1  # how often the log is tailed and the timers checked (the kernel's exit wakes the loop)
EXIT_WAKER = "kernel-exit"  # selector data of the socket that wakes the loop when the kernel exits
MAX_BACKLOG = 4 << 20  # bytes queued for a client that reads nothing: it is dropped
MAX_LOG_REPLAY = 1 << 20  # log text kept for a proxy that comes back after an outage
FIRST_CLIENT_WAIT = 30.0  # for the session that started us to connect and hear a start error
PORTS_WAIT = 120.0  # for ipykernel to bind its ports (imports on a slow, busy host)


class Client:
    """One attached proxy (its relay's end of the socket)."""

    def __init__(self, sock, now: float, number: int) -> None:
        self.sock = sock
        self.number = number
        self.inbuf = b""
        self.outbuf = bytearray()
        self.last_heard = now
        self.heard = False  # has it said anything yet


class Keeper:
    """Serve the kernel's clients until the kernel ends; see the module docstring."""

    def __init__(self, agent: Agent, listener, *, grace: "float | None",
                 client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> None:
        self.agent = agent
        self.listener = listener
        self.grace = grace
        self.client_timeout = client_timeout
        self.clients = {}  # type: dict
        self.sel = selectors.DefaultSelector()
        self.grace_deadline = None  # type: float | None
        self.log_pos = 0
        self.accepted = 0
        self._stop_signal = threading.Event()

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
        self.agent.log("kernel pid %d started; keeper pid %d; grace period %s" % (
            self.agent.proc.pid, os.getpid(), describe_grace(self.grace)))
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self._exit_waker(), selectors.EVENT_READ, EXIT_WAKER)
        # Until the starting session connects (at once, normally) a grace period runs too.
        first = FIRST_CLIENT_WAIT if self.grace is None else max(self.grace, FIRST_CLIENT_WAIT)
        self.grace_deadline = time.monotonic() + first
        returncode = None
        while returncode is None:
            for key, mask in self.sel.select(TICK):
                if key.data is None:
                    self._accept()
                elif key.data is EXIT_WAKER:
                    self.sel.unregister(key.fileobj)  # it has done its one job; reap() follows
                else:
                    self._service(key.data, mask)
            self._pump_log()
            returncode = self.agent.reap()
            if returncode is None:
                self._watch(time.monotonic())
        self._pump_log()
        self.agent.remove_files()  # before telling anyone: whoever hears "exited" may look
        self._broadcast("exited", returncode=returncode, reason=self.agent.end_reason)
        self._flush(2.0)
        for client in list(self.clients.values()):
            self._drop(client)
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
        for client in list(self.clients.values()):
            if now - client.last_heard > self.client_timeout:
                self.agent.log("proxy %d silent for %.0f s; treating it as gone" % (client.number, self.client_timeout))
                self._drop(client)
        if self.clients or self.agent._shutdown_started.is_set():
            self.grace_deadline = None
            return
        if self.grace_deadline is None:
            if self.grace is None:
                return
            self.grace_deadline = now + self.grace
            self.agent.log("no proxy attached; the kernel is kept for %s" % describe_grace(self.grace))
        elif now >= self.grace_deadline:
            self.agent.log("no proxy came back within the grace period; shutting the kernel down")
            self._shutdown("grace_expired")

    def _shutdown(self, reason: str) -> None:
        threading.Thread(target=self.agent.shutdown, args=(reason,), daemon=True).start()

    # -- clients ----------------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        self.accepted += 1
        client = Client(sock, time.monotonic(), self.accepted)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, client)
        self._send(client, "ready", **self.agent.ready_event())

    def _service(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write(client)
        if not mask & selectors.EVENT_READ or client.sock.fileno() not in self.clients:
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.last_heard = time.monotonic()
        if not client.heard and client.number > 1:  # not the probes of a starting session
            self.agent.log("proxy %d attached" % client.number)
        client.heard = True
        client.inbuf += data
        *lines, client.inbuf = client.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self._command(client, line)

    def _command(self, client: Client, line: bytes) -> None:
        try:
            msg = json.loads(line.decode("utf-8"))
            op = msg.get("op")
        except (ValueError, AttributeError):
            self.agent.log("ignoring malformed command %r" % line[:80])
            return
        if op == "ping":
            self._send(client, "pong")
        elif op == "interrupt":
            self.agent.interrupt()
        elif op == "shutdown":
            self._shutdown("requested")
        elif op == "replaced":
            # A new kernel for the same Jupyter connection file (same id, same key): Jupyter
            # restarted this one after killing its proxy (a hard restart). Nobody can use it.
            import hashlib

            if msg.get("key_sha256") == hashlib.sha256(self.agent.params["key"].encode()).hexdigest():
                self.agent.log("replaced by a restarted kernel; shutting down")
                self._shutdown("replaced")
        elif op == "detach":
            self.agent.log("proxy %d detached" % client.number)
            self._drop(client)
        elif op != "keepalive":
            self.agent.log("ignoring unknown command %r" % op)

    def _send(self, client: Client, event: str, **fields: object) -> None:
        fields["event"] = event
        client.outbuf += (json.dumps(fields) + "\n").encode("utf-8")
        if len(client.outbuf) > MAX_BACKLOG:
            self.agent.log("proxy %d reads nothing; dropping it" % client.number)
            self._drop(client)
            return
        self._write(client)

    def _broadcast(self, event: str, **fields: object) -> None:
        for client in list(self.clients.values()):
            self._send(client, event, **fields)

    def _write(self, client: Client) -> None:
        if client.sock.fileno() not in self.clients:
            return
        try:
            while client.outbuf:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(client)
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        self.sel.modify(client.sock, mask, client)

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(c.outbuf for c in self.clients.values()) and time.monotonic() < deadline:
            for key, mask in self.sel.select(0.05):
                if key.data is not None:
                    self._service(key.data, mask)

    def _drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is None:
            return
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    # -- the kernel's log -------------------------------------------------------------------------
    def _pump_log(self) -> None:
        """Send what the kernel (and agent.log) wrote since last time; kept while nobody listens."""
        if not self.clients:
            return
        try:
            with open(self.agent.log_file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size - self.log_pos > MAX_LOG_REPLAY:
                    self.log_pos = size - MAX_LOG_REPLAY
                f.seek(self.log_pos)
                data = f.read(size - self.log_pos)
        except OSError:
            return
        if data:
            self.log_pos += len(data)
            self._broadcast("log", text=data.decode("utf-8", "replace"))

    def _report_start_error(self, error: BootstrapError) -> None:
        """Tell the starting session why the kernel did not start, then clean up."""
        self.listener.settimeout(FIRST_CLIENT_WAIT)
        try:
            sock, _ = self.listener.accept()
            with sock:
                sock.sendall((json.dumps({"event": "error", "code": error.code, "message": error.message}) + "\n").encode())
        except OSError:
            pass
        self.listener.close()
        self.agent.remove_files()


def describe_grace(grace: "float | None") -> str:
    if grace is None:
        return "ever (no grace limit)"
    if grace >= 120:
        return "%g min" % (grace / 60)
    return "%g s" % grace
