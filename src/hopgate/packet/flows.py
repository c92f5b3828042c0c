"""What flow a packet belongs to, for connection tracking: its kind, and its ports.

Ports are the TCP/UDP ports; for ICMP echo, the identifier stands as the source
port of a request and the destination port of a reply, so that the two are
reverse tuples of each other.  An ICMP error's flow is the packet it quotes.
"""

from __future__ import annotations

from enum import IntEnum
from struct import Struct
from typing import Final, NamedTuple

from hopgate.packet import icmp4, icmp6, ipv4, ipv6
from hopgate.packet.proto import PORT_PROTOCOLS, PROTO_ICMP, PROTO_ICMPV6


class FlowKind(IntEnum):
    PORTS = 1  # TCP or UDP with its ports
    QUERY = 2  # ICMP/ICMPv6 echo request or reply
    ERROR = 3  # an ICMP/ICMPv6 error: translated by the packet it quotes
    OTHER = 4  # any other protocol: addresses only
    LATER_FRAGMENT = 5  # no transport header to read
    UNREADABLE = 6  # too short to hold the header its protocol needs


# The kinds as module constants, for the per-packet code: a module global is
# read several times faster than an enum class attribute.
PORTS: Final = FlowKind.PORTS
QUERY: Final = FlowKind.QUERY
ERROR: Final = FlowKind.ERROR
OTHER: Final = FlowKind.OTHER
LATER_FRAGMENT: Final = FlowKind.LATER_FRAGMENT
UNREADABLE: Final = FlowKind.UNREADABLE

_PORTS = Struct("!HH")
_U16 = Struct("!H")


class Flow(NamedTuple):
    kind: FlowKind
    proto: int
    sport: int
    dport: int
    at: int  # offset of the transport header
    end: int  # end of the packet (or of the quote)


def classify(
    proto: int, buf: bytes | bytearray | memoryview, at: int, end: int, v6: bool
) -> tuple[FlowKind, int, int]:
    """The kind and ports of the upper-layer header at ``at`` (``proto``), ending at
    ``end``: what ``transport`` says, without the record."""
    if proto in PORT_PROTOCOLS:
        if end - at < 4:
            return UNREADABLE, 0, 0
        sport, dport = _PORTS.unpack_from(buf, at)
        return PORTS, sport, dport
    if proto == (PROTO_ICMPV6 if v6 else PROTO_ICMP):
        if end - at < 1:
            return UNREADABLE, 0, 0
        t = buf[at]
        if t == (icmp6.ECHO_REQUEST if v6 else icmp4.ECHO_REQUEST):
            if end - at < 6:
                return UNREADABLE, 0, 0
            return QUERY, _U16.unpack_from(buf, at + 4)[0], 0
        if t == (icmp6.ECHO_REPLY if v6 else icmp4.ECHO_REPLY):
            if end - at < 6:
                return UNREADABLE, 0, 0
            return QUERY, 0, _U16.unpack_from(buf, at + 4)[0]
        if icmp6.is_error(t) if v6 else icmp4.is_error(t):
            return ERROR, 0, 0
    return OTHER, 0, 0


def transport(proto: int, buf: bytes | bytearray | memoryview, at: int, end: int, v6: bool) -> Flow:
    """The flow of the upper-layer header at ``at`` (``proto``), ending at ``end``."""
    kind, sport, dport = classify(proto, buf, at, end, v6)
    return Flow(kind, proto, sport, dport, at, end)


def v4(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Flow:
    """The flow of the IPv4 packet at ``l3`` whose bytes end at ``end`` (which may
    cut it short, as in a quote)."""
    proto = buf[l3 + ipv4.OFF_PROTO]
    at = l3 + ipv4.header_len(buf, l3)
    if ipv4.is_later_fragment(ipv4.frag_field(buf, l3)):
        return Flow(LATER_FRAGMENT, proto, 0, 0, at, end)
    return transport(proto, buf, at, end, False)


def v6(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Flow:
    chain = ipv6.walk(buf, l3, end)
    if isinstance(chain, str):
        return Flow(UNREADABLE, 0, 0, 0, l3 + ipv6.HEADER_LEN, end)
    if chain.frag_offset:
        return Flow(LATER_FRAGMENT, chain.proto, 0, 0, chain.offset, end)
    return transport(chain.proto, buf, chain.offset, end, True)
