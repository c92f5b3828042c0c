"""NAT's translation: its rules, the endpoint-independent source mappings and the
choice of their outside ports, and the rewrite of a packet on a connection's
side (docs/behaviour.md, "NAT").

Mappings are endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): an inside
endpoint keeps one outside endpoint whatever it talks to, and keeps its own port
when that is free.  The outside address is chosen by the inside address, so a
host always appears from the same one (REQ-2, "paired").
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from struct import Struct
from typing import TYPE_CHECKING, NamedTuple

from hopgate.packet import addr as A
from hopgate.packet import ipv4, rewrite
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6
from hopgate.pipeline.conntrack import U16, ConnTable, Side, Verdict
from hopgate.pipeline.context import FIRST, Packet
from hopgate.pipeline.lb.fnat import PORT_TRIES

if TYPE_CHECKING:
    from hopgate.pipeline.nat.fragments import Fragments

_U16 = Struct("!H")
# What the connection table lets through (and so is translated).
_OK, _INVALID, _OUT_OF_WINDOW = Verdict.OK, Verdict.INVALID, Verdict.OUT_OF_WINDOW


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


class Mappings:
    """The source mappings, by inside and by outside endpoint; ``reserved``: the
    published endpoints (and ``reserved_addrs`` the whole addresses) no mapping
    may take."""

    def __init__(
        self,
        table: ConnTable,
        rng: random.Random,
        counters: Counter[str],
        reserved: set[Endpoint],
        reserved_addrs: set[tuple[int, int]],
    ) -> None:
        self._table = table
        self._rng = rng
        self._counters = counters
        self._reserved = reserved
        self._reserved_addrs = reserved_addrs
        self.by_inside: dict[Endpoint, Mapping] = {}
        self.by_outside: dict[Endpoint, Mapping] = {}

    def __len__(self) -> int:
        return len(self.by_inside)

    def reserve(self, other: Mappings) -> None:
        """A reload: the published endpoints of ``other`` (built from the new
        configuration) are the ones no new mapping may take."""
        self._reserved = other._reserved
        self._reserved_addrs = other._reserved_addrs

    def pool_addresses(self, fam: int, addr: int, rule: SnatRule) -> Iterator[int]:
        """The pool's addresses to try for an inside address, in order: the same
        one first for every protocol ("paired", RFC 4787 REQ-2), none taken whole
        by a DNAT rule."""
        pool = rule.pool
        first = (addr * 2654435761) % len(pool)
        for i in range(len(pool)):
            out_addr = pool[(first + i) % len(pool)]
            if (fam, out_addr) not in self._reserved_addrs:
                yield out_addr

    def get(self, fam: int, proto: int, addr: int, port: int, rule: SnatRule) -> Mapping | None:
        """The inside endpoint's mapping: its own, or a new one (None: no port free)."""
        m = self.by_inside.get((fam, proto, addr, port))
        if m is not None:
            return m
        for out_addr in self.pool_addresses(fam, addr, rule):
            out_port = self._free_port(fam, proto, out_addr, port)
            if out_port is not None:
                intern = self._table.intern_address
                inside = (fam, proto, intern(addr), U16[port])
                m = Mapping(inside, (fam, proto, out_addr, U16[out_port]))
                self.by_inside[inside] = m
                self.by_outside[m.outside] = m
                self._counters["mappings-created"] += 1
                return m
        return None

    def _free_port(self, fam: int, proto: int, addr: int, want: int) -> int | None:
        def free(p: int) -> bool:
            endpoint = (fam, proto, addr, p)
            return endpoint not in self.by_outside and endpoint not in self._reserved

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

    def adopt(self, inside: Endpoint, outside: Endpoint) -> Mapping | None:
        """The mapping of ``inside`` to ``outside`` as it was before a restart:
        the one there already, or a new one; None if either endpoint is held
        otherwise, or ``outside`` is published."""
        m = self.by_inside.get(inside)
        if m is not None:
            return m if m.outside == outside else None
        if outside in self.by_outside or outside in self._reserved:
            return None
        if (outside[0], outside[2]) in self._reserved_addrs:
            return None
        intern = self._table.intern_address
        fam, proto, addr, port = inside
        m = Mapping((fam, proto, intern(addr), U16[port]), outside)
        self.by_inside[m.inside] = m
        self.by_outside[outside] = m
        return m

    def unref(self, m: Mapping) -> None:
        """A connection holding ``m`` is gone."""
        m.refs -= 1
        if m.refs <= 0:
            self.release(m)

    def release(self, m: Mapping) -> None:
        if self.by_inside.get(m.inside) is m:
            del self.by_inside[m.inside]
            self.by_outside.pop(m.outside, None)


def adjust(buf: bytearray | memoryview, at: int, delta: int, udp: bool) -> int:
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


def translate(
    table: ConnTable, fragments: Fragments, side: Side, pkt: Packet, *, whole: bool
) -> Verdict:
    """Account a packet arriving on ``side`` on its connection and, if the
    connection table takes it, rewrite it (all of it, or, for a later
    fragment, only its addresses).  Returns the table's verdict; a packet it
    refuses is left as it was."""
    if not side.addrs:
        side.prepare()
    if pkt.bad_chain:
        return _INVALID
    frame, l3, at, end = pkt.frame, pkt.l3, pkt.at, pkt.end
    verdict = table.seen(side, end - l3, frame, at, end, pkt.now, whole)
    if verdict is not _OK and (verdict is _INVALID or verdict is _OUT_OF_WINDOW):
        return verdict
    v4_icmp = False
    if pkt.fam.version == A.V4:
        v4_icmp = pkt.proto == PROTO_ICMP
        frame[l3 + 12 : l3 + 20] = side.addrs
        adjust(frame, l3 + ipv4.OFF_CSUM, side.ip_delta, False)
    else:
        frame[l3 + 8 : l3 + 40] = side.addrs
    if whole:
        if side.ports_at >= 0:
            p = at + side.ports_at
            if p + len(side.ports) <= end:
                frame[p : p + len(side.ports)] = side.ports
        if side.csum_at >= 0 and at + side.csum_at + 2 <= end:
            new = adjust(frame, at + side.csum_at, side.l4_delta, side.udp)
            if new == 0 and v4_icmp:
                # RFC 1624's one blind spot: an ICMP message (no pseudo-header)
                # whose words are now all zero sums to +0, so its checksum is
                # 0xFFFF, not the 0x0000 the update gives.  Recount it.
                rewrite.icmp4_checksum(frame, at, end)
    if whole and pkt.fragment == FIRST:  # its followers go the same way
        fragments.remember_first(side, pkt)
    return verdict
