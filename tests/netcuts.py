"""The two kinds of network cut on a netns test host (pytest-free: bench scripts use it too).

``blackhole``: a blackhole route in the host for our side's address; the host still receives,
but what it sends back vanishes (a dead VPN, a remote outage): connects time out, established
connections hear nothing, and nothing changes in our own routing table. ``down``: our end of
the veth goes down and the route to the host goes with it (a dropped Wi-Fi, an unplugged
cable); an ``unreachable`` route for the host's subnet stands in for the missing one (the test
pool's safety blackhole route would otherwise catch the packets): connects fail at once.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Iterator, Optional

KINDS = ("blackhole", "down")


def _ip(*args: str, ns: Optional[str] = None) -> None:
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True, capture_output=True, timeout=30)


def cut(host, kind: str) -> None:  # noqa: ANN001 - a tests/nshosts.NetnsHost
    if kind == "blackhole":
        _ip("route", "replace", "blackhole", f"{host.outer_address}/32", ns=host.namespace)
    elif kind == "down":
        _ip("route", "replace", "unreachable", str(host.subnet), ns=host.parent_ns)
        _ip("link", "set", host.veth_outer, "down", ns=host.parent_ns)
    else:
        raise ValueError(f"unknown kind of cut {kind!r}")


def restore(host, kind: str) -> None:  # noqa: ANN001
    if kind == "blackhole":
        subprocess.run(["ip", "-n", host.namespace, "route", "del", "blackhole", f"{host.outer_address}/32"],
                       capture_output=True, timeout=30)
    elif kind == "down":
        subprocess.run(["ip", *(["-n", host.parent_ns] if host.parent_ns else []), "route", "del", "unreachable",
                        str(host.subnet)], capture_output=True, timeout=30)
        _ip("link", "set", host.veth_outer, "up", ns=host.parent_ns)
        host._static_neighbours()  # the kernel flushed the ARP entries with the link
    else:
        raise ValueError(f"unknown kind of cut {kind!r}")


@contextlib.contextmanager
def cut_off(host, kind: str) -> Iterator[float]:  # noqa: ANN001
    """The host is cut off inside the block and always restored after it; yields the cut's time."""
    cut(host, kind)
    try:
        yield time.monotonic()
    finally:
        restore(host, kind)
