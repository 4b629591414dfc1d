"""Parse and vet the --host value.

Users write whatever they would give ``ssh``: an alias from ~/.ssh/config, ``user@host``,
``host:port``, ``[v6addr]:port`` or ``ssh://user@host:port``. We split it into user, host and port
so every ssh invocation gets the same ``-l``/``-p`` options, and we refuse characters that could
turn into a command: ssh expands ``%h``/``%r`` inside ProxyCommand and friends through a shell
(the CVE-2023-51385 class of bugs), and a leading ``-`` would be read as an option.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import List, Optional

from .exceptions import HostSpecError

# Letters, digits and the punctuation real host names, aliases and IPv6 literals use.
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._~%+:-]*$")
# POSIX portable user names plus '@' and '.' (e-mail style logins on some SSO setups).
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+-]*$")


@dataclass(frozen=True)
class HostSpec:
    """Where to connect: what the user typed, split into parts ssh takes as options."""

    spec: str
    host: str
    user: Optional[str] = None
    port: Optional[int] = None

    def ssh_args(self) -> List[str]:
        """Options naming user and port (only those the user gave; the rest comes from ssh config)."""
        args: List[str] = []
        if self.user:
            args += ["-l", self.user]
        if self.port:
            args += ["-p", str(self.port)]
        return args

    @property
    def label(self) -> str:
        """Short name for logs and display names."""
        return self.host


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        msg = f"invalid port {text!r} in --host {spec!r}: use a number between 1 and 65535"
        raise HostSpecError(msg)
    return int(text)


def parse_host(spec: str) -> HostSpec:
    """Split ``spec`` into user, host and port; raise HostSpecError with advice if unusable."""
    if not spec or not spec.strip():
        raise HostSpecError("--host is empty: give an ssh config alias, user@host or host:port")
    if spec != spec.strip() or any(ch.isspace() or ord(ch) < 32 for ch in spec):
        msg = f"--host {spec!r} contains spaces or control characters: give a single host name"
        raise HostSpecError(msg)
    rest = spec
    port: Optional[int] = None
    if rest.startswith("ssh://"):
        rest = rest[len("ssh://"):].rstrip("/")
    user: Optional[str] = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not _USER_RE.match(user):
            msg = (
                f"--host {spec!r}: user name {user!r} has characters ssh_ipykernel does not pass "
                "on (allowed: letters, digits, . _ - + @); set User in ~/.ssh/config instead"
            )
            raise HostSpecError(msg)
    if rest.startswith("["):
        # [v6addr] or [v6addr]:port
        end = rest.find("]")
        if end < 0:
            raise HostSpecError(f"--host {spec!r}: missing ']' after the IPv6 address")
        host, tail = rest[1:end], rest[end + 1:]
        if tail:
            if not tail.startswith(":"):
                raise HostSpecError(f"--host {spec!r}: expected ':port' after ']'")
            port = _port(tail[1:], spec)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = _port(port_text, spec)
    else:
        host = rest  # plain name, alias, or a bare IPv6 address
    if not host or not (_HOST_RE.match(host) or _is_ip_address(host)):
        msg = (
            f"--host {spec!r}: {host!r} is not a host name ssh_ipykernel will pass to ssh "
            "(allowed: letters, digits, . _ - ~ % + and ':' in IPv6 addresses; it must not "
            "start with '-'). Use an alias from ~/.ssh/config for anything unusual."
        )
        raise HostSpecError(msg)
    return HostSpec(spec=spec, host=host, user=user, port=port)
