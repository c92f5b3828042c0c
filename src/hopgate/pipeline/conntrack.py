"""Connection tracking for translated flows (the state netfilter keeps in nf_conntrack).

A connection is known by two keys: the tuple of its first packet as it arrived
(``orig``) and the tuple its replies will arrive with after translation
(``reply``).  A tuple is (family, protocol, source, source port, destination,
destination port); for ICMP echo the identifier is the source port of a request
and the destination port of a reply, so that a reply's tuple is the reverse of
its request's.

Timeouts are Linux's defaults (net.netfilter.nf_conntrack_*_timeout), chosen
by the connection's state as Linux chooses them (TCP states and window tracking
are in ``tcptrack``).  Expiry runs once per tick over the connections filed
under it: a packet only moves a connection's deadline; one that moved later is
filed again when its tick comes, one that moved earlier (a FIN, a RST) is filed
again at once.  Nothing ever scans the table.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from hopgate.packet import checksum as cs
from hopgate.packet import l4
from hopgate.packet.checksum import int_sum
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.packet.types import Buffer
from hopgate.pipeline import tcptrack
from hopgate.pipeline.model import Timeouts
from hopgate.pipeline.tcptrack import ORIG, REPLY, TcpState, Verdict
from hopgate.pipeline.timers import Timers

if TYPE_CHECKING:
    from hopgate.pipeline.lb.fnat import Hop
    from hopgate.pipeline.lb.service import Backend
    from hopgate.pipeline.nat.translate import Mapping

__all__ = ["ORIG", "REPLY", "TcpState", "Timeouts", "Verdict"]

# A connection's key, and a packet's: (family, proto, src, sport, dst, dport).
# Plain tuples, not NamedTuples: they are built for every packet (a NamedTuple
# costs about six times as much to build), and the garbage collector stops
# tracking a tuple of ints but never a tuple subclass (two more tracked objects
# per connection made a full collection at 500k connections 100 ms longer).
Tuple = tuple[int, int, int, int, int, int]
FAMILY, PROTO, SRC, SPORT, DST, DPORT = range(6)  # its fields


class Translation(NamedTuple):
    """What a connection's original-direction packets become (t_*)."""

    src: int
    sport: int
    dst: int
    dport: int


def _delta(old: int, new: int) -> int:
    """What RFC 1624 eqn. 3 adds to ~HC when fields summing to ``old`` become
    fields summing to ``new``: ~m + m', folded to 16 bits (adding a folded
    number is the same in ones' complement), as a shared int object."""
    return U16[cs.fold((~cs.fold(old) & 0xFFFF) + new)]


# Canonical int objects for every 16-bit value (ports, echo identifiers, folded
# checksum deltas): connections refer to these rather than each holding copies
# (a CPython int above 256 is an object of its own, 28 bytes and more).
U16: tuple[int, ...] = tuple(range(0x10000))


class Side:
    """One direction of a connection, with everything its packets need to be
    rewritten worked out once, on its first packet (``prepare``): the bytes
    that replace addresses and ports, and the constant each checksum moves by
    (RFC 1624).  A direction never heard from (a flood's half-open entries)
    costs nothing more."""

    __slots__ = (
        "addrs",
        "conn",
        "csum_at",
        "direction",
        "ip_delta",
        "l4_delta",
        "ports",
        "ports_at",
        "udp",
    )

    def __init__(self, conn: Conn, direction: int) -> None:
        self.conn = conn
        self.direction = direction
        self.addrs = b""  # not prepared yet
        self.ports = b""
        self.ports_at = self.csum_at = -1
        self.ip_delta = self.l4_delta = 0
        self.udp = False

    def prepare(self) -> None:
        conn, direction = self.conn, self.direction
        fam, proto, osrc, osport, odst, odport = conn.arrives_as(direction)
        src, sport, dst, dport = conn.rewrite_for(direction)
        width = 4 if fam == 4 else 16
        self.addrs = src.to_bytes(width, "big") + dst.to_bytes(width, "big")
        addr_old, addr_new = int_sum(osrc) + int_sum(odst), int_sum(src) + int_sum(dst)
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
            self.csum_at = 2 if old_sum != new_sum else -1
            self.l4_delta = _delta(old_sum, new_sum)

    @property
    def dst(self) -> int:
        """The destination a packet arriving on this side leaves with."""
        conn = self.conn
        return conn.key_orig[SRC] if self.direction else conn.key_reply[SRC]


class Conn:
    __slots__ = (
        "assured",
        "backend",
        "bytes_orig",
        "bytes_reply",
        "created",
        "due",
        "echo",
        "expires",
        "hops",
        "key_orig",
        "key_reply",
        "mapping",
        "orig",
        "packets_orig",
        "packets_reply",
        "reply",
        "seen_reply",
        "state",
        "tcp",
    )

    def __init__(self, key: Tuple, to: Translation, now: float, *, echo: bool = False) -> None:
        self.key_orig = key
        self.echo = echo  # an ICMP echo "connection": the identifier is its port
        fam, proto = key[FAMILY], key[PROTO]
        self.key_reply: Tuple = (fam, proto, to.dst, to.dport, to.src, to.sport)
        self.state = TcpState.NONE
        self.assured = False  # replies seen as Linux requires: early drop spares it
        self.seen_reply = False
        self.tcp: array[int] | None = tcptrack.new_tracker() if proto == PROTO_TCP else None
        self.created = now
        self.expires = now
        self.due: _Due | None = None  # the expiry tick it is filed under (ConnTable)
        self.packets_orig = self.packets_reply = 0
        self.bytes_orig = self.bytes_reply = 0
        # The source mapping this connection holds (released when it expires).
        self.mapping: Mapping | None = None
        # A load-balanced connection: its backend, and for each direction the
        # (port, neighbour MAC) its first packet came from.  Packets and ICMP
        # errors bound for a side go back there, with no route lookup (source
        # in, source out).
        self.backend: Backend | None = None
        self.hops: list[Hop | None] | None = None
        self.orig = Side(self, ORIG)  # its original direction's packets arrive on this side
        self.reply = Side(self, REPLY)

    @property
    def family(self) -> int:
        return self.key_orig[FAMILY]

    @property
    def proto(self) -> int:
        return self.key_orig[PROTO]

    @property
    def to(self) -> Translation:
        """What its original-direction packets become (the reply tuple, reversed)."""
        r = self.key_reply
        return Translation(r[DST], r[DPORT], r[SRC], r[SPORT])

    @property
    def packets(self) -> list[int]:
        return [self.packets_orig, self.packets_reply]

    @property
    def bytes(self) -> list[int]:
        return [self.bytes_orig, self.bytes_reply]

    def rewrite_for(self, direction: int) -> tuple[int, int, int, int]:
        """(src, sport, dst, dport) a packet of ``direction`` leaves with."""
        if direction == ORIG:
            r = self.key_reply
            return r[DST], r[DPORT], r[SRC], r[SPORT]
        o = self.key_orig
        return o[DST], o[DPORT], o[SRC], o[SPORT]

    def arrives_as(self, direction: int) -> Tuple:
        return self.key_orig if direction == ORIG else self.key_reply


Released = Callable[[Conn], None]


def _tick(deadline: float) -> int:
    """The first tick at or after ``deadline``."""
    return math.ceil(deadline / TICK)


class _Due(list[Conn]):
    """The connections filed under one expiry tick (each holds a reference to
    its bucket, so a stale filing elsewhere is recognised and skipped)."""

    __slots__ = ("tick",)

    def __init__(self, tick: int) -> None:
        super().__init__()
        self.tick = tick


# Module constants for the per-packet path (an enum attribute costs a lookup).
_OK, _IGNORED, _INVALID = Verdict.OK, Verdict.IGNORED, Verdict.INVALID
_OUT_OF_WINDOW, _CLOSE_NOW = Verdict.OUT_OF_WINDOW, Verdict.CLOSE_NOW
_STATES = tuple(TcpState)  # by value
_NONE, _SYN_SENT, _SYN_RECV = TcpState.NONE, TcpState.SYN_SENT, TcpState.SYN_RECV
_ESTABLISHED, _FIN_WAIT, _CLOSE = TcpState.ESTABLISHED, TcpState.FIN_WAIT, TcpState.CLOSE

MAX_INTERNED_ADDRESSES = 1 << 16
TICK = 1.0  # expiry runs once per tick: a connection leaves within TICK of its deadline
UDP_STREAM_AFTER = 2.0  # seconds of replied traffic before UDP counts as a stream (Linux)
# How long past its deadline a connection the XDP fast path holds is kept before
# it expires: the fast path's packets are read back at half this interval
# (xdp/dataplane.py), so one it forwarded lately is not taken for idle.
FAST_PATH_GRACE = 2.0
# Packets a TCP connection carries (both ways, the handshake's included) before
# it is handed to the fast path: handing it over and taking it back at its FIN
# costs the loop some 60 µs (measured, bench/connections.py), more than the
# pipeline spends on a short exchange's few segments; a long one pays it once.
TCP_OFFLOAD_AFTER = 16


class Refused(IntEnum):
    """Why the table took no new connection."""

    FULL = 1  # every entry is assured: nothing to evict
    SOURCE_LIMIT = 2  # the source has max_connections_per_source already


class ConnTable:
    """The connections, by both tuples, with Linux conntrack's rules for keeping
    them: a deadline that follows the state (expiry within a tick of it, whether
    it moved later or earlier), assured only once both directions have spoken,
    and, when full, the oldest unassured entry evicted before a new flow is
    refused (early drop: half-open and unanswered flows go first, so a flood
    cannot lock out established traffic)."""

    def __init__(
        self,
        timeouts: Timeouts,
        max_connections: int,
        timers: Timers,
        released: Released,
        *,
        max_per_source: int = 0,
        be_liberal: bool = False,
        counters: Counter[str] | None = None,
    ) -> None:
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.be_liberal = be_liberal
        self._timers = timers
        self._released = released
        self._by_key: dict[Tuple, Side] = {}
        self._count = 0
        self._peak = 0
        # Early drop's candidates, least recently seen first: unassured
        # connections, then assured TCP connections that are closing (Linux's
        # tcp_can_early_drop), by when they began to close.
        self._unassured: OrderedDict[Conn, None] = OrderedDict()
        self._closing: OrderedDict[Conn, None] = OrderedDict()
        # Connections per original source address (only with a per-source limit).
        self._per_source: dict[tuple[int, int], int] = {}
        # Expiry: connections filed by the tick of their deadline.  A connection
        # whose deadline moved later is filed again when its tick comes; one
        # whose deadline moved earlier is filed again at once.
        self._due: dict[int, _Due] = {}
        self._addresses: dict[int, int] = {}  # see _interned
        # connections-expired, -early-dropped, -refused-full, -refused-source,
        # tcp-invalid, tcp-out-of-window (the NAT's counters, shared)
        self.counters: Counter[str] = Counter() if counters is None else counters
        # With the XDP fast path (xdp/tables.py; None without): connections to
        # hand to it (UDP ones once they are streams, TCP ones while they are
        # established: every packet then does the same), those it holds, and
        # those gone from the table since it last took its notes.
        self.to_offload: set[Conn] | None = None
        self.offloaded: set[Conn] = set()
        self.withdrawn: list[Conn] = []
        # How a TCP connection the fast path holds is taken back when the
        # pipeline gets one of its segments (its tracker read back into
        # ``conn.tcp``): the I/O layer's, set with ``start_offloading``.
        self.take_back: Callable[[Conn], None] | None = None
        # Whether the fast path holds a TCP connection handed to it and has
        # passed none of its segments up (see ``held``): the I/O layer's too.
        self.fast_path_holds: Callable[[Conn], bool] | None = None

    def __len__(self) -> int:
        return self._count

    def lookup(self, key: Tuple) -> Side | None:
        """The side of a connection a packet with this tuple arrives on."""
        return self._by_key.get(key)

    def taken(self, key: Tuple) -> bool:
        return key in self._by_key

    # -- admission ---------------------------------------------------------------

    def make_room(self, family: int, source: int) -> Refused | None:
        """Before a new connection from ``source``: None if it may be inserted
        (evicting the oldest unassured connection if the table is full), or why
        it may not."""
        if self.max_per_source and (
            self._per_source.get((family, source), 0) >= self.max_per_source
        ):
            self.counters["connections-refused-source"] += 1
            return Refused.SOURCE_LIMIT
        if self._count < self.max_connections:
            return None
        candidates = self._unassured or self._closing
        if candidates:
            victim = next(iter(candidates))
            self.counters["connections-early-dropped"] += 1
            self.remove(victim)
            return None
        self.counters["connections-refused-full"] += 1
        return Refused.FULL

    def insert(self, conn: Conn, now: float) -> None:
        conn.key_orig = self._interned(conn.key_orig)
        conn.key_reply = self._interned(conn.key_reply)
        self._by_key[conn.key_orig] = conn.orig
        self._by_key[conn.key_reply] = conn.reply
        self._count += 1
        self._peak = max(self._peak, self._count)
        self._unassured[conn] = None
        if self.max_per_source:
            src = (conn.key_orig[FAMILY], conn.key_orig[SRC])
            self._per_source[src] = self._per_source.get(src, 0) + 1
        self._file(conn, conn.expires)

    def restore(self, conn: Conn, deadline: float, *, assured: bool) -> None:
        """Insert ``conn`` as it was before a restart (nat/persist.py): its
        deadline, assured or not (so early drop spares it as before), closing
        or not."""
        conn.expires = deadline
        self.insert(conn, deadline)
        if assured:
            conn.assured = True
            self._unassured.pop(conn, None)
            if _FIN_WAIT <= conn.state <= _CLOSE:
                self._closing[conn] = None

    def intern_address(self, address: int) -> int:
        """One shared int object per address: many connections have a server,
        a client or a pool address in common."""
        addrs = self._addresses
        if len(addrs) >= MAX_INTERNED_ADDRESSES:
            addrs.clear()  # connections keep theirs; new ones start sharing again
        return addrs.setdefault(address, address)

    def _interned(self, key: Tuple) -> Tuple:
        """The key with shared int objects (ports: one of ``U16``)."""
        intern = self.intern_address
        fam, proto, src, sport, dst, dport = key
        return (fam, proto, intern(src), U16[sport], intern(dst), U16[dport])

    # -- packets -----------------------------------------------------------------

    def seen(
        self,
        side: Side,
        size: int,
        frame: Buffer,
        at: int,
        end: int,
        now: float,
        whole: bool = True,
    ) -> Verdict:
        """A packet arriving on ``side`` (its connection, in its direction),
        ``size`` bytes of IP, its transport header at ``at`` and its end at
        ``end`` (not ``whole``: a later fragment, with no transport header):
        check it (TCP), account it, and move the connection's state and
        deadline.  Runs before the packet is translated; a packet the verdict
        drops changes nothing."""
        conn, direction = side.conn, side.direction
        t = self.timeouts
        proto = conn.key_orig[PROTO]
        if proto == PROTO_TCP and conn in self.offloaded:
            self._take_back(conn)
        if not whole:
            verdict = Verdict.OK  # a later fragment: accounted, its first carried the header
        elif proto == PROTO_TCP:
            verdict = self._tcp(conn, direction, frame, at, end, now)
            if verdict is not Verdict.OK and verdict is not Verdict.IGNORED:
                return verdict
        elif proto == PROTO_UDP:
            verdict = Verdict.OK
            if direction == REPLY:
                conn.seen_reply = True
            if conn.seen_reply:
                if now - conn.created > UDP_STREAM_AFTER:
                    self._assure(conn)
                    self._refresh(conn, now + t.udp_stream)
                else:
                    self._refresh(conn, now + t.udp)
            else:
                self._refresh(conn, now + t.udp)
        else:
            # ICMP and other protocols: never assured (as Linux).
            if direction == REPLY:
                conn.seen_reply = True
            icmp = proto in (PROTO_ICMP, PROTO_ICMPV6)
            self._refresh(conn, now + (t.icmp if icmp else t.generic))
            verdict = Verdict.OK
        if direction == ORIG:
            conn.packets_orig += 1
            conn.bytes_orig += size
        else:
            conn.packets_reply += 1
            conn.bytes_reply += size
        return verdict

    def _tcp(
        self, conn: Conn, direction: int, frame: Buffer, at: int, end: int, now: float
    ) -> Verdict:
        track = conn.tcp
        assert track is not None
        if end - at < 20:
            self.counters["tcp-invalid"] += 1
            return _INVALID
        seg = tcptrack.Segment(frame, at, end)
        index = seg.index
        old = conn.state
        if old == _NONE and index == tcptrack.ACK:
            tcptrack.pickup(track, seg)
        verdict, new = tcptrack.track(track, old, direction, seg, frame, at, self.be_liberal)
        if verdict is not _OK:
            if verdict is _INVALID:
                self.counters["tcp-invalid"] += 1
            elif verdict is _OUT_OF_WINDOW:
                self.counters["tcp-out-of-window"] += 1
            else:
                verdict = _IGNORED  # changes nothing (a REOPEN the caller did not act on)
            return verdict
        if new != old:
            conn.state = _STATES[new]
            if _FIN_WAIT <= new <= _CLOSE and conn.assured and conn.due is not None:
                self._closing[conn] = None  # closing: early drop may take it
        t = self.timeouts
        timeout = t.tcp(new)
        if index == tcptrack.RST:
            timeout = t.tcp_close
        elif timeout > t.tcp_unacknowledged and tcptrack.unacknowledged(track):
            timeout = t.tcp_unacknowledged
        if not conn.seen_reply:
            if index == tcptrack.RST:
                # The only answer to a new connection is a reset (or it reset
                # itself before any reply): forget it at once, as Linux.
                if direction == REPLY:
                    conn.seen_reply = True
                return _CLOSE_NOW
            if index == tcptrack.SYN and old == _SYN_SENT:
                return _OK  # a retransmitted SYN does not renew the deadline
            if new == _ESTABLISHED and timeout > t.tcp_unacknowledged:
                timeout = t.tcp_unacknowledged  # picked up, never answered
            if direction == REPLY:
                conn.seen_reply = True
        elif not conn.assured and new == _ESTABLISHED and old in (_SYN_RECV, _ESTABLISHED):
            self._assure(conn)
        elif new == _ESTABLISHED and conn.assured and self.to_offload is not None:
            self._offer(conn)  # established again after the pipeline took it back
        self._refresh(conn, now + timeout)
        return _OK

    def _assure(self, conn: Conn) -> None:
        if not conn.assured:
            conn.assured = True
            self._unassured.pop(conn, None)
            if self.to_offload is not None:
                self._offer(conn)

    @staticmethod
    def offloadable(conn: Conn) -> bool:
        """Whether every packet of ``conn`` now does what the fast path can do,
        and enough of them come for the handover to pay: an assured UDP
        connection (a stream), or an assured TCP connection while it is
        established (its plain ACKs move only the windows) once it has carried
        ``TCP_OFFLOAD_AFTER`` packets."""
        if not conn.assured:
            return False
        proto = conn.key_orig[PROTO]
        if proto == PROTO_UDP:
            return True
        return (
            proto == PROTO_TCP
            and conn.state == _ESTABLISHED
            and conn.packets_orig + conn.packets_reply >= TCP_OFFLOAD_AFTER
        )

    def _offer(self, conn: Conn) -> None:
        offload = self.to_offload
        if offload is not None and conn not in self.offloaded and self.offloadable(conn):
            offload.add(conn)
            self.offloaded.add(conn)

    def start_offloading(
        self, take_back: Callable[[Conn], None], holds: Callable[[Conn], bool]
    ) -> None:
        """A fast path is there from now on: note the connections to hand to
        it, those it can take already first.  ``take_back``: how to take one
        back (see ``take_back``); ``holds``: whether it holds one still
        (see ``held``)."""
        self.take_back = take_back
        self.fast_path_holds = holds
        self.to_offload = {c for c in self.connections() if self.offloadable(c)}
        self.offloaded |= self.to_offload

    def held(self, conn: Conn) -> bool:
        """Whether a segment of ``conn`` that reached the pipeline is the fast
        path's to judge: ``conn`` is a TCP connection handed to it, and the
        program has passed none of its segments up (it marks the tracker when
        it does).  Such a segment was received before the handover, and waited
        in the pipeline's socket meanwhile (or the program passed it up before
        it looked at the connection: too big, a TTL to answer...; given back,
        it passes it up again).  Given back to the program (``Replay``), it is
        judged against the program's tracker, and the connection stays there:
        taking it back at every handover's backlog made the handover flap."""
        if conn not in self.offloaded or conn.key_orig[PROTO] != PROTO_TCP:
            return False
        pending = self.to_offload
        if pending is not None and conn in pending:
            return False  # not handed over yet: the pipeline's segment
        holds = self.fast_path_holds
        return holds is not None and holds(conn)

    def take_back_now(self, conn: Conn) -> None:
        """The fast path passed up a segment of ``conn`` given back to it: the
        connection is the pipeline's again, before the segment is handled."""
        self.counters["fastpath-replay-passed"] += 1
        if conn in self.offloaded:
            self._take_back(conn)

    def _take_back(self, conn: Conn) -> None:
        """A segment of a TCP connection handed to the fast path has come to the
        pipeline: the connection is the pipeline's again (its tracker as the
        fast path left it), until it is established and in window again."""
        self.offloaded.discard(conn)
        pending = self.to_offload
        if pending is not None and conn in pending:
            pending.discard(conn)  # never handed over
            return
        self.counters["fastpath-taken-back"] += 1
        if self.take_back is not None:
            self.take_back(conn)

    def seen_by_fast_path(
        self,
        conn: Conn,
        direction: int,
        packets: int,
        size: int,
        when: float,
        unacknowledged: bool = False,
    ) -> None:
        """The fast path forwarded ``packets`` (``size`` bytes of IP) on an
        offloaded connection in ``direction`` (read back from its table); its
        latest packet either way was at ``when``, and left (TCP) data
        ``unacknowledged`` or not: accounted, and the deadline moved, as
        ``seen`` would have for each."""
        if conn.due is None:
            return  # gone meanwhile
        if direction == ORIG:
            conn.packets_orig += packets
            conn.bytes_orig += size
        else:
            conn.packets_reply += packets
            conn.bytes_reply += size
        t = self.timeouts
        if conn.key_orig[PROTO] == PROTO_TCP:
            # Established throughout (anything else went up), perhaps waiting
            # for an acknowledgement: the deadline may move earlier.
            timeout = t.tcp(_ESTABLISHED)
            if unacknowledged and timeout > t.tcp_unacknowledged:
                timeout = t.tcp_unacknowledged
            self._refresh(conn, when + timeout)
            return
        deadline = when + t.udp_stream  # assured UDP
        if deadline > conn.expires:
            self._refresh(conn, deadline)

    # -- expiry ------------------------------------------------------------------

    def _refresh(self, conn: Conn, deadline: float) -> None:
        earlier = deadline < conn.expires
        conn.expires = deadline
        due = conn.due
        if due is None:
            return  # not (or no longer) in the table
        if not conn.assured:
            # Early drop takes the unassured connection idle longest: a ping or a
            # handshake in progress outlives a flood's one-packet entries.
            self._unassured.move_to_end(conn)
        # A connection is filed no later than its deadline's tick; only a deadline
        # that moved earlier can be before it.
        if earlier and _tick(deadline) < due.tick:
            self._file(conn, deadline)  # file it again, earlier

    def _file(self, conn: Conn, deadline: float) -> None:
        tick = _tick(deadline)
        bucket = self._due.get(tick)
        if bucket is None:
            self._due[tick] = bucket = _Due(tick)
            self._timers.call_at(tick * TICK, lambda now, out: self._expire(tick, now))
        bucket.append(conn)
        conn.due = bucket

    def _expire(self, tick: int, now: float) -> None:
        bucket = self._due.pop(tick, None)
        if bucket is None:
            return
        for conn in bucket:
            if conn.due is not bucket:
                continue  # filed again elsewhere, or gone
            if conn.expires <= now:
                if conn in self.offloaded and now < conn.expires + FAST_PATH_GRACE:
                    # Its latest packets may be the fast path's, not read back yet.
                    self._file(conn, conn.expires + FAST_PATH_GRACE)
                    continue
                self.counters["connections-expired"] += 1
                self.remove(conn)
            else:
                self._file(conn, conn.expires)
        self._compact()

    def remove(self, conn: Conn) -> None:
        self._unassured.pop(conn, None)
        self._closing.pop(conn, None)
        if conn.due is None:
            return
        if conn in self.offloaded:
            self.offloaded.discard(conn)
            if self.to_offload is not None:
                self.to_offload.discard(conn)
            self.withdrawn.append(conn)
        del self._by_key[conn.key_orig]
        self._by_key.pop(conn.key_reply, None)
        self._count -= 1
        conn.due = None
        if self.max_per_source:
            src = (conn.key_orig[FAMILY], conn.key_orig[SRC])
            left = self._per_source.get(src, 1) - 1
            if left > 0:
                self._per_source[src] = left
            else:
                self._per_source.pop(src, None)
        self._released(conn)

    def _compact(self) -> None:
        """Give back what a drained table held: Python's dicts never shrink on
        deletion, so one that held a flood keeps its size until rebuilt."""
        if self._peak > 4096 and self._count * 8 < self._peak:
            self._by_key = dict(self._by_key)
            self._per_source = dict(self._per_source)
            self._unassured = OrderedDict(self._unassured)
            self._closing = OrderedDict(self._closing)
            self._peak = max(self._count, 1)

    def rebind(self, released: Released) -> None:
        """A reload: the new engine is told of each connection that leaves
        (the timers, already one heap with the new router's, stay)."""
        self._released = released

    def holds(self, conn: Conn) -> bool:
        """Whether ``conn`` is (still) in the table: filed for expiry from its
        insertion to its removal, and only then."""
        return conn.due is not None

    def connections(self) -> list[Conn]:
        return [side.conn for side in self._by_key.values() if side.direction == ORIG]

    def unassured(self) -> int:
        return len(self._unassured)
