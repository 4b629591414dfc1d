"""The keeper's events as they arrive: JSON lines on a pipe, framed and checked (protocol.check_event)."""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List

from ..remote.protocol import BootstrapError, Event, check_event

log = logging.getLogger(__name__)


class EventReader:
    """Split a pipe's bytes into checked events without mixing buffered and raw reads.

    A line that is not JSON (a login script printing to stdout) is skipped with a warning. An
    event that breaks the protocol is skipped too, except a malformed ``ready`` or ``error``:
    that becomes an ``error`` event (code ``bad_event``), so a start fails with a clear error
    instead of waiting for its timeout.
    """

    def __init__(self, fd: int, *, chatter: int = logging.WARNING) -> None:
        self.fd = fd
        self.chatter = chatter  # the log level of lines that are not JSON
        self.buffer = b""
        #: Events read but not yet consumed, oldest first.
        self.pending: List[Dict[str, object]] = []

    def read(self) -> bool:
        """Read what is available into ``pending``; return True at end of file."""
        data = os.read(self.fd, 65536)
        if not data:
            return True
        self.feed(data)
        return False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line.decode("utf-8"))
            except ValueError:
                log.log(self.chatter, "unexpected output from the remote agent: %r", line[:200])
                continue
            try:
                self.pending.append(check_event(event))
            except BootstrapError as e:
                log.warning("the remote agent broke the protocol: %s", e.message)
                if isinstance(event, dict) and event.get("event") in (Event.READY, Event.ERROR):
                    self.pending.append({"event": Event.ERROR, "code": e.code,
                                         "message": f"the remote agent sent a malformed event ({e.message})"})

    def take(self) -> List[Dict[str, object]]:
        """The pending events, oldest first; they are consumed."""
        events, self.pending = self.pending, []
        return events
