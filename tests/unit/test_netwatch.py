"""netwatch.py: which rtnetlink messages may bring a host back (pure), and the socket itself
(Linux; no root needed to listen)."""
from __future__ import annotations

import socket
import struct
import sys

import pytest

from ssh_ipykernel import netwatch as nw


def message(kind: int, body: bytes = b"") -> bytes:
    length = nw.NLMSG_HDR.size + len(body)
    padded = body + b"\0" * (-length % 4)
    return nw.NLMSG_HDR.pack(length, kind, 0, 0, 0) + padded


def link(index: int, flags: int) -> bytes:
    return message(nw.RTM_NEWLINK, nw.IFINFOMSG.pack(socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF))


RTM_DELLINK, RTM_DELADDR = 17, 21


@pytest.mark.parametrize("data, found", [
    (link(3, nw.IFF_UP), ["link 3 up"]),
    (link(3, 0), []),  # a link going down brings nothing back
    (message(nw.RTM_NEWADDR, b"\0" * 8), ["address added"]),
    (message(RTM_DELADDR, b"\0" * 8), []),
    (message(nw.RTM_NEWROUTE, b"\0" * 12), ["route added"]),
    (message(nw.RTM_DELROUTE, b"\0" * 12), ["route removed"]),  # an unreachable or VPN route gone
    (message(RTM_DELLINK, b"\0" * 16), []),
    (link(2, 0) + message(nw.RTM_NEWADDR, b"\0" * 5) + link(7, nw.IFF_UP | 0x40), ["address added", "link 7 up"]),
    (b"", []),
    (struct.pack("=IHHII", 3, nw.RTM_NEWROUTE, 0, 0, 0), []),  # a length below the header: stop
    (link(3, nw.IFF_UP)[:20], []),  # truncated
])
def test_what_may_bring_a_host_back(data: bytes, found: list) -> None:
    assert nw.hopeful(data) == found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink is Linux's")
def test_the_watch_listens_and_closes_twice() -> None:
    with nw.NetworkWatch() as watch:
        assert watch.available and isinstance(watch.fileno(), int)
        assert isinstance(watch.changes(), list)  # never blocks
    assert watch.fileno() is None and watch.changes() == []
    watch.close()


def test_without_netlink_the_watch_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS: no AF_NETLINK; the supervisor then has probes and backoff only."""
    monkeypatch.delattr(socket, "AF_NETLINK", raising=False)
    watch = nw.NetworkWatch()
    assert not watch.available and watch.fileno() is None and watch.changes() == []
