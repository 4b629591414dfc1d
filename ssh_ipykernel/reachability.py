"""Waiting for a lost host to come back: a fresh TCP SYN every PROBE_INTERVAL, and one at once
whenever the local network changes.

While the network is down, ssh's own connect waits out the kernel's SYN retransmission schedule
(1 s, 2 s, 4 s ...), so a reconnect attempt could start seconds after the network returned. A
non-blocking connect every PROBE_INTERVAL notices within a fraction of a second; the supervisor
then makes its real attempt. When it is our side that comes back (a link up, a route added:
netwatch.py), the probe goes out the moment the kernel says so. When it is the far side (a dead
VPN, a remote outage: nothing changes here) the periodic probe is all there is, so it is
frequent: an unanswered SYN costs nothing, and a refused or unroutable one fails at once.
"""
from __future__ import annotations

import errno
import selectors
import socket
import time
from typing import TYPE_CHECKING, Callable, Optional, Tuple

if TYPE_CHECKING:
    from .netwatch import NetworkWatch

#: While the host is unreachable a TCP connect is tried this often (each one a fresh SYN) ...
PROBE_INTERVAL = 0.1
#: ... and a real attempt is made at least this often anyway (the address may have changed).
#: Not more often: while it waits for its own SYN to be answered (up to the reconnect's
#: ConnectTimeout) no probe goes out, and ssh's SYN is only resent after 1 s.
PROBE_MAX_WAIT = 30.0
#: A probe whose SYN went unanswered this long is given up (newer ones are already out): before
#: the kernel resends its SYN (after 1 s), so each probe puts one SYN on the wire.
PROBE_GIVE_UP = 0.95
_NETWORK = "network"  # selector data of the network watch


def wait_reachable(target: Tuple[str, int], wake_fd: int, on_wake: Callable[[], Optional[int]], *,
                   network: "Optional[NetworkWatch]" = None) -> Optional[int]:
    """Until a TCP connect to ``target`` succeeds or is refused (the host is there), at most
    PROBE_MAX_WAIT. ``wake_fd`` readable calls ``on_wake``; a code it returns ends the wait
    and is returned (a stop signal while waiting). None otherwise. ``network``: a change it
    reports sends the next probe at once."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    deadline = time.monotonic() + PROBE_MAX_WAIT
    next_probe = time.monotonic()
    sel = selectors.DefaultSelector()
    sel.register(wake_fd, selectors.EVENT_READ, None)
    net_fd = network.fileno() if network is not None else None
    if net_fd is not None:
        sel.register(net_fd, selectors.EVENT_READ, _NETWORK)
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
                if key.data is _NETWORK:
                    assert network is not None
                    if network.changes():
                        next_probe = time.monotonic()
                    continue
                probe, _ = key.data
                err = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sel.unregister(probe)
                probe.close()
                if err in (0, errno.ECONNREFUSED):
                    return None
            for key in list(sel.get_map().values()):
                if isinstance(key.data, tuple) and time.monotonic() - key.data[1] > PROBE_GIVE_UP:
                    sel.unregister(key.fileobj)
                    key.data[0].close()
        return None
    finally:
        for key in list(sel.get_map().values()):
            if isinstance(key.data, tuple):
                key.data[0].close()
        sel.close()
