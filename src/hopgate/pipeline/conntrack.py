"""Connection tracking for translated flows (the state netfilter keeps in nf_conntrack).

A connection is known by two keys: the tuple of its first packet as it arrived
(``orig``) and the tuple its replies will arrive with after translation
(``reply``).  A tuple is (family, protocol, source, source port, destination,
destination port); for ICMP echo the identifier is the source port of a request
and the destination port of a reply, so that a reply's tuple is the reverse of
its request's.

Timeouts are Linux's defaults (net.netfilter.nf_conntrack_*_timeout).  Expiry
runs on timers: each connection has one pending timer; a packet only moves the
connection's deadline, and the timer, when it fires early, re-arms itself for
the new deadline.  Nothing ever scans the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import NamedTuple

from hopgate.packet import checksum as cs
from hopgate.packet import l4
from hopgate.pipeline.actions import Action
from hopgate.pipeline.timers import Timers

ORIG = 0
REPLY = 1

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

Tuple = tuple[int, int, int, int, int, int]  # family, proto, src, sport, dst, dport


class TcpState(IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8


@dataclass(frozen=True)
class Timeouts:
    """Seconds, with Linux's defaults."""

    tcp_syn_sent: float = 120
    tcp_syn_recv: float = 60
    tcp_established: float = 432000
    tcp_fin_wait: float = 120
    tcp_close_wait: float = 60
    tcp_last_ack: float = 30
    tcp_time_wait: float = 120
    tcp_close: float = 10
    udp: float = 30  # unreplied
    udp_stream: float = 120  # replied
    icmp: float = 30
    generic: float = 600

    @cached_property
    def _tcp_by_state(self) -> tuple[float, ...]:
        # Built once: tcp() runs for every TCP packet of every tracked connection.
        return (
            self.generic,  # NONE
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_close_wait,
            self.tcp_last_ack,
            self.tcp_time_wait,
            self.tcp_close,
        )

    def tcp(self, state: TcpState) -> float:
        return self._tcp_by_state[state]


class Translation(NamedTuple):
    """What a connection's original-direction packets become (t_*)."""

    src: int
    sport: int
    dst: int
    dport: int


def _sum(value: int) -> int:
    """Ones'-complement sum of an integer's 16-bit words (any width)."""
    if value == 0:
        return 0
    r = value % 0xFFFF
    return r if r else 0xFFFF


def _delta(old: int, new: int) -> int:
    """What RFC 1624 eqn. 3 adds to ~HC when fields summing to ``old`` become
    fields summing to ``new``: ~m + m', as one (unfolded) number."""
    return (~cs.fold(old) & 0xFFFF) + new


class Side:
    """One direction of a connection, with everything its packets need to be
    rewritten worked out once: the bytes that replace addresses and ports, and
    the constant each checksum moves by (RFC 1624)."""

    __slots__ = (
        "addrs",
        "conn",
        "csum_at",
        "direction",
        "dport",
        "dst",
        "ip_delta",
        "l4_delta",
        "ports",
        "ports_at",
        "sport",
        "src",
        "udp",
    )

    def __init__(self, conn: Conn, direction: int) -> None:
        self.conn = conn
        self.direction = direction
        fam, proto, osrc, osport, odst, odport = conn.arrives_as(direction)
        src, sport, dst, dport = conn.rewrite_for(direction)
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        width = 4 if fam == 4 else 16
        self.addrs = src.to_bytes(width, "big") + dst.to_bytes(width, "big")
        addr_old, addr_new = _sum(osrc) + _sum(odst), _sum(src) + _sum(dst)
        self.ip_delta = _delta(addr_old, addr_new) if fam == 4 else 0
        self.udp = proto == PROTO_UDP
        if proto in (PROTO_TCP, PROTO_UDP):
            self.ports = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
            self.ports_at = 0
            self.csum_at = l4.TCP_OFF_CSUM if proto == PROTO_TCP else l4.UDP_OFF_CSUM
            self.l4_delta = _delta(addr_old + osport + odport, addr_new + sport + dport)
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            # ICMPv6 sums a pseudo-header; ICMP does not.  Echo has an identifier
            # to rewrite: the source "port" of a request, the destination "port"
            # of a reply.
            old_sum, new_sum = (addr_old, addr_new) if proto == PROTO_ICMPV6 else (0, 0)
            if conn.echo:
                old_id, new_id = (osport, sport) if direction == ORIG else (odport, dport)
                self.ports = new_id.to_bytes(2, "big")
                self.ports_at = 4
                old_sum += old_id
                new_sum += new_id
            else:
                self.ports = b""
                self.ports_at = -1
            self.csum_at = 2 if old_sum != new_sum else -1
            self.l4_delta = _delta(old_sum, new_sum)
        else:
            self.ports = b""
            self.ports_at = -1
            self.csum_at = -1
            self.l4_delta = 0


class Conn:
    __slots__ = (
        "assured",
        "backend",
        "bytes",
        "created",
        "echo",
        "expires",
        "fin_from",
        "hops",
        "key_orig",
        "key_reply",
        "mapping",
        "packets",
        "sides",
        "state",
        "to",
    )

    def __init__(self, orig: Tuple, to: Translation, now: float, *, echo: bool = False) -> None:
        self.key_orig = orig
        self.to = to
        self.echo = echo  # an ICMP echo "connection": the identifier is its port
        fam, proto = orig[0], orig[1]
        self.key_reply: Tuple = (fam, proto, to.dst, to.dport, to.src, to.sport)
        self.state = TcpState.NONE
        self.assured = False
        self.fin_from = -1  # the direction that sent the first FIN
        self.created = now
        self.expires = now
        self.packets = [0, 0]
        self.bytes = [0, 0]
        # The source mapping this connection holds (released when it expires).
        self.mapping: object | None = None
        # A load-balanced connection: its backend, and for each direction the
        # (port, neighbour MAC) its first packet came from.  Packets and ICMP
        # errors bound for a side go back there, with no route lookup (source
        # in, source out).
        self.backend: object | None = None
        self.hops: list[tuple[int, bytes] | None] | None = None
        self.sides = (Side(self, ORIG), Side(self, REPLY))

    @property
    def family(self) -> int:
        return self.key_orig[0]

    @property
    def proto(self) -> int:
        return self.key_orig[1]

    def rewrite_for(self, direction: int) -> tuple[int, int, int, int]:
        """(src, sport, dst, dport) a packet of ``direction`` leaves with."""
        o = self.key_orig
        t = self.to
        if direction == ORIG:
            return t.src, t.sport, t.dst, t.dport
        return o[4], o[5], o[2], o[3]

    def arrives_as(self, direction: int) -> Tuple:
        return self.key_orig if direction == ORIG else self.key_reply


def tcp_next(state: TcpState, direction: int, flags: int, fin_from: int) -> tuple[TcpState, int]:
    """The next TCP state after a segment with ``flags`` in ``direction`` (a
    simplification of Linux's tcp_conntracks table: states from flags, no
    sequence-window checks).  Returns (state, direction of the first FIN)."""
    if flags & l4.TCP_RST:
        return TcpState.CLOSE, fin_from
    syn, ack, fin = flags & l4.TCP_SYN, flags & l4.TCP_ACK, flags & l4.TCP_FIN
    if syn and not ack:
        if state in (TcpState.NONE, TcpState.SYN_SENT):
            return TcpState.SYN_SENT, -1
        if state in (TcpState.TIME_WAIT, TcpState.CLOSE) and direction == ORIG:
            return TcpState.SYN_SENT, -1  # the port is reused: a new connection
        return state, fin_from
    if syn and ack:
        if state == TcpState.SYN_SENT and direction == REPLY:
            return TcpState.SYN_RECV, fin_from
        return state, fin_from
    if state == TcpState.NONE:
        # Picked up in mid-stream (nf_conntrack_tcp_loose, Linux's default).
        state = TcpState.ESTABLISHED
    if fin:
        if state in (TcpState.SYN_RECV, TcpState.ESTABLISHED):
            return TcpState.FIN_WAIT, direction
        if state in (TcpState.FIN_WAIT, TcpState.CLOSE_WAIT) and direction != fin_from:
            return TcpState.LAST_ACK, fin_from
        return state, fin_from
    if ack:
        if state == TcpState.SYN_RECV and direction == ORIG:
            return TcpState.ESTABLISHED, fin_from
        if state == TcpState.FIN_WAIT and direction != fin_from:
            return TcpState.CLOSE_WAIT, fin_from
        if state == TcpState.LAST_ACK and direction == fin_from:
            return TcpState.TIME_WAIT, fin_from
    return state, fin_from


Released = Callable[[Conn], None]


class ConnTable:
    def __init__(
        self,
        timeouts: Timeouts,
        max_connections: int,
        timers: Timers,
        released: Released,
    ) -> None:
        self.timeouts = timeouts
        self.max_connections = max_connections
        self._timers = timers
        self._released = released
        self._by_key: dict[Tuple, Side] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def lookup(self, key: Tuple) -> Side | None:
        """The side of a connection a packet with this tuple arrives on."""
        return self._by_key.get(key)

    def full(self) -> bool:
        return self._count >= self.max_connections

    def insert(self, conn: Conn, now: float) -> None:
        self._by_key[conn.key_orig] = conn.sides[ORIG]
        self._by_key[conn.key_reply] = conn.sides[REPLY]
        self._count += 1
        self._arm(conn, conn.expires)

    def taken(self, key: Tuple) -> bool:
        return key in self._by_key

    def seen(self, conn: Conn, direction: int, size: int, tcp_flags: int, now: float) -> None:
        """Account a packet of ``conn`` and move its state and deadline."""
        conn.packets[direction] += 1
        conn.bytes[direction] += size
        t = self.timeouts
        proto = conn.key_orig[1]
        if proto == PROTO_TCP:
            conn.state, conn.fin_from = tcp_next(conn.state, direction, tcp_flags, conn.fin_from)
            if conn.state == TcpState.ESTABLISHED:
                conn.assured = True
            conn.expires = now + t.tcp(conn.state)
        elif proto == PROTO_UDP:
            if direction == REPLY:
                conn.assured = True
            conn.expires = now + (t.udp_stream if conn.assured else t.udp)
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            if direction == REPLY:
                conn.assured = True
            conn.expires = now + t.icmp
        else:
            conn.expires = now + t.generic

    def _arm(self, conn: Conn, deadline: float) -> None:
        def fire(now: float, out: list[Action]) -> None:
            if not self._holds(conn):
                return
            if now < conn.expires:
                self._arm(conn, conn.expires)
                return
            self.remove(conn)

        self._timers.call_at(deadline, fire)

    def remove(self, conn: Conn) -> None:
        if self._holds(conn):
            del self._by_key[conn.key_orig]
            self._by_key.pop(conn.key_reply, None)
            self._count -= 1
            self._released(conn)

    def _holds(self, conn: Conn) -> bool:
        side = self._by_key.get(conn.key_orig)
        return side is not None and side.conn is conn

    def connections(self) -> list[Conn]:
        return [side.conn for side in self._by_key.values() if side.direction == ORIG]
