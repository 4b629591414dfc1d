"""The paramiko backend's Popen-like session wrapper and its forwards, with fake channels."""
from __future__ import annotations

import os
import queue
import selectors
import socket
import subprocess
import threading
import time

import pytest
from testutil import free_port

from ssh_ipykernel.transport.base import Forward
from ssh_ipykernel.transport.pmchannel import ChannelForwarder, ChannelProcess


class FakeChannel:
    """A remote command that upper-cases its stdin to stdout, says 'err' on stderr, and exits 3
    at end of input. ``close()`` ends it without an exit status, as a lost connection does."""

    def __init__(self) -> None:
        self.command = None
        self.out: "queue.Queue[bytes]" = queue.Queue()
        self.err: "queue.Queue[bytes]" = queue.Queue()
        self.status_event = threading.Event()
        self.exit_status = -1
        self.closed = False
        self.input = b""

    def exec_command(self, command: str) -> None:
        self.command = command
        self.err.put(b"err\n")

    def sendall(self, data: bytes) -> None:
        if self.closed:
            raise OSError("closed")
        self.input += data
        self.out.put(data.upper())

    def shutdown_write(self) -> None:
        self._exit(3)

    def _exit(self, status: int) -> None:
        self.exit_status = status
        self.status_event.set()
        self.out.put(b"")
        self.err.put(b"")

    def recv(self, n: int) -> bytes:
        return self.out.get()

    def recv_stderr(self, n: int) -> bytes:
        return self.err.get()

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        self.status_event.wait()
        return self.exit_status

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self.status_event.is_set():
                self._exit(-1)


def read_all(fd: int, timeout: float = 5.0) -> bytes:
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                chunk = os.read(fd, 65536)
                if not chunk:
                    return data
                data += chunk
    raise AssertionError(f"no end of file; got {data!r}")


def test_pipes_are_real_descriptors_and_carry_the_streams():
    channel = FakeChannel()
    proc = ChannelProcess(channel, "remote command")
    assert channel.command == "remote command"
    assert proc.poll() is None and proc.returncode is None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    proc.stdin.close()  # EOF -> the remote command ends with status 3
    assert read_all(proc.stdout.fileno()) == b"HELLO\n"
    assert read_all(proc.stderr.fileno()) == b"err\n"
    assert proc.wait(5) == 3 and proc.poll() == 3 and proc.returncode == 3


def test_communicate_like_popen():
    proc = ChannelProcess(FakeChannel(), "cmd")
    assert proc.communicate(b"abc", timeout=5) == (b"ABC", b"err\n")
    assert proc.returncode == 3


def test_wait_times_out_like_popen():
    proc = ChannelProcess(FakeChannel(), "cmd")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.1)
    proc.terminate()
    assert proc.wait(1) == -15


def test_a_lost_connection_reads_as_exit_255_and_end_of_file():
    channel = FakeChannel()
    proc = ChannelProcess(channel, "cmd")
    channel._exit(-1)  # closed without exit status
    assert proc.wait(5) == 255
    assert read_all(proc.stdout.fileno()) == b""


def test_writing_after_the_end_is_a_broken_pipe_not_a_hang():
    channel = FakeChannel()
    proc = ChannelProcess(channel, "cmd")
    proc.terminate()
    proc.stdout.close()
    proc.stderr.close()
    time.sleep(0.2)  # the pumps notice the closed channel and close their pipes
    with pytest.raises((BrokenPipeError, OSError)):
        for _ in range(200):
            proc.stdin.write(b"x" * 65536)
            proc.stdin.flush()


class EchoTransport:
    """open_channel() returns one end of a socketpair served by an echo thread."""

    def __init__(self) -> None:
        self.opened = []

    def open_channel(self, kind, dest, src, window_size=None, timeout=None):
        assert kind == "direct-tcpip"
        self.opened.append(dest)
        ours, theirs = socket.socketpair()

        def echo() -> None:
            with theirs:
                while True:
                    data = theirs.recv(65536)
                    if not data:
                        return
                    theirs.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        return _SockChannel(ours)


class _SockChannel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def test_forwards_relay_and_free_their_ports():
    transport = EchoTransport()
    fwd = Forward(free_port(), 5555)
    forwarder = ChannelForwarder(transport)  # type: ignore[arg-type]
    forwarder.add([fwd])
    client = socket.create_connection(("127.0.0.1", fwd.local_port), timeout=5)
    client.sendall(b"ping")
    assert client.recv(4) == b"ping"
    assert transport.opened == [("127.0.0.1", 5555)]
    forwarder.remove([fwd])
    assert client.recv(10) == b""  # cut when the forward is removed
    client.close()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", fwd.local_port))
    forwarder.close()
    forwarder.close()  # safe twice


def test_a_busy_port_is_a_bind_error_naming_it():
    from ssh_ipykernel.transport.forwarder import BindError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        forwarder = ChannelForwarder(EchoTransport())  # type: ignore[arg-type]
        with pytest.raises(BindError) as info:
            forwarder.add([Forward(free_port(), 1), Forward(port, 2)])
        assert info.value.busy == [port]
        forwarder.close()
