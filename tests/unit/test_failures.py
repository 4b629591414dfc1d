"""One sentence per failure to reach a host, whoever met it: ssh (its output, classified), the
paramiko backend or manage check (the socket's exception)."""
import errno
import socket

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.transport import failures
from ssh_ipykernel.transport.messages import classify_ssh_failure


@pytest.mark.parametrize("raised, ssh_said", [
    (socket.gaierror(-2, "Name or service not known"),
     "ssh: Could not resolve hostname h.example: Name or service not known"),
    (socket.timeout("timed out"), "ssh: connect to host 10.0.0.2 port 22: Connection timed out"),
    (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "ssh: connect to host 10.0.0.2 port 22: Connection timed out"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
     "ssh: connect to host 10.0.0.2 port 22: Connection refused"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "ssh: connect to host 10.0.0.2 port 22: No route to host"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"),
     "ssh: connect to host 10.0.0.2 port 22: Network is unreachable"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
     "kex_exchange_identification: read: Connection reset by peer"),
])
def test_a_socket_error_reads_as_ssh_saying_it_would(raised, ssh_said):
    from_socket = failures.socket_error(raised, host="h", spec="h", hostname="10.0.0.2", port=22, timeout=9)
    from_ssh = classify_ssh_failure(ssh_said, host="h", spec="h", timeout=9)
    assert type(from_socket) is type(from_ssh) and from_socket.exit_code == from_ssh.exit_code
    assert from_socket.message == from_ssh.message
    assert from_socket.detail_label == "detail" and from_ssh.detail_label == "ssh said"
    assert from_socket.detail.startswith("connect to host 10.0.0.2 port 22: ")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EADDRNOTAVAIL, errno.ECONNABORTED])
def test_other_socket_errors_say_what_the_socket_said(code):
    # EACCES read "Permission denied" when the text went through the ssh classifier, and came
    # out as an authentication failure (exit 25): a firewall's refusal is no such thing.
    raised = OSError(code, "what the kernel said")
    e = failures.socket_error(raised, host="h", spec="h", hostname="10.0.0.2", port=22, timeout=9)
    assert type(e) is exc.SSHConnectionError and e.exit_code == 20
    assert e.message == "could not connect to h"
    assert e.detail == f"connect to host 10.0.0.2 port 22: [Errno {code}] what the kernel said"


@pytest.mark.parametrize("raised, cls", [
    (socket.timeout("timed out"), exc.ConnectionTimeoutError),
    (OSError(errno.EHOSTUNREACH, "No route to host"), exc.ConnectionTimeoutError),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), exc.SSHConnectionRefusedError),
    (EOFError(), exc.SSHConnectionError),
])
def test_login_errors(raised, cls):
    e = failures.login_error(raised, host="h", hostname="10.0.0.2", timeout=4)
    assert type(e) is cls and e.detail_label == "detail"
