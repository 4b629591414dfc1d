"""Changes of the local network, as a descriptor the supervisor's select loops can wait on.

When Wi-Fi comes back, a cable is plugged in or a VPN comes up, the kernel tells whoever listens
on a NETLINK_ROUTE socket within milliseconds: a link went up, an address or a route was added.
While the proxy is reconnecting, such a message means "try now" instead of waiting out a backoff
or the next reachability probe. Nothing is sent on the network to learn it.

Linux only (stdlib ``socket``, no dependency): elsewhere (macOS has no AF_NETLINK; its route
socket is another story) ``NetworkWatch.fileno()`` is None and the reconnect relies on its
probes and backoff alone, as before.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import List, Optional

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
# Multicast groups (linux/rtnetlink.h): links, IPv4/IPv6 addresses and routes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
IFF_UP = 0x1
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask


def hopeful(data: bytes) -> List[str]:
    """What in a batch of rtnetlink messages may have brought a host back within reach: a link
    that is up, an address or a route added, or a route removed (an ``unreachable`` or VPN route
    that shadowed the real one). Links going down and addresses going away are left out."""
    found = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break  # malformed: stop rather than loop
        body = offset + NLMSG_HDR.size
        if kind == RTM_NEWLINK and body + IFINFOMSG.size <= len(data):
            _, _, index, flags, _ = IFINFOMSG.unpack_from(data, body)
            if flags & IFF_UP:
                found.append(f"link {index} up")
        elif kind == RTM_NEWADDR:
            found.append("address added")
        elif kind == RTM_NEWROUTE:
            found.append("route added")
        elif kind == RTM_DELROUTE:
            found.append("route removed")
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return found


class NetworkWatch:
    """A NETLINK_ROUTE socket subscribed to link, address and route changes (Linux), or nothing.

    ``fileno()`` is readable when something changed; ``changes()`` reads all of it (never
    blocks) and says what may matter. ``close()`` is safe to call twice.
    """

    def __init__(self) -> None:
        self._sock: Optional[socket.socket] = None
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            return  # not Linux: probes and backoff only
        try:
            sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        except OSError as e:
            log.debug("no netlink socket (%s): reconnects wait for probes and backoff", e)
            return
        try:
            sock.bind((0, GROUPS))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.debug("cannot listen to netlink (%s): reconnects wait for probes and backoff", e)
            return
        self._sock = sock

    @property
    def available(self) -> bool:
        return self._sock is not None

    def fileno(self) -> Optional[int]:
        return None if self._sock is None else self._sock.fileno()

    def changes(self) -> List[str]:
        """Read every pending message; what among them may bring a host back (see hopeful)."""
        found: List[str] = []
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # we fell behind and lost some: something changed
                    found.append("messages lost")
                    continue
                raise
            if not data:
                break
            found += hopeful(data)
        return found

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "NetworkWatch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
