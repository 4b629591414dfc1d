"""SSH transports behind one interface; ``create_transport`` picks the backend."""
from __future__ import annotations

import dataclasses
import shutil

from ..exceptions import UsageError
from ..hosts import HostSpec
from ..options import ConnectionOptions
from .base import Forward, Transport, TransportOptions

__all__ = ["Forward", "Transport", "TransportOptions", "build_transport", "create_transport", "resolve_kind",
           "resolved", "BACKENDS", "CHOICES"]

BACKENDS = ("openssh", "paramiko")
#: What --transport accepts: a backend, or "auto" (resolve_kind).
CHOICES = BACKENDS + ("auto",)


def resolve_kind(kind: str) -> str:
    """The backend for ``kind``: "auto" is OpenSSH when an ``ssh`` client is on PATH (it shares one
    connection per host and honours the whole ssh config), else paramiko."""
    if kind == "auto":
        return "openssh" if shutil.which("ssh") else "paramiko"
    return kind


def resolved(connection: ConnectionOptions) -> ConnectionOptions:
    """``connection`` with "auto" decided (resolve_kind): once, so that every reconnect of a
    proxy uses the backend it started with."""
    return dataclasses.replace(connection, transport=resolve_kind(connection.transport))


def build_transport(
    connection: ConnectionOptions, *, connect_timeout: float, name: str = "", verbose: bool = False
) -> Transport:
    """The transport the proxy, ``connect`` and ``check`` use to reach ``connection.host``: one
    recipe, so that all of them honour the same options (--ssh-config, --persist ...).

    ``connect_timeout`` is this attempt's (the supervisor's reconnects use a short one);
    ``verbose`` puts ssh -v output in the log.
    """
    options = TransportOptions(ssh_config=connection.ssh_config, connect_timeout=connect_timeout,
                               verbose=verbose, persist=connection.persist)
    return create_transport(connection.transport, connection.host, options, name=name)


def create_transport(kind: str, host: HostSpec, options: TransportOptions, *, name: str = "") -> Transport:
    """Build the transport named ``kind`` ("openssh", "paramiko" or "auto")."""
    kind = resolve_kind(kind)
    if kind == "openssh":
        from .openssh import OpenSSHTransport

        return OpenSSHTransport(host, options, name=name)
    if kind == "paramiko":
        # Imported here only: paramiko (and cryptography) cost the default proxy ~10 MB.
        from .paramiko_backend import ParamikoTransport

        return ParamikoTransport(host, options, name=name)
    raise UsageError(f"unknown transport {kind!r}; choose one of: {', '.join(CHOICES)}")
