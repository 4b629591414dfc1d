"""The paramiko backend's failures to connect: which typed error, its message, detail and exit code.

These pin what users see (the same sentences and exit codes as the OpenSSH backend's for the
same failure), whatever the backend does internally to build them.
"""
from __future__ import annotations

import errno
import socket
import threading

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.transport import TransportOptions
from ssh_ipykernel.transport import paramiko_backend as pb


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text("Host target\n  HostName 10.9.8.7\n  Port 2222\n  User alice\n")
    return str(path)


def connect_error(config, monkeypatch, raised: BaseException, timeout: float = 7) -> exc.SSHKernelError:
    def create_connection(address, timeout=None):
        raise raised

    monkeypatch.setattr(pb.socket, "create_connection", create_connection)
    transport = pb.ParamikoTransport(parse_host("target"), TransportOptions(ssh_config=config, connect_timeout=timeout))
    try:
        with pytest.raises(exc.SSHKernelError) as info:
            transport.connect()
    finally:
        transport.close()
    return info.value


WHERE = "connect to host 10.9.8.7 port 2222"


@pytest.mark.parametrize("raised, cls, code, message, detail", [
    (socket.gaierror(-2, "Name or service not known"), exc.HostNotFoundError, 21,
     ("cannot resolve the host name of 'target': check the spelling, or add a Host entry with a HostName "
      "for it to your ssh config"),
     f"{WHERE}: Could not resolve hostname 10.9.8.7: [Errno -2] Name or service not known"),
    (socket.timeout("timed out"), exc.ConnectionTimeoutError, 23,
     "target did not answer within 7 s. Check that it is up and reachable (VPN?), or raise --timeout for slow links",
     f"{WHERE}: Connection timed out"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), exc.SSHConnectionRefusedError, 22,
     ("target refused the connection: no SSH server listens on that address and port. Check that sshd runs "
      "there and the port is right (host:port, or Port in ssh config)"),
     f"{WHERE}: Connection refused"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), exc.ConnectionTimeoutError, 23,
     "target is unreachable from here (no route). Check the network, VPN or the address",
     f"{WHERE}: No route to host"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), exc.ConnectionTimeoutError, 23,
     "target is unreachable from here (no route). Check the network, VPN or the address",
     f"{WHERE}: Network is unreachable"),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), exc.SSHConnectionError, 20,
     "could not connect to target", f"{WHERE}: [Errno 99] Cannot assign requested address"),
])
def test_tcp_failures(config, monkeypatch, raised, cls, code, message, detail):
    e = connect_error(config, monkeypatch, raised)
    assert type(e) is cls and e.exit_code == code
    assert e.message == message
    assert e.detail == detail and e.host == "target"
    assert str(e) == f"{message}\n  detail: {detail}"  # not "ssh said": no ssh client said it


@pytest.fixture
def server():
    """A TCP server whose behaviour each test sets: 'close' (at once), 'silent' (never speaks) or
    'banner' (sends its banner, then nothing)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    mode = {"how": "close"}
    held = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if mode["how"] == "close":
                conn.close()
                continue
            if mode["how"] == "banner":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 test\r\n")
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], mode
    sock.close()
    for conn in held:
        conn.close()


def login_error(tmp_path, port, timeout) -> exc.SSHKernelError:
    config = tmp_path / "cfg"
    config.write_text(f"Host local\n  HostName 127.0.0.1\n  Port {port}\n  User alice\n"
                      f"  UserKnownHostsFile {tmp_path}/known\n  GlobalKnownHostsFile none\n")
    transport = pb.ParamikoTransport(parse_host("local"), TransportOptions(ssh_config=str(config),
                                                                          connect_timeout=timeout))
    try:
        with pytest.raises(exc.SSHKernelError) as info:
            transport.connect()
    finally:
        transport.close()
    return info.value


def test_a_server_that_closes_during_login(tmp_path, server):
    port, _ = server
    e = login_error(tmp_path, port, 5)
    assert type(e) is exc.SSHConnectionError and e.exit_code == 20
    assert e.message == ("local closed the connection during login (too many connections at once, MaxStartups, "
                         "or a firewall?). Try again, and check the server's sshd log")
    assert e.detail.startswith("Connection closed by 127.0.0.1 during login (kex_exchange): ")
    assert "\n  detail: " in str(e)


def test_a_server_that_never_speaks(tmp_path, server):
    port, mode = server
    mode["how"] = "silent"
    e = login_error(tmp_path, port, 1)
    # paramiko says "Error reading SSH protocol banner" (or, at its timeout, "No existing
    # session"): what a server that closes makes it say.
    assert type(e) is exc.SSHConnectionError and e.exit_code == 20
    assert e.message.startswith("local closed the connection during login")
    assert e.detail.startswith("Connection closed by 127.0.0.1 during login (kex_exchange): ")


def test_a_server_that_stops_after_its_banner(tmp_path, server):
    port, mode = server
    mode["how"] = "banner"
    e = login_error(tmp_path, port, 1)
    # paramiko gives up on the banner or, at its timeout, returns from start_client without a
    # session (and the next call says so), whichever comes first.
    assert type(e) is exc.SSHConnectionError and e.exit_code == 20
    assert e.message.startswith("local closed the connection during login")
    assert e.detail.startswith("Connection closed by 127.0.0.1 during login (kex_exchange): ")


def test_a_timeout_during_login(tmp_path, server, monkeypatch):
    def start_client(self, event=None, timeout=None):
        raise socket.timeout("timed out")

    monkeypatch.setattr(pb.paramiko.Transport, "start_client", start_client)
    e = login_error(tmp_path, server[0], 3)
    assert type(e) is exc.ConnectionTimeoutError and e.exit_code == 23
    assert e.message == ("local did not answer within 3 s. Check that it is up and reachable (VPN?), or raise "
                         "--timeout for slow links")
    assert e.detail == "Connection timed out during login: timed out"
    assert str(e) == f"{e.message}\n  detail: {e.detail}"


@pytest.mark.parametrize("raised, cls, message", [
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), exc.SSHConnectionError,
     "local closed the connection during login"),
    (EOFError(), exc.SSHConnectionError, "local closed the connection during login"),
])
def test_other_login_failures(tmp_path, server, monkeypatch, raised, cls, message):
    def start_client(self, event=None, timeout=None):
        raise raised

    monkeypatch.setattr(pb.paramiko.Transport, "start_client", start_client)
    e = login_error(tmp_path, server[0], 3)
    assert type(e) is cls and e.message.startswith(message)
    assert e.detail == f"Connection closed by 127.0.0.1 during login (kex_exchange): {str(raised) or type(raised).__name__}"
