"""Where the relay's peers are (``hopgate relay --peer``): the interface the kernel
routes each by and its MAC in the kernel's neighbour table, looked up with
pyroute2.  A peer with no entry yet is pinged once, which makes the kernel
resolve it (as ping itself would)."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any

from hopgate.packet import checksum as cs
from hopgate.packet import ethernet
from hopgate.pipeline.model import IPAddress


@dataclass
class Peer:
    address: IPAddress
    iface: int | None = None  # index into the relay's interfaces
    mac: bytes | None = None
    sent: int = 0
    unresolved: int = 0  # copies not sent: no route to it, or no MAC known yet


class PeerTable:
    """The peers and where the kernel says each is (see the module's docstring)."""

    def __init__(self, peers: tuple[IPAddress, ...], interfaces: tuple[str, ...]) -> None:
        self.peers = [Peer(a) for a in peers]
        self._names = interfaces
        self._indexes = {socket.if_nametoindex(n): i for i, n in enumerate(interfaces)}

    def refresh(self) -> bool:
        """Look again; True if every peer has a MAC."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.ndmsg import NUD_FAILED

        with IPRoute() as ipr:
            for peer in self.peers:
                family = socket.AF_INET6 if peer.address.version == 6 else socket.AF_INET
                try:
                    route = ipr.route("get", dst=str(peer.address), family=family)[0]
                except Exception:  # noqa: BLE001 - no route: the peer stays unresolved
                    peer.iface = peer.mac = None
                    continue
                oif = route.get_attr("RTA_OIF")
                peer.iface = self._indexes.get(oif)
                peer.mac = None
                if peer.iface is None:
                    continue
                for n in ipr.get_neighbours(family=family, ifindex=oif):
                    if n.get_attr("NDA_DST") == str(peer.address) and n.get_attr("NDA_LLADDR"):
                        state = n["state"]
                        if state & NUD_FAILED == 0:
                            peer.mac = ethernet.parse_mac(n.get_attr("NDA_LLADDR"))
                if peer.mac is None:
                    _ping(peer.address)
        return all(p.mac is not None for p in self.peers)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "address": str(p.address),
                "interface": self._names[p.iface] if p.iface is not None else None,
                "mac": ethernet.format_mac(p.mac) if p.mac else None,
                "sent": p.sent,
                "unresolved": p.unresolved,
            }
            for p in self.peers
        ]


def _ping(address: IPAddress) -> None:
    """One echo request, for the kernel to resolve the peer's MAC on the way."""
    if address.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = bytearray(b"\x08\x00\x00\x00hg\x00\x01")  # echo request, id "hg", seq 1
        body[2:4] = cs.checksum(body).to_bytes(2, "big")
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        body = bytearray(b"\x80\x00\x00\x00hg\x00\x01")  # the kernel sums ICMPv6
    with contextlib.closing(s):
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.sendto(body, (str(address), 0))
