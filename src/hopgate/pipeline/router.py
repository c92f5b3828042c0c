"""The router pipeline: frame + ingress port + time in, actions out.

What it does with each packet is docs/behaviour.md, "Forwarding (IPv4 / IPv6)".

Pure: no sockets, no clock.  The I/O layer calls ``process`` for each frame and
``poll`` when ``next_deadline`` passes, and carries out the actions returned.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from typing import Literal

from hopgate.packet import addr as A
from hopgate.packet import ethernet, icmp4, icmp6, ipv4, ipv6, l4
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.conntrack import Side
from hopgate.pipeline.counters import Counters
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.events import BackendChanged, Event
from hopgate.pipeline.icmp import IcmpOut
from hopgate.pipeline.lb import Backend, MaglevControl, Services
from hopgate.pipeline.lb.cluster import ClusterRelay
from hopgate.pipeline.lb.health import HealthChecker
from hopgate.pipeline.local import LocalDelivery
from hopgate.pipeline.model import IPAddress, NatSpec, RouterSpec
from hopgate.pipeline.nat import Nat, Plan
from hopgate.pipeline.neighbours import Pending
from hopgate.pipeline.ports import LocalAddresses, Port, build_port, v4_source_for, v6_source_for
from hopgate.pipeline.ratelimit import IcmpRateLimiter
from hopgate.pipeline.reassembly import Head, Reassembler
from hopgate.pipeline.resolvers import ArpResolver, NdResolver
from hopgate.pipeline.routes import NextHop, Route, RouteTable, flow_hash
from hopgate.pipeline.state import (
    InterfaceState,
    NeighbourState,
    NextHopState,
    RouterState,
    RouteState,
)
from hopgate.pipeline.timers import Timers

Frame = bytearray | memoryview

_ETH_P_IP = ethernet.ETH_P_IP
_ETH_P_IPV6 = ethernet.ETH_P_IPV6
_ETH_P_ARP = ethernet.ETH_P_ARP
_DF = ipv4.FLAG_DF
_IPV4_CHECK = ipv4.check
_IPV4_HEADER = ipv4.HEADER
_MARTIAN_TOP = frozenset({0, 127})  # first octets of "this network" and loopback
_NO_HINT: tuple[None, bool] = (None, False)
_IPV6_CHECK = ipv6.check


class Router:
    def __init__(
        self, spec: RouterSpec, now: float = 0.0, *, on_ring: Callable[[], None] | None = None
    ) -> None:
        """``on_ring``: called when a Maglev table is to be computed (a backend's
        checks changed their verdict); its owner takes ``self.maglev.pending()``
        and installs the results.  Without it, the table is computed at once,
        inside the call that saw the change (tests)."""
        self.spec = spec
        extra = _nat_host_addresses(spec)
        self.ports: list[Port] = [
            build_port(i, p, extra[i][A.V4], extra[i][A.V6]) for i, p in enumerate(spec.ports)
        ]
        self.port_by_name = {p.name: p.index for p in self.ports}
        if len(self.port_by_name) != len(self.ports):
            raise ValueError("two ports have the same name")
        services = Services(spec.services) if spec.services else None
        self.local = LocalAddresses(self.ports, services.vips if services else None)
        # What happened that an operator should read (a backend going down...):
        # the pipeline only records it (pipeline/events.py); the daemon logs it.
        self.events: deque[Event] = deque(maxlen=1000)
        self.maglev = MaglevControl(self._backend_up, on_ring)
        self.counters = Counters([p.name for p in self.ports])
        # Ports whose link is down or gone (the I/O layer says so): nothing is
        # forwarded to them.
        self.down_ports: set[int] = set()
        self.emit = Emitter(self.counters)
        self.timers = Timers()
        self.limiter = IcmpRateLimiter(spec.icmp, now)
        self.icmp = IcmpOut(self.ports, self.local, self.limiter, self.counters, self.emit)
        self.arp = ArpResolver(self.ports, self.emit, self.icmp, spec.neighbour, self.timers)
        self.nd = NdResolver(self.ports, self.emit, self.icmp, spec.neighbour, self.timers)
        self.reassembler = Reassembler(spec.reassembly, self.timers, self._reassembly_expired)
        self.health: HealthChecker | None = None
        if services is not None:
            self.health = HealthChecker(
                services, self.timers, self.originate, self._source_for, self._backend_changed
            )
        self.delivery = LocalDelivery(
            self.ports, self.emit, self.icmp, self.nd, self.reassembler, self.health
        )
        self.routes4 = RouteTable(A.V4)
        self.routes6 = RouteTable(A.V6)
        self._install_routes(spec)
        self.nat: Nat | None = None
        if spec.nat is not None or services is not None:
            self.nat = Nat(
                spec.nat or NatSpec(), self.ports, self.port_by_name, self.timers, now, services
            )
            self.arp.restore = self.nd.restore = self.nat.restore
        self.cluster: ClusterRelay | None = None
        if spec.relay is not None:
            self.cluster = ClusterRelay(
                spec.relay, self.ports, self.port_by_name, self.emit, self._to_peer, now
            )
        if self.health is not None:
            self.health.start(now)

    # -- set-up ----------------------------------------------------------------

    def _install_routes(self, spec: RouterSpec) -> None:
        for p in self.ports:
            for a in p.v4:
                if self.routes4.lookup_exact(a.network, a.prefixlen) is None:
                    self.routes4.add(
                        Route(A.V4, a.network, a.prefixlen, (NextHop(p.index, 0),), True)
                    )
            for a in p.v6:
                if self.routes6.lookup_exact(a.network, a.prefixlen) is None:
                    self.routes6.add(
                        Route(A.V6, a.network, a.prefixlen, (NextHop(p.index, 0),), True)
                    )
        for r in spec.routes:
            version = r.prefix.version
            table = self.routes4 if version == A.V4 else self.routes6
            hops = []
            for via in r.via:
                gw = int(via.address)
                if via.interface is not None:
                    if via.interface not in self.port_by_name:
                        raise ValueError(f"route {r.prefix}: no interface {via.interface!r}")
                    port = self.port_by_name[via.interface]
                else:
                    connected = table.lookup(gw)
                    if connected is None or not connected.connected:
                        raise ValueError(
                            f"route {r.prefix}: next hop {via.address} is not on a connected subnet"
                        )
                    port = connected.nexthops[0].port
                hops.append(NextHop(port, gw))
            table.add(
                Route(
                    version, int(r.prefix.network_address), r.prefix.prefixlen, tuple(hops), False
                )
            )

    # -- the entry points --------------------------------------------------------

    def process(self, frame: Frame, port: int, now: float) -> list[Action]:
        """Handle one frame received on ``port``.  The pipeline owns ``frame`` from
        here on: it may change it in place, send it, or keep it until a neighbour
        answers, so the caller must not reuse its buffer."""
        out: list[Action] = []
        c = self.counters
        c.rx_packets[port] += 1
        c.rx_bytes[port] += len(frame)
        p = self.ports[port]
        if len(frame) > p.max_frame:
            self.emit.drop(port, DropReason.FRAME_EXCEEDS_MTU, out)
            return out
        if len(frame) >= 34 and frame[12] == 0x08 and frame[13] == 0x00:
            ethertype, l3 = _ETH_P_IP, 14  # untagged IPv4: most of the traffic
        else:
            ethertype, l3 = ethernet.parse(frame)
        if ethertype < 0 or frame[6] & 1:  # too short, too many tags, or a group source MAC
            self.emit.drop(port, DropReason.FRAME_MALFORMED, out)
            return out
        # bytes compare by content with bytearray and memoryview; mypy's strict
        # equality does not know that.
        if not frame[0] & 1 and p.mac != frame[0:6]:  # type: ignore[comparison-overlap]
            self.emit.drop(port, DropReason.L2_NOT_FOR_US, out)
            return out
        if ethertype == _ETH_P_IP:
            self._ipv4(frame, port, p, l3, now, out)
        elif ethertype == _ETH_P_IPV6:
            self._ipv6(frame, port, p, l3, now, out)
        elif ethertype == _ETH_P_ARP:
            self.arp.input(frame, port, l3, now, out)
        else:
            self.emit.drop(port, DropReason.UNKNOWN_ETHERTYPE, out)
        return out

    def poll(self, now: float) -> list[Action]:
        """Run the timers that are due (neighbour retries and expiry, reassembly)."""
        out: list[Action] = []
        self.timers.run_due(now, out)
        return out

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    # -- link events ------------------------------------------------------------

    def link_down(self, port: int) -> list[Action]:
        """``port``'s link went down (admin down, no carrier) or away.  Its
        neighbours are forgotten and the packets waiting on them dropped;
        until ``link_up``, packets routed to it are dropped as ``link-down``."""
        out: list[Action] = []
        self.down_ports.add(port)
        self.arp.port_down(port, out)
        self.nd.port_down(port, out)
        return out

    def link_up(self, port: int, mac: bytes | None = None) -> str | None:
        """``port``'s link is back.  ``mac``: the link's MAC now (a re-created
        interface may have a new one), adopted by the port, with the link-local
        address derived from it.  Returns a note on what changed, if anything."""
        self.down_ports.discard(port)
        p = self.ports[port]
        if mac is None or mac == p.mac:
            return None
        old = p.mac
        old_ll = p.link_local
        p.mac = mac
        p.link_local = A.v6_link_local_from_mac(mac)
        groups = {A.V6_ALL_NODES, A.V6_ALL_ROUTERS, A.v6_solicited_node(p.link_local)}
        groups.update(A.v6_solicited_node(x) for x in p.v6_owned)
        p.v6_groups = frozenset(groups)
        if not any(a.addr == old_ll for a in p.v6):  # a configured one stays
            self.local.v6_link_local.discard((port, old_ll))
        self.local.v6_link_local.add((port, p.link_local))
        return (
            f"mac {ethernet.format_mac(old)} is now {ethernet.format_mac(mac)},"
            f" link-local {A.v6_str(p.link_local)}"
        )

    # -- IPv4 --------------------------------------------------------------------

    def _ipv4(
        self, frame: Frame, port: int, p: Port, l3: int, now: float, out: list[Action]
    ) -> None:
        end = len(frame)
        if end - l3 < ipv4.HEADER_LEN:
            self.emit.drop(port, DropReason.IPV4_TRUNCATED, out)
            return
        vihl, _, total, _, frag, ttl, proto, _, src, dst = _IPV4_HEADER.unpack_from(frame, l3)
        if vihl == 0x45:  # no options: the checks of ipv4.check, inline
            if total < ipv4.HEADER_LEN or l3 + total > end:
                self.emit.drop(port, DropReason.IPV4_BAD_TOTAL_LENGTH, out)
                return
            # The header sums to 0xFFFF, i.e. reads as a multiple of 0xFFFF (checksum.py).
            if int.from_bytes(frame[l3 : l3 + 20], "big") % 0xFFFF:
                self.emit.drop(port, DropReason.IPV4_BAD_CHECKSUM, out)
                return
        else:
            why = _IPV4_CHECK(frame, l3, end)
            if why is not None:
                self.emit.drop(port, DropReason(why), out)
                return
        local = self.local
        top = src >> 24
        if top in _MARTIAN_TOP or top >= 224 or src in local.v4_not_source:
            self.emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        plan = None
        if self.nat is not None:
            got = self.nat.inbound_v4(
                frame, l3, (vihl & 0xF) << 2, l3 + total, proto, frag, src, dst, now
            )
            if isinstance(got, DropReason):
                self._nat_refused(got, A.V4, frame, l3, port, dst, now, out)
                return
            plan = got
        if plan is None and dst in local.v4:
            self.delivery.ipv4(frame, port, l3, src, dst, now, out)
            return
        top = dst >> 24
        l2_group = frame[0] & 1 and not (self.cluster and self.cluster.accepts(frame, l3, plan))
        if top >= 224 or top in _MARTIAN_TOP or dst in local.v4_broadcast or l2_group:
            self._ipv4_not_forwarded(port, dst, out)
            return
        if plan is not None:
            dst = plan.dst
        elif self.nat is not None and self.nat.unsolicited(A.V4, port, dst):
            self.emit.drop(port, DropReason.NAT_UNSOLICITED, out)
            return
        self._forward_v4(frame, port, l3, src, dst, total, frag, ttl, now, out, plan)

    def _nat_refused(
        self,
        reason: DropReason,
        version: int,
        frame: Frame,
        l3: int,
        port: int,
        dst: int,
        now: float,
        out: list[Action],
    ) -> None:
        """NAT or the load balancer will not take the packet."""
        if (
            reason is DropReason.NAT_ICMP_UNMATCHED
            and self.cluster is not None
            and self.cluster.offer(frame, port, now, out)
        ):
            return  # relayed to the peers, one of which holds its flow
        self.emit.drop(port, reason, out)
        if reason is DropReason.LB_NO_BACKEND:
            # As IPVS: the client hears at once that nothing serves it.
            if version == A.V4:
                self.icmp.error_v4(
                    frame, l3, port, frame[6:12], icmp4.DEST_UNREACH, icmp4.PORT_UNREACH,
                    0, now, out, l2_group=bool(frame[0] & 1), source=dst,
                )  # fmt: skip
            else:
                self.icmp.error_v6(
                    frame, l3, port, frame[6:12], icmp6.DEST_UNREACH, icmp6.PORT_UNREACH,
                    0, now, out, l2_group=bool(frame[0] & 1), source=dst,
                )  # fmt: skip

    def _to_peer(
        self, frame: bytearray, l3: int, peer: IPAddress, now: float, out: list[Action]
    ) -> None:
        """Send a relayed copy to a peer node, resolving its MAC as for any packet."""
        version = peer.version
        addr = int(peer)
        route = (self.routes4 if version == A.V4 else self.routes6).lookup(addr)
        if route is None:
            return
        nh = route.nexthops[0]
        self._to_neighbour(frame, l3, -1, self.ports[nh.port], nh, addr, version, now, out)

    def _ipv4_not_forwarded(self, port: int, dst: int, out: list[Action]) -> None:
        if dst in self.local.v4_broadcast:
            # As Linux (icmp_echo_ignore_broadcasts, no directed-broadcast forwarding).
            reason = DropReason.BROADCAST_IGNORED
        elif A.v4_is_multicast(dst):
            reason = DropReason.MULTICAST_NOT_ROUTED
        elif A.v4_is_martian_destination(dst):
            reason = DropReason.MARTIAN_DESTINATION
        else:  # a unicast packet in a link-layer broadcast is not forwarded
            reason = DropReason.L2_BROADCAST_NOT_FORWARDED
        self.emit.drop(port, reason, out)

    def _forward_v4(
        self,
        frame: Frame,
        port: int,
        l3: int,
        src: int,
        dst: int,
        total: int,
        frag: int,
        ttl: int,
        now: float,
        out: list[Action],
        plan: Side | Plan | None = None,
    ) -> None:
        hint, to_backend = self.nat.route_hint(plan) if plan is not None and self.nat else _NO_HINT
        if hint is None:
            route = self.routes4.lookup(dst)
            if route is None:
                self.emit.drop(port, DropReason.NO_ROUTE, out)
                self.icmp.error_v4(
                    frame, l3, port, frame[6:12], icmp4.DEST_UNREACH, icmp4.NET_UNREACH, 0, now, out
                )
                return
            hops = route.nexthops
            nh = hops[0] if len(hops) == 1 else hops[self._flow_v4(frame, l3, src, dst) % len(hops)]
            egress = self.ports[nh.port]
        else:
            nh, egress = None, self.ports[hint[0]]  # source in, source out
        if ttl <= 1 and not to_backend:
            self.emit.drop(port, DropReason.TTL_EXCEEDED, out)
            self.icmp.error_v4(
                frame, l3, port, frame[6:12], icmp4.TIME_EXCEEDED, icmp4.TTL_EXCEEDED, 0, now, out
            )
            return
        end = l3 + total
        if len(frame) > end:
            frame = frame[:end]  # Ethernet padding is not part of the packet
        if total > egress.mtu and frag & _DF:
            self.emit.drop(port, DropReason.MTU_EXCEEDED, out)
            self.icmp.error_v4(
                frame, l3, port, frame[6:12], icmp4.DEST_UNREACH, icmp4.FRAG_NEEDED_CODE,
                egress.mtu, now, out,
            )  # fmt: skip
            return
        nat = None
        if self.nat is not None:
            translated = self._translate(
                A.V4, frame, l3, end, src, dst, egress, port, plan, now, out
            )
            if translated is False:
                return
            nat = translated
        self.counters.forwarded[port] += 1
        if ttl > 1:  # a packet to a backend came to the VIP: it may arrive with 1
            ipv4.decrement_ttl(frame, l3)
        mac = hint[1] if hint is not None else None
        if total > egress.mtu:
            pieces = ipv4.fragment(memoryview(frame)[l3:end], egress.mtu)
            self.counters.fragments_created += len(pieces)
            for piece in pieces:
                self._to_neighbour(
                    bytearray(frame[:l3]) + piece, l3, port, egress, nh, dst, 4, now, out, nat, mac
                )
            return
        self._to_neighbour(frame, l3, port, egress, nh, dst, 4, now, out, nat, mac)

    def _flow_v4(self, frame: Frame, l3: int, src: int, dst: int) -> int:
        proto = frame[l3 + ipv4.OFF_PROTO]
        at = l3 + ipv4.header_len(frame, l3)
        end = l3 + ipv4.total_len(frame, l3)
        if ipv4.is_fragment(ipv4.frag_field(frame, l3)):
            return flow_hash(proto, src, 0, dst, 0)
        if proto in (PROTO_TCP, PROTO_UDP) and end - at >= 4:
            sport, dport = l4.ports(frame, at)
            return flow_hash(proto, src, sport, dst, dport)
        if proto == PROTO_ICMP and end - at >= icmp4.HEADER_LEN:
            t = frame[at]
            if icmp4.is_error(t):
                inner = at + icmp4.HEADER_LEN
                if end - inner >= ipv4.HEADER_LEN and frame[inner] >> 4 == 4:
                    isrc, idst = ipv4.addrs(frame, inner)
                    iproto = frame[inner + ipv4.OFF_PROTO]
                    iat = inner + ipv4.header_len(frame, inner)
                    if iproto in (PROTO_TCP, PROTO_UDP) and end - iat >= 4:
                        isport, idport = l4.ports(frame, iat)
                        return flow_hash(iproto, isrc, isport, idst, idport)
                    return flow_hash(iproto, isrc, 0, idst, 0)
            elif t in (icmp4.ECHO_REQUEST, icmp4.ECHO_REPLY):
                ident = l4.ports(frame, at + 4)[0]
                return flow_hash(proto, src, ident, dst, ident)
        return flow_hash(proto, src, 0, dst, 0)

    # -- IPv6 --------------------------------------------------------------------

    def _ipv6(
        self, frame: Frame, port: int, p: Port, l3: int, now: float, out: list[Action]
    ) -> None:
        why = _IPV6_CHECK(frame, l3, len(frame))
        if why is not None:
            self.emit.drop(port, DropReason(why), out)
            return
        end = l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3)
        src = ipv6.src(frame, l3)
        dst = ipv6.dst(frame, l3)
        if A.v6_is_multicast(src) or A.v6_is_loopback(src):
            self.emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        if A.v6_is_multicast(dst):
            if dst in p.v6_groups:
                self.delivery.ipv6(frame, port, l3, end, src, dst, now, out, multicast=True)
            else:
                self.emit.drop(port, DropReason.MULTICAST_NOT_ROUTED, out)
            return
        plan = None
        if self.nat is not None:
            got = self.nat.inbound(A.V6, frame, l3, end, src, dst, now)
            if isinstance(got, DropReason):
                self._nat_refused(got, A.V6, frame, l3, port, dst, now, out)
                return
            plan = got
        if plan is None and self.local.is_v6_local(port, dst):
            self.delivery.ipv6(frame, port, l3, end, src, dst, now, out, multicast=False)
            return
        if src == 0 or src in self.local.v6:
            self.emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        if A.v6_is_link_local(dst):
            self.emit.drop(port, DropReason.LINK_LOCAL_NOT_FORWARDED, out)
            return
        if dst <= 1:  # :: and ::1
            self.emit.drop(port, DropReason.MARTIAN_DESTINATION, out)
            return
        if frame[0] & 1 and not (self.cluster and self.cluster.accepts(frame, l3, plan)):
            self.emit.drop(port, DropReason.L2_BROADCAST_NOT_FORWARDED, out)
            return
        if plan is not None:
            dst = plan.dst
        elif self.nat is not None and self.nat.unsolicited(A.V6, port, dst):
            self.emit.drop(port, DropReason.NAT_UNSOLICITED, out)
            return
        self._forward_v6(frame, port, l3, end, src, dst, now, out, plan)

    def _forward_v6(
        self,
        frame: Frame,
        port: int,
        l3: int,
        end: int,
        src: int,
        dst: int,
        now: float,
        out: list[Action],
        plan: Side | Plan | None = None,
    ) -> None:
        # The order of checks is Linux's (ip6_forward): route, hop limit, scope, MTU.
        hint, to_backend = self.nat.route_hint(plan) if plan is not None and self.nat else _NO_HINT
        if hint is None:
            route = self.routes6.lookup(dst)
            if route is None:
                self.emit.drop(port, DropReason.NO_ROUTE, out)
                self.icmp.error_v6(
                    frame, l3, port, frame[6:12], icmp6.DEST_UNREACH, icmp6.NO_ROUTE, 0, now, out
                )
                return
            hops = route.nexthops
            nh = (
                hops[0]
                if len(hops) == 1
                else hops[self._flow_v6(frame, l3, end, src, dst) % len(hops)]
            )
            egress = self.ports[nh.port]
        else:
            nh, egress = None, self.ports[hint[0]]  # source in, source out
        hop_limit = frame[l3 + ipv6.OFF_HOP_LIMIT]
        if hop_limit <= 1 and not to_backend:
            self.emit.drop(port, DropReason.TTL_EXCEEDED, out)
            self.icmp.error_v6(
                frame, l3, port, frame[6:12], icmp6.TIME_EXCEEDED, icmp6.HOP_LIMIT_EXCEEDED, 0,
                now, out,
            )  # fmt: skip
            return
        if A.v6_is_link_local(src):
            self.emit.drop(port, DropReason.SOURCE_BEYOND_SCOPE, out)
            self.icmp.error_v6(
                frame, l3, port, frame[6:12], icmp6.DEST_UNREACH, icmp6.BEYOND_SCOPE, 0, now, out
            )
            return
        if len(frame) > end:
            frame = frame[:end]
        if end - l3 > egress.mtu:
            # Routers never fragment IPv6 (RFC 8200 5): Packet Too Big, always.
            self.emit.drop(port, DropReason.MTU_EXCEEDED, out)
            self.icmp.error_v6(
                frame, l3, port, frame[6:12], icmp6.PACKET_TOO_BIG, 0, egress.mtu, now, out
            )
            return
        nat = None
        if self.nat is not None:
            translated = self._translate(
                A.V6, frame, l3, end, src, dst, egress, port, plan, now, out
            )
            if translated is False:
                return
            nat = translated
        self.counters.forwarded[port] += 1
        if hop_limit > 1:
            frame[l3 + ipv6.OFF_HOP_LIMIT] = hop_limit - 1
        mac = hint[1] if hint is not None else None
        self._to_neighbour(frame, l3, port, egress, nh, dst, 6, now, out, nat, mac)

    def _flow_v6(self, frame: Frame, l3: int, end: int, src: int, dst: int) -> int:
        chain = ipv6.walk(frame, l3, end)
        if isinstance(chain, str) or chain.is_fragment:
            return flow_hash(0, src, 0, dst, 0)
        proto, at = chain.proto, chain.offset
        if proto in (PROTO_TCP, PROTO_UDP) and end - at >= 4:
            sport, dport = l4.ports(frame, at)
            return flow_hash(proto, src, sport, dst, dport)
        if proto == PROTO_ICMPV6 and end - at >= icmp6.HEADER_LEN:
            t = frame[at]
            if icmp6.is_error(t):
                inner = at + icmp6.HEADER_LEN
                if end - inner >= ipv6.HEADER_LEN and frame[inner] >> 4 == 6:
                    isrc, idst = ipv6.src(frame, inner), ipv6.dst(frame, inner)
                    ichain = ipv6.walk(frame, inner, end)
                    if not isinstance(ichain, str) and not ichain.is_fragment:
                        iat = ichain.offset
                        if ichain.proto in (PROTO_TCP, PROTO_UDP) and end - iat >= 4:
                            isport, idport = l4.ports(frame, iat)
                            return flow_hash(ichain.proto, isrc, isport, idst, idport)
                        return flow_hash(ichain.proto, isrc, 0, idst, 0)
                    return flow_hash(0, isrc, 0, idst, 0)
            elif t in (icmp6.ECHO_REQUEST, icmp6.ECHO_REPLY):
                ident = l4.ports(frame, at + 4)[0]
                return flow_hash(proto, src, ident, dst, ident)
        return flow_hash(proto, src, 0, dst, 0)

    # -- packets hopgate sends on its own ---------------------------------------------

    def originate(
        self, version: int, src: int, dst: int, proto: int, l4: bytes, now: float, out: list[Action]
    ) -> None:
        """Route and send a packet hopgate makes itself (health checks)."""
        if version == A.V4:
            packet = ipv4.build_header(src, dst, proto, len(l4), ident=self.icmp.next_ident())
            route = self.routes4.lookup(dst)
        else:
            packet = ipv6.build_header(src, dst, proto, len(l4))
            route = self.routes6.lookup(dst)
        if route is None:
            return  # the probe will time out
        packet += l4
        nh = route.nexthops[0]
        ethertype = _ETH_P_IP if version == A.V4 else _ETH_P_IPV6
        frame = bytearray(12) + ethertype.to_bytes(2, "big") + packet
        self._to_neighbour(frame, 14, -1, self.ports[nh.port], nh, dst, version, now, out)

    def _source_for(self, version: int, dst: int) -> int | None:
        """The address hopgate speaks from to ``dst``: its own on the way there."""
        route = (self.routes4 if version == A.V4 else self.routes6).lookup(dst)
        if route is None:
            return None
        egress = route.nexthops[0].port
        if version == A.V4:
            return v4_source_for(self.ports, egress, dst)
        return v6_source_for(self.ports, egress, dst)

    def _backend_changed(self, backend: Backend, now: float) -> None:
        """The checks changed their verdict on ``backend`` (``backend.healthy``)."""
        service = backend.service
        if backend.healthy:
            if service.admit(backend):
                self._backend_up(backend)
        else:
            service.withdraw(backend)
            closed = None
            if service.spec.on_backend_down == "close" and self.nat is not None:
                closed = self.nat.close_backend(backend)
            self._announce(BackendChanged(service.name, backend.name, False, closed))
        # Maglev: a new table, computed at once or by the control plane (on_ring);
        # a backend coming back is up when it is installed.
        self.maglev.changed(service)

    def _backend_up(self, backend: Backend) -> None:
        self._announce(BackendChanged(backend.service.name, backend.name, True))

    def _announce(self, event: BackendChanged) -> None:
        if self.nat is not None:
            self.nat.counters["backends-up" if event.up else "backends-down"] += 1
        self.events.append(event)

    # -- NAT -------------------------------------------------------------------------

    def _translate(
        self,
        version: int,
        frame: Frame,
        l3: int,
        end: int,
        src: int,
        dst: int,
        egress: Port,
        port: int,
        plan: Side | Plan | None,
        now: float,
        out: list[Action],
    ) -> Literal[False] | Side | None:
        """Translate a packet that passed every check and is about to leave.
        Returns the side of the connection it was translated on (None if it
        needed no translation), or False when NAT dropped it."""
        nat = self.nat
        assert nat is not None
        if plan is None:
            got = nat.outbound(version, frame, l3, end, src, dst, egress.index)
            if isinstance(got, DropReason):
                self.emit.drop(port, got, out)
                return False
            if got is None:
                return None
            plan = got
        done = nat.apply(plan, frame, l3, end, now, port)
        if isinstance(done, DropReason):
            self.emit.drop(port, done, out)
            return False
        return done

    # -- to the next hop -----------------------------------------------------------

    def _to_neighbour(
        self,
        frame: Frame,
        l3: int,
        in_port: int,
        egress: Port,
        nh: NextHop | None,
        dst: int,
        version: int,
        now: float,
        out: list[Action],
        nat: Side | None = None,
        mac: bytes | None = None,
    ) -> None:
        """Send a forwarded packet to its next hop (or to ``mac``, the neighbour a
        connection's side is known to be behind), or queue it until the next hop
        answers."""
        if self.down_ports and egress.index in self.down_ports:
            if in_port >= 0:  # hopgate's own packets (health checks) just time out
                self.emit.drop(in_port, DropReason.LINK_DOWN, out)
            return
        if mac is not None or nh is None:
            frame[0:6] = mac or ethernet.BROADCAST
            frame[6:12] = egress.mac
            self.emit.transmit(egress.index, frame, out)
            return
        table = self.arp.table if version == A.V4 else self.nd.table
        gateway = nh.gateway or dst
        mac = table.mac_for(egress.index, gateway, now)
        if mac is not None:
            frame[0:6] = mac
            frame[6:12] = egress.mac
            self.emit.transmit(egress.index, frame, out)
            return
        # Keep the neighbour it came from: if the next hop never answers, the
        # error goes back to it.
        in_mac = bytes(frame[6:12])
        frame[6:12] = egress.mac
        pending = Pending(frame, l3, in_port, in_mac, nat)
        dropped = table.enqueue(egress.index, gateway, pending, now, out)
        if dropped is not None and in_port >= 0:
            self.emit.drop(in_port, dropped, out)

    def _reassembly_expired(self, head: Head, now: float, out: list[Action]) -> None:
        self.emit.drop(head.in_port, DropReason.REASSEMBLY_TIMEOUT, out)
        if head.frame[head.l3] >> 4 == 4:
            self.icmp.error_v4(
                head.frame, head.l3, head.in_port, head.in_mac, icmp4.TIME_EXCEEDED,
                icmp4.REASSEMBLY_EXCEEDED, 0, now, out,
            )  # fmt: skip
        else:
            self.icmp.error_v6(
                head.frame, head.l3, head.in_port, head.in_mac, icmp6.TIME_EXCEEDED,
                icmp6.REASSEMBLY_EXCEEDED, 0, now, out,
            )  # fmt: skip

    # -- state for status and tests ------------------------------------------------

    def state(self) -> RouterState:
        """Interfaces, routes, neighbours and table sizes as raw values (for the
        admin API, which ``hopgate.control.views`` formats)."""
        neighbours = [
            NeighbourState(
                family=version,
                interface=self.ports[e.port].name,
                address=e.addr,
                mac=bytes(e.mac) if e.mac else None,
                state=e.state,
                queued=len(e.queue),
            )
            for version, table in ((A.V4, self.arp.table), (A.V6, self.nd.table))
            for e in table.entries()
        ]
        routes = [
            RouteState(
                family=r.version,
                prefix=r.prefix,
                prefixlen=r.prefixlen,
                connected=r.connected,
                nexthops=tuple(
                    NextHopState(self.ports[h.port].name, h.gateway if h.gateway else None)
                    for h in r.nexthops
                ),
            )
            for table in (self.routes4, self.routes6)
            for r in table.routes()
        ]
        interfaces = [
            InterfaceState(
                name=p.name,
                mac=bytes(p.mac),
                mtu=p.mtu,
                v4=tuple((a.addr, a.prefixlen) for a in p.v4),
                v6=tuple((a.addr, a.prefixlen) for a in p.v6),
                link_local=p.link_local,
            )
            for p in self.ports
        ]
        return RouterState(
            interfaces=tuple(interfaces),
            routes=tuple(routes),
            neighbours=tuple(neighbours),
            reassembly_datagrams=len(self.reassembler),
            reassembly_bytes=self.reassembler.bytes_held,
            icmp_rate_limit_destinations=len(self.limiter),
            timers=len(self.timers),
            nat=self.nat.state() if self.nat is not None else None,
            relay=self.cluster.state() if self.cluster is not None else None,
        )


def _nat_host_addresses(spec: RouterSpec) -> list[dict[int, tuple[int, ...]]]:
    """For each port, the NAT addresses (pools, published addresses) that are not
    its own but lie on its subnets: it answers ARP / ND for them."""
    extra: list[dict[int, list[int]]] = [{A.V4: [], A.V6: []} for _ in spec.ports]
    wanted: list[IPAddress] = []
    if spec.nat is not None:
        wanted += [a for s in spec.nat.snat for a in s.pool] + [d.published for d in spec.nat.dnat]
    for svc in spec.services:
        wanted += [ipaddress.ip_address(x) for x in (svc.vip, *svc.local_addresses)]
    if wanted:
        for a in wanted:
            for i, p in enumerate(spec.ports):
                own = [x for x in p.addresses if x.version == a.version]
                if any(a == x.ip for x in own):
                    break
                if any(a in x.network for x in own):
                    if int(a) not in extra[i][a.version]:
                        extra[i][a.version].append(int(a))
                    break
    return [{v: tuple(addrs) for v, addrs in e.items()} for e in extra]
