"""The first steps of ``manage check`` against local sockets, and reading the proxy's error."""
import socket
import threading

import pytest

from ssh_ipykernel import check as check_module
from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.check import STEPS, Checker, Target, proxy_error


@pytest.fixture
def ssh_config(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer():  # a web server where sshd was expected
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host closed\n  HostName 127.0.0.1\n  Port {closed_port}\n"
        f"Host notssh\n  HostName 127.0.0.1\n  Port {server.getsockname()[1]}\n"
        "Host inside\n  HostName 10.255.0.9\n  User alice\n  ProxyJump bastion\n"
    )
    yield str(config)
    server.close()


def walk(config, host, until):
    seen = []
    checker = Checker(Target(host=host, ssh_config=config, timeout=5), on_step=seen.append)
    steps = checker.run(until=until)
    assert steps == seen, "every step is reported as it happens"
    return checker


def test_refused_connection_fails_at_connect_with_the_proxy_exit_code(ssh_config):
    checker = walk(ssh_config, "closed", "authenticate")
    resolve, connect, authenticate = checker.steps
    assert resolve.ok and "-> 127.0.0.1 port" in resolve.detail and resolve.seconds is not None
    assert connect.ok is False and isinstance(connect.error, exc.SSHConnectionRefusedError)
    assert connect.error.exit_code == 22 and "refused the connection" in connect.error.message
    assert connect.error.detail_label == "detail" and connect.error.detail.endswith(": Connection refused")
    assert authenticate.ok is None and authenticate.detail == "not run"


def test_a_name_that_does_not_resolve_fails_at_resolve(ssh_config, monkeypatch):
    def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(check_module.socket, "getaddrinfo", getaddrinfo)
    resolve = walk(ssh_config, "closed", "connect").steps[0]
    assert resolve.ok is False and type(resolve.error) is exc.HostNotFoundError and resolve.error.exit_code == 21
    assert resolve.error.message == ("cannot resolve the host name of 'closed': check the spelling, or add a Host "
                                     "entry with a HostName for it to your ssh config")
    # What the resolver said, not dressed up as something ssh said.
    assert str(resolve.error).endswith(
        "\n  detail: Could not resolve hostname 127.0.0.1: [Errno -2] Name or service not known")


def test_a_host_that_does_not_answer_fails_at_connect(ssh_config, monkeypatch):
    def create_connection(address, timeout=None):
        raise socket.timeout("timed out")

    monkeypatch.setattr(check_module.socket, "create_connection", create_connection)
    connect = walk(ssh_config, "closed", "connect").steps[1]
    assert type(connect.error) is exc.ConnectionTimeoutError and connect.error.exit_code == 23
    assert connect.error.message == ("closed did not answer within 5 s. Check that it is up and reachable (VPN?), "
                                     "or raise --timeout for slow links")
    assert connect.error.detail_label == "detail" and connect.error.detail.endswith(": Connection timed out")


def test_something_else_on_the_port_is_named(ssh_config):
    connect = walk(ssh_config, "notssh", "connect").steps[1]
    assert connect.ok is False and "not an SSH server" in connect.error.message and "HTTP/1.0" in connect.error.message


def test_jump_host_is_not_resolved_locally(ssh_config):
    resolve, connect = walk(ssh_config, "inside", "connect").steps
    assert resolve.ok and "alice@10.255.0.9" in resolve.detail and "ProxyJump bastion" in resolve.detail
    assert connect.ok is None and "tested by logging in" in connect.detail


def test_steps_are_the_documented_ones():
    assert STEPS == ("resolve", "connect", "authenticate", "remote python", "packages", "connection file",
                     "kernel command", "kernel start", "execute", "shutdown")


def test_proxy_error_takes_the_proxys_own_sentence():
    log = ("17:00:01.000 INFO ssh_ipykernel [btest 1234] connecting to btest\n"
           "17:00:01.400 ERROR ssh_ipykernel [btest 1234] btest refused authentication. Check the user name\n"
           "  ssh said: sikuser@10.0.0.2: Permission denied (publickey).\n")
    e = proxy_error(log, 25)
    assert e.exit_code == 25 and e.message == "btest refused authentication. Check the user name"
    assert "Permission denied" in e.detail
    e = proxy_error("ssh_ipykernel: error: --host 'x y' contains spaces\n", 2)
    assert e.exit_code == 2 and e.message == "--host 'x y' contains spaces"
    e = proxy_error("Traceback (most recent call last):\nBoom\n", -9)
    assert e.exit_code == 1 and "exited with code -9" in e.message and "Boom" in e.detail
