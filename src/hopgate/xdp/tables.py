"""The fast path's tables (fastpath.c), their one Python definition, and how the
router's state fills them.

Addresses are in network byte order, as the program reads them from the
packet.  What the fast path must not decide gets no entry, or an entry that
sends the packet to the pipeline: a route with more next hops than the program
picks among is installed with port ``PASS_PORT``, so that a shorter prefix
cannot take its packets; a neighbour is there only while the pipeline knows its
MAC.
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
import struct
from array import array
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from hopgate.pipeline import tcptrack
from hopgate.pipeline.conntrack import Conn, ConnTable
from hopgate.pipeline.nat import Nat
from hopgate.pipeline.neighbours import Entry, State
from hopgate.pipeline.router import Router
from hopgate.xdp.libbpf import XDP_REDIRECT, BpfError, BpfObject, CValue

OBJECT = Path(__file__).with_name("fastpath.o")
PROGRAM = "hopgate_fastpath"
REPLAY = "hopgate_replay"  # the program run on a held connection's late segment (``replay``)
MAX_PORTS = 64
PASS_PORT = 0xFFFFFFFF  # no port: the packet goes to the pipeline
MAX_HOPS = 16  # next hops of a route the program picks among; more: the pipeline's
MAX_GROUPS = 1024  # multipath routes per family


class Port(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("mtu", ctypes.c_uint16),
        ("mac", ctypes.c_uint8 * 6),
        ("copies", ctypes.c_uint32),  # 1: it takes the peers' second-chance copies
    ]


class RouteKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class Route(ctypes.Structure):
    _fields_ = [
        ("port", ctypes.c_uint32),
        ("gateway", ctypes.c_uint32),
        ("count", ctypes.c_uint32),  # next hops; more than 1: ``group``'s in hops4
        ("group", ctypes.c_uint32),
    ]


class Hop(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("gateway", ctypes.c_uint32)]


class NeighKey(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


Addr16 = ctypes.c_uint8 * 16


class Route6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", Addr16)]


class Route6(ctypes.Structure):
    _fields_ = [
        ("port", ctypes.c_uint32),
        ("gateway", Addr16),
        ("count", ctypes.c_uint32),
        ("group", ctypes.c_uint32),
    ]


class Hop6(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("gateway", Addr16)]


class Neigh6Key(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("addr", Addr16)]


class Addr6(ctypes.Structure):
    _fields_ = [("a", Addr16)]


class Neigh(ctypes.Structure):
    _fields_ = [
        ("mac", ctypes.c_uint8 * 6),
        ("pad", ctypes.c_uint16),
        ("used", ctypes.c_uint64),  # last sent through by the program, CLOCK_MONOTONIC ns
    ]


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("saddr", Addr16),  # IPv4: the first 4 bytes
        ("daddr", Addr16),
        ("ports", ctypes.c_uint8 * 4),  # as on the wire
    ]


class Flow(ctypes.Structure):
    _fields_ = [
        ("addrs", ctypes.c_uint8 * 32),  # the new source and destination
        ("ports", ctypes.c_uint8 * 4),
        ("ip_delta", ctypes.c_uint16),
        ("l4_delta", ctypes.c_uint16),
        ("hint_port", ctypes.c_uint32),  # NO_HINT: by the routes
        ("hint_mac", ctypes.c_uint8 * 6),
        ("dir", ctypes.c_uint8),  # the direction of the connection it is
        ("unacked", ctypes.c_uint8),  # written by the program (TCP)
        ("tcp", ctypes.c_uint32),  # its tracker's key in tcp_conns, or NO_TRACKER
        ("id", ctypes.c_uint32),  # hopgate's number for the flow
        ("pad", ctypes.c_uint32),
        ("used", ctypes.c_uint64),  # written by the program
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


class TcpSide(ctypes.Structure):
    """One side of a TCP tracker: tcptrack's END .. FLAGS, in that order."""

    _fields_ = [
        (name, ctypes.c_uint32) for name in ("end", "maxend", "maxwin", "maxack", "scale", "flags")
    ]


class TcpConn(ctypes.Structure):
    """A TCP connection's tracker, as the program keeps it: after the lock and
    the ``taken`` flag, tcptrack's array field for field."""

    _fields_ = [
        ("lock", ctypes.c_uint32),  # struct bpf_spin_lock
        ("taken", ctypes.c_uint32),  # the program passed one of its segments up
        ("side", TcpSide * 2),
        ("last_index", ctypes.c_uint32),
        ("last_dir", ctypes.c_uint32),
        ("last_end", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class Settings(ctypes.Structure):
    _fields_ = [
        ("nat", ctypes.c_uint32),  # 1: the router has NAT or services
        ("liberal", ctypes.c_uint32),  # 1: [nat] tcp_be_liberal
        # The program's clock (ns) past which it forwards nothing (0: no end):
        # renewed while hopgate runs, [dataplane] handover seconds ahead when
        # it stops (dataplane.py).
        ("until", ctypes.c_uint64),
        ("layout", ctypes.c_uint64),  # LAYOUT: what a later hopgate checks before taking over
    ]


TRACKER_AT = TcpConn.side.offset  # where tcptrack's fields begin
assert TcpConn.last_end.offset - TRACKER_AT == 4 * tcptrack.LAST_END

_TRACKER_SIZE = 4 * tcptrack.FIELDS

NO_HINT = 0xFFFFFFFF
NO_TRACKER = 0xFFFFFFFF
# What hopgate reads back of a flow: whether it has unacknowledged data, its
# number, and used, packets, bytes.
_COUNTS = struct.Struct(f"={Flow.unacked.offset}xB{Flow.id.offset - Flow.unacked.offset - 1}xI4x3Q")
assert _COUNTS.size == ctypes.sizeof(Flow) and Flow.used.offset == Flow.id.offset + 8

# Each table's (key, value) as fastpath.c declares them.
LAYOUTS: dict[str, tuple[type[CValue], type[CValue]]] = {
    "ports": (ctypes.c_uint32, Port),
    "port_of": (ctypes.c_uint32, ctypes.c_uint32),
    "routes4": (RouteKey, Route),
    "neigh4": (NeighKey, Neigh),
    "special4": (ctypes.c_uint32, ctypes.c_uint8),
    "routes6": (Route6Key, Route6),
    "neigh6": (Neigh6Key, Neigh),
    "special6": (Addr6, ctypes.c_uint8),
    "tx": (ctypes.c_uint32, ctypes.c_uint32),
    "hops4": (ctypes.c_uint32, Hop),
    "hops6": (ctypes.c_uint32, Hop6),
    "crc_table": (ctypes.c_uint32, ctypes.c_uint32),
    "flows": (FlowKey, Flow),
    "guard4": (RouteKey, ctypes.c_uint8),
    "guard6": (Route6Key, ctypes.c_uint8),
    "tcp_conns": (ctypes.c_uint32, TcpConn),
    "settings": (ctypes.c_uint32, Settings),
}


def _shape(t: type[CValue]) -> Any:
    """A table's key or value type as plain data: size, fields and theirs."""
    fields = getattr(t, "_fields_", None)
    if fields is None:
        return (t.__name__, ctypes.sizeof(t))
    return (ctypes.sizeof(t), [(f[0], _shape(f[1])) for f in fields])


# The tables' layout: a later hopgate takes over the program's tables (a restart,
# dataplane.py) only if its own are laid out alike.
LAYOUT = int.from_bytes(
    hashlib.blake2b(
        repr(sorted((n, _shape(k), _shape(v)) for n, (k, v) in LAYOUTS.items())).encode(),
        digest_size=8,
    ).digest(),
    "big",
)
# The tables a later hopgate takes over: all of them but the constant one.
TAKEN_OVER = (*(n for n in LAYOUTS if n != "crc_table"), "counters")


# The program's counters (fastpath.c's enum), by index, for each ingress port
# (then one set, unread here, for frames from an interface that is not a port).
# "copies": the peers' second-chance copies it forwarded (counted in "forwarded" too).
COUNTERS = ("passed", "forwarded", "copies")


def _be(addr: int) -> int:
    """An IPv4 address as the program sees it in memory."""
    return socket.htonl(addr)


def _a16(addr: int) -> ctypes.Array[ctypes.c_uint8]:
    return Addr16(*addr.to_bytes(16, "big"))


def _mac(mac: bytes) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * 6)(*mac)


def _crc_table() -> list[int]:
    """zlib's CRC-32 table (reflected polynomial 0xEDB88320): the program's
    flow hash is ``zlib.crc32`` (pipeline/routes.py ``flow_hash``)."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


class _Family(NamedTuple):
    """A family's tables' names and how its addresses are laid out in their keys."""

    routes: str
    route_key: type[ctypes.Structure]
    route: type[ctypes.Structure]
    hops: str
    hop: type[ctypes.Structure]
    neighs: str
    neigh_key: type[ctypes.Structure]
    guard: str
    width: int  # bits in an address
    addr: Callable[[int], Any]


_FAMILIES = {
    4: _Family("routes4", RouteKey, Route, "hops4", Hop, "neigh4", NeighKey, "guard4", 32, _be),
    6: _Family(
        "routes6", Route6Key, Route6, "hops6", Hop6, "neigh6", Neigh6Key, "guard6", 128, _a16
    ),
}


class Tables:
    """The program's tables, kept as the router's state: filled whole at start,
    then port by port (link events), neighbour by neighbour (``sync``) and
    connection by connection (``sync_connections``); what the program did read
    back (``read_use``, ``read_flows``)."""

    def __init__(self, obj: BpfObject, offset_ns: int = 0) -> None:
        """``offset_ns``: the program's clock (``bpf_ktime_get_ns``,
        CLOCK_MONOTONIC) less the pipeline's, in ns (0 as the daemon runs it:
        the pipeline's clock is ``time.monotonic``, CLOCK_MONOTONIC too)."""
        self.obj = obj
        self.offset_ns = offset_ns
        self._ifindex: dict[int, int] = {}  # port -> its interface, as installed
        self._ports: dict[int, bytes] = {}  # port -> its entry, as written
        # Each connection handed over: its flows' numbers.  Each flow by its
        # number: (connection, direction), and what was last read of it.
        self._ids: dict[Conn, tuple[int, int]] = {}
        self._flows: list[tuple[Conn, int] | None] = []
        self._last: list[tuple[int, int, int, int]] = []  # packets, bytes, used, unacked
        self._free: list[int] = []
        # Map operations that failed where nothing may raise (taking a
        # connection back, in the pipeline's per-packet path): for the loop.
        self.failed: list[BpfError] = []
        # What the tables a reload fills again (``_REFILLED``) hold, as written
        # here: (table, key) -> value.  While ``refill`` fills, what it would
        # write is collected instead, to write only what differs.
        self._mirror: dict[tuple[str, bytes], bytes] = {}
        self._collect: dict[tuple[str, bytes], tuple[CValue, CValue]] | None = None
        self._settings = Settings(layout=LAYOUT)

    def _put(self, name: str, key: CValue, value: CValue) -> None:
        if self._collect is not None:
            self._collect[(name, bytes(key))] = (key, value)
            return
        self.obj.update(name, key, value)
        self._mirror[(name, bytes(key))] = bytes(value)

    def _delete(self, name: str, key: CValue) -> None:
        self.obj.delete(name, key)
        self._mirror.pop((name, bytes(key)), None)

    def fill(self, router: Router, ifindex: Mapping[int, int], *, offload: bool = True) -> None:
        """Mirror ``router``'s ports, routes, neighbours, special addresses
        (both families) and NAT's guards into the tables; ``ifindex``: each
        port's interface (a port missing is down: the program has none of
        it).  From then on the router notes what changes."""
        for port, index in ifindex.items():
            self.set_port(router, port, index)
        if self._collect is None:  # not a refill: the table is the program's own
            for i, c in enumerate(_crc_table()):
                self.obj.update("crc_table", ctypes.c_uint32(i), ctypes.c_uint32(c))
        for fam in router.families:
            t = _FAMILIES[fam.version]
            groups = 0
            for r in fam.routes.routes():
                hops = r.nexthops
                key = t.route_key(r.prefixlen, t.addr(r.prefix))
                if len(hops) == 1:
                    value = t.route(hops[0].port, t.addr(hops[0].gateway), 1, 0)
                elif len(hops) <= MAX_HOPS and groups < MAX_GROUPS:
                    for i, h in enumerate(hops):
                        at = ctypes.c_uint32(groups * MAX_HOPS + i)
                        self.obj.update(t.hops, at, t.hop(h.port, t.addr(h.gateway)))
                    value = t.route(PASS_PORT, t.addr(0), len(hops), groups)
                    groups += 1
                else:
                    # Installed all the same, so that a shorter prefix cannot take its packets.
                    value = t.route(PASS_PORT, t.addr(0), 1, 0)
                self._put(t.routes, key, value)
            for e in fam.neighbours.entries():
                self.neighbour(fam.version, e)
            # From here the router notes what these tables must follow.
            fam.neighbours.changed = set()
        local = router.local
        nat = router.nat
        nat4 = nat.addresses[4] if nat is not None else set()
        nat6 = nat.addresses[6] if nat is not None else set()
        # The host addresses too: what is to (or from) one goes up, to the host
        # (io/hostport.py), or is dropped there.
        hosts4, hosts6 = local.hosts[4], local.hosts[6]
        for a in {*local.v4, *local.v4_broadcast, *local.v4_not_source, *nat4, *hosts4}:
            self._put("special4", ctypes.c_uint32(_be(a)), ctypes.c_uint8(1))
        # Link-local addresses, hopgate's included, the program passes up by their prefix.
        for a in {*local.v6, *nat6, *hosts6}:
            self._put("special6", Addr6(_a16(a)), ctypes.c_uint8(1))
        self._settings.nat = int(nat is not None)
        self._settings.liberal = int(nat is not None and nat.table.be_liberal)
        self.obj.update("settings", ctypes.c_uint32(0), self._settings)
        if nat is not None:
            self._guard(nat)
            if offload:
                self._start_offloading(nat.table)

    def forward_until(self, until: float | None) -> None:
        """The program forwards until ``until`` (the pipeline's clock), or for
        good (None), unless this is called again before then."""
        self._settings.until = 0 if until is None else max(1, int(until * 1e9) + self.offset_ns)
        self.obj.update("settings", ctypes.c_uint32(0), self._settings)

    def layout_of(self) -> int:
        """The layout the program's tables were filled in (``LAYOUT`` if by
        this hopgate's; another if a hopgate of another version filled them)."""
        got = Settings()
        self.obj.lookup("settings", ctypes.c_uint32(0), got)
        return int(got.layout)

    def adopt(self, router: Router, ifindex: Mapping[int, int]) -> int:
        """A restart: the tables, kept by the program the last hopgate left
        attached, are made ``router``'s (as ``refill``), and the connections it
        restored from the state file go on in the program where its flows are
        still there: their flows' numbers taken back, a TCP one's tracker read
        (the program kept it up to date while hopgate was down).  Flows of no
        connection restored are removed.  Returns how many connections were
        taken over."""
        self._ifindex = dict(ifindex)
        self.refill(router, adopting=True)
        nat = router.nat
        wanted: dict[bytes, tuple[Conn, int]] = {}
        if nat is not None:
            for conn in nat.table.connections():
                for direction in (0, 1):
                    wanted[bytes(self._flow_key(conn, direction))] = (conn, direction)
        keys, values = self.obj.dump("flows")
        key_size = ctypes.sizeof(FlowKey)
        found: dict[Conn, dict[int, tuple[int, int, int]]] = {}
        for i, (_, n, _, packets, size) in enumerate(_COUNTS.iter_unpack(values)):
            key = keys[i * key_size : (i + 1) * key_size]
            held = wanted.get(key)
            if held is None:
                self.obj.delete("flows", FlowKey.from_buffer_copy(key))
                continue
            found.setdefault(held[0], {})[held[1]] = (n, packets, size)
        trackers = {}
        taken = 0
        top = max((n for d in found.values() for n, _, _ in d.values()), default=-1)
        self._flows = [None] * (top + 1)
        self._last = [(0, 0, 0, 0)] * (top + 1)
        for conn, flows in found.items():
            if len(flows) != 2:  # half of it: the pipeline hands it over again
                for direction in flows:
                    self.obj.delete("flows", self._flow_key(conn, direction))
                continue
            ids = (flows[0][0], flows[1][0])
            self._ids[conn] = ids
            for direction, (n, packets, size) in flows.items():
                self._flows[n] = (conn, direction)
                # What it forwarded while hopgate was down is not counted again
                # later (nor now: the state file's counters stand).
                self._last[n] = (packets, size, 0, 0)
            if conn.tcp is not None:
                tc = TcpConn()
                if self.obj.lookup("tcp_conns", ctypes.c_uint32(ids[0]), tc, lock=True):
                    raw = ctypes.string_at(ctypes.addressof(tc) + TRACKER_AT, _TRACKER_SIZE)
                    conn.tcp[:] = array("I", raw)
                trackers[ids[0]] = conn
            assert nat is not None
            nat.table.offloaded.add(conn)
            taken += 1
        self._free = [n for n in range(top + 1) if self._flows[n] is None]
        for number in self.obj.keys("tcp_conns", ctypes.c_uint32):
            if number.value not in trackers:
                self.obj.delete("tcp_conns", number)
        if nat is not None:
            table = nat.table
            self._start_offloading(table)
            assert table.to_offload is not None
            table.to_offload -= set(self._ids)
        return taken

    # What a reload fills again: the tables whose entries the new router may no
    # longer have (an array's entries cannot go: the ports' and the hops' are
    # overwritten, and a hop group is reached only through its route).
    _REFILLED = (
        "routes4",
        "routes6",
        "special4",
        "special6",
        "guard4",
        "guard6",
        "neigh4",
        "neigh6",
    )

    def refill(self, router: Router, *, adopting: bool = False) -> None:
        """A reload: the tables made ``router``'s, on the ports as they are.
        The flows stay when the new router goes on with the connection table
        the program's flows are of (pipeline/takeover.py: the sweep withdraws
        those the new configuration ends); else they all go.  What the new
        router has and the tables do not (as this hopgate wrote them) is
        written over the old entries, nothing else; only then are the entries
        it no longer has removed: meanwhile the program may still forward by a
        route just removed, never by one not yet there, and it passes up a
        packet to an address the router has just taken."""
        table = router.nat.table if router.nat is not None else None
        kept = adopting or (table is not None and table.take_back is not None)
        if not kept:
            for conn in list(self._ids):
                self.withdraw(conn)
        collect: dict[tuple[str, bytes], tuple[CValue, CValue]] = {}
        self._collect = collect
        try:
            self.fill(router, dict(self._ifindex), offload=not kept)
        finally:
            self._collect = None
        if adopting:  # what the program holds, as the hopgate before left it
            held = {(n, bytes(k)) for n in self._REFILLED for k in self.obj.keys(n, LAYOUTS[n][0])}
        else:
            held = set(self._mirror)
        mirror = self._mirror
        for (name, raw), (key, value) in collect.items():
            if mirror.get((name, raw)) != bytes(value):
                self.obj.update(name, key, value)
                mirror[(name, raw)] = bytes(value)
        for name, raw in held - collect.keys():
            self._delete(name, LAYOUTS[name][0].from_buffer_copy(raw))

    def _guard(self, nat: Nat) -> None:
        """NAT's inside prefixes and DNAT's inside addresses: a packet from or
        to one that is not on a flow the program holds goes to the pipeline,
        which may have a connection for it (or must make one)."""
        one = ctypes.c_uint8(1)
        for rule in nat.snat:
            t = _FAMILIES[rule.family]
            for network, mask in rule.prefixes:
                plen = t.width - (~mask & ((1 << t.width) - 1)).bit_length()
                self._put(t.guard, t.route_key(plen, t.addr(network)), one)
        for d in nat.dnat:
            t = _FAMILIES[d.family]
            self._put(t.guard, t.route_key(t.width, t.addr(d.to_addr)), one)

    # -- NAT's connections --------------------------------------------------------

    @staticmethod
    def _flow_key(conn: Conn, direction: int) -> FlowKey:
        fam, proto, src, sport, dst, dport = conn.arrives_as(direction)
        width = 4 if fam == 4 else 16
        return FlowKey(
            fam,
            proto,
            0,
            Addr16(*src.to_bytes(width, "big")),
            Addr16(*dst.to_bytes(width, "big")),
            (ctypes.c_uint8 * 4)(*sport.to_bytes(2, "big"), *dport.to_bytes(2, "big")),
        )

    def offload(self, conn: Conn) -> bool:
        """Give both directions of ``conn`` to the program, as the pipeline's
        Sides would translate them, and a TCP connection's tracker; False if it
        cannot yet (a load-balanced connection's way back not known)."""
        hops = conn.hops
        if hops is not None and None in hops:
            return False
        ids = self._ids.get(conn)
        if ids is None:
            ids = self._ids[conn] = (self._number(conn, 0), self._number(conn, 1))
        tracker = NO_TRACKER
        if conn.tcp is not None:
            # Before its flows: a flow never names a tracker that is not there.
            tracker = ids[0]
            tc = TcpConn()
            ctypes.memmove(ctypes.addressof(tc) + TRACKER_AT, conn.tcp.tobytes(), _TRACKER_SIZE)
            self.obj.update("tcp_conns", ctypes.c_uint32(tracker), tc)
        for side in (conn.orig, conn.reply):
            if not side.addrs:
                side.prepare()
            hint = hops[1 - side.direction] if hops is not None else None
            value = Flow(
                addrs=(ctypes.c_uint8 * 32)(*side.addrs),
                ports=(ctypes.c_uint8 * 4)(*side.ports),
                ip_delta=side.ip_delta,
                l4_delta=side.l4_delta,
                hint_port=hint.port if hint is not None else NO_HINT,
                hint_mac=_mac(hint.mac) if hint is not None else _mac(bytes(6)),
                dir=side.direction,
                tcp=tracker,
                id=ids[side.direction],
                used=int(conn.expires * 1e9) + self.offset_ns,
            )
            self.obj.update("flows", self._flow_key(conn, side.direction), value)
        return True

    def sync_connections(self, table: ConnTable) -> list[BpfError]:
        """Take back the connections ``table`` removed and hand over those it
        marked (a load-balanced one whose way back is not known yet waits);
        returns the updates that failed (a connection the program could not
        take stays the pipeline's: slower, still right)."""
        failed = []
        for conn in table.withdrawn:
            try:
                self.withdraw(conn)
            except BpfError as e:
                failed.append(e)
        table.withdrawn.clear()
        pending = table.to_offload
        if pending:
            for conn in list(pending):
                try:
                    if self.offload(conn):
                        pending.discard(conn)
                except BpfError as e:
                    pending.discard(conn)
                    failed.append(e)
        return failed

    def _number(self, conn: Conn, direction: int) -> int:
        if self._free:
            n = self._free.pop()
            self._flows[n] = (conn, direction)
            self._last[n] = (0, 0, 0, 0)
            return n
        self._flows.append((conn, direction))
        self._last.append((0, 0, 0, 0))
        return len(self._flows) - 1

    def withdraw(self, conn: Conn) -> None:
        """Take ``conn`` back from the program (it is gone from the table)."""
        ids = self._ids.pop(conn, ())
        for n in ids:
            self._flows[n] = None
            self._free.append(n)
        for direction in (0, 1):
            self.obj.delete("flows", self._flow_key(conn, direction))
        if conn.tcp is not None and ids:
            self.obj.delete("tcp_conns", ctypes.c_uint32(ids[0]))

    def _start_offloading(self, table: ConnTable) -> None:
        table.start_offloading(lambda conn: self._take_back(conn, table), self.holds)

    def holds(self, conn: Conn) -> bool:
        """Whether the program holds ``conn``, a TCP connection, and has passed
        none of its segments up (its tracker is not marked taken).  A failure
        is noted in ``failed`` for the loop: the answer is then no (the
        pipeline takes the connection back, as it did before it asked)."""
        ids = self._ids.get(conn)
        if ids is None:
            return False
        tc = TcpConn()
        try:
            found = self.obj.lookup("tcp_conns", ctypes.c_uint32(ids[0]), tc, lock=True)
        except BpfError as e:
            self.failed.append(e)
            return False
        return found and not tc.taken

    def replay(
        self, frame: bytes | bytearray | memoryview, ifindex: int
    ) -> tuple[int, bytes] | None:
        """Run the program on ``frame`` as if it had just arrived on
        ``ifindex`` (``BPF_PROG_TEST_RUN``, fastpath.c's ``hopgate_replay``): a
        segment of a connection it holds, received before the handover.  What
        it learns from it stays in its tracker, what it forwarded on the flow
        is counted there.  Returns the port to send the frame by and the frame
        as the program made it, or None if the program passed it up (it is the
        pipeline's then, as is the connection).  Raises ``BpfError``."""
        got = self.obj.test_run(REPLAY, bytes(frame), ifindex)
        if got.verdict != XDP_REDIRECT:
            return None
        out = ctypes.c_uint32(MAX_PORTS)
        self.obj.lookup("replay_out", ctypes.c_uint32(0), out)
        return out.value, got.frame

    def _take_back(self, conn: Conn, table: ConnTable) -> None:
        """``take_back`` as the pipeline calls it, in its per-packet path: a
        failure is noted in ``failed`` for the loop, never raised (the tracker
        stays the pipeline's as it was: the worst is a segment it then finds
        out of window)."""
        try:
            self.take_back(conn, table)
        except BpfError as e:
            self.failed.append(e)

    def take_back(self, conn: Conn, table: ConnTable) -> None:
        """The pipeline has a segment of ``conn``, a TCP connection the program
        holds: the connection is the pipeline's again from this segment on.
        Its flows go first (the program stops taking its segments), with what
        the program forwarded on them since the last read; then its tracker is
        read back into ``conn.tcp``, under the program's lock."""
        ids = self._ids.pop(conn, None)
        if ids is None:
            return
        flow = Flow()
        for direction, n in enumerate(ids):
            if self.obj.lookup_and_delete("flows", self._flow_key(conn, direction), flow):
                self._account(table, n, flow.used, flow.packets, flow.bytes, flow.unacked)
            self._flows[n] = None
            self._free.append(n)
        key = ctypes.c_uint32(ids[0])
        tc = TcpConn()
        if conn.tcp is not None and self.obj.lookup("tcp_conns", key, tc, lock=True):
            raw = ctypes.string_at(ctypes.addressof(tc) + TRACKER_AT, _TRACKER_SIZE)
            conn.tcp[:] = array("I", raw)
        self.obj.delete("tcp_conns", key)

    def taken_back(self, conn: Conn) -> bool:
        """Whether the program has marked ``conn``, a TCP connection it holds,
        taken back (it passes up its segments until the pipeline takes it)."""
        ids = self._ids.get(conn)
        tc = TcpConn()
        if ids is None or not self.obj.lookup("tcp_conns", ctypes.c_uint32(ids[0]), tc, lock=True):
            return True
        return bool(tc.taken)

    def read_flows(self, table: ConnTable) -> None:
        """Tell ``table`` what the program forwarded on each connection it holds
        since the last read: the whole table read in a few system calls, each
        flow's counters compared with what was read before."""
        token = self.read_flows_from(table, None)
        while token is not None:
            token = self.read_flows_from(table, token)

    def read_flows_from(self, table: ConnTable, token: int | None, count: int = 4096) -> int | None:
        """``read_flows`` for up to ``count`` flows from ``token`` (None: the
        first); returns where to go on, or None at the end of the table."""
        _, values, token = self.obj.dump_chunk("flows", token, count)
        account = self._account
        for unacked, n, used, packets, size in _COUNTS.iter_unpack(values):
            account(table, n, used, packets, size, unacked)
        return token

    def _account(
        self, table: ConnTable, n: int, used: int, packets: int, size: int, unacked: int
    ) -> None:
        """Flow ``n`` has forwarded ``packets`` (``size`` bytes) in all, the last
        at ``used``: tell ``table`` what is new since the last read."""
        last = self._last
        before = last[n] if n < len(last) else (packets, size, 0, 0)
        if packets == before[0]:
            return
        held = self._flows[n]
        if held is None:
            return  # withdrawn meanwhile
        last[n] = (packets, size, used, unacked)
        conn, direction = held
        # The connection's latest packet, either way, says whether data waits
        # for an acknowledgement (the program notes it in the flow it forwards on).
        ids = self._ids.get(conn)
        if ids is not None:
            other = last[ids[1 - direction]]
            if other[2] > used:
                used, unacked = other[2], other[3]
        table.seen_by_fast_path(
            conn,
            direction,
            packets - before[0],
            size - before[1],
            (used - self.offset_ns) / 1e9,
            bool(unacked),
        )

    def set_port(self, router: Router, port: int, ifindex: int) -> None:
        """``port`` is up on interface ``ifindex`` with the router's MAC and MTU for it."""
        p = router.ports[port]
        copies = router.cluster is not None and port in router.cluster.second_chance
        value = Port(ifindex, p.mtu, _mac(p.mac), int(copies))
        if self._collect is not None and self._ports.get(port) == bytes(value):
            # A refill, and the port as it is: only its entry is kept.
            self._put("port_of", ctypes.c_uint32(ifindex), ctypes.c_uint32(port + 1))
            return
        self.drop_port(port)
        index = ctypes.c_uint32(port)
        self.obj.update("ports", index, value)
        self._put("port_of", ctypes.c_uint32(ifindex), ctypes.c_uint32(port + 1))
        self.obj.update("tx", index, ctypes.c_uint32(ifindex))
        self._ifindex[port] = ifindex
        self._ports[port] = bytes(value)

    def drop_port(self, port: int) -> None:
        """``port`` is down or gone: nothing arrives through it or leaves by it
        in the fast path (its neighbours go with the router's, by ``neighbour``)."""
        ifindex = self._ifindex.pop(port, None)
        self._ports.pop(port, None)
        if ifindex is None:
            return
        # An array's entry cannot be deleted: a zero port has no MAC to match.
        self.obj.update("ports", ctypes.c_uint32(port), Port())
        self._delete("port_of", ctypes.c_uint32(ifindex))
        self.obj.delete("tx", ctypes.c_uint32(port))

    def neighbour(self, version: int, e: Entry | None, key: tuple[int, int] | None = None) -> None:
        """Install neighbour ``e`` if the pipeline would send through it (it has
        a MAC), or withdraw it (or ``key``, (port, address), when it is gone)."""
        t = _FAMILIES[version]
        port, addr = (e.port, e.addr) if e is not None else key  # type: ignore[misc]
        nkey = t.neigh_key(port, t.addr(addr))
        if e is not None and e.mac is not None:
            used = int(e.used * 1e9) + self.offset_ns
            self._put(t.neighs, nkey, Neigh(_mac(e.mac), 0, used))
        else:
            self._delete(t.neighs, nkey)

    def read_use(self, router: Router, now: float) -> list[BpfError]:
        """Tell the router when the program last sent through each neighbour
        whose use would change something (a STALE one, or one whose REACHABLE
        time is over: a use starts its re-probe, and keeps it from being
        forgotten as idle); returns the reads that failed."""
        failed = []
        used = Neigh()
        for fam in router.families:
            t = _FAMILIES[fam.version]
            table = fam.neighbours
            for e in table.entries():
                if e.mac is None or not (
                    e.state == State.STALE or (e.state == State.REACHABLE and now >= e.until)
                ):
                    continue
                try:
                    if not self.obj.lookup(t.neighs, t.neigh_key(e.port, t.addr(e.addr)), used):
                        continue
                except BpfError as err:
                    failed.append(err)
                    continue
                when = (used.used - self.offset_ns) / 1e9
                if when > e.used:
                    table.used_by_fast_path(e.port, e.addr, min(when, now))
        return failed

    def sync(self, router: Router) -> list[BpfError]:
        """Apply the neighbour changes ``router`` noted since the last call
        (``NeighbourTable.changed``); returns the updates that failed."""
        failed = []
        for fam in router.families:
            table = fam.neighbours
            changed = table.changed
            if not changed:
                continue
            for key in changed:
                try:
                    self.neighbour(fam.version, table.get(*key), key)
                except BpfError as e:
                    failed.append(e)
            changed.clear()
        return failed

    def counters(self, ports: int) -> list[dict[str, int]]:
        """The program's counters for ports 0 .. ``ports`` - 1, summed over the CPUs."""
        sums = self.obj.percpu_sums("counters", ports * len(COUNTERS))
        n = len(COUNTERS)
        return [dict(zip(COUNTERS, sums[i * n : (i + 1) * n], strict=True)) for i in range(ports)]
