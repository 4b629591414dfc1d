"""Waiting for a lost host to come back: a fresh TCP SYN every PROBE_INTERVAL.

While the network is down, ssh's own connect waits out the kernel's SYN retransmission schedule
(1 s, 2 s, 4 s ...), so a reconnect attempt could start seconds after the network returned. A
non-blocking connect every PROBE_INTERVAL notices within a fraction of a second; the supervisor
then makes its real attempt.
"""
from __future__ import annotations

import errno
import selectors
import socket
import time
from typing import Callable, Optional, Tuple

#: While the host is unreachable a TCP connect is tried this often (each one a fresh SYN) ...
PROBE_INTERVAL = 0.25
#: ... and a real attempt is made at least this often anyway (the address may have changed).
PROBE_MAX_WAIT = 10.0
#: A probe whose SYN went unanswered this long is given up (a newer one is already out).
PROBE_GIVE_UP = 3.0


def wait_reachable(target: Tuple[str, int], wake_fd: int, on_wake: Callable[[], Optional[int]]) -> Optional[int]:
    """Until a TCP connect to ``target`` succeeds or is refused (the host is there), at most
    PROBE_MAX_WAIT. ``wake_fd`` readable calls ``on_wake``; a code it returns ends the wait
    and is returned (a stop signal while waiting). None otherwise."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    deadline = time.monotonic() + PROBE_MAX_WAIT
    next_probe = time.monotonic()
    sel = selectors.DefaultSelector()
    sel.register(wake_fd, selectors.EVENT_READ, None)
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + PROBE_INTERVAL
                probe = socket.socket(family, socket.SOCK_STREAM)
                probe.setblocking(False)
                if probe.connect_ex(target) in (errno.EINPROGRESS, 0, errno.ECONNREFUSED):
                    sel.register(probe, selectors.EVENT_WRITE, (probe, now))
                else:
                    probe.close()  # unreachable at once: try again next interval
            for key, _ in sel.select(max(0.0, next_probe - time.monotonic())):
                if key.data is None:
                    code = on_wake()
                    if code is not None:
                        return code
                    continue
                probe, _ = key.data
                err = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sel.unregister(probe)
                probe.close()
                if err in (0, errno.ECONNREFUSED):
                    return None
            for key in list(sel.get_map().values()):
                if key.data is not None and time.monotonic() - key.data[1] > PROBE_GIVE_UP:
                    sel.unregister(key.fileobj)
                    key.data[0].close()
        return None
    finally:
        for key in list(sel.get_map().values()):
            if key.data is not None:
                key.data[0].close()
        sel.close()
