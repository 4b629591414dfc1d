"""SSH transports behind one interface; ``create_transport`` picks the backend."""
from __future__ import annotations

from ..exceptions import UsageError
from ..hosts import HostSpec
from .base import Forward, Transport, TransportOptions

__all__ = ["Forward", "Transport", "TransportOptions", "create_transport", "BACKENDS"]

BACKENDS = ("openssh",)


def create_transport(kind: str, host: HostSpec, options: TransportOptions, *, name: str = "") -> Transport:
    """Build the transport named ``kind`` (only 'openssh' for now; paramiko comes later)."""
    if kind == "openssh":
        from .openssh import OpenSSHTransport

        return OpenSSHTransport(host, options, name=name)
    raise UsageError(f"unknown transport {kind!r}; choose one of: {', '.join(BACKENDS)}")
