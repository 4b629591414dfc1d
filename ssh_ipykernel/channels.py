"""The kernel's channels on Jupyter's five ports, carried to its keeper so that an outage is a pause.

The proxy listens on the ports of Jupyter's connection file itself and keeps every connection a
client makes for as long as the client does, whatever happens to the network. Each connection's
bytes go to the remote keeper over one stream (an SSH channel to the keeper's unix socket, or a
relay through a remote python where the server forbids those), numbered and kept until the
keeper has them (remote/streams.py: the same relay runs on both sides). When the connection to
the host is lost, the supervisor calls ``suspend()``: clients stay connected, what they send is
kept (a cell run while offline); once it has reached the keeper again, ``resume()`` opens a new
stream, both sides say what they hold, and each sends again what the other lacks. The keeper
kept the kernel's side of every connection and its output meanwhile.

One thread serves the listeners, the clients' connections and the stream.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from typing import Any, List, Optional

from .connection import CHANNELS, ConnectionInfo
from .exceptions import RemoteError
from .remote.protocol import Event, Op, op_line
from .remote.streams import DEFAULT_LIMIT, END, Relay, describe_size, frame
from .transport.base import Forward, end_process
from .transport.forwarder import BindError, _listen

log = logging.getLogger(__name__)

TICK = 0.1  # acknowledgements go out at least this often


class Channels:
    """Jupyter's ports, served by this proxy; their connections carried by a resumable stream."""

    def __init__(self, local: ConnectionInfo, *, host: str, limit: int = DEFAULT_LIMIT,
                 note=None) -> None:
        self.local = local
        self.host = host
        self.limit = limit
        self.token = os.urandom(16).hex()
        self.sel = selectors.DefaultSelector()
        self.note = note or log.warning
        self.relay = Relay(self.sel, limit=limit, note=self.note)
        self.lock = threading.RLock()
        self.listeners: List[socket.socket] = []
        self.session: Any = None  # what carries the stream (a Popen-like session)
        self.opened = 0  # connections accepted
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        #: Readable once the stream ended by itself (not by suspend() or a new stream): the
        #: supervisor treats it as a lost connection (broken_fileno).
        self._broken_r, self._broken_w = socket.socketpair()
        self._broken_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closing = False
        self._thread: Optional[threading.Thread] = None

    # -- set-up ------------------------------------------------------------------------------------
    def listen(self) -> None:
        """Listen on Jupyter's five ports (bound since the proxy's start: forwarder.reserve)."""
        busy = []
        for channel in CHANNELS:
            port = self.local[channel]  # type: ignore[literal-required]
            try:
                sock = _listen(Forward(local_port=port, remote_port=0, local_host=self.local["ip"]))
            except OSError:
                busy.append(port)
                continue
            self.listeners.append(sock)
            self.sel.register(sock, selectors.EVENT_READ, channel[: -len("_port")])
        if busy:
            self.close()
            raise BindError(f"cannot listen on {busy}", busy).tunnel_error(self.host)
        self._thread = threading.Thread(target=self._serve, name="channels", daemon=True)
        self._thread.start()

    # -- the stream ----------------------------------------------------------------------------------
    def resume(self, session: Any, timeout: float, *, first: bool = False) -> None:
        """Carry the connections over ``session`` (a new stream to the keeper, its greeting read):
        say what we hold of each, read what the keeper holds, send again what it lacks.
        Raises RemoteError if the keeper does not answer.

        ``first``: the kernel's first stream. Its keeper holds nothing of ours yet and opens
        every conn the hello lists, so the clients' bytes follow the hello at once and the
        keeper's answer is read when it comes (a round trip less before the first reply)."""
        assert session.stdin is not None and session.stdout is not None
        rfd, wfd = session.stdout.fileno(), session.stdin.fileno()
        with self.lock:
            listing = self.relay.listing()
        hello = op_line(Op.STREAM, token=self.token, conns=listing, limit=self.limit)
        try:
            os.set_blocking(wfd, True)
            os.write(wfd, hello)
            if not first:
                event, leftover = _read_answer(rfd, timeout)
        except (OSError, ValueError) as e:
            _close_session(session)
            raise RemoteError(f"the keeper on {self.host} did not take the kernel's channels: {e}",
                              host=self.host) from e
        if first:
            # A conn accepted since the listing is not in it: attach() sends its OPEN frame.
            with self.lock:
                self.session = session
                self.relay.attach(rfd, wfd, {number: 0 for number in listing},
                                  on_end=lambda: self._ended(session), preamble=self._first_answer)
            self._wake()
            return
        self._note_dropped(event)
        with self.lock:
            self.session = session  # the old one, if any, is closed by its on_end (_ended)
            self.relay.attach(rfd, wfd, event["conns"], leftover=leftover,
                              on_end=lambda: self._ended(session))
            if self.session is session:
                self.take_broken()  # an end noticed before this stream is not this stream's
        self._wake()

    def _first_answer(self, line: bytes) -> bool:
        """The relay's preamble on the first stream: lines until the keeper's answer (True),
        whose conns it could not open (-1: the kernel's socket not there yet) are closed, and
        ZeroMQ clients connect again."""
        event = _answer_event(line)
        if event is None:
            return False
        self._note_dropped(event)
        for number, have in event["conns"].items():
            conn = self.relay.conns.get(int(number))
            if conn is not None and have == -1:
                self.relay.drop_conn(conn, tell=False)
        return True

    def _note_dropped(self, event: dict) -> None:
        if event.get("dropped_messages"):
            self.note("while the connection was down the kernel printed more than the output buffer holds "
                      "(%s, --output-buffer): %d output messages (%s) were dropped, the oldest first; the "
                      "notebook shows where", describe_size(int(event.get("limit") or self.limit)),
                      event["dropped_messages"], describe_size(int(event.get("dropped_bytes") or 0)))

    def reopen(self, transport: Any, kernel: Any, timeout: float) -> None:
        """After a reconnect (the supervisor's Carrier): a new stream to the keeper, resumed."""
        self.resume(kernel.open_stream(timeout), timeout)

    def suspend(self) -> None:
        """The connection is lost: keep the clients and what they send, carry nothing."""
        with self.lock:
            self.session = None
            self.relay.detach()  # closes the session (_ended)
        self._wake()

    def _ended(self, session: Any) -> None:
        """The relay let go of the stream, the one place a stream's session is closed: replaced,
        suspended or closed (the session was taken off first), or ended by itself (the keeper
        closed it, a write failed): then say so."""
        if self.session is session:
            self.session = None
            try:
                self._broken_w.send(b"x")
            except OSError:
                pass
        threading.Thread(target=_close_session, args=(session,), daemon=True).start()

    def broken_fileno(self) -> Optional[int]:
        """Readable when the stream ended by itself while the connection seemed fine."""
        return self._broken_r.fileno()

    def take_broken(self) -> bool:
        try:
            return bool(self._broken_r.recv(4096))
        except OSError:
            return False

    # -- the thread --------------------------------------------------------------------------------
    def _serve(self) -> None:
        last_tick = 0.0
        while not self._closing:
            events = self.sel.select(TICK)
            with self.lock:
                if self._closing:
                    break
                for key, mask in events:
                    data = key.data
                    if data == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif isinstance(data, str):
                        self._accept(key.fileobj, data)  # type: ignore[arg-type]
                    else:
                        data[0].service(data[1], mask)
                now = time.monotonic()
                if now - last_tick >= TICK:
                    last_tick = now
                    self.relay.tick()

    def _accept(self, listener: socket.socket, channel: str) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        self.relay.add(self.opened, channel, sock)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the end -----------------------------------------------------------------------------------
    def close(self, *, forget: bool = False) -> None:
        """Stop serving: the listeners and the clients' connections close. ``forget``: tell the
        keeper (if reachable) to drop this proxy's connections too (a detach; a shutdown ends
        the kernel anyway)."""
        with self.lock:
            if self._closing:
                return
            self._closing = True
            if forget and self.relay.stream_w is not None:
                try:
                    os.set_blocking(self.relay.stream_w, True)
                    os.write(self.relay.stream_w, bytes(self.relay.outbuf) + frame(END, 0))
                except OSError:
                    pass
            self.session = None
            self.relay.close()  # closes the session (_ended)
            for sock in self.listeners:
                try:
                    self.sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
            self.listeners = []
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for sock in (self._wake_r, self._wake_w, self._broken_r, self._broken_w):
            sock.close()


def _answer_event(line: bytes) -> Optional[dict]:
    """The keeper's ``stream`` event if ``line`` is it; None for the lines before it (its
    ``log`` events to every client, until it knew this one was a stream). Raises ValueError
    for an error or anything unexpected."""
    event = json.loads(line)
    if not isinstance(event, dict):
        raise ValueError(f"unexpected answer {line[:200]!r}")
    if event.get("event") == Event.STREAM and isinstance(event.get("conns"), dict):
        return event
    if event.get("event") == Event.ERROR:
        raise ValueError(str(event.get("message")))
    return None


def _read_answer(fd: int, timeout: float) -> "tuple[dict, bytes]":
    """The keeper's ``stream`` event from ``fd`` (blocking, up to ``timeout``) and the bytes
    that followed it: the stream's first frames."""
    deadline = time.monotonic() + timeout
    data = b""
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in data:
                line, _, data = data.partition(b"\n")
                event = _answer_event(line)
                if event is not None:
                    return event, data
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise OSError("the stream ended")
            data += chunk


def _close_session(session: Any) -> None:
    try:
        end_process(session)
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass
    for stream in (session.stdin, session.stdout, session.stderr):
        try:
            if stream is not None:
                stream.close()
        except (OSError, ValueError):
            pass
