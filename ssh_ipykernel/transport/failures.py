"""Failing to reach a host: one typed error per failure, with the sentence that says what to do.

Three places meet these failures and must tell the user the same thing: the OpenSSH backend
learns of them from ssh's output (messages.py classifies it), the paramiko backend and
``manage check`` from the socket's own exception (``socket_error`` below). Each builds its error
here; only the detail differs (what ssh said, or what the socket said).
"""
from __future__ import annotations

import errno
import socket
from typing import Optional

from .. import exceptions as exc

#: How errno values read in a detail, as ssh prints them.
_ERRNO_TEXT = {errno.ECONNREFUSED: "Connection refused", errno.EHOSTUNREACH: "No route to host",
               errno.ENETUNREACH: "Network is unreachable"}


def not_resolved(host: str, spec: str, *, detail: str = "", detail_label: Optional[str] = None) -> exc.HostNotFoundError:
    return exc.HostNotFoundError(
        f"cannot resolve the host name of {spec!r}: check the spelling, or add a Host entry "
        f"with a HostName for it to your ssh config",
        host=host, detail=detail, detail_label=detail_label,
    )


def refused(host: str, *, detail: str = "", detail_label: Optional[str] = None) -> exc.SSHConnectionRefusedError:
    return exc.SSHConnectionRefusedError(
        f"{host} refused the connection: no SSH server listens on that address and port. "
        f"Check that sshd runs there and the port is right (host:port, or Port in ssh config)",
        host=host, detail=detail, detail_label=detail_label,
    )


def unreachable(host: str, *, detail: str = "", detail_label: Optional[str] = None) -> exc.ConnectionTimeoutError:
    return exc.ConnectionTimeoutError(
        f"{host} is unreachable from here (no route). Check the network, VPN or the address",
        host=host, detail=detail, detail_label=detail_label,
    )


def timed_out(host: str, timeout: Optional[float], *, detail: str = "",
              detail_label: Optional[str] = None) -> exc.ConnectionTimeoutError:
    after = f" within {timeout:.0f} s" if timeout else ""
    return exc.ConnectionTimeoutError(
        f"{host} did not answer{after}. Check that it is up and reachable (VPN?), or raise "
        f"--timeout for slow links",
        host=host, detail=detail, detail_label=detail_label,
    )


def closed_during_login(host: str, *, detail: str = "", detail_label: Optional[str] = None) -> exc.SSHConnectionError:
    return exc.SSHConnectionError(
        f"{host} closed the connection during login (too many connections at once, "
        f"MaxStartups, or a firewall?). Try again, and check the server's sshd log",
        host=host, detail=detail, detail_label=detail_label,
    )


def could_not_connect(host: str, *, detail: str = "", detail_label: Optional[str] = None) -> exc.SSHConnectionError:
    return exc.SSHConnectionError(f"could not connect to {host}", host=host, detail=detail,
                                  detail_label=detail_label)


def socket_error(e: OSError, *, host: str, spec: str, hostname: str, port: int,
                 timeout: Optional[float]) -> exc.SSHConnectionError:
    """The error for a TCP connection to ``hostname:port`` (or a read of its banner) that
    failed with ``e``: the same error the OpenSSH backend raises when ssh meets it. The detail
    is what the socket said, introduced as "detail" (no ssh client said it)."""
    where = f"connect to host {hostname} port {port}"
    if isinstance(e, socket.gaierror):
        return not_resolved(host, spec, detail=f"{where}: Could not resolve hostname {hostname}: {e}",
                            detail_label="detail")
    if isinstance(e, socket.timeout):  # also ETIMEDOUT: Python makes that a TimeoutError
        return timed_out(host, timeout, detail=f"{where}: Connection timed out", detail_label="detail")
    detail = f"{where}: {_ERRNO_TEXT.get(e.errno or 0, str(e))}"
    if e.errno == errno.ECONNREFUSED:
        return refused(host, detail=detail, detail_label="detail")
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return unreachable(host, detail=detail, detail_label="detail")
    if e.errno == errno.ECONNRESET:
        return closed_during_login(host, detail=detail, detail_label="detail")
    return could_not_connect(host, detail=detail, detail_label="detail")


def login_error(e: BaseException, *, host: str, hostname: str, timeout: Optional[float]) -> exc.SSHConnectionError:
    """The error for a login (handshake, host key exchange) that failed with ``e``, an exception
    of paramiko or of its socket: a timeout, or the server closed the connection."""
    text = str(e) or type(e).__name__
    if isinstance(e, socket.timeout) or "timeout" in text.lower() or "timed out" in text.lower():
        return timed_out(host, timeout, detail=f"Connection timed out during login: {text}", detail_label="detail")
    detail = f"Connection closed by {hostname} during login (kex_exchange): {text}"
    if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
        return refused(host, detail=detail, detail_label="detail")
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return unreachable(host, detail=detail, detail_label="detail")
    return closed_during_login(host, detail=detail, detail_label="detail")
