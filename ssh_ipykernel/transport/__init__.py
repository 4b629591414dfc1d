"""SSH transports behind one interface; ``create_transport`` picks the backend."""
from __future__ import annotations

import shutil

from ..exceptions import UsageError
from ..hosts import HostSpec
from .base import Forward, Transport, TransportOptions

__all__ = ["Forward", "Transport", "TransportOptions", "create_transport", "resolve_kind", "BACKENDS", "CHOICES"]

BACKENDS = ("openssh", "paramiko")
#: What --transport accepts: a backend, or "auto" (resolve_kind).
CHOICES = BACKENDS + ("auto",)


def resolve_kind(kind: str) -> str:
    """The backend for ``kind``: "auto" is OpenSSH when an ``ssh`` client is on PATH (it shares one
    connection per host and honours the whole ssh config), else paramiko."""
    if kind == "auto":
        return "openssh" if shutil.which("ssh") else "paramiko"
    return kind


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
