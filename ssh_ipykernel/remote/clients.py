"""The keeper's clients: proxies (and ``connect`` sessions) attached to its unix socket.

Each client is the keeper's end of one relay session (bootstrap.relay). This module owns the
socket side of the keeper: accepting, reading command lines, queueing event lines and writing
them without ever blocking the keeper, and dropping clients that are gone or read nothing.
What a command means is the keeper's business (keeper.py dispatches it).

A client that asks to carry a proxy's channels (the ``stream`` op) is released from here: its
socket then belongs to that proxy's relay (streams.py), and it no longer counts as attached.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import selectors
import time

from .protocol import event_line

MAX_BACKLOG = 4 << 20  # bytes queued for a client that reads nothing: it is dropped


class Client:
    """One attached proxy (its relay's end of the socket)."""

    def __init__(self, sock, now: float, number: int) -> None:
        self.sock = sock
        self.number = number
        self.inbuf = b""
        self.outbuf = bytearray()
        self.last_heard = now
        self.heard = False  # has it said anything yet
        self.released = False  # handed over (release()): its bytes are not ours to read any more


class Clients:
    """The attached clients, served from the keeper's selector.

    ``on_line(client, line)`` is called for each command line a client sends; ``note(text)``
    writes to the kernel's log (what the keeper says about its clients).
    """

    def __init__(self, sel: selectors.BaseSelector, *, on_line, note) -> None:
        self.sel = sel
        self.on_line = on_line
        self.note = note
        self.by_fd = {}  # type: dict
        self.accepted = 0

    def __bool__(self) -> bool:
        return bool(self.by_fd)

    def __iter__(self):
        return iter(list(self.by_fd.values()))

    def accept(self, listener) -> "Client | None":
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        sock.setblocking(False)
        self.accepted += 1
        client = Client(sock, time.monotonic(), self.accepted)
        self.by_fd[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, client)
        return client

    def service(self, client: Client, mask: int) -> None:
        """The selector says ``client`` is readable or writable."""
        if mask & selectors.EVENT_WRITE:
            self.write(client)
        if not mask & selectors.EVENT_READ or client.sock.fileno() not in self.by_fd:
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        client.last_heard = time.monotonic()
        if not client.heard and client.number > 1:  # not the probes of a starting session
            self.note("proxy %d attached" % client.number)
        client.heard = True
        client.inbuf += data
        while not client.released:
            line, newline, rest = client.inbuf.partition(b"\n")
            if not newline:
                break
            client.inbuf = rest
            if line.strip():
                self.on_line(client, line)

    def send(self, client: Client, event: str, **fields: object) -> None:
        client.outbuf += event_line(event, **fields)
        if len(client.outbuf) > MAX_BACKLOG:
            self.note("proxy %d reads nothing; dropping it" % client.number)
            self.drop(client)
            return
        self.write(client)

    def broadcast(self, event: str, **fields: object) -> None:
        for client in self:
            self.send(client, event, **fields)

    def write(self, client: Client) -> None:
        if client.sock.fileno() not in self.by_fd:
            return
        try:
            while client.outbuf:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop(client)
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        self.sel.modify(client.sock, mask, client)

    def flush(self, timeout: float) -> None:
        """Write what is queued, for up to ``timeout`` seconds (the keeper is about to end)."""
        deadline = time.monotonic() + timeout
        while any(c.outbuf for c in self) and time.monotonic() < deadline:
            for key, mask in self.sel.select(0.05):
                if isinstance(key.data, Client):
                    self.service(key.data, mask)

    def drop_silent(self, now: float, timeout: float) -> None:
        """Forget clients that said nothing for ``timeout`` seconds: a cut link gives no EOF."""
        for client in self:
            if now - client.last_heard > timeout:
                self.note("proxy %d silent for %.0f s; treating it as gone" % (client.number, timeout))
                self.drop(client)

    def release(self, client: Client):
        """Stop serving ``client`` and hand its socket over (what it sent after its last
        command line stays in ``client.inbuf``); it no longer counts as attached."""
        client.released = True
        self.by_fd.pop(client.sock.fileno(), None)
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        return client.sock

    def drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        if self.by_fd.pop(fd, None) is None:
            return
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def close(self) -> None:
        for client in self:
            self.drop(client)
