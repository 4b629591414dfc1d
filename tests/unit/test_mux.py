"""The control-socket client (transport/mux.py) against a fake master speaking PROTOCOL.mux.

The real master is exercised by the integration tests; here the framing, the error paths and
descriptor passing are checked without ssh.
"""
import os
import socket
import struct
import tempfile
import threading

import pytest

from ssh_ipykernel.transport import mux
from ssh_ipykernel.transport.mux import MasterAbsent, MuxClient, MuxError


def packet(*words: int, tail: bytes = b"") -> bytes:
    body = b"".join(struct.pack(">I", w) for w in words) + tail
    return struct.pack(">I", len(body)) + body


def string(text: str) -> bytes:
    return struct.pack(">I", len(text)) + text.encode()


def read_packet(conn: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    return exactly(struct.unpack(">I", exactly(4))[0])


class FakeMaster:
    """Answers hello and alive checks; refuses forwards; records what it got."""

    def __init__(self, path: str, *, version: int = 4, answer: bool = True) -> None:
        self.path, self.version, self.answer = path, version, answer
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.fds = []
        self.requests = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(packet(mux.MUX_MSG_HELLO, self.version))
            try:
                read_packet(conn)  # the client's hello
                while True:
                    body = read_packet(conn)
                    kind, rid = struct.unpack(">II", body[:8])
                    self.requests.append(kind)
                    if not self.answer:
                        continue
                    if kind == mux.MUX_C_ALIVE_CHECK:
                        conn.sendall(packet(mux.MUX_S_ALIVE, rid, 4242))
                    elif kind == mux.MUX_C_OPEN_FWD:
                        conn.sendall(packet(mux.MUX_S_FAILURE, rid, tail=string("no such directory")))
                    elif kind == mux.MUX_C_NEW_STDIO_FWD:
                        for _ in range(2):
                            _, fds, _, _ = socket.recv_fds(conn, 1, 1)
                            self.fds += fds
                        conn.sendall(packet(mux.MUX_S_FAILURE, rid, tail=string("refused")))
                    elif kind == mux.MUX_C_TERMINATE:
                        return  # exits before answering, as OpenSSH does
            except (EOFError, OSError):  # the client went away
                return


@pytest.fixture
def path():
    directory = tempfile.mkdtemp(prefix="sikmux", dir="/tmp")
    yield os.path.join(directory, "cm")
    __import__("shutil").rmtree(directory)


def test_alive_check_reports_the_masters_pid(path):
    FakeMaster(path)
    client = MuxClient(path, timeout=5)
    assert client.alive_check() == 4242
    assert not client.poll_eof()
    client.close()
    client.close()  # twice is fine


def test_no_master_is_master_absent(path):
    with pytest.raises(MasterAbsent):
        MuxClient(path)
    # A socket file nobody listens on (a master killed with SIGKILL) is absent too.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with pytest.raises(MasterAbsent):
        MuxClient(path)


def test_another_protocol_version_is_refused(path):
    FakeMaster(path, version=3)
    with pytest.raises(MuxError, match="protocol 3"):
        MuxClient(path)


def test_a_silent_master_times_out_and_the_connection_is_dropped(path):
    FakeMaster(path, answer=False)
    client = MuxClient(path, timeout=5)
    with pytest.raises(MuxError, match="did not answer"):
        client.alive_check(timeout=0.2)
    assert client.sock is None


def test_probe_counts_any_answer_as_alive_and_silence_as_dead(path):
    FakeMaster(path)
    client = MuxClient(path)
    assert client.probe(5) is True
    client.close()
    other = path + "2"
    FakeMaster(other, answer=False)
    client = MuxClient(other)
    assert client.probe(0.2) is False
    client.close()


def test_terminate_accepts_a_master_that_exits_without_answering(path):
    master = FakeMaster(path)
    client = MuxClient(path)
    client.terminate(timeout=5)
    master.thread.join(5)
    assert client.poll_eof()
    client.close()


def test_stdio_forward_passes_the_socket_twice(path):
    master = FakeMaster(path)
    client = MuxClient(path)
    a, b = socket.socketpair()
    client.send_stdio_forward("127.0.0.1", 5555, a.fileno())
    a.close()
    for _ in range(100):
        if len(master.fds) == 2:
            break
        threading.Event().wait(0.02)
    assert len(master.fds) == 2
    # The passed descriptors are the same socket: what the master writes, b reads.
    os.write(master.fds[1], b"hi")
    assert b.recv(2) == b"hi"
    for fd in master.fds:
        os.close(fd)
    b.close()
    client.close()
