"""Small helpers shared by the unit, integration and front-end tests (pytest-free).

One copy of what every suite needs: free local ports and waiting for a line in a log file.
The integration helpers that drive kernels live in tests/integration/kernels.py.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable, List


def free_ports(n: int) -> List[int]:
    """``n`` distinct loopback ports that were free a moment ago (all bound at once, then
    released, so that none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One loopback port that was free a moment ago."""
    return free_ports(1)[0]


def read_log(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(log: Path, text: str, timeout: float = 30, count: int = 1) -> None:
    """Poll a log file until ``text`` appears in it ``count`` times; fail with the log if not."""
    deadline = time.monotonic() + timeout
    while read_log(log).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not in the log (x{count}) after {timeout} s:\n{read_log(log)}"
        time.sleep(0.05)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll ``predicate`` until it is true; return the seconds it took, fail saying ``what`` if not."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(poll)
    return time.monotonic() - t0
