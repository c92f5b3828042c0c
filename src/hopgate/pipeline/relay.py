"""The path MTU discovery relay: fragmentation needed (ICMP 3/4) and Packet Too Big
(ICMPv6 2/0) passed on to the other nodes that share an address behind ECMP.

Routers hash an ICMP error on its outer addresses (the router that sent it, the
shared address), so it reaches one node of several, often not the one holding
the flow it is about.  A relay re-sends such a message to its peers: as a
link-layer broadcast on the segment it came from, or to each peer's MAC.  The
node that holds the flow learns the path MTU; the others ignore it.

What keeps this safe:
- a relayed copy is marked twice, and a marked message is never relayed again:
  it goes to the link-layer broadcast address (or a peer's MAC) with the DSCP
  ``mark`` in its IP header (a Pool 2 code point of RFC 2474, for local use);
- the MTU must be one a host could believe (68 up for IPv4, 1280 up for IPv6,
  at most 65535), and within a stricter range if configured;
- the quoted packet must be there (an IP header and 8 bytes of transport);
- token buckets per source address (the router that sent it) and per interface,
  the sources' buckets bounded in number.

Pure: a frame, an interface index and the time in; a verdict out.  Used by the
standalone ``hopgate relay`` and by hopgate's load balancer nodes.  Here too
is how a load balancer node marks its second-chance copies (lb/cluster.py):
not in the IP header, which must reach the backend as the client sent it, but
by an EtherType of their own (``second_chance_copy``, ``second_chance_family``).

This module is also the specification of ``hopgate relay``'s eBPF socket
filter (xdp/relayfilter.c), which does all of the above in the kernel: given
frames that filter admitted, ``consider_admitted`` checks them again but
meters nothing (the kernel's buckets did, on its clock: a second bucket here
could refuse what they admitted), and the filter's refusals are folded into
the counters (``RelayCounters.kernel_dropped``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from struct import Struct

from hopgate.packet import ethernet, icmp4, icmp6, ipv4, ipv6
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.packet.types import Buffer
from hopgate.pipeline.model import RelaySettings
from hopgate.pipeline.ratelimit import TokenBucket

# RelaySettings is defined with the other specs (model.py), and importable from here.
__all__ = [
    "MAX_MTU",
    "SECOND_CHANCE_ETHERTYPE",
    "PmtuMessage",
    "Relay",
    "RelayCounters",
    "RelayDrop",
    "RelaySettings",
    "is_marked",
    "read",
    "relayed_copy",
    "second_chance_copy",
    "second_chance_family",
]

_U16 = Struct("!H")
_U32 = Struct("!I")

MAX_MTU = 65535

# The EtherType of a second-chance copy (pipeline/lb/cluster.py): IEEE Std 802's
# Local Experimental EtherType 1, which no router, host or switch sends of
# itself.  The copy is the IP packet as it arrived, unchanged, under it.
SECOND_CHANCE_ETHERTYPE = 0x88B5
_SECOND_CHANCE = SECOND_CHANCE_ETHERTYPE.to_bytes(2, "big")
_IP_ETHERTYPES = {
    4: ethernet.ETH_P_IP.to_bytes(2, "big"),
    6: ethernet.ETH_P_IPV6.to_bytes(2, "big"),
}


class RelayDrop(StrEnum):
    """Why a message is not relayed (counted per interface)."""

    NOT_PMTU = "not-pmtu-message"
    RELAYED_COPY = "relayed-copy"
    NO_QUOTE = "no-quoted-packet"
    MTU_INSANE = "mtu-insane"
    MTU_OUT_OF_RANGE = "mtu-out-of-range"
    PORT_FILTERED = "port-filtered"
    RATE_SOURCE = "rate-limited-source"
    RATE_INTERFACE = "rate-limited-interface"


@dataclass(frozen=True)
class PmtuMessage:
    """What the relay read of a fragmentation needed / Packet Too Big."""

    family: int
    l3: int  # offset of the outer IP header in the frame
    source: int  # who sent it (the router)
    mtu: int
    quoted_src: int
    quoted_sport: int | None  # the quoted packet's source port (TCP, UDP)


@dataclass
class RelayCounters:
    seen: int = 0
    relayed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    # What a kernel filter refused before the relay saw it, by reason (its
    # totals, as last read): seen, and not relayed, all the same.
    kernel_dropped: Counter[str] = field(default_factory=Counter)

    def totals(self) -> tuple[int, Counter[str]]:
        """Seen, and not relayed by reason, the kernel filter's refusals included."""
        return self.seen + sum(self.kernel_dropped.values()), self.dropped + self.kernel_dropped


class Relay:
    def __init__(self, settings: RelaySettings, interfaces: int, now: float = 0.0) -> None:
        self.settings = settings
        self.counters = [RelayCounters() for _ in range(interfaces)]
        self._iface = [
            TokenBucket(settings.iface_rate, settings.iface_burst, now) for _ in range(interfaces)
        ]
        self._sources: OrderedDict[tuple[int, int], TokenBucket] = OrderedDict()

    def consider(self, frame: Buffer, iface: int, now: float) -> PmtuMessage | RelayDrop:
        """Whether the frame that arrived on ``iface`` is to be relayed: the
        message if so (counted as relayed), else why not (counted, unless it is
        no fragmentation needed / Packet Too Big at all)."""
        return self._consider(frame, iface, now)

    def consider_admitted(self, frame: Buffer, iface: int) -> PmtuMessage | RelayDrop:
        """The same for a frame that a kernel filter doing all of ``consider``
        (xdp/relayfilter.c) admitted: checked again, counted, not metered."""
        return self._consider(frame, iface, None)

    def _consider(self, frame: Buffer, iface: int, now: float | None) -> PmtuMessage | RelayDrop:
        got = self._check(frame)
        if got is RelayDrop.NOT_PMTU:
            return got
        counters = self.counters[iface]
        counters.seen += 1
        if not isinstance(got, RelayDrop) and now is not None:
            got = self._admit(got, iface, now)
        if isinstance(got, RelayDrop):
            counters.dropped[got] += 1
        else:
            counters.relayed += 1
        return got

    def _check(self, frame: Buffer) -> PmtuMessage | RelayDrop:
        msg = read(frame)
        if isinstance(msg, RelayDrop):
            return msg
        if frame[0] & 1 or is_marked(frame, msg.l3, self.settings.mark):
            return RelayDrop.RELAYED_COPY
        floor = ipv4.MIN_MTU if msg.family == 4 else ipv6.MIN_MTU
        if not floor <= msg.mtu <= MAX_MTU:
            return RelayDrop.MTU_INSANE
        s = self.settings
        if (s.min_mtu is not None and msg.mtu < s.min_mtu) or (
            s.max_mtu is not None and msg.mtu > s.max_mtu
        ):
            return RelayDrop.MTU_OUT_OF_RANGE
        if s.ports and msg.quoted_sport not in s.ports:
            return RelayDrop.PORT_FILTERED
        return msg

    def _admit(self, msg: PmtuMessage, iface: int, now: float) -> PmtuMessage | RelayDrop:
        # The source's bucket first: a flood from one source must not use up the
        # interface's budget that other routers' messages need.
        key = (msg.family, msg.source)
        bucket = self._sources.get(key)
        if bucket is None:
            s = self.settings
            bucket = TokenBucket(s.src_rate, s.src_burst, now)
            self._sources[key] = bucket
            if len(self._sources) > s.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        if not bucket.take(now):
            return RelayDrop.RATE_SOURCE
        if not self._iface[iface].take(now):
            return RelayDrop.RATE_INTERFACE
        return msg

    def snapshot(self, names: list[str]) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for name, c in zip(names, self.counters, strict=True):
            seen, dropped = c.totals()
            rows.append(
                {"interface": name, "seen": seen, "relayed": c.relayed, "dropped": dict(dropped)}
            )
        return rows


def read(frame: Buffer) -> PmtuMessage | RelayDrop:
    """Read a frame as a fragmentation needed / Packet Too Big with its quote."""
    ethertype, l3 = ethernet.parse(frame)
    end = len(frame)
    if ethertype == ethernet.ETH_P_IP:
        if l3 + ipv4.HEADER_LEN > end or ipv4.check(frame, l3, end) is not None:
            return RelayDrop.NOT_PMTU
        end = min(end, l3 + ipv4.total_len(frame, l3))
        at = l3 + ipv4.header_len(frame, l3)
        frag = ipv4.frag_field(frame, l3)
        if (
            frame[l3 + ipv4.OFF_PROTO] != PROTO_ICMP
            or ipv4.is_fragment(frag)
            or at + icmp4.HEADER_LEN > end
            or frame[at] != icmp4.DEST_UNREACH
            or frame[at + 1] != icmp4.FRAG_NEEDED_CODE
        ):
            return RelayDrop.NOT_PMTU
        mtu = _U16.unpack_from(frame, at + 6)[0]
        source = ipv4.addrs(frame, l3)[0]
        inner = at + icmp4.HEADER_LEN
        if (
            inner + ipv4.HEADER_LEN > end
            or frame[inner] >> 4 != 4
            or inner + ipv4.header_len(frame, inner) + 8 > end
            or ipv4.header_len(frame, inner) < ipv4.HEADER_LEN
        ):
            return RelayDrop.NO_QUOTE
        quoted_src = ipv4.addrs(frame, inner)[0]
        proto = frame[inner + ipv4.OFF_PROTO]
        transport = inner + ipv4.header_len(frame, inner)
        sport = (
            _U16.unpack_from(frame, transport)[0]
            if proto in (PROTO_TCP, PROTO_UDP)
            and not ipv4.is_later_fragment(ipv4.frag_field(frame, inner))
            else None
        )
        return PmtuMessage(4, l3, source, mtu, quoted_src, sport)
    if ethertype == ethernet.ETH_P_IPV6:
        if l3 + ipv6.HEADER_LEN > end or ipv6.check(frame, l3, end) is not None:
            return RelayDrop.NOT_PMTU
        end = min(end, l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3))
        chain = ipv6.walk(frame, l3, end)
        if (
            isinstance(chain, str)
            or chain.proto != PROTO_ICMPV6
            or chain.is_fragment
            or chain.offset + icmp6.HEADER_LEN > end
            or frame[chain.offset] != icmp6.PACKET_TOO_BIG
            or frame[chain.offset + 1] != 0
        ):
            return RelayDrop.NOT_PMTU
        at = chain.offset
        mtu = _U32.unpack_from(frame, at + 4)[0]
        inner = at + icmp6.HEADER_LEN
        if inner + ipv6.HEADER_LEN + 8 > end or frame[inner] >> 4 != 6:
            return RelayDrop.NO_QUOTE
        sport = None
        if frame[inner + ipv6.OFF_NEXT_HEADER] in (PROTO_TCP, PROTO_UDP):
            sport = _U16.unpack_from(frame, inner + ipv6.HEADER_LEN)[0]
        else:
            ichain = ipv6.walk(frame, inner, end)
            if (
                not isinstance(ichain, str)
                and ichain.proto in (PROTO_TCP, PROTO_UDP)
                and not ichain.frag_offset
                and ichain.offset + 2 <= end
            ):
                sport = _U16.unpack_from(frame, ichain.offset)[0]
        return PmtuMessage(6, l3, ipv6.src(frame, l3), mtu, ipv6.src(frame, inner), sport)
    return RelayDrop.NOT_PMTU


def _dscp(frame: Buffer, l3: int) -> int:
    if frame[l3] >> 4 == 4:
        return frame[l3 + ipv4.OFF_TOS] >> 2
    return ((frame[l3] & 0x0F) << 2) | (frame[l3 + 1] >> 6)


def is_marked(frame: Buffer, l3: int, mark: int) -> bool:
    return _dscp(frame, l3) == mark


def relayed_copy(frame: Buffer, l3: int, dst_mac: bytes, src_mac: bytes, mark: int) -> bytearray:
    """The copy to send: to ``dst_mac`` from ``src_mac``, with the DSCP mark that
    keeps it from being relayed again (ECN bits and VLAN tags kept)."""
    copy = bytearray(frame)
    copy[0:6] = dst_mac
    copy[6:12] = src_mac
    if copy[l3] >> 4 == 4:
        copy[l3 + ipv4.OFF_TOS] = (mark << 2) | (copy[l3 + ipv4.OFF_TOS] & 0x03)
        ipv4.set_checksum(copy, l3)
    else:
        # Traffic class straddles bytes 0 and 1: version(4) tc(8) flow label(20).
        copy[l3] = 0x60 | (mark >> 2)
        copy[l3 + 1] = ((mark & 0x03) << 6) | (copy[l3 + 1] & 0x3F)
    return copy


def second_chance_copy(frame: Buffer, l3: int, end: int) -> bytearray:
    """A second-chance copy of the IP packet in ``frame`` (at ``l3``, ending at
    ``end``: Ethernet padding left out) for a peer: its EtherType (the last
    before ``l3``, after any VLAN tags) is ``SECOND_CHANCE_ETHERTYPE``, its MACs
    are zero (the neighbour resolution fills them in), the IP packet is
    untouched: no mark in it, no hop spent."""
    copy = bytearray(frame[:end])
    copy[0:12] = bytes(12)
    copy[l3 - 2 : l3] = _SECOND_CHANCE
    return copy


def second_chance_family(frame: bytearray | memoryview, l3: int) -> int:
    """A frame that came with ``SECOND_CHANCE_ETHERTYPE`` (the last before
    ``l3``) made a plain IP frame again, in place: the EtherType of its IP
    packet's version put back, and returned (0, the frame untouched, if what
    follows is no IPv4 or IPv6 header)."""
    if len(frame) <= l3:
        return 0
    ethertype = _IP_ETHERTYPES.get(frame[l3] >> 4)
    if ethertype is None:
        return 0
    frame[l3 - 2 : l3] = ethertype
    return ethernet.ETH_P_IP if frame[l3] >> 4 == 4 else ethernet.ETH_P_IPV6
