"""A small client of OpenSSH's control socket protocol (PROTOCOL.mux in OpenSSH's sources).

The shared master is asked things in-process instead of through ``ssh -O check/forward/cancel/
exit`` children: each of those would cost an ssh process start (tens of milliseconds, more on a
loaded machine) for a message of a few bytes. Spoken here: hello, alive check, terminate,
a remote-forward request used as a round-trip probe, and stdio forwards with descriptor passing
(forwarder.py). Sessions still go through an ``ssh`` mux client process, which relays their
stdio.

An open MuxClient also keeps the master alive under ControlPersist (it counts as a client), and
its socket reads end-of-file the moment the master exits: the transport's ``fileno()``.
"""
from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import struct
import time
from typing import Optional, Tuple

MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_C_OPEN_FWD = 0x10000006
MUX_C_CLOSE_FWD = 0x10000007
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_ALIVE = 0x80000005
MUX_S_REMOTE_PORT = 0x80000007
MUX_FWD_LOCAL = 1
MUX_FWD_REMOTE = 2
MUX_VERSION = 4
#: "Port" meaning the host field is a unix socket path.
PORT_STREAMLOCAL = 0xFFFFFFFE
#: A remote listen path no server can bind (its directory does not exist): asking for it costs
#: one round trip to the server and leaves nothing behind, whatever the server answers. Each
#: probe names its own file: the master answers a request for a forward it already has (or is
#: still asking the server about, for another proxy's probe) at once, without a round trip.
PROBE_DIR = "/nonexistent-ssh-ipykernel-probe"


class MuxError(Exception):
    """The master refused a request, or the control socket misbehaved."""


class MasterAbsent(MuxError):
    """Nothing listens on the control socket (no file, or a stale one left by a dead master)."""


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">I", len(data)) + data


class MuxClient:
    """One connection to a master's control socket. ``close()`` is safe to call twice."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.sock: Optional[socket.socket] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ids = itertools.count(1)
        self.eof = False
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self.close()
            raise MasterAbsent(f"no master listens on {path}: {e}") from e
        except OSError as e:
            self.close()
            if e.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                raise MasterAbsent(f"no master listens on {path}: {e}") from e
            raise MuxError(f"cannot connect to the control socket {path}: {e}") from e
        try:
            self._send(struct.pack(">II", MUX_MSG_HELLO, MUX_VERSION))
            kind, body = self._receive(timeout)
        except BaseException:
            self.close()
            raise
        if kind != MUX_MSG_HELLO or len(body) < 4:
            self.close()
            raise MuxError(f"unexpected hello from the master at {path}")
        version = struct.unpack(">I", body[:4])[0]
        if version != MUX_VERSION:
            self.close()
            raise MuxError(f"the master at {path} speaks mux protocol {version}, not {MUX_VERSION}")

    # -- framing ------------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(struct.pack(">I", len(payload)) + payload)
        except OSError as e:
            self.eof = True
            raise MuxError(f"the master at {self.path} went away: {e}") from e

    def _read_exactly(self, n: int, deadline: float) -> bytes:
        assert self.sock is not None
        data = b""
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout(f"the master at {self.path} did not answer in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                raise
            except OSError as e:
                self.eof = True
                raise MuxError(f"the master at {self.path} went away: {e}") from e
            if not chunk:
                self.eof = True
                raise MuxError(f"the master at {self.path} closed the control connection")
            data += chunk
        return data

    def _receive(self, timeout: float) -> Tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        try:
            length = struct.unpack(">I", self._read_exactly(4, deadline))[0]
            if not 4 <= length <= 256 * 1024:
                raise MuxError(f"bad message length {length} from the master at {self.path}")
            payload = self._read_exactly(length, deadline)
        except socket.timeout as e:
            # Half a message may be in flight: the connection cannot be trusted any more.
            self.close()
            raise MuxError(f"the master at {self.path} did not answer within {timeout:.1f} s") from e
        return struct.unpack(">I", payload[:4])[0], payload[4:]

    def request(self, kind: int, body: bytes = b"", timeout: float = 10.0) -> Tuple[int, bytes]:
        """Send one request; return the reply's type and what follows its request id."""
        if self.sock is None:
            raise MuxError(f"the control connection to {self.path} is closed")
        rid = next(self._ids)
        self._send(struct.pack(">II", kind, rid) + body)
        reply, rest = self._receive(timeout)
        if len(rest) < 4 or struct.unpack(">I", rest[:4])[0] != rid:
            self.close()
            raise MuxError(f"out-of-order reply from the master at {self.path}")
        rest = rest[4:]
        if reply in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
            length = struct.unpack(">I", rest[:4])[0] if len(rest) >= 4 else 0
            raise MuxError(rest[4:4 + length].decode("utf-8", "replace") or "refused")
        return reply, rest

    # -- requests -----------------------------------------------------------------------------------
    def alive_check(self, timeout: float = 10.0) -> int:
        """The master's pid (``ssh -O check``)."""
        reply, rest = self.request(MUX_C_ALIVE_CHECK, timeout=timeout)
        if reply != MUX_S_ALIVE or len(rest) < 4:
            raise MuxError(f"unexpected answer {reply:#x} to an alive check")
        return int(struct.unpack(">I", rest[:4])[0])

    @staticmethod
    def forward_body(kind: int, listen_host: str, listen_port: int, connect_host: str, connect_port: int) -> bytes:
        return (struct.pack(">I", kind) + _string(listen_host) + struct.pack(">I", listen_port)
                + _string(connect_host) + struct.pack(">I", connect_port))

    def send_stdio_forward(self, host: str, port: int, fd: int) -> None:
        """Ask the master to relay ``fd`` (a connected socket) to ``host:port`` on the remote,
        like ``ssh -W``; the answer is not awaited (it takes a round trip to the server).

        The master relays until either end closes, or until this control connection closes:
        the relayed connection lives no longer than whoever holds it. One per connection.
        """
        assert self.sock is not None
        body = struct.pack(">II", MUX_C_NEW_STDIO_FWD, next(self._ids)) + _string("") + _string(host) \
            + struct.pack(">I", port)
        self._send(body)
        try:
            # As ssh does: the descriptor for its stdin, then for its stdout, each with one byte.
            for _ in range(2):
                socket.send_fds(self.sock, [b"\0"], [fd])
        except OSError as e:
            self.eof = True
            raise MuxError(f"the master at {self.path} went away: {e}") from e

    def probe(self, timeout: float) -> bool:
        """Whether the server answers through the master within ``timeout``: one round trip.

        Asks for a remote unix-socket forward that cannot be bound (see PROBE_DIR). Refused or
        (impossibly) granted, an answer proves the connection alive; a granted one is undone.
        """
        path = f"{PROBE_DIR}/{os.getpid()}-{os.urandom(6).hex()}.sock"
        body = self.forward_body(MUX_FWD_REMOTE, path, PORT_STREAMLOCAL, path, PORT_STREAMLOCAL)
        try:
            self.request(MUX_C_OPEN_FWD, body, timeout)
        except MuxError as e:
            return not (self.eof or self.sock is None or "did not answer" in str(e))
        try:
            self.request(MUX_C_CLOSE_FWD, body, timeout)
        except MuxError:
            pass
        return True

    def terminate(self, timeout: float = 5.0) -> None:
        """Ask the master to exit at once (``ssh -O exit``)."""
        try:
            self.request(MUX_C_TERMINATE, timeout=timeout)
        except MuxError:
            if not self.eof:  # exiting before it could answer is an answer too
                raise

    # -- liveness -----------------------------------------------------------------------------------
    def fileno(self) -> Optional[int]:
        return None if self.sock is None else self.sock.fileno()

    def poll_eof(self) -> bool:
        """Read (without blocking) whatever arrived; True once the master has closed the socket."""
        if self.sock is None or self.eof:
            return True
        while True:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return True

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
