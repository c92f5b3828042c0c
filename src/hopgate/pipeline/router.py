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
from hopgate.packet import ethernet
from hopgate.pipeline.actions import Action, DropReason, Replay
from hopgate.pipeline.conntrack import Side
from hopgate.pipeline.context import Frame, Packet
from hopgate.pipeline.counters import Counters
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.events import Event
from hopgate.pipeline.family import GROUP, LOCAL, ON, Error, Family, Inet4, Inet6
from hopgate.pipeline.icmp import IcmpOut
from hopgate.pipeline.lb import Services
from hopgate.pipeline.lb.cluster import ClusterRelay
from hopgate.pipeline.lb.health import HealthChecker
from hopgate.pipeline.lb.runtime import Overrides
from hopgate.pipeline.lb.service import RingSource
from hopgate.pipeline.lb.verdicts import BackendVerdicts
from hopgate.pipeline.local import Listener, LocalDelivery
from hopgate.pipeline.model import IPAddress, NatSpec, RouterSpec
from hopgate.pipeline.nat import Nat, Plan
from hopgate.pipeline.neighbours import Pending
from hopgate.pipeline.ports import LocalAddresses, Port, build_port, v6_groups
from hopgate.pipeline.ratelimit import IcmpRateLimiter
from hopgate.pipeline.reassembly import Head, Reassembler
from hopgate.pipeline.relay import SECOND_CHANCE_ETHERTYPE
from hopgate.pipeline.resolvers import ArpResolver, NdResolver
from hopgate.pipeline.routes import NextHop, Route, RouteTable
from hopgate.pipeline.state import (
    InterfaceState,
    NeighbourState,
    NextHopState,
    RouterState,
    RouteState,
)
from hopgate.pipeline.timers import Timers

_ETH_P_IP = ethernet.ETH_P_IP
_ETH_P_IPV6 = ethernet.ETH_P_IPV6
_ETH_P_ARP = ethernet.ETH_P_ARP
_NO_HINT: tuple[None, bool] = (None, False)


class Router:
    def __init__(
        self,
        spec: RouterSpec,
        now: float = 0.0,
        *,
        on_ring: Callable[[], None] | None = None,
        overrides: Overrides | None = None,
        before: Router | None = None,
        ring_for: RingSource | None = None,
    ) -> None:
        """Assemble the pipeline for ``spec``: each part is built once, from the
        parts it needs, in an order with no part patched afterwards.

        ``on_ring``: called when a Maglev table is to be computed (a backend's
        checks changed their verdict); its owner takes ``self.maglev.pending()``
        and installs the results.  Without it, the table is computed at once,
        inside the call that saw the change (tests).

        ``overrides``: the operator's runtime settings of the backends, kept from
        before (a restart: nat/persist.py).

        ``before``: the router a reload replaces, on the same ports: its counters
        go on, and its services' backends keep their health (the rest of what
        it knows is taken over in the loop: pipeline/takeover.py);
        ``ring_for``: where the services' first Maglev tables come from."""
        self.spec = spec
        extra = _nat_host_addresses(spec)
        self.ports: list[Port] = [
            build_port(i, p, extra[i][A.V4], extra[i][A.V6]) for i, p in enumerate(spec.ports)
        ]
        self.port_by_name = {p.name: p.index for p in self.ports}
        if len(self.port_by_name) != len(self.ports):
            raise ValueError("two ports have the same name")
        old_services = before.nat.services if before is not None and before.nat else None
        if overrides is None and old_services is not None:
            overrides = old_services.overrides
        services = (
            Services(spec.services, overrides, old_services, ring_for) if spec.services else None
        )
        self.local = LocalAddresses(self.ports, services.vips if services else None)
        # What happened that an operator should read (a backend going down...):
        # the pipeline only records it (pipeline/events.py); the daemon logs it.
        self.events: deque[Event] = deque(maxlen=1000)
        names = [p.name for p in self.ports]
        if before is not None and before.counters.port_names != names:
            raise ValueError("a reload cannot change the interfaces")
        hosts = frozenset(p.index for p in self.ports if p.v4_host or p.v6_host)
        self.counters: Counters = before.counters if before is not None else Counters(names, hosts)
        # Ports whose link is down or gone (the I/O layer says so): nothing is
        # forwarded to them.
        self.down_ports: set[int] = set()
        self.emit = Emitter(self.counters)
        # A reload's: apart until the swap, then one heap with the old router's
        # (pipeline/takeover.py), whose connections' expiry it carries.
        self.timers: Timers = Timers(joins=before.timers if before is not None else None)
        self.limiter = IcmpRateLimiter(spec.icmp, now)
        self.icmp = IcmpOut(self.ports, self.limiter, self.counters, self.emit)
        self.arp = ArpResolver(self.ports, self.emit, spec.neighbour, self.timers, self._unresolved)
        self.nd = NdResolver(self.ports, self.emit, spec.neighbour, self.timers, self._unresolved)
        self.routes4 = RouteTable(A.V4)
        self.routes6 = RouteTable(A.V6)
        self._install_routes(spec)
        self.inet4 = Inet4(self.ports, self.local, self.routes4, self.arp.table)
        self.inet6 = Inet6(self.ports, self.local, self.routes6, self.nd.table)
        self.families: tuple[Family, Family] = (self.inet4, self.inet6)
        self._families: dict[int, Family] = {f.ethertype: f for f in self.families}
        self._by_version: dict[int, Family] = {f.version: f for f in self.families}
        self.reassembler = Reassembler(spec.reassembly, self.timers, self._reassembly_expired)
        # Several nodes behind one ECMP router (lb/cluster.py): PMTU errors and,
        # with second chance, segments of connections another node holds.
        self.cluster: ClusterRelay | None = None
        if spec.relay is not None:
            self.cluster = ClusterRelay(
                spec.relay,
                self.ports,
                self.port_by_name,
                self.emit,
                self._to_peer,
                now,
                balancing=services is not None,
            )
        self.nat: Nat | None = None
        if spec.nat is not None or services is not None:
            self.nat = Nat(
                spec.nat or NatSpec(),
                self.ports,
                self.port_by_name,
                self.timers,
                now,
                services,
                self.cluster.second_chance if self.cluster is not None else frozenset(),
            )
        # A backend's health verdicts: what they do to its service (lb/verdicts.py).
        self.verdicts = BackendVerdicts(self.events, self.nat, on_ring)
        self.maglev = self.verdicts.maglev
        self.health: HealthChecker | None = None
        listeners: dict[int, list[Listener]] = {}
        if services is not None:
            self.health = HealthChecker(
                services, self.timers, self.originate, self._source_for, self.verdicts.changed
            )
            for proto in HealthChecker.protocols:
                listeners.setdefault(proto, []).append(self.health)
        self.delivery = LocalDelivery(
            self.ports, self.emit, self.icmp, self.nd, self.reassembler, listeners
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

    def process(self, frame: Frame, port: int, now: float, again: bool = False) -> list[Action]:
        """Handle one frame received on ``port``.  The pipeline owns ``frame`` from
        here on: it may change it in place, send it, or keep it until a neighbour
        answers, so the caller must not reuse its buffer.  ``again``: a frame
        counted already (see ``fast_path_passed``)."""
        out: list[Action] = []
        size = len(frame)
        c = self.counters
        if not again:
            c.rx_packets[port] += 1
            c.rx_bytes[port] += size
        p = self.ports[port]
        if size > p.max_frame:
            self.emit.drop(port, DropReason.FRAME_EXCEEDS_MTU, out)
            return out
        fam: Family | None
        copy = False  # a peer's second-chance copy (lb/cluster.py)
        if size >= 34 and frame[12] == 0x08 and frame[13] == 0x00:
            fam, l3, ethertype = self.inet4, 14, _ETH_P_IP  # untagged IPv4: most of the traffic
        else:
            ethertype, l3 = ethernet.parse(frame)
            fam = self._families.get(ethertype)
        if ethertype < 0 or frame[6] & 1:  # too short, too many tags, or a group source MAC
            self.emit.drop(port, DropReason.FRAME_MALFORMED, out)
            return out
        # bytes compare by content with bytearray and memoryview; mypy's strict
        # equality does not know that.
        if not frame[0] & 1 and p.mac != frame[0:6]:  # type: ignore[comparison-overlap]
            self.emit.drop(port, DropReason.L2_NOT_FOR_US, out)
            return out
        if fam is None:
            if ethertype == _ETH_P_ARP:
                self.arp.input(frame, port, l3, now, out)
                return out
            if (
                ethertype != SECOND_CHANCE_ETHERTYPE
                or self.cluster is None
                or not (ethertype := self.cluster.copy_in(frame, port, l3))
            ):
                self.emit.drop(port, DropReason.UNKNOWN_ETHERTYPE, out)
                return out
            fam, copy = self._families[ethertype], True  # an IP frame again
        # The steps, in Linux's order (ip_rcv_finish, ip6_rcv_finish): the IP
        # header and the source; NAT's connections (conntrack's PREROUTING); the
        # router's own addresses and what may not be forwarded; forwarding.
        pkt = Packet(frame, port, l3, fam, now, out)
        way = fam.admit(pkt)
        if way is not ON:
            if way is GROUP:
                self.delivery.deliver(pkt, multicast=True)
            else:
                self.emit.drop(port, way, out)  # type: ignore[arg-type]  # a DropReason
            return out
        hosts = fam.hosts
        if hosts and pkt.dst in hosts:
            # The host's, not the router's: before NAT, the hop limit and the
            # route, whatever the protocol.
            if hosts[pkt.dst] == port:
                self.emit.to_host(port, frame, out)
            else:  # never routed out of the link the host is on
                self.emit.drop(port, DropReason.HOST_ADDRESS_NOT_ROUTED, out)
            return out
        plan = None
        nat = self.nat
        if nat is not None:
            got = nat.inbound(pkt)
            if copy:
                got = self._copy_held(got)
            if isinstance(got, DropReason):
                self._nat_refused(got, pkt)
                return out
            table = nat.table
            if table.offloaded and isinstance(got, Side) and table.held(got.conn):
                # Received before its connection went to the fast path: the
                # program's to judge, against its own tracker.
                table.counters["fastpath-replayed"] += 1
                self.emit.replay(port, frame, got.conn, out)
                return out
            plan = got
        l2_group = frame[0] & 1 == 1 and not (
            self.cluster is not None and self.cluster.accepts(frame, l3, plan)
        )
        way = fam.destination(pkt, plan is not None, l2_group)
        if way is ON:
            if plan is not None:
                self._forward(pkt, plan.dst, plan)
            elif nat is not None and nat.unsolicited(pkt):
                self.emit.drop(port, DropReason.NAT_UNSOLICITED, out)
            else:
                self._forward(pkt, pkt.dst, None)
        elif way is LOCAL:
            self.delivery.deliver(pkt)
        else:
            self.emit.drop(port, way, out)  # type: ignore[arg-type]  # a DropReason
        return out

    def fast_path_passed(self, replay: Replay, now: float) -> list[Action]:
        """The fast path passed up a frame it was given (``replay``): its
        connection is the pipeline's again, and the frame is handled as any."""
        if self.nat is not None:
            self.nat.table.take_back_now(replay.conn)
        return self.process(replay.frame, replay.port, now, again=True)

    def from_host(self, frame: Frame | bytes, port: int, now: float) -> list[Action]:
        """A frame the host's kernel sent on ``port``'s host interface
        (io/hostport.py): sent out of ``port`` as it is, unless it is not a
        frame of that link."""
        out: list[Action] = []
        self.counters.from_host[port] += 1
        if len(frame) > self.ports[port].max_frame:
            self.emit.drop(port, DropReason.HOST_FRAME_EXCEEDS_MTU, out)
        elif len(frame) < ethernet.HEADER_LEN or frame[6] & 1:  # a group source MAC
            self.emit.drop(port, DropReason.HOST_FRAME_MALFORMED, out)
        elif port in self.down_ports:
            self.emit.drop(port, DropReason.LINK_DOWN, out)
        else:
            self.emit.transmit(port, frame, out)
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
        p.v6_groups = v6_groups(p.link_local, p.v6_owned, p.v6_host)
        if not any(a.addr == old_ll for a in p.v6):  # a configured one stays
            self.local.v6_link_local.discard((port, old_ll))
        self.local.v6_link_local.add((port, p.link_local))
        return (
            f"mac {ethernet.format_mac(old)} is now {ethernet.format_mac(mac)},"
            f" link-local {A.v6_str(p.link_local)}"
        )

    # -- a packet received: for the router, or to forward -----------------------------

    def _copy_held(self, got: Side | Plan | DropReason | None) -> Side | DropReason:
        """What NAT said of a peer's second-chance copy: a packet of a connection
        held here goes on as its own; any other is dropped, never scheduled,
        never sent on again."""
        assert self.cluster is not None
        held = isinstance(got, Side)
        self.cluster.copy_held(held)
        return got if isinstance(got, Side) else DropReason.SECOND_CHANCE_MISS

    def _nat_refused(self, reason: DropReason, pkt: Packet) -> None:
        """NAT or the load balancer will not take the packet."""
        if reason is DropReason.SECOND_CHANCE_SENT:
            assert self.cluster is not None
            self.cluster.send_second_chance(pkt)  # one of the peers may hold it
        elif (
            reason is DropReason.NAT_ICMP_UNMATCHED
            and self.cluster is not None
            and self.cluster.offer(pkt.frame, pkt.port, pkt.now, pkt.out)
        ):
            return  # relayed to the peers, one of which holds its flow
        self.emit.drop(pkt.port, reason, pkt.out)
        if reason is DropReason.LB_NO_BACKEND:
            # As IPVS: the client hears at once that nothing serves it.
            self.icmp.error(pkt, Error.PORT_UNREACHABLE, source=pkt.dst)

    def _forward(self, pkt: Packet, dst: int, plan: Side | Plan | None) -> None:
        """Forward ``pkt`` to ``dst`` (its destination, or the one NAT gives it).
        The order of the checks is Linux's (ip_forward, ip6_forward): route, hop
        limit, scope, MTU."""
        fam, frame, l3, port = pkt.fam, pkt.frame, pkt.l3, pkt.port
        nat = self.nat
        hint, to_backend = nat.route_hint(plan) if plan is not None and nat else _NO_HINT
        if hint is None:
            route = fam.routes.lookup(dst)
            if route is None:
                self.emit.drop(port, DropReason.NO_ROUTE, pkt.out)
                self.icmp.error(pkt, Error.NO_ROUTE)
                return
            hops = route.nexthops
            nh = hops[0] if len(hops) == 1 else hops[fam.ecmp_hash(pkt) % len(hops)]
            egress = self.ports[nh.port]
        else:
            nh, egress = None, self.ports[hint[0]]  # source in, source out
        hop_limit = frame[l3 + fam.hop_offset]
        # A packet to a backend came to the VIP: it may arrive with 1.
        if hop_limit <= 1 and not to_backend:
            self.emit.drop(port, DropReason.TTL_EXCEEDED, pkt.out)
            self.icmp.error(pkt, Error.TTL_EXCEEDED)
            return
        if fam.has_scopes and fam.out_of_scope(pkt.src):
            self.emit.drop(port, DropReason.SOURCE_BEYOND_SCOPE, pkt.out)
            self.icmp.error(pkt, Error.BEYOND_SCOPE)
            return
        end = pkt.end
        if len(frame) > end:
            frame = pkt.frame = frame[:end]  # Ethernet padding is not part of the packet
        too_big = end - l3 > egress.mtu
        if too_big and not fam.may_fragment(frame, l3):
            self.emit.drop(port, DropReason.MTU_EXCEEDED, pkt.out)
            self.icmp.error(pkt, Error.TOO_BIG, egress.mtu)
            return
        side = None
        if nat is not None:
            translated = self._translate(pkt, egress, plan)
            if translated is False:
                return
            side = translated
        self.counters.forwarded[port] += 1
        if hop_limit > 1:
            fam.spend_hop(frame, l3)
        mac = hint[1] if hint is not None else None
        if too_big:
            pieces = fam.fragment(memoryview(frame)[l3:end], egress.mtu, 0)
            self.counters.fragments_created += len(pieces)
            for piece in pieces:
                self._to_neighbour(pkt, bytearray(frame[:l3]) + piece, egress, nh, dst, side, mac)
            return
        self._to_neighbour(pkt, frame, egress, nh, dst, side, mac)

    # -- packets hopgate sends on its own ---------------------------------------------

    def originate(
        self, version: int, src: int, dst: int, proto: int, l4: bytes, now: float, out: list[Action]
    ) -> None:
        """Route and send a packet hopgate makes itself (health checks)."""
        fam = self._by_version[version]
        route = fam.routes.lookup(dst)
        if route is None:
            return  # the probe will time out
        packet = fam.build_header(src, dst, proto, len(l4), self.icmp.next_ident())
        packet += l4
        frame = bytearray(12) + fam.ethertype.to_bytes(2, "big") + packet
        nh = route.nexthops[0]
        pkt = fam.packet(frame, 14, -1, ethernet.ZERO_MAC, now, out)
        self._to_neighbour(pkt, frame, self.ports[nh.port], nh, dst)

    def _source_for(self, version: int, dst: int) -> int | None:
        """The address hopgate speaks from to ``dst``: its own on the way there."""
        fam = self._by_version[version]
        route = fam.routes.lookup(dst)
        if route is None:
            return None
        return fam.source_for(route.nexthops[0].port, dst)

    # -- NAT -------------------------------------------------------------------------

    def _translate(
        self, pkt: Packet, egress: Port, plan: Side | Plan | None
    ) -> Literal[False] | Side | None:
        """Translate a packet that passed every check and is about to leave.
        Returns the side of the connection it was translated on (None if it
        needed no translation), or False when NAT dropped it."""
        nat = self.nat
        assert nat is not None
        if plan is None:
            got = nat.outbound(pkt, egress.index)
            if isinstance(got, DropReason):
                self.emit.drop(pkt.port, got, pkt.out)
                return False
            if got is None:
                return None
            plan = got
        done = nat.apply(plan, pkt)
        if isinstance(done, DropReason):
            self.emit.drop(pkt.port, done, pkt.out)
            return False
        return done

    # -- to the next hop -----------------------------------------------------------

    def _to_neighbour(
        self,
        pkt: Packet,
        frame: Frame,
        egress: Port,
        nh: NextHop | None,
        dst: int,
        side: Side | None = None,
        mac: bytes | None = None,
    ) -> None:
        """Send ``frame`` (``pkt`` as it leaves, or a fragment of it) by ``egress``
        to its next hop ``nh`` (on the link: ``dst`` itself), or to ``mac``, the
        neighbour a connection's side is known to be behind; or queue it until
        the next hop answers.  ``side``: the connection side NAT translated it on."""
        port, out = pkt.port, pkt.out
        if self.down_ports and egress.index in self.down_ports:
            if port >= 0:  # hopgate's own packets (health checks) just time out
                self.emit.drop(port, DropReason.LINK_DOWN, out)
            return
        if mac is not None or nh is None:
            frame[0:6] = mac or ethernet.BROADCAST
            frame[6:12] = egress.mac
            self.emit.transmit(egress.index, frame, out)
            return
        table = pkt.fam.neighbours
        gateway = nh.gateway or dst
        mac = table.mac_for(egress.index, gateway, pkt.now)
        if mac is not None:
            frame[0:6] = mac
            frame[6:12] = egress.mac
            self.emit.transmit(egress.index, frame, out)
            return
        # Keep the neighbour it came from: if the next hop never answers, the
        # error goes back to it.
        in_mac = bytes(frame[6:12])
        frame[6:12] = egress.mac
        undo = self.nat.undo(side) if side is not None and self.nat is not None else None
        pending = Pending(frame, pkt.l3, port, in_mac, undo)
        dropped = table.enqueue(egress.index, gateway, pending, pkt.now, out)
        if dropped is not None and port >= 0:
            self.emit.drop(port, dropped, out)

    def _to_peer(
        self, frame: bytearray, l3: int, peer: IPAddress, now: float, out: list[Action]
    ) -> None:
        """Send a relayed copy to a peer node, resolving its MAC as for any packet."""
        fam = self._by_version[peer.version]
        addr = int(peer)
        route = fam.routes.lookup(addr)
        if route is None:
            return
        nh = route.nexthops[0]
        pkt = fam.packet(frame, l3, -1, ethernet.ZERO_MAC, now, out)
        self._to_neighbour(pkt, frame, self.ports[nh.port], nh, addr)

    def _unresolved(self, item: Pending, now: float, out: list[Action]) -> None:
        """A packet's next hop never answered: tell its sender (host unreachable,
        IPv6 address unreachable), quoting what it sent."""
        frame = item.frame
        if item.undo is not None:
            frame = bytearray(frame)
            item.undo(frame, item.l3)
        fam = self._by_version[frame[item.l3] >> 4]
        pkt = fam.packet(frame, item.l3, item.in_port, item.in_mac, now, out)
        self.icmp.error(pkt, Error.HOST_UNREACHABLE)

    def _reassembly_expired(self, head: Head, now: float, out: list[Action]) -> None:
        self.emit.drop(head.in_port, DropReason.REASSEMBLY_TIMEOUT, out)
        fam = self._by_version[head.frame[head.l3] >> 4]
        pkt = fam.packet(head.frame, head.l3, head.in_port, head.in_mac, now, out)
        self.icmp.error(pkt, Error.REASSEMBLY_TIMEOUT)

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
