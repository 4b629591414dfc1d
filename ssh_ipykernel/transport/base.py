"""The transport interface: how the proxy talks SSH, whatever the backend.

The proxy calls, in order: ``connect()`` once, ``start_command()`` for the remote agent,
``forward()`` for the kernel's five ports, then ``close()`` at the end (on every path, also
after errors; it must be safe to call twice). ``alive()`` and ``fileno()`` let the proxy's event
loop notice a lost connection without polling. After a loss the supervisor calls
``close(lost=True)`` and makes a new transport for each reconnect attempt.

A transport is one proxy's *use* of a connection. A backend may share the connection itself
between the proxies of one host (the OpenSSH backend does: one ControlMaster per host), so
``close()`` releases only what this transport added (its sessions and forwards), never a
connection others still use, and a forward must not outlive its proxy even when that proxy is
killed with SIGKILL.
"""
from __future__ import annotations

import abc
import subprocess
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..hosts import HostSpec
from ..options import DEFAULT_PERSIST, DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Forward:
    """One local TCP port forwarded to a remote one, both on loopback."""

    local_port: int
    remote_port: int
    local_host: str = "127.0.0.1"
    remote_host: str = "127.0.0.1"

    def spec(self) -> str:
        """The ``-L`` argument OpenSSH takes for this forward."""
        return f"{self.local_host}:{self.local_port}:{self.remote_host}:{self.remote_port}"


@dataclass
class TransportOptions:
    """Options every backend understands: the backend's view of options.ConnectionOptions
    (transport.build_transport makes it), with this attempt's connect timeout."""

    ssh_config: Optional[str] = None  # ssh -F file; None: the user's ~/.ssh/config
    connect_timeout: float = DEFAULT_TIMEOUT
    server_alive_interval: int = 15
    server_alive_count_max: int = 3
    verbose: bool = False  # ssh -v output in the log (proxy --log-level DEBUG)
    persist: float = DEFAULT_PERSIST  # seconds a shared connection stays up after its last user left


def end_process(proc: subprocess.Popen, timeout: float = 3.0) -> None:  # type: ignore[type-arg]
    """End a session process (what ``start_command`` returned): SIGTERM, SIGKILL after
    ``timeout`` seconds. Nothing if it has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Transport(abc.ABC):
    """One proxy's connection to one host (possibly shared with other proxies; see above)."""

    def __init__(self, host: HostSpec, options: TransportOptions, *, name: str = "") -> None:
        self.host = host
        self.options = options
        self.name = name  # distinguishes users of a connection (e.g. the kernel id) in logs
        #: Set by connect(): True if it joined a connection that was already up (no handshake).
        self.reused = False

    @abc.abstractmethod
    def connect(self) -> None:
        """Open and authenticate the connection, or join one that is up; raise an
        SSHConnectionError subclass if that fails. Whoever has to make a new connection gets
        the typed errors of its handshake (host key, authentication, refused, timeout ...)."""

    @abc.abstractmethod
    def start_command(self, command: str) -> subprocess.Popen:
        """Run ``command`` (a string for the remote login shell) with piped binary stdio.

        The returned object must behave like Popen: stdin/stdout/stderr, poll(), wait(),
        terminate(). It runs in its own session so that signals meant for the proxy's process
        group (Jupyter interrupts with killpg) never reach it.
        """

    @abc.abstractmethod
    def forward(self, forwards: Sequence[Forward]) -> None:
        """Add local port forwards over the connection; raise TunnelError naming a busy port.

        The forwards belong to this proxy even if the connection is shared: when the proxy ends,
        however it ends (SIGKILL included), its local ports must be free and the connections
        they carried cut, or a restarted kernel's clients would reach the old kernel."""

    @abc.abstractmethod
    def cancel(self, forwards: Sequence[Forward]) -> None:
        """Remove forwards added by forward(); missing ones are ignored."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the connection is still up, as far as can be told without a round trip."""

    def fileno(self) -> Optional[int]:
        """A descriptor that becomes readable when the connection has news (output, EOF);
        after it does, ``drain()`` then ``alive()`` tell whether the connection is gone."""
        return None

    def confirm_alive(self) -> None:  # noqa: B027 (optional hook: a no-op unless the backend shares connections)
        """The caller has just heard from the remote end through this connection. A backend that
        shares connections may note it, so that a proxy joining the connection soon after
        need not check it first. Cheap enough to call on every keepalive answer."""

    def wait_for_login(self, deadline: float, wake_fd: Optional[int] = None) -> Optional[float]:
        """On a host that needs a person to log in: wait until somebody has (``ssh-ipykernel
        login``) and return how many seconds ago the connection came up, or None at
        ``deadline`` (monotonic) or when ``wake_fd`` (a signal's wakeup socket) becomes readable.
        Backends that cannot share a login (paramiko) return None at
        once."""
        return None

    def drain(self) -> str:
        """Read what the connection has to say (non-blocking); '' if nothing."""
        return ""

    def open_unix_stream(self, path: str, timeout: float) -> Optional[subprocess.Popen]:
        """A stream to the unix socket ``path`` on the remote, without starting anything there
        (a ``direct-streamlocal@openssh.com`` channel), shaped like ``start_command``'s process
        (transport/streamlocal.py); None if this backend cannot open one or the server refused
        it (forwarding disabled, or nothing listens at ``path``): the caller then runs a remote
        relay instead. Called by the session client when it re-attaches to a kernel's keeper."""
        return None

    def probe_address(self) -> Optional[Tuple[str, int]]:
        """The (IP address, port) the connection goes to, if a plain TCP connect there tells
        whether a new connection could succeed; None when that is unknown (a proxy or jump host
        in between). The supervisor probes it cheaply while the network is down. Called while
        connected (it may need name resolution)."""
        return None

    @abc.abstractmethod
    def close(self, *, lost: bool = False) -> None:
        """Release everything this transport opened (sessions, forwards) and its hold on the
        connection. Safe to call twice.

        ``lost=True``: the caller found the connection dead (no answer, or its session ended).
        A backend that shares the connection must then make sure that the next ``connect()``,
        of any proxy, does not join it if it really is dead (check with a round trip, and end
        it only if it is still the same connection), and must leave it alone otherwise.
        """

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
