"""Fragments of translated packets (docs/behaviour.md, "NAT"): only a first
fragment carries the ports, so its followers are translated as it was, found by
their IP identification; one that follows no translated first fragment and is
addressed to a translated address is dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from struct import Struct

from hopgate.packet import addr as A
from hopgate.packet import ipv4, ipv6
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import ConnTable, Side, Tuple
from hopgate.pipeline.context import Packet
from hopgate.pipeline.plans import LaterFragment

_U16 = Struct("!H")

MAX_FRAGMENT_FLOWS = 4096
FRAGMENT_TIMEOUT = 30.0  # as ipfrag_time


def fragment_ident(version: int, buf: Buffer, l3: int, end: int) -> int | None:
    if version == A.V4:
        if ipv4.is_fragment(ipv4.frag_field(buf, l3)):
            return int(_U16.unpack_from(buf, l3 + ipv4.OFF_ID)[0])
        return None
    fh = ipv6.fragment_header(buf, l3, end)
    return fh.ident if fh is not None else None


class Fragments:
    """The translated first fragments' sides, by (family, source, destination,
    protocol, identification) as their followers arrive; bounded, oldest first
    out.  ``addresses``: NAT's translated addresses; ``answered``: those
    hopgate answers for itself (by family)."""

    def __init__(
        self,
        table: ConnTable,
        addresses: dict[int, set[int]],
        answered: dict[int, frozenset[int]],
    ) -> None:
        self._table = table
        self._addresses = addresses
        self._answered = answered
        self._firsts: OrderedDict[tuple[int, int, int, int, int], tuple[Side, float]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._firsts)

    def take(self, old: Fragments) -> None:
        """A reload: the first fragments ``old`` translated, for their followers."""
        self._firsts = old._firsts

    def remember_first(self, side: Side, pkt: Packet) -> None:
        """A first fragment was translated on ``side``: its followers go the same way."""
        ident = fragment_ident(pkt.fam.version, pkt.frame, pkt.l3, pkt.end)
        if ident is None:
            return
        arrived = side.conn.arrives_as(side.direction)
        self._remember(pkt.fam.version, arrived, ident, side, pkt.now)

    def _remember(self, version: int, arrived: Tuple, ident: int, side: Side, now: float) -> None:
        key = (version, arrived[2], arrived[4], arrived[1], ident)
        self._firsts[key] = (side, now + FRAGMENT_TIMEOUT)
        self._firsts.move_to_end(key)
        while len(self._firsts) > MAX_FRAGMENT_FLOWS:
            self._firsts.popitem(last=False)

    def plan(self, pkt: Packet) -> LaterFragment | DropReason | None:
        """A later fragment arrived: translated as its first, dropped, or none of
        NAT's business."""
        version, dst = pkt.fam.version, pkt.dst
        ident = fragment_ident(version, pkt.frame, pkt.l3, pkt.end)
        if ident is None:
            return None
        hit = self._firsts.get((version, pkt.src, dst, pkt.proto, ident))
        if hit is not None and not self._table.holds(hit[0].conn):
            hit = None  # its connection is gone (expired, evicted): so is its translation
        if hit is None or hit[1] < pkt.now:
            # Only our business if it is addressed to a translated address, and
            # not one hopgate answers for: a fragmented ping to the outside
            # address is reassembled and answered (its first fragment opened
            # nothing, so its followers are hopgate's own).
            if dst in self._addresses[version] and dst not in self._answered[version]:
                return DropReason.NAT_FRAGMENT_UNMATCHED
            return None
        side = hit[0]
        return LaterFragment(pkt.flow(), side.dst, side)
