"""The router's interfaces ("ports") and the addresses it owns on them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

from hopgate.packet import addr as A
from hopgate.packet import ethernet
from hopgate.pipeline.model import PortSpec

# Room for an Ethernet header with two VLAN tags in front of the largest IP packet.
_MAX_L2_OVERHEAD = ethernet.HEADER_LEN + ethernet.TAG_LEN * ethernet.MAX_TAGS


class IfAddr(NamedTuple):
    addr: int
    prefixlen: int
    network: int
    mask: int
    broadcast: int  # IPv4 directed broadcast; 0 where there is none (/31, /32, IPv6)

    def contains(self, a: int) -> bool:
        return a & self.mask == self.network


@dataclass(slots=True)
class Port:
    index: int
    name: str
    mac: bytes
    mtu: int
    max_frame: int  # frames longer than this are not packets of this link (GRO super-frames)
    v4: tuple[IfAddr, ...]
    v6: tuple[IfAddr, ...]
    link_local: int
    # IPv6 multicast groups this port listens to: all-nodes, all-routers, solicited-node.
    v6_groups: frozenset[int] = field(default_factory=frozenset)
    # Every address the port answers ARP / Neighbor Discovery for: its own, and
    # extra host addresses on its subnets (NAT pools, published addresses).
    v4_owned: frozenset[int] = field(default_factory=frozenset)
    v6_owned: frozenset[int] = field(default_factory=frozenset)
    # The host's addresses on this link (``host_addresses``): not hopgate's;
    # what is for them goes to the kernel's interface (ARP, ND, IP).
    v4_host: frozenset[int] = field(default_factory=frozenset)
    v6_host: frozenset[int] = field(default_factory=frozenset)


def _ifaddr(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> IfAddr:
    version = iface.version
    plen = iface.network.prefixlen
    m = A.mask(version, plen)
    a = int(iface.ip)
    net = a & m
    bcast = 0
    if version == A.V4 and plen <= 30:
        bcast = net | (~m & 0xFFFFFFFF)
    return IfAddr(a, plen, net, m, bcast)


def v6_groups(link_local: int, owned: frozenset[int], host: frozenset[int]) -> frozenset[int]:
    """The IPv6 groups a port listens to: all-nodes, all-routers, and the
    solicited-node group of each address it answers for, its host's included
    (a solicitation for a host address comes there, and goes up to the host)."""
    groups = {A.V6_ALL_NODES, A.V6_ALL_ROUTERS, A.v6_solicited_node(link_local)}
    groups.update(A.v6_solicited_node(x) for x in owned | host)
    return frozenset(groups)


def build_port(
    index: int, spec: PortSpec, extra: tuple[int, ...] = (), extra6: tuple[int, ...] = ()
) -> Port:
    v4 = tuple(_ifaddr(i) for i in spec.addresses if i.version == A.V4)
    v6 = tuple(_ifaddr(i) for i in spec.addresses if i.version == A.V6)
    link_local = A.v6_link_local_from_mac(spec.mac)
    v6_owned = frozenset(a.addr for a in v6) | frozenset(extra6)
    v6_host = frozenset(int(i.ip) for i in spec.host_addresses if i.version == A.V6)
    link_mtu = max(spec.link_mtu or spec.mtu, spec.mtu)
    return Port(
        index=index,
        name=spec.name,
        mac=spec.mac,
        mtu=spec.mtu,
        max_frame=link_mtu + _MAX_L2_OVERHEAD,
        v4=v4,
        v6=v6,
        link_local=link_local,
        v6_groups=v6_groups(link_local, v6_owned, v6_host),
        v4_owned=frozenset(a.addr for a in v4) | frozenset(extra),
        v6_owned=v6_owned,
        v4_host=frozenset(int(i.ip) for i in spec.host_addresses if i.version == A.V4),
        v6_host=v6_host,
    )


class LocalAddresses:
    """Which destination addresses are the router's own, and on which port."""

    def __init__(self, ports: list[Port], virtual: dict[int, set[int]] | None = None) -> None:
        """``virtual``: addresses the router takes as its own on no particular
        link, by family (load-balancer VIPs routed to it)."""
        self.v4: dict[int, int] = {}
        self.v4_broadcast: set[int] = {A.V4_LIMITED_BROADCAST}
        # What no packet from the wire may claim as its source: our addresses and
        # the broadcasts (one set, one membership test per packet).
        self.v4_not_source: frozenset[int] = frozenset()
        self.v6: dict[int, int] = {}
        # Link-local addresses are only ours on their own link.
        self.v6_link_local: set[tuple[int, int]] = set()
        # By family: the host addresses (pipeline/ports.py ``Port.v4_host``)
        # and the port whose host has each.  Not the router's: a packet to one
        # goes up to the host if it came in by that port, nowhere otherwise.
        self.hosts: dict[int, dict[int, int]] = {A.V4: {}, A.V6: {}}
        for p in ports:
            for x in sorted(p.v4_host):
                self.hosts[A.V4].setdefault(x, p.index)
            for x in sorted(p.v6_host):
                self.hosts[A.V6].setdefault(x, p.index)
            for a in p.v4:
                if a.broadcast:
                    self.v4_broadcast.add(a.broadcast)
            for x in sorted(p.v4_owned):
                self.v4.setdefault(x, p.index)
            for x in sorted(p.v6_owned):
                self.v6.setdefault(x, p.index)
            self.v6_link_local.add((p.index, p.link_local))
            for a in p.v6:
                if A.v6_is_link_local(a.addr):
                    self.v6_link_local.add((p.index, a.addr))
        for x in (virtual or {}).get(A.V4, ()):
            self.v4.setdefault(x, 0)
        for x in (virtual or {}).get(A.V6, ()):
            self.v6.setdefault(x, 0)
        # The host's addresses are not a source from the wire either: the host
        # sends through hopgate (``Router.from_host``), never into it.
        self.v4_not_source = (
            frozenset(self.v4) | frozenset(self.v4_broadcast) | frozenset(self.hosts[A.V4])
        )
        self.v6_not_source: frozenset[int] = frozenset(self.v6) | frozenset(self.hosts[A.V6])

    def is_v6_local(self, port: int, dst: int) -> bool:
        if A.v6_is_link_local(dst):
            return (port, dst) in self.v6_link_local
        return dst in self.v6


def v4_source_for(ports: list[Port], port: int, toward: int) -> int | None:
    """The address hopgate speaks from on ``port`` to ``toward``: one on the same
    subnet if there is one, else the port's first, else any of the router's."""
    addrs = ports[port].v4
    for a in addrs:
        if a.contains(toward):
            return a.addr
    if addrs:
        return addrs[0].addr
    for p in ports:
        if p.v4:
            return p.v4[0].addr
    return None


def v6_source_for(ports: list[Port], port: int, toward: int) -> int | None:
    """As ``v4_source_for``, keeping to the scope of ``toward`` (RFC 6724 rule 2):
    link-local to link-local, a global address otherwise."""
    p = ports[port]
    if A.v6_is_link_local(toward):
        return p.link_local
    globals_ = [a for a in p.v6 if not A.v6_is_link_local(a.addr)]
    for a in globals_:
        if a.contains(toward):
            return a.addr
    if globals_:
        return globals_[0].addr
    for other in ports:
        for a in other.v6:
            if not A.v6_is_link_local(a.addr):
                return a.addr
    return None
