"""The master's forwards from Jupyter's local ports to a kernel's TCP ports, as one owned
resource: how ``connect`` reaches a kernel without a keeper of ours (``Forwarded``). Kernels of
ours go through their keeper instead (channels.py). Both ends bind loopback only.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

from .connection import CHANNELS
from .transport.base import Forward, Transport

log = logging.getLogger(__name__)


#: How long a reconnect waits for the client's iopub socket to come back before the other
#: channels open (ZeroMQ clients retry a refused connect every 100 ms).
IOPUB_WAIT = 0.5
#: Then this much more, for its subscription to cross the tunnel ahead of any request.
IOPUB_SETTLE = 0.1
#: Opened with iopub on a reconnect, without waiting for its subscriber (see Tunnels.open).
FIRST_CHANNELS = ("iopub_port", "control_port", "hb_port")


def established(port: int) -> bool:
    """Whether a TCP connection to local ``port`` is established (Linux /proc; False elsewhere)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "01":
                        return True
        except OSError:
            continue
    return False


def wait_for_subscriber(port: int, timeout: float = IOPUB_WAIT) -> bool:
    """Until a client is connected to the forwarded iopub ``port``, then IOPUB_SETTLE more.

    Where /proc is missing (macOS), a fixed wait that covers ZeroMQ's retry interval instead.
    """
    if not sys.platform.startswith("linux"):
        time.sleep(IOPUB_SETTLE + 0.15)
        return False
    deadline = time.monotonic() + timeout
    while not established(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    time.sleep(IOPUB_SETTLE)
    return True


class Tunnels:
    """Forwards owned as a unit: ``open()`` adds all five, ``close()`` removes them (idempotent)."""

    def __init__(self, transport: Transport, forwards: Sequence[Forward]) -> None:
        self.transport = transport
        self.forwards = list(forwards)
        self.opened = False

    def open(self, iopub_first: bool = False) -> None:
        """Add the forwards. ``iopub_first`` (on a reconnect): iopub (with control and heartbeat,
        FIRST_CHANNELS) until the clients' SUB socket has reconnected, then shell and stdin.
        Otherwise an execute request queued in a client while the link was down reaches the
        kernel before the subscription does, and its output (ZeroMQ PUB drops what has no
        subscriber yet) is lost. Control and heartbeat carry no output that matters and must not
        wait: "is the kernel there?" (kernel_info on control while a cell runs, an interrupt, the
        heartbeat) is answered as soon as the connection is back."""
        if iopub_first and len(self.forwards) == len(CHANNELS):
            iopub = self.forwards[CHANNELS.index("iopub_port")]
            first = [self.forwards[CHANNELS.index(name)] for name in FIRST_CHANNELS]
            self.transport.forward(first)
            self.opened = True
            came_back = wait_for_subscriber(iopub.local_port)
            log.debug("iopub, control and hb forwards first; subscriber %s", "back" if came_back else "not seen")
            self.transport.forward([f for f in self.forwards if f not in first])
        else:
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


class Forwarded:
    """The supervisor's carrier of a kernel's channels when it has no keeper of ours (``connect``
    to a kernel somebody else started): the master's forwards to its ports, made again after
    each reconnect. What was in flight during an outage is not kept."""

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels
        self.forwards = list(tunnels.forwards)

    def reopen(self, transport: Transport, kernel: object, timeout: float) -> None:
        self.tunnels = Tunnels(transport, self.forwards)
        self.tunnels.open(iopub_first=True)

    def suspend(self) -> None:
        self.tunnels.close()

    def broken_fileno(self) -> None:
        return None  # the forwards have no stream of their own

    def take_broken(self) -> bool:
        return False

    def close(self, *, forget: bool = False) -> None:
        self.tunnels.close()
