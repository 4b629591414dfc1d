"""The first steps of ``manage check`` against local sockets, and reading the proxy's error."""
import os
import socket
import sys
import threading

import pytest

from ssh_ipykernel import check as check_module
from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.check import STEPS, Checker, KernelRun, Target, proxy_exited
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.options import ConnectionOptions, ProxyOptions


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
    options = ProxyOptions(ConnectionOptions(parse_host(host), ssh_config=config, timeout=5))
    checker = Checker(Target(options), on_step=seen.append)
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


def test_a_proxy_that_left_no_error_is_described_by_its_exit_code_and_log():
    e = proxy_exited("17:00:01.000 INFO ssh_ipykernel [btest 1234] connecting\nTraceback (most recent call last):\nBoom\n", -9)
    assert type(e) is exc.ProxyExitedError and e.exit_code == 1
    assert e.message == "the proxy exited with code -9 before the kernel answered" and e.detail.endswith("Boom")
    assert "\n  the proxy's log ended: " in str(e)  # not "ssh said"
    assert proxy_exited("", 3).exit_code == 3


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """Jupyter's runtime dir (connection files, the proxies' state files), ours alone."""
    path = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(path))  # the proxy inherits it
    return path


def start_proxy(ssh_config, *args):
    argv = [sys.executable, "-m", "ssh_ipykernel", "--ssh-config", ssh_config, "--transport", "paramiko",
            "--timeout", "5", *args, "-f", "{connection_file}"]
    run = KernelRun(Target(ProxyOptions(ConnectionOptions(parse_host("closed"), timeout=5)), kernelspec={"argv": argv, "display_name": "t", "language": "python"}))
    try:
        with pytest.raises(exc.SSHKernelError) as info:
            run.start()
    finally:
        run.close()
    return info.value


def test_kernel_start_reads_the_proxys_error_from_its_state_file(ssh_config, runtime_dir):
    e = start_proxy(ssh_config, "--host", "closed")
    # The typed error the proxy ended with, as data: class, exit code, message, detail, host.
    assert type(e) is exc.SSHConnectionRefusedError and e.exit_code == 22 and e.host == "closed"
    assert e.message.startswith("closed refused the connection: no SSH server listens")
    assert e.detail_label == "detail" and e.detail.endswith(": Connection refused")
    assert not [f for f in os.listdir(runtime_dir / "ssh_ipykernel") if f.startswith("proxy-")], "taken"


def test_kernel_start_reads_an_option_error_too(ssh_config, runtime_dir):
    e = start_proxy(ssh_config, "--host", "closed", "--env", "1BAD=x")
    assert isinstance(e, exc.UsageError) and e.exit_code == 2 and "1BAD" in e.message
    assert not [f for f in os.listdir(runtime_dir / "ssh_ipykernel") if f.startswith("proxy-")]
