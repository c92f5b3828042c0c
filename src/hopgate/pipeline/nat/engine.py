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

``Nat`` is the facade the router uses; the work is done by concern: translation
(translate.py: rules, mappings, port choice, the rewrite), RFC 5508 error
translation (errors.py), fragments (fragments.py), and the load balancer's full
NAT (pipeline/lb/fnat.py), which shares the connection table.  What is decided
before the router's checks is a plan (pipeline/plans.py).
"""

from __future__ import annotations

import random
from collections import Counter
from functools import partial

from hopgate.packet import addr as A
from hopgate.packet import flows, l4
from hopgate.packet.proto import PROTO_TCP, PROTO_UDP
from hopgate.pipeline import tcptrack
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import (
    ORIG,
    Conn,
    ConnTable,
    Refused,
    Side,
    TcpState,
    Translation,
    Tuple,
    Verdict,
)
from hopgate.pipeline.context import WHOLE, Packet
from hopgate.pipeline.lb.fnat import Fnat, Hop, backend_failed
from hopgate.pipeline.lb.service import Backend, Services
from hopgate.pipeline.model import NatSpec
from hopgate.pipeline.nat import errors
from hopgate.pipeline.nat.fragments import Fragments
from hopgate.pipeline.nat.translate import DnatRule, Mappings, SnatRule, translate
from hopgate.pipeline.neighbours import Undo
from hopgate.pipeline.plans import ErrorAbout, LaterFragment, NewFlow, NewService, Plan
from hopgate.pipeline.ports import Port
from hopgate.pipeline.state import NatState
from hopgate.pipeline.timers import Timers

_SYN_ACK = l4.TCP_SYN | l4.TCP_ACK
_OK = Verdict.OK  # compared for every translated packet: a module global is read faster


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
        second_chance: frozenset[int] = frozenset(),
    ) -> None:
        """``second_chance``: the ports on which a TCP segment without SYN to a
        service that matches no connection is not scheduled but left to the
        cluster's peers (pipeline/lb/cluster.py): ``second-chance-sent``."""
        self.port_names = [p.name for p in ports]
        self.second_chance = second_chance
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
        reserved = {
            (r.family, p, r.addr, r.port)
            for r in self.dnat
            for p in ((r.proto,) if r.proto else (PROTO_TCP, PROTO_UDP))
            if r.port
        }
        reserved_addrs = {(r.family, r.addr) for r in self.dnat if not r.port}
        for fam in (A.V4, A.V6):
            self.addresses[fam] |= self.services.vips[fam] | self.services.lips[fam]
        self.mappings = Mappings(self.table, self._rng, self.counters, reserved, reserved_addrs)
        self.fnat = Fnat(self.services, self.table, self._rng, self.counters)
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
        self.fragments = Fragments(self.table, self.addresses, self._answered)

    # -- what the router asks ------------------------------------------------------

    def inbound(self, pkt: Packet) -> Side | Plan | DropReason | None:
        """A packet just arrived: part of a known connection (its side), a new
        DNAT, hairpin or load-balanced flow, an ICMP error about a translated
        flow, or none of NAT's business."""
        kind = pkt.kind
        if kind == flows.PORTS:  # most of the traffic: a TCP or UDP segment
            key: Tuple = (pkt.fam.version, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
            side = self.table.lookup(key)
            if side is not None:
                if not self._reused(side, pkt):
                    return side
            elif pkt.dst not in self.addresses[pkt.fam.version]:
                return None  # passing through, untracked
            return self._new_flow(pkt, key)
        version = pkt.fam.version
        if kind == flows.ERROR:
            return errors.error_plan(self.table, self.addresses[version], pkt)
        if kind == flows.LATER_FRAGMENT:
            return self.fragments.plan(pkt)
        if kind == flows.UNREADABLE:
            return None
        key = (version, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        side = self.table.lookup(key)
        if side is not None and errors.is_redirect(pkt):
            # An ICMPv6 redirect (informational, so no error) matching a
            # connection of another ICMPv6 message: never translated.
            return DropReason.NAT_ICMP_REDIRECT
        if side is not None and not self._reused(side, pkt):
            return side
        return self._new_flow(pkt, key)

    def _new_flow(self, pkt: Packet, key: Tuple) -> Plan | DropReason | None:
        """A packet of no connection: to a load-balanced service, a DNAT rule, or
        another inside host's outside mapping (hairpinning); or none of these."""
        version, dst = pkt.fam.version, pkt.dst
        if dst not in self.addresses[version]:
            return None
        if pkt.port in self.second_chance and self._second_chance(pkt):
            return DropReason.SECOND_CHANCE_SENT
        if not self._may_start(pkt):
            return None
        kind = pkt.kind
        if dst in self.services.vips[version]:
            return self.fnat.plan(version, kind, pkt.flow(), key)
        rule = self._dnat_rule(version, pkt.proto, dst, pkt.dport, kind)
        src, sport = pkt.src, pkt.sport
        if rule is not None:
            to_port = rule.to_port or pkt.dport
            to = Translation(src, sport, rule.to_addr, to_port)
            return NewFlow(pkt.flow(), rule.to_addr, key, to, self._inside_rule(version, src))
        if kind == flows.PORTS:
            # Hairpinning: an inside host reaching another's outside mapping.
            m = self.mappings.by_outside.get((version, pkt.proto, dst, pkt.dport))
            snat = self._inside_rule(version, src)
            if m is not None and snat is not None:
                to = Translation(src, sport, m.inside[2], m.inside[3])
                return NewFlow(pkt.flow(), m.inside[2], key, to, snat)
        return None

    def unsolicited(self, pkt: Packet) -> bool:
        """Whether a packet ``inbound`` did not take (no connection, not related,
        not DNAT'd), about to be forwarded, is unsolicited: it came in by a
        translating interface and is addressed to an inside prefix translated
        on it, where only replies come from (as nftables masquerade with
        ``ct state established,related accept`` and ``iifname <outside> drop``)."""
        prefixes = self._guarded.get((pkt.port, pkt.fam.version))
        dst = pkt.dst
        return prefixes is not None and any(dst & m == n for n, m in prefixes)

    def outbound(self, pkt: Packet, egress: int) -> Plan | DropReason | None:
        """A routed packet with no translation yet is about to leave by ``egress``."""
        version, src = pkt.fam.version, pkt.src
        rule = None
        for r in self.snat:
            if r.port == egress and r.family == version and r.covers(src):
                rule = r
                break
        if rule is None:
            return None
        # Whatever leaves by a translating interface from inside is translated or
        # dropped: never leaked with its inside address.
        kind = pkt.kind
        if kind == flows.ERROR:
            return DropReason.NAT_ICMP_UNMATCHED
        if kind == flows.LATER_FRAGMENT:
            return DropReason.NAT_FRAGMENT_UNMATCHED
        if kind == flows.UNREADABLE or not self._may_start(pkt):
            return DropReason.NAT_INVALID
        return NewFlow(pkt.flow(), pkt.dst, pkt.key(), None, rule)

    def apply(self, plan: Side | Plan, pkt: Packet) -> Side | DropReason | None:
        """The packet leaves: commit a new connection, account, and rewrite it.
        Returns the side it was translated on (None for an ICMP error, which
        belongs to no side of its own), or why it is dropped."""
        if type(plan) is Side:
            verdict = translate(self.table, self.fragments, plan, pkt, whole=True)
            if verdict is not _OK:
                return self._after(plan, verdict)
            hops = plan.conn.hops
            if hops is not None and hops[plan.direction] is None:
                hops[plan.direction] = Hop(pkt.port, bytes(pkt.frame[6:12]))
            return plan
        made: Conn | DropReason | None
        match plan:
            case ErrorAbout():
                errors.translate_error(plan, pkt)
                self.counters["icmp-errors-translated"] += 1
                return None
            case LaterFragment():
                translate(self.table, self.fragments, plan.side, pkt, whole=False)
                return plan.side
            case NewService():
                made = self._make_room(plan.key)
                if made is None:
                    made = self.fnat.commit(plan, pkt.now)
            case NewFlow():
                made = self._make_room(plan.key)
                if made is None:
                    made = self._commit(plan, pkt.now)
            case _:  # a Side: handled above
                raise AssertionError(plan)
        if isinstance(made, DropReason):
            return made
        side = made.orig
        verdict = translate(self.table, self.fragments, side, pkt, whole=True)
        if verdict is not _OK:
            dropped = self._after(side, verdict)
            if isinstance(dropped, DropReason):
                self.table.remove(made)  # its first packet went no further
                return dropped
        if made.hops is not None:
            made.hops[ORIG] = Hop(pkt.port, bytes(pkt.frame[6:12]))
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

    def route_hint(self, plan: Side | Plan) -> tuple[Hop | None, bool]:
        """For a load-balanced connection: the (port, MAC) the packet must leave
        by, if its destination side has been heard from (source in, source out),
        and whether the packet goes to a backend (the VIP was its destination:
        no TTL to spend here)."""
        if type(plan) is Side:
            side, error = plan, False
        else:
            match plan:
                case ErrorAbout():
                    side, error = plan.side, True
                case LaterFragment():
                    side, error = plan.side, False
                case NewService():
                    return None, True
                case _:
                    return None, False
        hops = side.conn.hops
        if hops is None:
            return None, False
        return hops[1 - side.direction], side.direction == ORIG and not error

    def close_backend(self, backend: Backend) -> int:
        """Forget a failed backend's connections (lb/fnat.py)."""
        return self.fnat.close_backend(backend)

    @staticmethod
    def undo(side: Side) -> Undo:
        """What undoes the translation of a packet that arrived on ``side``, on a
        copy of it (errors.py's ``restore``)."""
        return partial(errors.restore, side=side)

    # -- new connections -------------------------------------------------------------

    def _reused(self, side: Side, pkt: Packet) -> bool:
        """A SYN from the original side on the tuple of a connection that is over
        (TIME_WAIT, CLOSE: Linux's reopening), or of a load-balanced one whose
        backend has failed: a new connection, to be translated and scheduled
        afresh (as IPVS's conn_reuse_mode), not sent on as the old one.  Forgets
        the old connection if so."""
        conn = side.conn
        # Runs for every packet of a known connection: the cheapest tests first.
        at = pkt.at
        if side.direction or conn.tcp is None or at + 14 > pkt.end:
            return False
        if pkt.frame[at + 13] & _SYN_ACK != l4.TCP_SYN:
            return False
        over = conn.state in (TcpState.TIME_WAIT, TcpState.CLOSE)
        if not over and not backend_failed(conn):
            return False
        balanced = conn.backend is not None
        self.table.remove(conn)
        self.counters["connections-rescheduled" if balanced else "connections-reopened"] += 1
        return True

    def _second_chance(self, pkt: Packet) -> bool:
        """Whether a packet of no connection, to one of NAT's addresses, is one
        for the cluster's peers: a whole TCP segment without SYN (an ACK, FIN
        or RST of a connection another node may hold) to a service's VIP and
        port.  A SYN opens a connection here; a fragment, UDP, ICMP: as ever."""
        at, version = pkt.at, pkt.fam.version
        return (
            pkt.proto == PROTO_TCP
            and pkt.kind == flows.PORTS
            and pkt.fragment == WHOLE
            and at + 14 <= pkt.end
            and not l4.tcp_flags(pkt.frame, at) & l4.TCP_SYN
            and self.services.find(version, PROTO_TCP, pkt.dst, pkt.dport) is not None
        )

    @staticmethod
    def _may_start(pkt: Packet) -> bool:
        """Whether a packet can open a connection: not an echo reply, not a TCP
        segment with RST (Linux's conntrack calls those invalid)."""
        if pkt.kind == flows.QUERY:
            return pkt.dport == 0  # a request: the identifier is the source port
        if pkt.proto == PROTO_TCP:
            # A SYN, or a plain ACK picked up in mid-stream; never a RST, FIN or
            # SYN-ACK (Linux's conntrack calls those invalid).
            at = pkt.at
            return at + 14 <= pkt.end and tcptrack.may_start(l4.tcp_flags(pkt.frame, at))
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

    def dnat_target(
        self, version: int, proto: int, dst: int, dport: int, echo: bool = False
    ) -> tuple[int, int] | None:
        """Where a DNAT rule sends a new flow to (``dst``, ``dport``): the inside
        address and port, or None if no rule takes it."""
        rule = self._dnat_rule(version, proto, dst, dport, flows.QUERY if echo else flows.PORTS)
        if rule is None:
            return None
        return rule.to_addr, rule.to_port or dport

    def inside_rule(self, version: int, src: int) -> SnatRule | None:
        """The SNAT rule that translates ``src``, if one does."""
        return self._inside_rule(version, src)

    def _inside_rule(self, version: int, src: int) -> SnatRule | None:
        for r in self.snat:
            if r.family == version and r.covers(src):
                return r
        return None

    def _make_room(self, key: Tuple) -> DropReason | None:
        """Room in the table for a new connection from ``key``'s source, or why not."""
        refused = self.table.make_room(key[0], key[2])
        if refused is None:
            return None
        if refused is Refused.SOURCE_LIMIT:
            return DropReason.CONNTRACK_SOURCE_LIMIT
        return DropReason.CONNTRACK_FULL

    def _commit(self, plan: NewFlow, now: float) -> Conn | DropReason:
        """A new NAT connection, with its source mapping if it is translated."""
        table = self.table
        key = plan.key
        fam, proto, src, sport, dst, dport = key
        to = plan.to or Translation(src, sport, dst, dport)
        mapping = None
        if plan.snat is not None:
            if plan.flow.kind == flows.OTHER:
                # No ports: the address alone, if the reply tuple is free.
                out = next(self.mappings.pool_addresses(fam, src, plan.snat), None)
                if out is None:
                    return DropReason.NAT_PORTS_EXHAUSTED
                to = Translation(out, 0, to.dst, to.dport)
            else:
                mapping = self.mappings.get(fam, proto, src, sport, plan.snat)
                if mapping is None:
                    return DropReason.NAT_PORTS_EXHAUSTED
                to = Translation(mapping.outside[2], mapping.outside[3], to.dst, to.dport)
        conn = Conn(key, to, now, echo=plan.flow.kind == flows.QUERY)
        if table.taken(conn.key_reply) or table.taken(key):
            if mapping is not None and mapping.refs == 0:
                self.mappings.release(mapping)  # made for this connection only
            return DropReason.NAT_PORTS_EXHAUSTED
        if mapping is not None:
            mapping.refs += 1
            conn.mapping = mapping
        table.insert(conn, now)
        self.counters["connections-created"] += 1
        return conn

    def _released(self, conn: Conn) -> None:
        backend = conn.backend
        if backend is not None:
            backend.conns.discard(conn)
            self.fnat.forgotten(conn)
        m = conn.mapping
        if m is not None:
            self.mappings.unref(m)

    # -- a reload ----------------------------------------------------------------------

    def take_state(self, old: Nat) -> None:
        """Go on with ``old``'s connections (a reload, pipeline/takeover.py): its
        table, mappings, local ports and fragments become this engine's, under
        this configuration's limits, timeouts and published endpoints; its
        counters go on.  Each connection's own check against the new rules is
        the sweep's (takeover.py), a slice at a time."""
        table = old.table
        mine = self.table
        table.timeouts = mine.timeouts
        table.max_connections = mine.max_connections
        table.max_per_source = mine.max_per_source
        table.be_liberal = mine.be_liberal
        table.rebind(self._released)
        self.table = table
        self.counters = old.counters
        self._rng = old._rng
        mappings = old.mappings
        mappings.reserve(self.mappings)
        self.mappings = mappings
        fnat = old.fnat
        fnat.services = self.services
        self.fnat = fnat
        fragments = Fragments(table, self.addresses, self._answered)
        fragments.take(old.fragments)
        self.fragments = fragments

    # -- for status ------------------------------------------------------------------------

    def state(self) -> NatState:
        return NatState(
            connections=len(self.table),
            max_connections=self.table.max_connections,
            unassured=self.table.unassured(),
            mappings=len(self.mappings),
            fragment_flows=len(self.fragments),
            services=tuple(svc.describe() for svc in self.services.all),
            counters=tuple(self.counters.items()),
        )

    def connections(self) -> list[Conn]:
        return self.table.connections()
