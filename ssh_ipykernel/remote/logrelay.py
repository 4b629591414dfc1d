"""The kernel's log (its stdout/stderr and the keeper's notes), relayed to clients as ``log`` events.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import os

MAX_LOG_REPLAY = 1 << 20  # log text kept for a proxy that comes back after an outage


class LogRelay:
    """Tails the log file; what was written while nobody listened is kept (up to MAX_LOG_REPLAY)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos = 0

    def new_text(self) -> str:
        """What was written since the last call ("" if nothing, or if the file is gone)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size - self.pos > MAX_LOG_REPLAY:
                    self.pos = size - MAX_LOG_REPLAY
                f.seek(self.pos)
                data = f.read(size - self.pos)
        except OSError:
            return ""
        self.pos += len(data)
        return data.decode("utf-8", "replace")
