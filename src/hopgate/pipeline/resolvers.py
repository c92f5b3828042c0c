"""ARP (RFC 826) and Neighbor Discovery (RFC 4861): answering for the router's
addresses, and resolving next hops through the shared neighbour table."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from hopgate.packet import addr as A
from hopgate.packet import arp, ethernet, icmp6, ipv6
from hopgate.packet.proto import PROTO_ICMPV6
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.icmp import reply_l2
from hopgate.pipeline.model import NeighbourSettings
from hopgate.pipeline.neighbours import Heard, NeighbourTable, Pending
from hopgate.pipeline.ports import Port, v4_source_for
from hopgate.pipeline.timers import Timers


class Unresolved(Protocol):
    """Told of a packet dropped because its next hop never answered."""

    def __call__(self, item: Pending, now: float, out: list[Action], /) -> None: ...


class _Resolver(ABC):
    """What ARP and ND share: the neighbour table, and what to do with the packets
    that waited on it."""

    version: int

    def __init__(
        self,
        ports: list[Port],
        emit: Emitter,
        settings: NeighbourSettings,
        timers: Timers,
        unresolved: Unresolved,
    ) -> None:
        """``unresolved``: told of each packet dropped because its next hop never
        answered (the router answers its sender)."""
        self._ports = ports
        self._emit = emit
        self._unresolved = unresolved
        self.table = NeighbourTable(self.version, settings, timers, self)

    @abstractmethod
    def solicit(self, port: int, addr: int, unicast_mac: bytes | None, out: list[Action]) -> None:
        """Ask for ``addr``'s link-layer address (ARP request / Neighbor Solicitation)."""

    def flush(self, port: int, item: Pending, mac: bytes, out: list[Action]) -> None:
        item.frame[0:6] = mac
        self._emit.transmit(port, item.frame, out)

    def port_down(self, port: int, out: list[Action]) -> None:
        """The link of ``port`` is down or gone: its neighbours are forgotten and
        the packets waiting on them dropped (silently, as Linux does)."""
        for item in self.table.flush_port(port):
            if item.in_port >= 0:  # not hopgate's own (a health check)
                self._emit.drop(item.in_port, DropReason.LINK_DOWN, out)

    def unresolved(self, item: Pending, now: float, out: list[Action]) -> None:
        """The next hop never answered: the packet is dropped and its sender told
        (host unreachable, IPv6 address unreachable) by the router."""
        if item.in_port < 0:
            return  # hopgate's own packet (a health check): its probe times out
        self._emit.drop(item.in_port, DropReason.NEIGHBOUR_UNREACHABLE, out)
        self._unresolved(item, now, out)


class ArpResolver(_Resolver):
    """IPv4 neighbours, over ARP."""

    version = A.V4

    def solicit(self, port: int, addr: int, unicast_mac: bytes | None, out: list[Action]) -> None:
        p = self._ports[port]
        spa = v4_source_for(self._ports, port, addr) or 0
        frame = arp.frame(
            unicast_mac or ethernet.BROADCAST, p.mac, arp.OP_REQUEST, spa, ethernet.ZERO_MAC, addr
        )
        self._emit.counters.arp_sent["request"] += 1
        self._emit.transmit(port, frame, out)

    def input(self, frame: Buffer, port: int, l3: int, now: float, out: list[Action]) -> None:
        msg = arp.parse(frame, l3)
        if msg is None or ethernet.is_group(msg.sha):
            self._emit.drop(port, DropReason.ARP_MALFORMED, out)
            return
        p = self._ports[port]
        if msg.tpa in p.v4_host:  # the host's: its request, or a question for it
            self._emit.to_host(port, frame, out)
            return
        target_is_ours = msg.tpa in p.v4_owned
        # Learn only senders on this link's subnets: an ARP packet must not
        # install a next hop for an address that is not a neighbour.
        if msg.spa and any(a.contains(msg.spa) for a in p.v4):
            for_us = target_is_ours and msg.op == arp.OP_REQUEST
            # As Linux's arp_process: a request to us (neigh_event_ns) and a
            # gratuitous ARP change a known MAC at once; anything else only once
            # the entry is older than locktime.  Only a unicast reply confirms.
            garp = msg.spa == msg.tpa and (msg.op != arp.OP_REPLY or msg.tha == msg.sha)
            heard = Heard(
                solicited=msg.op == arp.OP_REPLY and not frame[0] & 1,
                create=for_us,
                locktime=0.0 if for_us or garp else self.table.settings.locktime,
            )
            self.table.learn(port, msg.spa, msg.sha, heard, now, out)
        if msg.op == arp.OP_REQUEST and target_is_ours:
            reply = reply_l2(frame, l3, frame[6:12], p.mac)
            reply += arp.build(arp.OP_REPLY, p.mac, msg.tpa, msg.sha, msg.spa)
            reply += bytes(max(0, 60 - len(reply)))
            self._emit.counters.arp_sent["reply"] += 1
            self._emit.transmit(port, reply, out)
        elif msg.op != arp.OP_REPLY:
            self._emit.drop(port, DropReason.ARP_NOT_FOR_US, out)


class NdResolver(_Resolver):
    """IPv6 neighbours, over Neighbor Discovery."""

    version = A.V6

    def solicit(self, port: int, addr: int, unicast_mac: bytes | None, out: list[Action]) -> None:
        p = self._ports[port]
        src = _nd_source(p, addr)
        if unicast_mac is None:
            dst = A.v6_solicited_node(addr)
            dst_mac = ethernet.multicast_mac_v6(dst)
        else:
            dst, dst_mac = addr, unicast_mac
        body = icmp6.nd_body(addr, icmp6.OPT_SOURCE_LL, p.mac)
        msg = icmp6.build(src, dst, icmp6.NEIGHBOR_SOLICITATION, 0, 0, body)
        frame = bytearray(ethernet.header(dst_mac, p.mac, ethernet.ETH_P_IPV6))
        frame += ipv6.build_header(src, dst, PROTO_ICMPV6, len(msg), hop_limit=icmp6.ND_HOP_LIMIT)
        frame += msg
        self._emit.counters.nd_sent["solicitation"] += 1
        self._emit.transmit(port, frame, out)

    def _owns(self, p: Port, target: int) -> bool:
        return target == p.link_local or target in p.v6_owned

    def solicitation(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        msg: memoryview,
        src: int,
        now: float,
        out: list[Action],
    ) -> None:
        """A Neighbor Solicitation addressed to this router (RFC 4861 7.1.1, 7.2.3)."""
        nd = icmp6.parse_nd(msg)
        if nd is None or A.v6_is_multicast(nd.target) or (src == 0 and nd.lladdr is not None):
            self._emit.drop(port, DropReason.ND_MALFORMED, out)
            return
        p = self._ports[port]
        if nd.target in p.v6_host:  # a question for the host (its group is the port's)
            self._emit.to_host(port, frame, out)
            return
        if not self._owns(p, nd.target):
            self._emit.drop(port, DropReason.ND_NOT_FOR_US, out)
            return
        if src and nd.lladdr is not None:
            heard = Heard(solicited=False, create=True)
            self.table.learn(port, src, nd.lladdr, heard, now, out)
        # A solicitation from :: is duplicate address detection: answer all nodes.
        if src == 0:
            dst, dst_mac, flags = A.V6_ALL_NODES, ethernet.multicast_mac_v6(A.V6_ALL_NODES), 0
        else:
            dst, dst_mac = src, nd.lladdr or bytes(frame[6:12])
            flags = icmp6.NA_SOLICITED
        flags |= icmp6.NA_ROUTER | icmp6.NA_OVERRIDE
        body = icmp6.nd_body(nd.target, icmp6.OPT_TARGET_LL, p.mac)
        na = icmp6.build(nd.target, dst, icmp6.NEIGHBOR_ADVERTISEMENT, 0, flags, body)
        reply = reply_l2(frame, l3, dst_mac, p.mac)
        reply += ipv6.build_header(
            nd.target, dst, PROTO_ICMPV6, len(na), hop_limit=icmp6.ND_HOP_LIMIT
        )
        reply += na
        self._emit.counters.nd_sent["advertisement"] += 1
        self._emit.transmit(port, reply, out)

    def advertisement(self, port: int, msg: memoryview, now: float, out: list[Action]) -> None:
        """A Neighbor Advertisement (RFC 4861 7.1.2, 7.2.5)."""
        nd = icmp6.parse_nd(msg)
        if nd is None or A.v6_is_multicast(nd.target):
            self._emit.drop(port, DropReason.ND_MALFORMED, out)
            return
        mac = nd.lladdr
        if mac is None:
            entry = self.table.get(port, nd.target)
            mac = entry.mac if entry is not None else None
            if mac is None:
                return
        heard = Heard(
            solicited=bool(nd.flags & icmp6.NA_SOLICITED),
            create=False,
            override=bool(nd.flags & icmp6.NA_OVERRIDE),
            weak_override=True,
        )
        self.table.learn(port, nd.target, mac, heard, now, out)


def _nd_source(p: Port, target: int) -> int:
    """An address of ``p`` itself to solicit from (RFC 4861 7.2.2): of the
    target's scope, on its subnet if possible."""
    if A.v6_is_link_local(target):
        return p.link_local
    for a in p.v6:
        if a.contains(target):
            return a.addr
    return p.v6[0].addr if p.v6 else p.link_local
