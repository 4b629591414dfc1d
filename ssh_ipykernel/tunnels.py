"""The kernel's five channels, forwarded from Jupyter's local ports to the remote kernel's.

Local ports come from the connection file Jupyter wrote (allocated by its LocalPortCache), so
clients connect exactly where they expect; the remote ports are whatever the remote
``write_connection_file`` picked. Both ends bind loopback only.
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import Dict, Iterable, List, Sequence, Tuple

from .connection import CHANNELS, ConnectionInfo
from .exceptions import TunnelError
from .transport.base import Forward, Transport

log = logging.getLogger(__name__)


def plan_forwards(local: ConnectionInfo, remote_ports: Dict[str, int]) -> List[Forward]:
    """One forward per channel: local port of the connection file -> remote kernel port."""
    forwards = []
    for channel in CHANNELS:
        if channel not in remote_ports:
            raise TunnelError(f"the remote kernel reported no {channel}; cannot forward it")
        forwards.append(
            Forward(
                local_port=local[channel],  # type: ignore[literal-required]
                remote_port=remote_ports[channel],
                local_host=local["ip"],
            )
        )
    return forwards


def busy_ports(addresses: Iterable[Tuple[str, int]]) -> List[int]:
    """Which of these local (host, port) cannot be bound right now."""
    busy = []
    for host, port in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    busy.append(port)
    return busy


class Tunnels:
    """Forwards owned as a unit: ``open()`` adds all five, ``close()`` removes them (idempotent)."""

    def __init__(self, transport: Transport, forwards: Sequence[Forward]) -> None:
        self.transport = transport
        self.forwards = list(forwards)
        self.opened = False

    def open(self) -> None:
        self.transport.forward(self.forwards)
        self.opened = True
        log.debug("forwards: %s", ", ".join(f.spec() for f in self.forwards))

    def close(self) -> None:
        if self.opened:
            self.opened = False
            self.transport.cancel(self.forwards)

    def __enter__(self) -> "Tunnels":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
