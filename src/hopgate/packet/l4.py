"""UDP (RFC 768) and TCP (RFC 9293) headers, and their pseudo-header checksums."""

from __future__ import annotations

from struct import Struct

from hopgate.packet import checksum as cs
from hopgate.packet import ipv4, ipv6
from hopgate.packet.proto import PROTO_TCP, PROTO_UDP
from hopgate.packet.types import Buffer

UDP_HEADER = Struct("!HHHH")  # source port, destination port, length, checksum
UDP_HEADER_LEN = 8
UDP_OFF_CSUM = 6

# source port, destination port, sequence, acknowledgement, data offset/flags, window,
# checksum, urgent pointer
TCP_HEADER = Struct("!HHIIHHHH")
TCP_HEADER_LEN = 20
TCP_OFF_CSUM = 16

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20

PORTS = Struct("!HH")
_U16 = Struct("!H")


def ports(buf: Buffer, off: int) -> tuple[int, int]:
    sport, dport = PORTS.unpack_from(buf, off)
    return sport, dport


def fill_checksum(
    buf: bytearray | memoryview, off: int, end: int, csum_off: int, pseudo: int, udp: bool
) -> None:
    """Compute and store the checksum of the segment buf[off:end] at off + csum_off.

    A UDP checksum that comes out as zero is sent as 0xFFFF (RFC 768), since
    zero on the wire means "no checksum".
    """
    buf[off + csum_off] = 0
    buf[off + csum_off + 1] = 0
    value = cs.checksum(memoryview(buf)[off:end], pseudo)
    if udp and value == 0:
        value = 0xFFFF
    _U16.pack_into(buf, off + csum_off, value)


def tcp_header_len(buf: Buffer, off: int) -> int:
    return (buf[off + 12] >> 4) << 2


def tcp_flags(buf: Buffer, off: int) -> int:
    return buf[off + 13] & 0x3F


def complete_partial_checksum(frame: bytearray | memoryview, l3: int, ethertype: int) -> bool:
    """Finish the TCP/UDP checksum of a frame the kernel handed over with
    CHECKSUM_PARTIAL (a veth peer or a local socket offloading it).

    The sender's stack left the pseudo-header sum, uncomplemented, in the
    checksum field, computed with the right final destination even under
    source routing; what is missing is the sum of the segment.  So, as the
    kernel's skb_checksum_help() does: sum the segment as it stands and store
    the complement.  Returns False if the frame is not TCP or UDP over IP, or
    too short to hold the header it claims.
    """
    end = len(frame)
    if ethertype == 0x0800:
        if end - l3 < ipv4.HEADER_LEN:
            return False
        stop = l3 + ipv4.total_len(frame, l3)
        if ipv4.is_later_fragment(ipv4.frag_field(frame, l3)) or stop > end:
            return False
        proto = frame[l3 + ipv4.OFF_PROTO]
        at = l3 + ipv4.header_len(frame, l3)
    elif ethertype == 0x86DD:
        if end - l3 < ipv6.HEADER_LEN:
            return False
        stop = l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3)
        chain = ipv6.walk(frame, l3, min(stop, end))
        if isinstance(chain, str) or chain.frag_offset or stop > end:
            return False
        proto, at = chain.proto, chain.offset
    else:
        return False
    if proto == PROTO_TCP and stop - at >= TCP_HEADER_LEN:
        field = at + TCP_OFF_CSUM
    elif proto == PROTO_UDP and stop - at >= UDP_HEADER_LEN:
        field = at + UDP_OFF_CSUM
    else:
        return False
    # A sum of zero goes out as 0xFFFF: the same in ones' complement, and never
    # UDP's "no checksum" (CSUM_MANGLED_0 in the kernel).
    _U16.pack_into(frame, field, cs.checksum(memoryview(frame)[at:stop]) or 0xFFFF)
    return True
