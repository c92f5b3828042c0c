"""Source and destination NAT for IPv4 and IPv6 (docs/behaviour.md, "NAT").

- SNAT ("masquerade" when no pool is given): flows from inside prefixes leaving
  an interface take an outside address and port.  Mappings are
  endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): an inside endpoint keeps
  one outside endpoint whatever it talks to, and keeps its own port when that is
  free.  The outside address is chosen by the inside address, so a host always
  appears from the same one (REQ-2, "paired").  Filtering is address-and-port
  dependent: only replies come back in, as with nftables masquerade.  Anything
  else arriving by a translating interface for one of its inside prefixes is
  unsolicited and dropped (``unsolicited``), unless ``forward_unsolicited``.
- DNAT: flows to a published address (and port) go to an inside address (and port).
- Hairpinning (REQ-9): an inside host reaching a published endpoint, or another
  inside host's outside mapping, is translated both ways.
- ICMP echo identifiers are mapped like ports.  ICMP errors are translated by
  the packet they quote (RFC 5508): the quote restored to what its sender sent,
  the outer header to match, never creating a mapping; an error that matches no
  connection but is about a translated address is dropped and counted.

The router asks three things: ``inbound`` (is this packet part of, or does it
start, a translated flow?), ``outbound`` (once routed: does leaving by this
interface need a source translation?), and ``apply`` (the packet passed every
check and leaves: commit the connection and rewrite the packet).  Connections are
only committed by ``apply``, so a packet dropped on the way (a traceroute probe
whose TTL runs out here) leaves no state behind.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Iterator
from struct import Struct
from typing import NamedTuple, cast

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import flows, icmp4, icmp6, ipv4, ipv6, l4, rewrite
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.packet.types import Buffer
from hopgate.pipeline import tcptrack
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import (
    ORIG,
    U16,
    Conn,
    ConnTable,
    Refused,
    Side,
    TcpState,
    Translation,
    Tuple,
    Verdict,
)
from hopgate.pipeline.lb import Backend, Service, Services, flow_key
from hopgate.pipeline.model import NatSpec
from hopgate.pipeline.ports import Port
from hopgate.pipeline.timers import Timers

_U16 = Struct("!H")
_PORTS = Struct("!HH")
_U32 = Struct("!I")
_FRAGMENT = ipv4.FLAG_MF | ipv4.FRAG_OFFSET_MASK
# What the connection table lets through (and so is translated).
_PASSES = frozenset({Verdict.OK, Verdict.IGNORED, Verdict.CLOSE_NOW})


def _adjust(buf: bytearray | memoryview, at: int, delta: int, udp: bool) -> int:
    """Move the checksum at ``at`` by a precomputed RFC 1624 delta (see
    conntrack.Side); returns the new value.  A UDP checksum of zero means none
    and stays zero; one that comes out zero is sent as 0xFFFF."""
    hc = (buf[at] << 8) | buf[at + 1]
    if udp and hc == 0:
        return 0
    total = (~hc & 0xFFFF) + delta
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hc = ~total & 0xFFFF
    if udp and hc == 0:
        hc = 0xFFFF
    buf[at] = hc >> 8
    buf[at + 1] = hc & 0xFF
    return hc


MAX_FRAGMENT_FLOWS = 4096
FRAGMENT_TIMEOUT = 30.0  # as ipfrag_time
PORT_TRIES = 64  # random picks before a linear search for a free port


class SnatRule(NamedTuple):
    family: int
    prefixes: tuple[tuple[int, int], ...]  # (network, mask)
    port: int  # egress port index
    pool: tuple[int, ...]  # outside addresses

    def covers(self, a: int) -> bool:
        return any(a & m == n for n, m in self.prefixes)


class DnatRule(NamedTuple):
    family: int
    proto: int  # 0: TCP, UDP and ICMP echo
    addr: int
    port: int  # 0: any
    to_addr: int
    to_port: int  # 0: the same port


Endpoint = tuple[int, int, int, int]  # family, protocol, address, port


class Mapping:
    """One inside endpoint's outside endpoint (RFC 4787 endpoint-independent)."""

    __slots__ = ("inside", "outside", "refs")

    def __init__(self, inside: Endpoint, outside: Endpoint) -> None:
        self.inside = inside
        self.outside = outside
        self.refs = 0


class Plan:
    """How a packet is translated; decided before the router's checks, carried out after."""

    __slots__ = ("backend", "dst", "flow", "inner", "key", "kind", "service", "side", "snat", "to")

    def __init__(
        self,
        kind: int,
        flow: flows.Flow,
        dst: int,
        *,
        side: Side | None = None,
        key: Tuple | None = None,
        to: Translation | None = None,
        snat: SnatRule | None = None,
        inner: tuple[int, flows.Flow] | None = None,
        service: Service | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.kind = kind
        self.flow = flow
        self.dst = dst  # the destination the packet will have
        # The side of an existing connection (errors: the side the error travels
        # on; later fragments: their first's); None: a new connection.
        self.side = side
        self.key = key  # a new connection's original tuple
        self.to = to  # a new connection's destination translation (DNAT, hairpin)
        self.snat = snat  # a new connection's source translation, chosen in apply()
        self.inner = inner  # ICMP error: (offset of the quoted IP header, its flow)
        self.service = service  # a new load-balanced connection: its service...
        self.backend = backend  # ...and the backend its scheduler chose


def _fragment_ident(version: int, buf: Buffer, l3: int, end: int) -> int | None:
    if version == A.V4:
        if ipv4.is_fragment(ipv4.frag_field(buf, l3)):
            return int(_U16.unpack_from(buf, l3 + ipv4.OFF_ID)[0])
        return None
    fh = ipv6.fragment_header(buf, l3, end)
    return fh.ident if fh is not None else None


def _bad_mtu(version: int, frame: Buffer, at: int, inner: int) -> bool:
    """Whether the ICMP error at ``at``, quoting the packet at ``inner``, is a
    fragmentation needed (IPv4 3/4) or Packet Too Big (IPv6 2) with an MTU no
    link may have (below 68, IPv6 1280) or one the quoted packet would have fitted
    (not below its size): broken or forged, whatever its sender."""
    if version == A.V4:
        if frame[at] != icmp4.DEST_UNREACH or frame[at + 1] != icmp4.FRAG_NEEDED_CODE:
            return False
        mtu = int(_U16.unpack_from(frame, at + 6)[0])
        return mtu < ipv4.MIN_MTU or mtu >= ipv4.total_len(frame, inner)
    if frame[at] != icmp6.PACKET_TOO_BIG:
        return False
    mtu = int(_U32.unpack_from(frame, at + 4)[0])
    return mtu < ipv6.MIN_MTU or mtu >= ipv6.HEADER_LEN + ipv6.payload_len(frame, inner)


def _is_redirect(version: int, kind: int, flow: flows.Flow, frame: Buffer) -> bool:
    """Whether an ICMPv6 message read as another protocol's flow is a redirect."""
    return (
        version == A.V6
        and kind == flows.OTHER
        and flow.proto == PROTO_ICMPV6
        and frame[flow.at] == icmp6.REDIRECT
    )


class Nat:
    """The translation engine: NAT rules and load-balanced services share its
    connection table."""

    def __init__(
        self,
        spec: NatSpec,
        ports: list[Port],
        port_by_name: dict[str, int],
        timers: Timers,
        now: float = 0.0,
        services: Services | None = None,
    ) -> None:
        self.port_names = [p.name for p in ports]
        self.services = services or Services(())
        self.counters: Counter[str] = Counter()
        self.table = ConnTable(
            spec.timeouts,
            spec.max_connections,
            timers,
            self._released,
            max_per_source=spec.max_connections_per_source,
            be_liberal=spec.tcp_be_liberal,
            counters=self.counters,
        )
        self._rng = random.Random(spec.seed)
        self.snat: list[SnatRule] = []
        self.dnat: list[DnatRule] = []
        # Outside addresses: traffic to them is looked up here before the router
        # takes it for its own.
        self.addresses: dict[int, set[int]] = {A.V4: set(), A.V6: set()}
        for s in spec.snat:
            p = ports[port_by_name[s.interface]]
            for fam in (A.V4, A.V6):
                prefixes = tuple(
                    (int(n.network_address), int(n.netmask)) for n in s.inside if n.version == fam
                )
                if not prefixes:
                    continue
                pool = tuple(int(a) for a in s.pool if a.version == fam)
                if not pool:  # masquerade: the interface's own addresses
                    pool = tuple(a.addr for a in (p.v4 if fam == A.V4 else p.v6))
                if pool:
                    self.snat.append(SnatRule(fam, prefixes, p.index, pool))
                    self.addresses[fam].update(pool)
        for d in spec.dnat:
            proto = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "all": 0}[d.protocol]
            fam = d.published.version
            self.dnat.append(
                DnatRule(
                    fam,
                    proto,
                    int(d.published),
                    d.published_port or 0,
                    int(d.inside),
                    d.inside_port or 0,
                )
            )
            self.addresses[fam].add(int(d.published))
        # Published endpoints no mapping may take.
        self._reserved = {
            (r.family, p, r.addr, r.port)
            for r in self.dnat
            for p in ((r.proto,) if r.proto else (PROTO_TCP, PROTO_UDP))
            if r.port
        }
        self._reserved_addrs = {(r.family, r.addr) for r in self.dnat if not r.port}
        for fam in (A.V4, A.V6):
            self.addresses[fam] |= self.services.vips[fam] | self.services.lips[fam]
        self._by_inside: dict[Endpoint, Mapping] = {}
        self._by_outside: dict[Endpoint, Mapping] = {}
        self._fragments: OrderedDict[tuple[int, int, int, int, int], tuple[Side, float]] = (
            OrderedDict()
        )
        # The inside prefixes of each translating interface, by (port, family):
        # a packet from it to one of them that NAT does not take is unsolicited.
        self._guarded: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
        if not spec.forward_unsolicited:
            for s in spec.snat:
                at = port_by_name[s.interface]
                for n in s.inside:
                    k = (at, n.version)
                    net = (int(n.network_address), int(n.netmask))
                    self._guarded[k] = (*self._guarded.get(k, ()), net)
        # Addresses hopgate answers for itself (interface, pool and published
        # addresses on its subnets, VIPs): a fragment to one that follows no
        # translated first fragment is reassembled and answered.
        self._answered: dict[int, frozenset[int]] = {
            A.V4: frozenset().union(*(p.v4_owned for p in ports), self.services.vips[A.V4]),
            A.V6: frozenset().union(*(p.v6_owned for p in ports), self.services.vips[A.V6]),
        }

    # -- what the router asks ------------------------------------------------------

    def inbound_v4(
        self,
        frame: Buffer,
        l3: int,
        ihl: int,
        end: int,
        proto: int,
        frag: int,
        src: int,
        dst: int,
        now: float,
    ) -> Side | Plan | DropReason | None:
        """``inbound`` for IPv4, given the header the router has read: an
        unfragmented TCP or UDP packet of a known connection is found at once."""
        if proto in (PROTO_TCP, PROTO_UDP) and not frag & _FRAGMENT and end - l3 - ihl >= 4:
            sport, dport = _PORTS.unpack_from(frame, l3 + ihl)
            side = self.table.lookup((A.V4, proto, src, sport, dst, dport))
            if side is None:
                if dst not in self.addresses[A.V4]:
                    return None  # passing through, untracked: inbound() would find the same
            elif not self._reused(side, frame, l3 + ihl, end):
                return side
        return self.inbound(A.V4, frame, l3, end, src, dst, now)

    def inbound(
        self, version: int, frame: Buffer, l3: int, end: int, src: int, dst: int, now: float
    ) -> Side | Plan | DropReason | None:
        """A packet just arrived: part of a known connection (its side), a new
        DNAT or hairpin flow, an ICMP error about a translated flow, or none of
        NAT's business."""
        flow = flows.v4(frame, l3, end) if version == A.V4 else flows.v6(frame, l3, end)
        kind = flow.kind
        if kind == flows.ERROR:
            return self._error_plan(version, frame, flow, dst)
        if kind == flows.LATER_FRAGMENT:
            return self._fragment_plan(version, frame, l3, end, src, dst, flow, now)
        if kind == flows.UNREADABLE:
            return None
        key: Tuple = (version, flow.proto, src, flow.sport, dst, flow.dport)
        side = self.table.lookup(key)
        if side is not None and _is_redirect(version, kind, flow, frame):
            # An ICMPv6 redirect (informational, so no error) matching a
            # connection of another ICMPv6 message: never translated.
            return DropReason.NAT_ICMP_REDIRECT
        if side is not None and not self._reused(side, frame, flow.at, flow.end):
            return side
        if dst not in self.addresses[version] or not self._may_start(kind, flow, frame):
            return None
        if dst in self.services.vips[version]:
            return self._service_plan(version, kind, flow, key)
        rule = self._dnat_rule(version, flow.proto, dst, flow.dport, kind)
        if rule is not None:
            to_port = rule.to_port or flow.dport
            to = Translation(src, flow.sport, rule.to_addr, to_port)
            return Plan(
                kind, flow, rule.to_addr, key=key, to=to, snat=self._inside_rule(version, src)
            )
        if kind == flows.PORTS:
            # Hairpinning: an inside host reaching another's outside mapping.
            m = self._by_outside.get((version, flow.proto, dst, flow.dport))
            snat = self._inside_rule(version, src)
            if m is not None and snat is not None:
                to = Translation(src, flow.sport, m.inside[2], m.inside[3])
                return Plan(kind, flow, m.inside[2], key=key, to=to, snat=snat)
        return None

    def unsolicited(self, version: int, port: int, dst: int) -> bool:
        """Whether a packet ``inbound`` did not take (no connection, not related,
        not DNAT'd), arriving on ``port`` for ``dst`` and about to be forwarded,
        is unsolicited: it came in by a translating interface and is addressed to
        an inside prefix translated on it, where only replies come from (as
        nftables masquerade with ``ct state established,related accept`` and
        ``iifname <outside> drop``)."""
        prefixes = self._guarded.get((port, version))
        return prefixes is not None and any(dst & m == n for n, m in prefixes)

    def outbound(
        self, version: int, frame: Buffer, l3: int, end: int, src: int, dst: int, egress: int
    ) -> Plan | DropReason | None:
        """A routed packet with no translation yet is about to leave by ``egress``."""
        rule = None
        for r in self.snat:
            if r.port == egress and r.family == version and r.covers(src):
                rule = r
                break
        if rule is None:
            return None
        flow = flows.v4(frame, l3, end) if version == A.V4 else flows.v6(frame, l3, end)
        # Whatever leaves by a translating interface from inside is translated or
        # dropped: never leaked with its inside address.
        if flow.kind == flows.ERROR:
            return DropReason.NAT_ICMP_UNMATCHED
        if flow.kind == flows.LATER_FRAGMENT:
            return DropReason.NAT_FRAGMENT_UNMATCHED
        if flow.kind == flows.UNREADABLE or not self._may_start(flow.kind, flow, frame):
            return DropReason.NAT_INVALID
        key: Tuple = (version, flow.proto, src, flow.sport, dst, flow.dport)
        return Plan(flow.kind, flow, dst, key=key, snat=rule)

    def apply(
        self,
        plan: Side | Plan,
        frame: bytearray | memoryview,
        l3: int,
        end: int,
        now: float,
        in_port: int = -1,
    ) -> Side | DropReason | None:
        """The packet leaves: commit a new connection, account, and rewrite it.
        Returns the side it was translated on (None for an ICMP error, which
        belongs to no side of its own), or why it is dropped."""
        if type(plan) is Side:
            verdict = self._rewrite(plan, frame, l3, end, now, whole=True)
            if verdict is not Verdict.OK:
                return self._after(plan, verdict)
            hops = plan.conn.hops
            if hops is not None and hops[plan.direction] is None:
                hops[plan.direction] = (in_port, bytes(frame[6:12]))
            return plan
        assert isinstance(plan, Plan)
        if plan.kind == flows.ERROR:
            self._translate_error(plan, frame, l3, end)
            self.counters["icmp-errors-translated"] += 1
            return None
        side = plan.side
        if plan.kind == flows.LATER_FRAGMENT:
            assert side is not None
            self._rewrite(side, frame, l3, end, now, whole=False)
            return side
        made = self._commit(plan, now)
        if isinstance(made, DropReason):
            return made
        side = made.orig
        verdict = self._rewrite(side, frame, l3, end, now, whole=True)
        if verdict is not Verdict.OK:
            dropped = self._after(side, verdict)
            if isinstance(dropped, DropReason):
                self.table.remove(made)  # its first packet went no further
                return dropped
        if made.hops is not None:
            made.hops[ORIG] = (in_port, bytes(frame[6:12]))
        return side

    def _after(self, side: Side, verdict: Verdict) -> Side | DropReason:
        """What becomes of a packet the connection table did not simply take."""
        if verdict is Verdict.IGNORED:
            return side
        if verdict is Verdict.CLOSE_NOW:
            self.table.remove(side.conn)  # this packet still leaves; the entry does not stay
            return side
        if verdict is Verdict.OUT_OF_WINDOW:
            return DropReason.TCP_OUT_OF_WINDOW
        return DropReason.TCP_INVALID

    def _rewrite(
        self,
        side: Side,
        frame: bytearray | memoryview,
        l3: int,
        end: int,
        now: float,
        *,
        whole: bool,
    ) -> Verdict:
        """Account a packet arriving on ``side`` on its connection and, if the
        connection table takes it, rewrite it (all of it, or, for a later
        fragment, only its addresses).  Returns the table's verdict; a packet it
        refuses is left as it was."""
        conn = side.conn
        if not side.addrs:
            side.prepare()
        v4_icmp = False
        if frame[l3] >> 4 == 4:
            v4_icmp = frame[l3 + ipv4.OFF_PROTO] == PROTO_ICMP
            at = l3 + ((frame[l3] & 0xF) << 2)
            first = whole and bool(_U16.unpack_from(frame, l3 + ipv4.OFF_FRAG)[0] & ipv4.FLAG_MF)
            verdict = self.table.seen(conn, side.direction, end - l3, frame, at, end, now, whole)
            if verdict not in _PASSES:
                return verdict
            frame[l3 + 12 : l3 + 20] = side.addrs
            _adjust(frame, l3 + ipv4.OFF_CSUM, side.ip_delta, False)
        else:
            chain = ipv6.walk(frame, l3, end)
            if isinstance(chain, str):
                return Verdict.INVALID
            at = chain.offset
            first = whole and chain.is_fragment
            verdict = self.table.seen(conn, side.direction, end - l3, frame, at, end, now, whole)
            if verdict not in _PASSES:
                return verdict
            frame[l3 + 8 : l3 + 40] = side.addrs
        if whole:
            if side.ports_at >= 0:
                p = at + side.ports_at
                if p + len(side.ports) <= end:
                    frame[p : p + len(side.ports)] = side.ports
            if side.csum_at >= 0 and at + side.csum_at + 2 <= end:
                new = _adjust(frame, at + side.csum_at, side.l4_delta, side.udp)
                if new == 0 and v4_icmp:
                    # RFC 1624's one blind spot: an ICMP message (no pseudo-header)
                    # whose words are now all zero sums to +0, so its checksum is
                    # 0xFFFF, not the 0x0000 the update gives.  Recount it.
                    rewrite.icmp4_checksum(frame, at, end)
        if first:  # a first fragment: its followers go the same way
            version = A.V4 if frame[l3] >> 4 == 4 else A.V6
            ident = _fragment_ident(version, frame, l3, end)
            if ident is not None:
                arrived = conn.arrives_as(side.direction)
                self._remember_fragment(version, arrived, ident, side, now)
        return verdict

    # -- new connections -------------------------------------------------------------

    def _service_plan(
        self, version: int, kind: int, flow: flows.Flow, key: Tuple
    ) -> Plan | DropReason | None:
        """A new flow to a VIP: to a backend if a service takes it; None leaves
        it to the VIP itself (ping answered, port unreachable, reset)."""
        _, proto, src, sport, vip, dport = key
        if kind == flows.PORTS:
            service = self.services.find(version, proto, vip, dport)
        elif kind == flows.QUERY:
            service = self.services.echo_service(version, vip)
        else:
            service = None
        if service is None:
            return None
        backend = service.pick(flow_key(version, proto, src, sport, vip, dport))
        if backend is None:
            return DropReason.LB_NO_BACKEND
        rport = backend.port if kind == flows.PORTS else 0
        to = Translation(src, sport, backend.address, rport)
        return Plan(kind, flow, backend.address, key=key, to=to, service=service, backend=backend)

    def _reused(self, side: Side, frame: Buffer, at: int, end: int) -> bool:
        """A SYN from the original side on the tuple of a connection that is over
        (TIME_WAIT, CLOSE: Linux's reopening), or of a load-balanced one whose
        backend has failed: a new connection, to be translated and scheduled
        afresh (as IPVS's conn_reuse_mode), not sent on as the old one.  Forgets
        the old connection if so."""
        conn = side.conn
        if side.direction != ORIG or conn.proto != PROTO_TCP or at + 14 > end:
            return False
        if l4.tcp_flags(frame, at) & (l4.TCP_SYN | l4.TCP_ACK) != l4.TCP_SYN:
            return False
        backend = conn.backend
        over = conn.state in (TcpState.TIME_WAIT, TcpState.CLOSE)
        if not over and (backend is None or cast(Backend, backend).up):
            return False
        self.table.remove(conn)
        self.counters["connections-rescheduled" if backend else "connections-reopened"] += 1
        return True

    def route_hint(self, plan: Side | Plan) -> tuple[tuple[int, bytes] | None, bool]:
        """For a load-balanced connection: the (port, MAC) the packet must leave
        by, if its destination side has been heard from (source in, source out),
        and whether the packet goes to a backend (the VIP was its destination:
        no TTL to spend here)."""
        if isinstance(plan, Side):
            side, error = plan, False
        else:
            if plan.side is None:
                return None, plan.service is not None
            side, error = plan.side, plan.kind == flows.ERROR
        hops = side.conn.hops
        if hops is None:
            return None, False
        return hops[1 - side.direction], side.direction == ORIG and not error

    @staticmethod
    def _may_start(kind: int, flow: flows.Flow, frame: Buffer) -> bool:
        """Whether a packet can open a connection: not an echo reply, not a TCP
        segment with RST (Linux's conntrack calls those invalid)."""
        if kind == flows.QUERY:
            return flow.dport == 0  # a request: the identifier is the source port
        if flow.proto == PROTO_TCP:
            # A SYN, or a plain ACK picked up in mid-stream; never a RST, FIN or
            # SYN-ACK (Linux's conntrack calls those invalid).
            return flow.at + 14 <= flow.end and tcptrack.may_start(l4.tcp_flags(frame, flow.at))
        return True

    def _dnat_rule(
        self, version: int, proto: int, dst: int, dport: int, kind: int
    ) -> DnatRule | None:
        best = None
        for r in self.dnat:
            if r.family != version or r.addr != dst:
                continue
            if r.port:
                if r.proto == proto and r.port == dport and kind == flows.PORTS:
                    return r
            elif r.proto in (0, proto) and kind in (flows.PORTS, flows.QUERY):
                best = r
        return best

    def _inside_rule(self, version: int, src: int) -> SnatRule | None:
        for r in self.snat:
            if r.family == version and r.covers(src):
                return r
        return None

    def _commit(self, plan: Plan, now: float) -> Conn | DropReason:
        table = self.table
        key = plan.key
        assert key is not None
        fam, proto, src, sport, dst, dport = key
        refused = table.make_room(fam, src)
        if refused is not None:
            if refused is Refused.SOURCE_LIMIT:
                return DropReason.CONNTRACK_SOURCE_LIMIT
            return DropReason.CONNTRACK_FULL
        to = plan.to or Translation(src, sport, dst, dport)
        if plan.service is not None:
            return self._fnat(plan, key, to, now)
        mapping = None
        if plan.snat is not None:
            if plan.flow.kind == flows.OTHER:
                # No ports: the address alone, if the reply tuple is free.
                out = next(self._pool_addresses(fam, src, plan.snat), None)
                if out is None:
                    return DropReason.NAT_PORTS_EXHAUSTED
                to = Translation(out, 0, to.dst, to.dport)
            else:
                mapping = self._mapping(fam, proto, src, sport, plan.snat)
                if mapping is None:
                    return DropReason.NAT_PORTS_EXHAUSTED
                to = Translation(mapping.outside[2], mapping.outside[3], to.dst, to.dport)
        conn = Conn(key, to, now, echo=plan.flow.kind == flows.QUERY)
        if table.taken(conn.key_reply) or table.taken(key):
            if mapping is not None and mapping.refs == 0:
                self._release_mapping(mapping)  # made for this connection only
            return DropReason.NAT_PORTS_EXHAUSTED
        if mapping is not None:
            mapping.refs += 1
            conn.mapping = mapping
        table.insert(conn, now)
        self.counters["connections-created"] += 1
        return conn

    def _fnat(self, plan: Plan, key: Tuple, to: Translation, now: float) -> Conn | DropReason:
        """A full-NAT connection: from a local address (LIP) and a port of its
        own on it, chosen so that the backend's replies are unique."""
        service, backend = plan.service, plan.backend
        assert service is not None and backend is not None
        fam, proto = key[0], key[1]
        echo = plan.flow.kind == flows.QUERY
        for _ in range(len(service.lips)):
            lip = service.next_lip()
            for _ in range(PORT_TRIES):
                lport = self._rng.randint(1024, 65535)
                if self.table.taken((fam, proto, to.dst, to.dport, lip, lport)):
                    continue
                conn = Conn(key, Translation(lip, lport, to.dst, to.dport), now, echo=echo)
                conn.backend = backend
                conn.hops = [None, None]
                backend.conns.add(conn)
                backend.total += 1
                self.table.insert(conn, now)
                self.counters["connections-created"] += 1
                return conn
        return DropReason.NAT_PORTS_EXHAUSTED

    def close_backend(self, backend: Backend) -> int:
        """Forget a failed backend's connections (``on_backend_down = "close"``):
        their next packets are scheduled afresh, and the backend that gets them
        resets them.  Returns how many were closed."""
        conns = list(backend.conns)
        for conn in conns:
            self.table.remove(conn)
        return len(conns)

    def _pool_addresses(self, fam: int, addr: int, rule: SnatRule) -> Iterator[int]:
        """The pool's addresses to try for an inside address, in order: the same
        one first for every protocol ("paired", RFC 4787 REQ-2), none taken whole
        by a DNAT rule."""
        pool = rule.pool
        first = (addr * 2654435761) % len(pool)
        for i in range(len(pool)):
            out_addr = pool[(first + i) % len(pool)]
            if (fam, out_addr) not in self._reserved_addrs:
                yield out_addr

    def _mapping(
        self, fam: int, proto: int, addr: int, port: int, rule: SnatRule
    ) -> Mapping | None:
        m = self._by_inside.get((fam, proto, addr, port))
        if m is not None:
            return m
        for out_addr in self._pool_addresses(fam, addr, rule):
            out_port = self._free_port(fam, proto, out_addr, port)
            if out_port is not None:
                intern = self.table.intern_address
                inside = (fam, proto, intern(addr), U16[port])
                m = Mapping(inside, (fam, proto, out_addr, U16[out_port]))
                self._by_inside[inside] = m
                self._by_outside[m.outside] = m
                self.counters["mappings-created"] += 1
                return m
        return None

    def _free_port(self, fam: int, proto: int, addr: int, want: int) -> int | None:
        def free(p: int) -> bool:
            endpoint = (fam, proto, addr, p)
            return endpoint not in self._by_outside and endpoint not in self._reserved

        if free(want):
            return want  # the port kept (RFC 4787 REQ-3's port preservation)
        # The same class of port as Linux chooses: echo identifiers anywhere;
        # privileged ports among privileged ones; others from 1024 up.
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            low, high = 0, 65535
        elif want < 512:
            low, high = 1, 511
        elif want < 1024:
            low, high = 600, 1023
        else:
            low, high = 1024, 65535
        for _ in range(PORT_TRIES):
            p = self._rng.randint(low, high)
            if free(p):
                return p
        start = self._rng.randint(low, high)
        span = high - low + 1
        for i in range(span):
            p = low + (start - low + i) % span
            if free(p):
                return p
        return None

    def _released(self, conn: Conn) -> None:
        if isinstance(conn.backend, Backend):
            conn.backend.conns.discard(conn)
        m = conn.mapping
        if isinstance(m, Mapping):
            m.refs -= 1
            if m.refs <= 0:
                self._release_mapping(m)

    def _release_mapping(self, m: Mapping) -> None:
        if self._by_inside.get(m.inside) is m:
            del self._by_inside[m.inside]
            self._by_outside.pop(m.outside, None)

    # -- fragments ---------------------------------------------------------------------

    def _remember_fragment(
        self, version: int, arrived: Tuple, ident: int, side: Side, now: float
    ) -> None:
        key = (version, arrived[2], arrived[4], arrived[1], ident)
        self._fragments[key] = (side, now + FRAGMENT_TIMEOUT)
        self._fragments.move_to_end(key)
        while len(self._fragments) > MAX_FRAGMENT_FLOWS:
            self._fragments.popitem(last=False)

    def _fragment_plan(
        self,
        version: int,
        frame: Buffer,
        l3: int,
        end: int,
        src: int,
        dst: int,
        flow: flows.Flow,
        now: float,
    ) -> Plan | DropReason | None:
        ident = _fragment_ident(version, frame, l3, end)
        if ident is None:
            return None
        hit = self._fragments.get((version, src, dst, flow.proto, ident))
        if hit is not None and not self.table.holds(hit[0].conn):
            hit = None  # its connection is gone (expired, evicted): so is its translation
        if hit is None or hit[1] < now:
            # Only our business if it is addressed to a translated address, and
            # not one hopgate answers for: a fragmented ping to the outside
            # address is reassembled and answered (its first fragment opened
            # nothing, so its followers are hopgate's own).
            if dst in self.addresses[version] and dst not in self._answered[version]:
                return DropReason.NAT_FRAGMENT_UNMATCHED
            return None
        side = hit[0]
        return Plan(flows.LATER_FRAGMENT, flow, side.dst, side=side)

    # -- ICMP errors (RFC 5508) ----------------------------------------------------------

    def _error_plan(
        self, version: int, frame: Buffer, flow: flows.Flow, dst: int
    ) -> Plan | DropReason | None:
        inner = flow.at + 8
        if version == A.V4:
            if flow.end - inner < ipv4.HEADER_LEN or frame[inner] >> 4 != 4:
                return None
            iflow = flows.v4(frame, inner, flow.end)
            isrc, idst = ipv4.addrs(frame, inner)
        else:
            if flow.end - inner < ipv6.HEADER_LEN or frame[inner] >> 4 != 6:
                return None
            iflow = flows.v6(frame, inner, flow.end)
            isrc, idst = ipv6.src(frame, inner), ipv6.dst(frame, inner)
        if iflow.kind not in (flows.PORTS, flows.QUERY, flows.OTHER):
            return None
        # The quote is a packet of the connection going the other way: its reverse
        # is how this error's direction arrives.
        side = self.table.lookup((version, iflow.proto, idst, iflow.dport, isrc, iflow.sport))
        # A redirect is about its sender's routes, not the connection it quotes,
        # and its gateway is on the sender's link: never translated (Linux's NAT
        # translates IPv4 ones; see docs/behaviour.md).
        redirect = version == A.V4 and frame[flow.at] == icmp4.REDIRECT
        if side is None:
            if isrc in self.addresses[version]:
                return DropReason.NAT_ICMP_REDIRECT if redirect else DropReason.NAT_ICMP_UNMATCHED
            return None
        if redirect:
            return DropReason.NAT_ICMP_REDIRECT
        if _bad_mtu(version, frame, flow.at, inner):
            return DropReason.NAT_BAD_MTU
        conn = side.conn
        a_src = conn.rewrite_for(1 - side.direction)[0]
        b = conn.arrives_as(1 - side.direction)
        new_dst = b[2] if dst == a_src else dst
        return Plan(flows.ERROR, flow, new_dst, side=side, inner=(inner, iflow))

    def _translate_error(
        self, plan: Plan, frame: bytearray | memoryview, l3: int, end: int
    ) -> None:
        side = plan.side
        assert side is not None and plan.inner is not None
        version = A.V4 if frame[l3] >> 4 == 4 else A.V6
        conn = side.conn
        inner, iflow = plan.inner
        quoted = 1 - side.direction
        a_src, a_sport, a_dst, a_dport = conn.rewrite_for(quoted)  # the quote as it left us
        b = conn.arrives_as(quoted)  # as its sender sent it
        b_src, b_sport, b_dst, b_dport = b[2], b[3], b[4], b[5]
        # The quoted packet, back to what its sender sent.
        if version == A.V4:
            old, new = rewrite.ipv4_addresses(frame, inner, b_src, b_dst)
            whole = inner + ipv4.total_len(frame, inner) <= iflow.end
        else:
            old, new = rewrite.ipv6_addresses(frame, inner, b_src, b_dst)
            whole = inner + ipv6.HEADER_LEN + ipv6.payload_len(frame, inner) <= iflow.end
        if iflow.kind != flows.OTHER:
            # Its transport checksum only when the quote holds all of the segment
            # (RFC 5508 and Linux leave a truncated one as it is).
            rewrite.transport(
                frame, iflow.at, iflow.end, iflow.proto, old, new,
                (a_sport, b_sport) if a_sport != b_sport else None,
                (a_dport, b_dport) if a_dport != b_dport else None,
                checksum=whole,
            )  # fmt: skip
        # The outer header: the addresses that were the connection's.
        if version == A.V4:
            osrc, odst = ipv4.addrs(frame, l3)
        else:
            osrc, odst = ipv6.src(frame, l3), ipv6.dst(frame, l3)
        new_src = b_dst if osrc == a_dst else osrc
        new_dst = b_src if odst == a_src else odst
        at = plan.flow.at
        if version == A.V4:
            rewrite.ipv4_addresses(frame, l3, new_src, new_dst)
            frame[at + 2] = frame[at + 3] = 0
            _U16.pack_into(frame, at + 2, cs.checksum(memoryview(frame)[at:end]))
        else:
            rewrite.ipv6_addresses(frame, l3, new_src, new_dst)
            frame[at + 2] = frame[at + 3] = 0
            _U16.pack_into(
                frame, at + 2, icmp6.checksum(new_src, new_dst, memoryview(frame)[at:end])
            )

    # -- for status ------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        return {
            "connections": len(self.table),
            "max_connections": self.table.max_connections,
            "unassured": self.table.unassured(),
            "mappings": len(self._by_inside),
            "fragment_flows": len(self._fragments),
            "services": [svc.describe() for svc in self.services.all],
            "counters": dict(self.counters),
        }

    def connections(self) -> list[Conn]:
        return self.table.connections()

    def restore(self, frame: bytearray, l3: int, side: Side) -> None:
        """Undo the translation of a packet that arrived on ``side`` (a copy of one
        that could not be delivered), so that an error about it quotes what its
        sender sent."""
        conn, direction = side.conn, side.direction
        version = A.V4 if frame[l3] >> 4 == 4 else A.V6
        if version == A.V4:
            end = l3 + ipv4.total_len(frame, l3)
            flow = flows.v4(frame, l3, end)
        else:
            end = l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3)
            flow = flows.v6(frame, l3, end)
        _, now_sport, _, now_dport = conn.rewrite_for(direction)
        was = conn.arrives_as(direction)
        if version == A.V4:
            old, new = rewrite.ipv4_addresses(frame, l3, was[2], was[4])
        else:
            old, new = rewrite.ipv6_addresses(frame, l3, was[2], was[4])
        if flow.kind in (flows.PORTS, flows.QUERY, flows.OTHER):
            rewrite.transport(
                frame, flow.at, end, flow.proto, old, new,
                (now_sport, was[3]) if now_sport != was[3] else None,
                (now_dport, was[5]) if now_dport != was[5] else None,
            )  # fmt: skip
