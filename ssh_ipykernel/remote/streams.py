"""Resumable channels: the kernel's connections carried over one stream, numbered and kept until
the other side has them, so that a lost SSH connection is a pause and nothing more.

Each ZeroMQ connection a Jupyter client makes to one of the proxy's five ports is a *conn*. The
proxy (channels.py) holds the client's end; the keeper holds a connection of its own to the
kernel's socket (a unix socket in a private directory, or a loopback port). In between, both
sides run a ``Relay`` over one stream to each other (an SSH channel to the keeper's unix
socket), which carries frames::

    kind (1 byte) | conn id (4 bytes) | length (4 bytes) | payload

``OPEN`` (proxy to keeper: the channel's name), ``DATA`` (bytes of the conn's stream), ``ACK``
(8 bytes: how many bytes of the conn's stream the sender now holds), ``CLOSE`` (this end of the
conn is gone; forget it) and ``END`` (proxy to keeper: forget this proxy's conns, it leaves).

Every byte a relay reads from its end of a conn stays in that conn's buffer until the other side
acknowledges it. When the stream is lost, both sides keep their ends open and keep reading
(the kernel's output piles up in the keeper, a cell run meanwhile in the proxy); the proxy opens
a new stream and says, per conn, how much it holds (the ``stream`` op); the keeper answers with
how much it holds (the ``stream`` event), and each side sends again what the other lacks. The
ZeroMQ sessions at both ends never notice: their byte streams continue exactly where they were.

The buffers are bounded (``limit`` bytes per relay). On the keeper's side the kernel's IOPub
output is parsed into ZeroMQ messages (ZMTP 3 framing) so that, when the limit is reached, the
oldest whole messages not yet sent are dropped and a signed ``stream`` message saying how many
takes their place, in the cell they belonged to. Other channels (replies, input requests) are
never dropped: the relay stops reading them until there is room.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8; the proxy
imports it too.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import time
from bisect import bisect_right
from collections import deque
from itertools import islice

HEADER = struct.Struct("!BII")
COUNT = struct.Struct("!Q")
OPEN, DATA, ACK, CLOSE, END = 1, 2, 3, 4, 5
KINDS = (OPEN, DATA, ACK, CLOSE, END)

READ_SIZE = 256 << 10  # one read from a conn's end or the stream
FRAME_MAX = 256 << 10  # payload of one DATA frame
STREAM_HIGH = 512 << 10  # framed bytes waiting for the stream before conns stop being framed
#: Acknowledge after this many bytes of a conn, and at every tick (0.1 s): an acknowledgement is an
#: SSH packet of its own, and what it frees is only memory (the limit is 64 MB).
ACK_EVERY = 2 << 20
#: The keeper's side of the stream asks for this socket send buffer (default 208 KB): what the
#: kernel prints goes to sshd in half as many writes and wake-ups, or fewer. Bytes in it count
#: as sent, like those in the SSH channel's window.
STREAM_SNDBUF = 1 << 20
IOV_PIECES = 256  # pieces of framed output in one writev (the system allows at least 1024)
DEFAULT_LIMIT = 64 << 20  # bytes kept per relay (--output-buffer)
#: The channels whose connections a relay may open (a conn's name on the wire).
CHANNEL_NAMES = ("shell", "iopub", "stdin", "control", "hb")

COALESCE_FROM = 100  # output messages kept for a client before they are merged on resume
COALESCE_MAX = 1 << 20  # characters of text in one merged message
GREETING = 64  # ZMTP 3 greeting: signature, version, mechanism, as-server, filler
MORE, LONG, COMMAND = 1, 2, 4
DELIMITER = b"<IDS|MSG>"


def frame(kind: int, conn: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, conn, len(payload)) + payload


def describe_size(size: int) -> str:
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if size >= 1 << shift:
            return "%.1f %s" % (size / float(1 << shift), unit)
    return "%d bytes" % size


class Messages:
    """Where the whole ZeroMQ messages are in the bytes a kernel sends on one IOPub connection.

    Fed each chunk as it is read (``feed``): bytes may be acknowledged and freed before a frame
    they begin is complete, so the parser keeps only a frame's header and skips its body.
    ``units`` holds (start, end, droppable) in the conn's stream offsets: the greeting and ZMTP
    commands are never dropped (False), a message (its frames up to the last) may be: True, or
    the number of the kernel's messages merged into it (Relay._coalesce), or (count, bytes) for
    a notice of ours that stands for that many dropped ones. A peer that does not speak ZMTP 3
    turns the parser off (nothing is ever dropped then).
    """

    def __init__(self) -> None:
        self.units = deque()  # type: deque
        self.pos = 0  # the stream offset of the next byte fed
        self.start = 0  # where the message being parsed began
        self.head = bytearray()  # the greeting's first bytes, or the current frame's header
        self.greeting = GREETING  # greeting bytes still to come
        self.skip = 0  # body bytes of the current frame still to come
        self.flags = 0
        self.frame_start = 0
        self.off = False

    def feed(self, data) -> None:
        if self.off:
            return
        i, n = 0, len(data)
        while i < n:
            if self.greeting:
                take = min(self.greeting, n - i)
                if len(self.head) < 11:
                    self.head += data[i:i + min(take, 11 - len(self.head))]
                i += take
                self.pos += take
                self.greeting -= take
                if not self.greeting:
                    if self.head[0] != 0xFF or self.head[10] < 3:  # not ZMTP 3: never split it
                        self.off = True
                        self.units.clear()
                        return
                    self.units.append((self.pos - GREETING, self.pos, False))
                    self.start = self.pos
                    self.head = bytearray()
                continue
            if self.skip:
                take = min(self.skip, n - i)
                i += take
                self.pos += take
                self.skip -= take
                if not self.skip:
                    self._frame_done()
                continue
            if not self.head:
                self.frame_start = self.pos
            want = 9 if (self.head[0] if self.head else data[i]) & LONG else 2
            take = min(want - len(self.head), n - i)
            self.head += data[i:i + take]
            i += take
            self.pos += take
            if len(self.head) == want:
                self.flags = self.head[0]
                self.skip = COUNT.unpack_from(self.head, 1)[0] if want == 9 else self.head[1]
                self.head = bytearray()
                if not self.skip:
                    self._frame_done()

    def _frame_done(self) -> None:
        if self.flags & COMMAND:
            self.units.append((self.frame_start, self.pos, False))
            self.start = self.pos
        elif not self.flags & MORE:
            self.units.append((self.start, self.pos, True))
            self.start = self.pos

    def shift(self, at: int, by: int) -> None:
        """Bytes were cut out (``by`` < 0) or put in before offset ``at`` (not yet parsed)."""
        self.pos += by
        self.start += by
        self.frame_start += by

    def forget(self, upto: int) -> None:
        """Units that end at or before ``upto`` (acknowledged) are no longer kept."""
        while self.units and self.units[0][1] <= upto:
            self.units.popleft()


def zmtp_frames(data: bytes) -> list:
    """The frames of one whole ZMTP message (bytes as the Messages parser delimited them)."""
    frames = []
    i = 0
    while i < len(data):
        flags = data[i]
        if flags & LONG:
            size, head = COUNT.unpack_from(data, i + 1)[0], 9
        else:
            size, head = data[i + 1], 2
        frames.append(bytes(data[i + head:i + head + size]))
        i += head + size
    return frames


def zmtp_message(frames: list) -> bytes:
    out = bytearray()
    for n, part in enumerate(frames):
        more = MORE if n < len(frames) - 1 else 0
        if len(part) > 255:
            out += bytes((more | LONG,)) + COUNT.pack(len(part))
        else:
            out += bytes((more, len(part)))
        out += part
    return bytes(out)


class Notice:
    """The signed IOPub ``stream`` message that stands where output was dropped."""

    def __init__(self, key: str, signature_scheme: str) -> None:
        self.key = key.encode()
        self.digest = (signature_scheme or "hmac-sha256").split("-", 1)[-1]
        self.session = os.urandom(16).hex()

    def message(self, parent: bytes, text: str, *, name: str = "stderr", header: "bytes | None" = None) -> bytes:
        """A signed ``stream`` message: ``header`` (raw) if given (a message this one stands
        for), else a new one of ours."""
        if header is None:
            header = json.dumps({
                "msg_id": os.urandom(16).hex(), "msg_type": "stream", "username": "ssh_ipykernel",
                "session": self.session, "version": "5.3",
                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            }).encode()
        parts = [header, parent or b"{}", b"{}", json.dumps({"name": name, "text": text}).encode()]
        if self.key:
            import hashlib  # only here: the proxy imports this module too, and needs neither
            import hmac

            mac = hmac.new(self.key, digestmod=getattr(hashlib, self.digest))
            for part in parts:
                mac.update(part)
            signature = mac.hexdigest().encode()
        else:
            signature = b""
        return zmtp_message([b"stream." + name.encode(), DELIMITER, signature] + parts)


def _stream_message(message: bytes):
    """(parent header, stream name, text, header) of a Jupyter ``stream`` message in ZMTP
    framing, raw headers as sent; None for any other message."""
    try:
        frames = zmtp_frames(message)
        i = frames.index(DELIMITER)
        if len(frames) != i + 6 or b'"stream"' not in frames[i + 2]:
            return None
        if json.loads(frames[i + 2]).get("msg_type") != "stream":
            return None
        content = json.loads(frames[i + 5])
        name, text = content.get("name"), content.get("text")
        if not isinstance(name, str) or not isinstance(text, str) or len(content) != 2:
            return None
        return frames[i + 3], name, text, frames[i + 2]
    except (ValueError, IndexError, struct.error, AttributeError):
        return None


def parent_of(message: bytes) -> bytes:
    """The parent header of a Jupyter message in ZMTP framing (b"" if it is not one)."""
    try:
        frames = zmtp_frames(message)
        return frames[frames.index(DELIMITER) + 3]
    except (ValueError, IndexError, struct.error):
        return b""


class Held:
    """A conn's bytes not acknowledged yet, kept as the chunks they were read in.

    A bytearray is a poor queue for this: cutting its front and growing it again copies all it
    holds (CPython moves the data to a new allocation whenever a bytearray whose front was cut
    needs more room), so a relay holding a few MB in flight copied them several times over for
    every 2 MB acknowledged. Chunks are appended as read (no copy) and let go whole when
    acknowledged; a chunk is found by bisection (a kernel printing a line at a time makes
    thousands of small ones). Slicing (``held[a:b]``, bytes) and replacing the end
    (``held[a:] = data``) are for the rare paths that rewrite output (dropping, merging).
    Offsets are from the first byte held."""

    def __init__(self) -> None:
        self.chunks = []  # type: list
        self.starts = []  # type: list  # where each chunk begins, counted in bytes ever appended
        self.first = 0  # the chunks before this one were let go
        self.low = 0  # bytes ever let go
        self.high = 0  # bytes ever appended

    def __len__(self) -> int:
        return self.high - self.low

    def append(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.starts.append(self.high)
            self.high += len(data)

    def cut(self, n: int) -> None:
        """Let go of the first ``n`` bytes."""
        self.low = min(self.low + n, self.high)
        chunks, starts, first = self.chunks, self.starts, self.first
        while first < len(chunks) and starts[first] + len(chunks[first]) <= self.low:
            chunks[first] = b""
            first += 1
        if first == len(chunks) or (first >= 64 and 2 * first > len(chunks)):
            del chunks[:first]
            del starts[:first]
            first = 0
        self.first = first

    def views(self, start: int, n: int):
        """Memoryviews of the ``n`` bytes from ``start`` on, chunk by chunk."""
        at = self.low + start
        end = min(at + n, self.high)
        k = bisect_right(self.starts, at, self.first) - 1
        while at < end:
            chunk = self.chunks[k]
            offset = at - self.starts[k]
            take = min(len(chunk) - offset, end - at)
            yield memoryview(chunk)[offset:offset + take]
            at += take
            k += 1

    def __getitem__(self, index: slice) -> bytes:
        start, stop, _ = index.indices(len(self))
        return b"".join(self.views(start, stop - start))

    def __setitem__(self, index: slice, data) -> None:
        """``held[start:] = data``: the bytes from ``start`` on become ``data``."""
        assert index.stop is None
        kept = self[:min(index.start or 0, len(self))]
        self.chunks, self.starts, self.first = [], [], 0
        self.high = self.low
        self.append(kept)
        self.append(bytes(data))


class Outgoing:
    """The framed bytes waiting for the stream, as the pieces they were framed from (headers,
    and views of the conns' held chunks): written with one writev, never copied into one buffer
    (which also meant moving what was left after every short write)."""

    def __init__(self, first: bytes = b"") -> None:
        self.pieces = deque()  # type: deque
        self.size = 0
        self += first

    def __len__(self) -> int:
        return self.size

    def __iadd__(self, data) -> "Outgoing":
        if data:
            self.pieces.append(data)
            self.size += len(data)
        return self

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)

    def write(self, fd: int) -> bool:
        """One writev of what is waiting (up to IOV_PIECES pieces); whether ``fd`` took less
        than it was offered (it is full)."""
        pieces = self.pieces
        offered = list(islice(pieces, IOV_PIECES))
        sent = os.writev(fd, offered)
        short = sent < sum(len(piece) for piece in offered)
        self.size -= sent
        left = sent
        while left:
            size = len(pieces[0])
            if left < size:
                pieces[0] = memoryview(pieces[0])[left:]
                break
            pieces.popleft()
            left -= size
        return short


class Conn:
    """One ZeroMQ connection: our end of it (``sock``) and its bytes in both directions."""

    def __init__(self, number: int, channel: str, sock) -> None:
        self.number = number
        self.channel = channel
        self.sock = sock
        self.buf = Held()  # bytes from our end, from offset ``base`` on, not acknowledged yet
        self.base = 0
        self.sent = 0  # framed onto the current stream up to this offset
        self.received = 0  # bytes of the other side's stream we hold
        self.told = 0  # the last count we acknowledged
        self.out = bytearray()  # received, not yet written to our end
        self.eof = False  # our end is gone: no more bytes; CLOSE once the rest is sent
        self.messages = None  # type: Messages | None
        self.paused = False  # not read from: the relay is over its limit

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def unsent(self) -> int:
        return self.end - self.sent

    def trim(self, upto: int) -> None:
        """The other side holds everything before ``upto``."""
        if upto > self.base:
            upto = min(upto, self.end)
            self.buf.cut(upto - self.base)
            self.base = upto
            if self.sent < upto:
                self.sent = upto
            if self.messages is not None:
                self.messages.forget(upto)


class Relay:
    """One side of the resumable channels: conns, and the stream while there is one.

    ``sel``: the selector of the loop that serves it (keys carry ``(relay, conn)`` as data,
    ``conn`` None for the stream); call ``service(key.data[1], mask)`` for them and ``tick()``
    now and then. ``open_conn(number, channel)`` (the keeper's side) makes the kernel-side
    socket for a conn the peer opened, or returns None. ``note(text)`` logs.
    """

    def __init__(self, sel, *, limit: int = DEFAULT_LIMIT, note=lambda text: None, open_conn=None,
                 notice: "Notice | None" = None) -> None:
        self.sel = sel
        self.limit = limit
        self.note = note
        self.open_conn = open_conn
        self.notice = notice
        self.conns = {}  # type: dict
        self.stream_r = None  # type: int | None  (descriptors: a socket's twice, or a session's pipes)
        self.stream_w = None  # type: int | None
        self.on_stream_end = None
        self.inbuf = bytearray()  # the stream's bytes read and not acted on yet: an incomplete frame
        self._rbuf = bytearray(READ_SIZE)  # what the stream is read into
        self._rest = 0  # bytes of the current data frame's payload still to come, for conn _rest_conn
        self._rest_conn = 0
        self.outbuf = Outgoing()
        self._masks = {}  # type: dict  # the stream's descriptors: what the selector watches for
        self.buffered = 0  # bytes in all conns' buffers
        self.dropped = 0  # messages dropped since the last stream answer (keeper side)
        self.dropped_bytes = 0
        self._closed_pending = []  # type: list
        self._cursor = 0  # round robin over conns when framing
        self.ended = False  # the proxy said END: forget this relay
        self.detached_at = None  # type: float | None  # monotonic: when its last stream went
        #: ``preamble(line)``: lines that come before the stream's frames, read while frames are
        #: already sent (the proxy's first stream does not wait for the keeper's answer). Returns
        #: True for the last line; raises ValueError for a stream to give up.
        self.preamble = None

    # -- conns -------------------------------------------------------------------------------------
    def add(self, number: int, channel: str, sock) -> Conn:
        conn = Conn(number, channel, sock)
        if channel == "iopub" and self.notice is not None:
            conn.messages = Messages()  # the kernel's output: whole messages may be dropped
        self.conns[number] = conn
        if sock is not None:
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, (self, conn))
        if self.stream_w is not None and self.open_conn is None:
            self._control(frame(OPEN, number, channel.encode()))
        return conn

    def _watch(self, conn: Conn) -> None:
        if conn.sock is None:
            return
        mask = 0 if (conn.eof or conn.paused) else selectors.EVENT_READ
        if conn.out:
            mask |= selectors.EVENT_WRITE
        try:
            if mask:
                self.sel.modify(conn.sock, mask, (self, conn))
            else:
                self.sel.unregister(conn.sock)
        except KeyError:
            if mask:
                self.sel.register(conn.sock, mask, (self, conn))

    def _end_sock(self, conn: Conn) -> None:
        if conn.sock is not None:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
            conn.sock = None

    def drop_conn(self, conn: Conn, tell: bool) -> None:
        """Forget ``conn``; ``tell``: send CLOSE so that the other side forgets it too."""
        self._end_sock(conn)
        if self.conns.pop(conn.number, None) is not None:
            self.buffered -= len(conn.buf)
            if tell:
                self._control(frame(CLOSE, conn.number))

    # -- the stream --------------------------------------------------------------------------------
    def listing(self) -> dict:
        """What the proxy says when it opens a stream: each conn's channel and what it holds."""
        return {str(n): [c.channel, c.received] for n, c in self.conns.items()}

    def answer(self, listing: dict) -> dict:
        """The keeper's side of opening a stream: adopt the proxy's conns (open the new ones,
        forget those it no longer has) and say what we hold of each (-1: gone)."""
        self.detach()
        reply = {}
        wanted = {}
        for key, value in listing.items():
            try:
                number, channel, have = int(key), str(value[0]), int(value[1])
            except (TypeError, ValueError, IndexError):
                continue
            wanted[number] = (channel, have)
        for number, conn in list(self.conns.items()):
            if number not in wanted:
                self.drop_conn(conn, tell=False)
        for number, (channel, have) in wanted.items():
            conn = self.conns.get(number)
            if conn is None:
                if have != 0 or channel not in CHANNEL_NAMES:
                    reply[str(number)] = -1
                    continue
                sock = self.open_conn(number, channel) if self.open_conn else None
                if sock is None:
                    reply[str(number)] = -1
                    continue
                conn = self.add(number, channel, sock)
            if have > conn.end:
                # It holds bytes we never sent: not the same conn. Let it go.
                self.drop_conn(conn, tell=False)
                reply[str(number)] = -1
                continue
            reply[str(number)] = conn.received
            self._trim(conn, have)
        return reply

    def attach(self, rfd: int, wfd: int, haves: dict, *, leftover: bytes = b"", first: bytes = b"",
               on_end=None, preamble=None) -> None:
        """Use a new stream; ``haves``: what the other side holds of each conn (-1: it has no
        such conn). Sends again everything it lacks, from there on. ``leftover``: bytes already
        read from the stream; ``first``: bytes to send before any frame (the keeper's answer);
        ``preamble``: see the attribute."""
        self.detach()
        self.stream_r, self.stream_w, self.on_stream_end = rfd, wfd, on_end
        self.preamble = preamble
        self.detached_at = None
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.inbuf = bytearray(leftover)
        self._rest = 0
        self.outbuf = Outgoing(first)
        for number, conn in list(self.conns.items()):
            have = haves.get(str(number))
            if have is None and self.open_conn is None:
                self._control(frame(OPEN, number, conn.channel.encode()))
                have = 0
            if have is None or have < 0:
                self.drop_conn(conn, tell=False)
                continue
            self._trim(conn, have)
            conn.sent = conn.base
            if self._droppable(conn) and self.notice is not None:
                self._coalesce(conn)
        self._register_stream()
        for conn in list(self.conns.values()):
            self._flush_out(conn)
        self._parse()
        self._pump()

    def _backlogged(self) -> bool:
        """Whether what waits for our ends to read it passed the limit: the stream is not read
        until they catch up (a client that reads nothing holds up its proxy's other conns, but
        memory stays bounded)."""
        return sum(len(c.out) for c in self.conns.values()) > self.limit

    def _register_stream(self) -> None:
        read = 0 if self._backlogged() else selectors.EVENT_READ
        if self.stream_r == self.stream_w:
            mask = read | (selectors.EVENT_WRITE if self.outbuf else 0)
            self._set(self.stream_r, mask)
        else:
            self._set(self.stream_r, read)
            self._set(self.stream_w, selectors.EVENT_WRITE if self.outbuf else 0)

    def _set(self, fd, mask: int) -> None:
        if fd is None or self._masks.get(fd) == mask:
            return  # as it is (this runs after every write to the stream)
        self._masks[fd] = mask
        try:
            if mask:
                self.sel.modify(fd, mask, (self, None))
            else:
                self.sel.unregister(fd)
        except KeyError:
            if mask:
                self.sel.register(fd, mask, (self, None))

    def detach(self) -> None:
        """The stream is gone (or being replaced): keep every conn, send nothing until attach."""
        for fd in {self.stream_r, self.stream_w} - {None}:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._masks = {}
        on_end, self.on_stream_end = self.on_stream_end, None
        if self.stream_w is not None:
            self.detached_at = time.monotonic()
        self.stream_r = self.stream_w = None
        self.preamble = None
        self.outbuf = Outgoing()
        self.inbuf = bytearray()
        self._rest = 0
        if on_end is not None:
            on_end()

    def close(self) -> None:
        self.detach()
        for conn in list(self.conns.values()):
            self.drop_conn(conn, tell=False)

    # -- the loop's calls --------------------------------------------------------------------------
    def service(self, conn, mask: int) -> None:
        if conn is None:
            if mask & selectors.EVENT_WRITE:
                self._write_stream()
            if mask & selectors.EVENT_READ and self.stream_r is not None:
                self._read_stream()
            return
        if conn.number not in self.conns:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_out(conn)
        if mask & selectors.EVENT_READ and conn.sock is not None:
            self._read_conn(conn)

    def tick(self) -> None:
        """Acknowledge what arrived since the last acknowledgement (the other side frees it)."""
        if self.stream_w is None:
            return
        for conn in self.conns.values():
            if conn.received > conn.told:
                self._ack(conn)
        self._write_stream()

    # -- reading our ends --------------------------------------------------------------------------
    def _read_conn(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            conn.eof = True
            self._end_sock(conn)
            if not conn.unsent() and self.stream_w is not None:
                self.drop_conn(conn, tell=True)
            self._pump()
            return
        conn.buf.append(data)
        self.buffered += len(data)
        if conn.messages is not None:
            conn.messages.feed(data)
        if self.unsent() > self.limit:
            self._over_limit()
        self._pump()

    def unsent(self) -> int:
        """Bytes read from our ends and not sent yet. What was sent and not acknowledged is
        not counted: it is bounded by what the stream holds (a cut link's SSH window), and it
        cannot be dropped (the other side may have it)."""
        return sum(conn.unsent() for conn in self.conns.values())

    def _droppable(self, conn: Conn) -> bool:
        return conn.messages is not None and not conn.messages.off

    def _over_limit(self) -> None:
        """Drop the oldest whole IOPub messages not sent yet, down to half the limit. IOPub is
        never paused (the kernel's publisher would drop what follows, silently); the other
        channels, whose messages are never dropped, are not read until there is room."""
        need = self.unsent() - self.limit // 2
        for conn in self.conns.values():
            if need <= 0:
                break
            if self._droppable(conn):
                need -= self._drop_messages(conn, need)
        self._check_room()

    def _check_room(self) -> None:
        """Pause or resume reading the conns that cannot drop, by what is unsent."""
        paused = self.unsent() > self.limit
        for conn in self.conns.values():
            want = paused and not self._droppable(conn)
            if conn.paused != want:
                conn.paused = want
                self._watch(conn)

    def _drop_messages(self, conn: Conn, need: int) -> int:
        """Cut up to ``need`` bytes of whole unsent messages out of ``conn``; one notice takes
        their place (it absorbs an earlier notice in the range). Returns the bytes freed.

        Only the unsent end of the buffer and its units are touched: the kernel keeps writing
        meanwhile, and a keeper that stalls lets the kernel's publisher drop (silently) what its
        socket's queue cannot hold."""
        messages = conn.messages
        assert messages is not None
        units = messages.units
        pending = []
        while units and units[-1][0] >= conn.sent:
            pending.append(units.pop())
        pending.reverse()
        if not any(u[2] for u in pending):
            units.extend(pending)
            return 0
        region = cursor = pending[0][0]
        base = region
        held = memoryview(conn.buf[region - conn.base:])  # the unsent end, once (not per message)
        out = bytearray()
        kept = []
        removed = count = size = fresh = 0
        at = None
        parent = b""
        for start, stop, droppable in pending:
            if droppable and removed < need:
                out += held[cursor - base:start - base]
                if at is None:
                    at = start - removed
                    parent = parent_of(held[start - base:stop - base])
                if isinstance(droppable, tuple):  # an earlier notice: its count goes into the new one
                    count += droppable[0]
                    size += droppable[1]
                else:  # a message: True, or the number of messages merged into it
                    count += int(droppable)
                    fresh += int(droppable)
                    size += stop - start
                cursor = stop
                removed += stop - start
            else:
                kept.append((start - removed, stop - removed, droppable))
        assert at is not None
        out += held[cursor - base:]
        text = ("[ssh_ipykernel] %d output messages (%s) were dropped here: nobody could receive them "
                "and they passed the output buffer (%s, --output-buffer).\n"
                % (count, describe_size(size), describe_size(self.limit)))
        insert = self.notice.message(parent, text) if self.notice is not None else b""
        out[at - region:at - region] = insert
        units.extend(u for u in kept if u[0] < at)
        if insert:
            units.append((at, at + len(insert), (count, size)))
        units.extend((u[0] + len(insert), u[1] + len(insert), u[2]) for u in kept if u[0] >= at)
        conn.buf[region - conn.base:] = out
        shift = len(insert) - removed
        messages.shift(cursor, shift)
        self.buffered += shift
        self.dropped += fresh
        self.dropped_bytes += size
        self.note("dropped %d output messages (%s) of a %s connection: the output buffer (%s) was full"
                  % (count, describe_size(size), conn.channel, describe_size(self.limit)))
        return -shift

    def _coalesce(self, conn: Conn) -> None:
        """Before output kept during an outage goes out: runs of ``stream`` messages of one
        cell and one stream (stdout, stderr) become one message each, signed again. A client's
        SUB socket holds 1000 messages and drops what comes beyond that, silently: a cell that
        printed a line at a time through a long outage would otherwise arrive as a burst of
        thousands of messages and lose some."""
        messages = conn.messages
        assert messages is not None and self.notice is not None
        units = list(messages.units)
        pending = [u for u in units if u[0] >= conn.sent]
        if len(pending) < COALESCE_FROM:
            return
        out = bytearray()
        # From the first whole message on: the one the other side holds the beginning of is
        # left alone, bytes and all.
        start = cursor = pending[0][0]
        new_units = deque(u for u in units if u[0] < start)
        run = []  # type: list  # (parent, name, text) of the stream messages being merged
        merged = 0

        def flush_run() -> None:
            nonlocal merged
            if not run:
                return
            weight = True
            if len(run) == 1:
                data = run[0][4]
            else:
                weight = len(run)
                parent, name, _, header, _ = run[0]
                data = self.notice.message(parent, "".join(r[2] for r in run), name=name, header=header)
                merged += len(run) - 1
            at = start + len(out)
            out.extend(data)
            new_units.append((at, at + len(data), weight))
            del run[:]

        size = 0
        held = conn.buf[start - conn.base:]  # once, not per message
        for unit_start, unit_stop, droppable in pending:
            data = held[unit_start - start:unit_stop - start]
            cursor = unit_stop
            info = _stream_message(data) if droppable is True else None
            if info is not None and run and info[:2] == run[0][:2] and size < COALESCE_MAX:
                run.append(info + (data,))
                size += len(info[2])
                continue
            flush_run()
            if info is not None:
                run.append(info + (data,))
                size = len(info[2])
                continue
            at = start + len(out)
            out.extend(data)
            new_units.append((at, at + len(data), droppable))
        flush_run()
        if not merged:
            return
        tail = held[cursor - start:]
        shift = len(out) - (cursor - start)
        conn.buf[start - conn.base:] = out + tail
        messages.units = new_units
        messages.shift(cursor, shift)
        self.buffered += shift

    # -- writing our ends --------------------------------------------------------------------------
    def _deliver(self, conn: Conn, payload) -> None:
        conn.received += len(payload)
        if conn.sock is None:
            return
        if not conn.out:
            try:
                sent = conn.sock.send(payload)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lost_end(conn)
                return
            if sent == len(payload):
                return
            payload = payload[sent:]
        conn.out += payload
        self._watch(conn)

    def _flush_out(self, conn: Conn) -> None:
        if conn.sock is None or not conn.out:
            return
        backlogged = len(conn.out) > self.limit // 2
        try:
            sent = conn.sock.send(conn.out)
            del conn.out[:sent]
            if not conn.out:
                conn.out = bytearray()  # let a large buffer go (a bytearray keeps its capacity)
            if backlogged and self.stream_r is not None:
                self._register_stream()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._lost_end(conn)
            return
        self._watch(conn)

    def _lost_end(self, conn: Conn) -> None:
        conn.eof = True
        conn.out = bytearray()
        self._end_sock(conn)
        if not conn.unsent() and self.stream_w is not None:
            self.drop_conn(conn, tell=True)

    # -- the stream's bytes ------------------------------------------------------------------------
    def _read_stream(self) -> None:
        if self._backlogged():
            return
        try:
            n = os.readv(self.stream_r, [self._rbuf])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self.detach()
            return
        with memoryview(self._rbuf) as view, view[:n] as data:
            self._parse(data)
        self._write_stream()

    def _read_preamble(self) -> bool:
        """Pass the lines before the frames to ``preamble``; whether the frames have begun."""
        while self.preamble is not None:
            end = self.inbuf.find(b"\n")
            if end < 0:
                return False
            line = bytes(self.inbuf[:end])
            del self.inbuf[:end + 1]
            try:
                if self.preamble(line):
                    self.preamble = None
            except ValueError as e:
                self.note("the stream's answer: %s" % e)
                self.detach()
                return False
        return self.stream_r is not None

    def _parse(self, data=None) -> None:
        """Act on the frames in ``inbuf`` and then ``data`` (just read: used in place, only an
        incomplete frame's head is kept). A data frame's payload goes to its conn as it comes,
        not once the whole frame is in: nothing piles up here, and the client has it sooner."""
        if data is not None and (self.inbuf or self.preamble is not None):
            self.inbuf += data
            data = None
        if self.preamble is not None and not self._read_preamble():
            return
        if data is None:
            data = self.inbuf
        stream = self.stream_r
        view = memoryview(data)
        i, n = 0, len(view)
        touched = set()
        while i < n and self.stream_r == stream:
            if self._rest:  # more of a data frame's payload
                take = min(self._rest, n - i)
                self._rest -= take
                conn = self.conns.get(self._rest_conn)
                if conn is not None:
                    with view[i:i + take] as payload:
                        self._deliver(conn, payload)  # copied only if our end cannot take it at once
                    touched.add(conn)
                i += take
                continue
            if n - i < HEADER.size:
                break
            kind, number, size = HEADER.unpack_from(view, i)
            if kind == DATA:
                i += HEADER.size
                self._rest, self._rest_conn = size, number
                continue
            if n - i - HEADER.size < size:
                break
            payload = view[i + HEADER.size:i + HEADER.size + size]
            i += HEADER.size + size
            conn = self.conns.get(number)
            if kind == ACK:
                if conn is not None:
                    self._trim(conn, COUNT.unpack(payload)[0])
            elif kind == OPEN:
                if conn is None and self.open_conn is not None:
                    channel = bytes(payload).decode("ascii", "replace")
                    sock = self.open_conn(number, channel) if channel in CHANNEL_NAMES else None
                    if sock is None:
                        self._control(frame(CLOSE, number))
                    else:
                        self.add(number, channel, sock)
            elif kind == CLOSE:
                if conn is not None:
                    self._flush_out(conn)
                    self.drop_conn(conn, tell=False)
            elif kind == END:
                payload.release()
                view.release()
                self.ended = True
                self.close()
                return
            payload.release()
        rest = bytes(view[i:]) if self.stream_r == stream and i < n else b""
        view.release()
        if data is self.inbuf or rest or self.inbuf:
            self.inbuf = bytearray(rest)  # a frame's head, or a whole small frame, at most
        for conn in touched:
            if conn.received - conn.told >= ACK_EVERY:
                self._ack(conn)
        self._pump()

    def _trim(self, conn: Conn, upto: int) -> None:
        before = len(conn.buf)
        conn.trim(upto)
        self.buffered -= before - len(conn.buf)
        if conn.eof and not conn.unsent() and self.stream_w is not None and conn.number in self.conns:
            self.drop_conn(conn, tell=True)
        if any(c.paused for c in self.conns.values()):
            self._check_room()

    def _ack(self, conn: Conn) -> None:
        conn.told = conn.received
        self.outbuf += frame(ACK, conn.number, COUNT.pack(conn.received))

    def _control(self, data: bytes) -> None:
        if self.stream_w is not None:
            self.outbuf += data
            self._write_stream()

    def _pump(self) -> None:
        self._frame()
        self._write_stream()

    def _frame(self) -> bool:
        """Frame unsent bytes of the conns onto the stream, round robin, up to STREAM_HIGH;
        whether anything was framed."""
        if self.stream_w is None:
            return False
        framed = False
        conns = list(self.conns.values())
        while len(self.outbuf) < STREAM_HIGH and conns:
            busy = False
            for k in range(len(conns)):
                conn = conns[(self._cursor + k) % len(conns)]
                n = min(conn.unsent(), FRAME_MAX)
                if n <= 0:
                    continue
                busy = framed = True
                i = conn.sent - conn.base
                self.outbuf += HEADER.pack(DATA, conn.number, n)
                for view in conn.buf.views(i, n):
                    self.outbuf += view
                conn.sent += n
                if len(self.outbuf) >= STREAM_HIGH:
                    self._cursor = (self._cursor + k + 1) % len(conns)
                    break
            if not busy:
                break
        for conn in conns:
            if conn.eof and not conn.unsent() and conn.number in self.conns:
                self.drop_conn(conn, tell=True)
        if framed and any(c.paused for c in self.conns.values()):
            self._check_room()
        return framed

    def _write_stream(self) -> None:
        while self.stream_w is not None:
            if len(self.outbuf) < STREAM_HIGH // 2:
                self._frame()
            if not self.outbuf:
                break
            try:
                short = self.outbuf.write(self.stream_w)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.detach()
                return
            if short:
                break  # full: wait until the selector says it takes more, instead of failing writes
        self._register_stream()


def connect_endpoint(address) -> "socket.socket | None":
    """A connection to a kernel's socket: ("unix", path) or ("tcp", host, port); None if it
    does not answer (not bound yet, or gone)."""
    if address[0] == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address[1]
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[1] else socket.AF_INET, socket.SOCK_STREAM)
        target = (address[1], address[2])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(2.0)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        return None
    return sock
