"""Signals the proxy receives from Jupyter, turned into events for its loop.

Jupyter interrupts a kernel whose interrupt_mode is "signal" with SIGINT to the proxy's process
group, and stops it with SIGTERM (then SIGKILL). SIGQUIT detaches (the kernel keeps running). The C-level handler writes the signal number to
a wakeup socket, so the proxy's select() loop sees it at once instead of after a poll interval.
"""
from __future__ import annotations

import signal
import socket
from types import FrameType
from typing import Dict, List, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class SignalRelay:
    """While active, the HANDLED signals become bytes on ``fileno()``; ``pending()`` reads them."""

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._previous: Dict[int, object] = {}
        self._old_wakeup = -1
        self.raise_on_stop = True

    def fileno(self) -> int:
        return self._rsock.fileno()

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        # During start-up there is no loop to read the wakeup socket: a stop request must abort
        # whatever blocking call is in progress, and the context managers clean up.
        if self.raise_on_stop and signum in (signal.SIGTERM, signal.SIGHUP):
            from .exceptions import Cancelled

            raise Cancelled(f"start-up cancelled by {signal.Signals(signum).name}")

    def pending(self) -> List[int]:
        """Signal numbers received since the last call."""
        try:
            return list(self._rsock.recv(4096))
        except BlockingIOError:
            return []

    def __enter__(self) -> "SignalRelay":
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handler)
        self._old_wakeup = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._rsock.close()
        self._wsock.close()
