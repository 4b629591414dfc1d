"""paramiko channels made to look like what the rest of the proxy expects.

``ChannelProcess``: a session channel running a remote command, shaped like subprocess.Popen
(stdin/stdout/stderr, poll, wait, terminate). The launcher and the supervisor select() on its
stdout and stderr and write its stdin, so they are real OS pipes, pumped by threads.

``ChannelForwarder``: local listeners owned by the proxy; every accepted connection is relayed
over a direct-tcpip channel. They are closed with the proxy (they live in its process), so a
proxy killed with SIGKILL leaves no port bound.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from typing import IO, Dict, List, Optional, Set, Tuple

import paramiko

from .base import Forward
from .forwarder import Listeners

log = logging.getLogger(__name__)

CHUNK = 65536


def _pump_out(read, fd: int) -> None:
    """Copy channel data (``read(n)`` -> bytes, b'' at end) to the pipe ``fd``, then close it."""
    try:
        while True:
            data = read(CHUNK)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the reader closed its end, or the channel broke: nothing more to copy
    finally:
        os.close(fd)


class ChannelProcess:
    """A remote command on a paramiko session channel, used like a subprocess.Popen."""

    def __init__(self, channel: paramiko.Channel, command: str) -> None:
        self.channel = channel
        self.args = command
        self.pid = 0
        self.returncode: Optional[int] = None
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdin: IO[bytes] = os.fdopen(in_w, "wb")
        self.stdout: IO[bytes] = os.fdopen(out_r, "rb", buffering=0)
        self.stderr: IO[bytes] = os.fdopen(err_r, "rb", buffering=0)
        channel.exec_command(command)
        self._threads = [
            threading.Thread(target=self._pump_in, args=(in_r,), daemon=True, name="sik-stdin"),
            threading.Thread(target=_pump_out, args=(channel.recv, out_w), daemon=True, name="sik-stdout"),
            threading.Thread(target=_pump_out, args=(channel.recv_stderr, err_w), daemon=True, name="sik-stderr"),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_in(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    self.channel.shutdown_write()  # EOF to the remote command, as ssh does
                    return
                self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            os.close(fd)

    def poll(self) -> Optional[int]:
        if self.returncode is None and self.channel.exit_status_ready():
            status = self.channel.recv_exit_status()
            # -1: the channel closed without an exit status (connection lost); ssh says 255.
            self.returncode = 255 if status < 0 else status
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is None:
            if not self.channel.status_event.wait(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def communicate(self, input: Optional[bytes] = None, timeout: Optional[float] = None) -> Tuple[bytes, bytes]:
        """As Popen.communicate: send ``input``, close stdin, read both streams to their end."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def feed() -> None:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except (OSError, ValueError):
                pass

        writer = threading.Thread(target=feed, daemon=True, name="sik-communicate")
        writer.start()
        chunks: Dict[int, List[bytes]] = {self.stdout.fileno(): [], self.stderr.fileno(): []}
        with selectors.DefaultSelector() as sel:
            for fd in chunks:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                for key, _ in sel.select(remaining):
                    data = os.read(key.fd, CHUNK)
                    if data:
                        chunks[key.fd].append(data)
                    else:
                        sel.unregister(key.fd)
        writer.join(1)
        self.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
        return b"".join(chunks[self.stdout.fileno()]), b"".join(chunks[self.stderr.fileno()])

    def terminate(self) -> None:
        """Close the channel (sshd then hangs up the remote command, as when ssh is killed)."""
        if self.returncode is None and not self.channel.exit_status_ready():
            self.returncode = -15
        self.channel.close()

    kill = terminate

    def send_signal(self, signum: int) -> None:
        self.terminate()


class ChannelForwarder(Listeners):
    """Each accepted connection relayed over a direct-tcpip channel (see the module's docstring)."""

    thread_name = "sik-pm-forwarder"

    def __init__(self, transport: paramiko.Transport, *, window_size: Optional[int] = None) -> None:
        super().__init__()
        self.transport = transport
        self.window_size = window_size
        self._relays: Dict[Forward, Set["_Relay"]] = {}

    def _take(self, conn: socket.socket, fwd: Forward) -> None:
        # Opening a channel is a round trip: not in the listeners' thread, so one slow open
        # does not hold up the other ports.
        threading.Thread(target=self._open, args=(conn, fwd), daemon=True, name="sik-pm-open").start()

    def _cut(self, forwards: Optional[Set[Forward]]) -> None:
        for fwd in list(self._relays) if forwards is None else forwards:
            for relay in self._relays.pop(fwd, set()):
                relay.close()

    def _open(self, conn: socket.socket, fwd: Forward) -> None:
        try:
            channel = self.transport.open_channel(
                "direct-tcpip", (fwd.remote_host, fwd.remote_port), conn.getpeername()[:2],
                window_size=self.window_size, timeout=10.0,
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            # Refused by the server (nothing listens there) or the connection is gone: the
            # client sees its connection close and retries; the supervisor reconnects.
            log.debug("cannot forward a connection on %s: %s", fwd.spec(), e)
            conn.close()
            return
        relay = _Relay(conn, channel, self._forget, fwd)
        with self._lock:
            if not self._wanted(fwd):
                relay.close()
                return
            self._relays.setdefault(fwd, set()).add(relay)
        relay.start()

    def _forget(self, relay: "_Relay") -> None:
        with self._lock:
            self._relays.get(relay.forward, set()).discard(relay)


class _Relay:
    """One forwarded connection: a thread per direction, both ended by close()."""

    def __init__(self, conn: socket.socket, channel: paramiko.Channel, on_end, forward: Forward) -> None:
        self.conn, self.channel, self.on_end, self.forward = conn, channel, on_end, forward
        self._closed = False
        self._lock = threading.Lock()
        self._ended = 0

    def start(self) -> None:
        threading.Thread(target=self._up, daemon=True, name="sik-pm-up").start()
        threading.Thread(target=self._down, daemon=True, name="sik-pm-down").start()

    def _up(self) -> None:  # local client -> remote
        try:
            while True:
                data = self.conn.recv(CHUNK)
                if not data:
                    self.channel.shutdown_write()
                    break
                self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            self.close()  # reset or broken: the other direction must not wait for ever
        self._end()

    def _down(self) -> None:  # remote -> local client
        try:
            while True:
                data = self.channel.recv(CHUNK)
                if not data:
                    self.conn.shutdown(socket.SHUT_WR)
                    break
                self.conn.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            self.close()
        self._end()

    def _end(self) -> None:
        with self._lock:
            self._ended += 1
            done = self._ended >= 2
        if done:
            self.close()
            self.on_end(self)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.conn.shutdown(socket.SHUT_RDWR)  # wakes our thread blocked in recv()
        except OSError:
            pass
        self.conn.close()
        self.channel.close()
