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


def _l4(proto: int, buf: bytes | bytearray | memoryview, at: int, end: int, v6: bool) -> Flow:
    if proto in PORT_PROTOCOLS:
        if end - at < 4:
            return Flow(UNREADABLE, proto, 0, 0, at, end)
        sport, dport = _PORTS.unpack_from(buf, at)
        return Flow(PORTS, proto, sport, dport, at, end)
    if proto == (PROTO_ICMPV6 if v6 else PROTO_ICMP):
        if end - at < 1:
            return Flow(UNREADABLE, proto, 0, 0, at, end)
        t = buf[at]
        request = icmp6.ECHO_REQUEST if v6 else icmp4.ECHO_REQUEST
        reply = icmp6.ECHO_REPLY if v6 else icmp4.ECHO_REPLY
        if t in (request, reply):
            if end - at < 6:
                return Flow(UNREADABLE, proto, 0, 0, at, end)
            ident = _U16.unpack_from(buf, at + 4)[0]
            if t == request:
                return Flow(QUERY, proto, ident, 0, at, end)
            return Flow(QUERY, proto, 0, ident, at, end)
        if icmp6.is_error(t) if v6 else icmp4.is_error(t):
            return Flow(ERROR, proto, 0, 0, at, end)
        return Flow(OTHER, proto, 0, 0, at, end)
    return Flow(OTHER, proto, 0, 0, at, end)


def v4(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Flow:
    """The flow of the IPv4 packet at ``l3`` whose bytes end at ``end`` (which may
    cut it short, as in a quote)."""
    proto = buf[l3 + ipv4.OFF_PROTO]
    at = l3 + ipv4.header_len(buf, l3)
    if ipv4.is_later_fragment(ipv4.frag_field(buf, l3)):
        return Flow(LATER_FRAGMENT, proto, 0, 0, at, end)
    return _l4(proto, buf, at, end, False)


def v6(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Flow:
    chain = ipv6.walk(buf, l3, end)
    if isinstance(chain, str):
        return Flow(UNREADABLE, 0, 0, 0, l3 + ipv6.HEADER_LEN, end)
    if chain.frag_offset:
        return Flow(LATER_FRAGMENT, chain.proto, 0, 0, chain.offset, end)
    return _l4(chain.proto, buf, chain.offset, end, True)
