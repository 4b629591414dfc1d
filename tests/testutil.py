"""Small helpers shared by the unit, integration and front-end tests (pytest-free).

One copy of what every suite needs: free local ports and waiting for a line in a log file.
The integration helpers that drive kernels live in tests/integration/kernels.py.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, List


#: Ports the tests pick for local listeners (connection files written by hand): below the
#: kernel's range for automatic ports (net.ipv4.ip_local_port_range, 32768-60999 by default), so
#: no outgoing connection (ssh, a ZeroMQ client) can be handed one between our pick and the
#: proxy's bind, and one block of 1000 per pytest-xdist worker, so parallel workers never pick the
#: same one. (Picking with bind(0) raced with both: "local port ... is already in use" in CI.)
PORT_BLOCK = 1000
_PORT_BASE = 19000
_next_port = 0


def _block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...; unset: one process
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


def free_ports(n: int) -> List[int]:
    """``n`` distinct loopback ports, free at the moment, from this worker's own block (see
    PORT_BLOCK), taken in turn so that a port just released by a test is not reused at once."""
    global _next_port
    base = _PORT_BASE + _block() * PORT_BLOCK
    if base + PORT_BLOCK > 32768:
        raise RuntimeError(f"too many test workers for the port blocks below 32768 (block {_block()})")
    ports: List[int] = []
    for _ in range(PORT_BLOCK):
        port = base + _next_port
        _next_port = (_next_port + 1) % PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {base}-{base + PORT_BLOCK - 1}")


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
