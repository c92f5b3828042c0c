"""Address and port rewriting with incremental checksums (RFC 1624), for NAT.

Every function changes the packet in place and adjusts exactly the checksums
the change touches: the IPv4 header checksum for addresses; the TCP and UDP
checksums for addresses (pseudo-header) and ports; the ICMP checksum for the
echo identifier; the ICMPv6 checksum for the identifier and the addresses of its
pseudo-header.  A UDP checksum of zero ("none", IPv4 only) is left alone.
"""

from __future__ import annotations

from struct import Struct

from hopgate.packet import checksum as cs
from hopgate.packet import ipv4, ipv6, l4
from hopgate.packet.checksum import int_sum
from hopgate.packet.flows import Flow
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

_U16 = Struct("!H")
_U32 = Struct("!I")


def _adjust(buf: bytearray | memoryview, at: int, old_sum: int, new_sum: int, udp: bool) -> None:
    hc = (buf[at] << 8) | buf[at + 1]
    if udp and hc == 0:
        return  # no checksum (IPv4 UDP): nothing to keep right
    hc = cs.update_sum(hc, old_sum, new_sum)
    if udp and hc == 0:
        hc = 0xFFFF
    buf[at] = hc >> 8
    buf[at + 1] = hc & 0xFF


def transport(
    buf: bytearray | memoryview,
    flow: Flow,
    sums: tuple[int, int],
    sport: tuple[int, int] | None,
    dport: tuple[int, int] | None,
    *,
    checksum: bool = True,
) -> None:
    """Rewrite the ports (or the echo identifier) of the transport header that
    ``flow`` found (its protocol, its offset ``at`` and its end) and adjust its
    checksum for them and for the change of the pseudo-header's addresses:
    ``sums`` is the (old, new) pair of their ones'-complement sums, as
    ``ipv4_addresses`` and ``ipv6_addresses`` return it.

    ``sport``/``dport`` are (old, new) or None.  Fields that lie past the
    flow's end (a truncated quote) are neither read nor written;
    ``checksum=False`` leaves the checksum as it is (a quote that does not hold
    the whole segment).
    """
    proto, at, end = flow.proto, flow.at, flow.end
    old, new = sums
    if proto in (PROTO_TCP, PROTO_UDP):
        if sport is not None and at + 2 <= end:
            _U16.pack_into(buf, at, sport[1])
            old += sport[0]
            new += sport[1]
        if dport is not None and at + 4 <= end:
            _U16.pack_into(buf, at + 2, dport[1])
            old += dport[0]
            new += dport[1]
        csum_at = at + (l4.TCP_OFF_CSUM if proto == PROTO_TCP else l4.UDP_OFF_CSUM)
        if checksum and csum_at + 2 <= end and old != new:
            _adjust(buf, csum_at, old, new, proto == PROTO_UDP)
        return
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        # Echo: the identifier is the "port".  ICMP has no pseudo-header; ICMPv6 does.
        ident = sport or dport
        if proto == PROTO_ICMP:
            old = new = 0
        if ident is not None and at + 6 <= end:
            _U16.pack_into(buf, at + 4, ident[1])
            old += ident[0]
            new += ident[1]
        if checksum and at + 4 <= end and old != new:
            _adjust(buf, at + 2, old, new, False)
            if proto == PROTO_ICMP and buf[at + 2] == buf[at + 3] == 0:
                icmp4_checksum(buf, at, end)  # all-zero words: see icmp4_checksum


def icmp4_checksum(buf: bytearray | memoryview, at: int, end: int) -> None:
    """Compute an ICMP checksum afresh.  An incremental update (RFC 1624 eqn. 3)
    gives 0x0000 when the message's other words are all zero, where the right
    value is 0xFFFF (their sum is +0): ICMP has no pseudo-header to prevent it."""
    buf[at + 2] = buf[at + 3] = 0
    _U16.pack_into(buf, at + 2, cs.checksum(memoryview(buf)[at:end]))


def ipv4_addresses(buf: bytearray | memoryview, l3: int, src: int, dst: int) -> tuple[int, int]:
    """Set an IPv4 header's addresses, adjusting its checksum.  Returns the
    ones'-complement sums of the old and new addresses, for the transport checksum."""
    old_src, old_dst = ipv4.addrs(buf, l3)
    old = int_sum(old_src) + int_sum(old_dst)
    new = int_sum(src) + int_sum(dst)
    if old_src != src:
        _U32.pack_into(buf, l3 + ipv4.OFF_SRC, src)
    if old_dst != dst:
        _U32.pack_into(buf, l3 + ipv4.OFF_DST, dst)
    if old != new:
        _adjust(buf, l3 + ipv4.OFF_CSUM, old, new, False)
    return old, new


def ipv6_addresses(buf: bytearray | memoryview, l3: int, src: int, dst: int) -> tuple[int, int]:
    """Set an IPv6 header's addresses (there is no header checksum).  Returns the
    ones'-complement sums of the old and new addresses."""
    old_src, old_dst = ipv6.src(buf, l3), ipv6.dst(buf, l3)
    if old_src != src:
        buf[l3 + ipv6.OFF_SRC : l3 + ipv6.OFF_DST] = src.to_bytes(16, "big")
    if old_dst != dst:
        buf[l3 + ipv6.OFF_DST : l3 + ipv6.HEADER_LEN] = dst.to_bytes(16, "big")
    return int_sum(old_src) + int_sum(old_dst), int_sum(src) + int_sum(dst)
