"""ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861)."""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from hopgate.packet import checksum as cs
from hopgate.packet.proto import PROTO_ICMPV6
from hopgate.packet.types import Buffer

HEADER = Struct("!BBHI")  # type, code, checksum, rest of header
HEADER_LEN = 8

DEST_UNREACH = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
REDIRECT = 137

# Destination Unreachable codes
NO_ROUTE = 0
BEYOND_SCOPE = 2
ADDR_UNREACH = 3
PORT_UNREACH = 4
# Time Exceeded codes
HOP_LIMIT_EXCEEDED = 0
REASSEMBLY_EXCEEDED = 1
# Parameter Problem codes
ERRONEOUS_HEADER = 0
UNRECOGNISED_NEXT_HEADER = 1
UNRECOGNISED_OPTION = 2

# Neighbor Discovery options
OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2

NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000

ND_HOP_LIMIT = 255


def is_error(icmp_type: int) -> bool:
    return icmp_type < 128


def checksum(src: int, dst: int, message: Buffer) -> int:
    return cs.checksum(message, cs.pseudo_sum_v6(src, dst, PROTO_ICMPV6, len(message)))


def build(src: int, dst: int, icmp_type: int, code: int, rest: int, data: Buffer) -> bytearray:
    """An ICMPv6 message with its checksum over the pseudo-header of ``src`` -> ``dst``."""
    msg = bytearray(HEADER.pack(icmp_type, code, 0, rest))
    msg += data
    HEADER.pack_into(msg, 0, icmp_type, code, checksum(src, dst, msg), rest)
    return msg


class NdMessage(NamedTuple):
    """A Neighbor Solicitation or Advertisement: target, flags and link-layer option."""

    flags: int  # the 32-bit word after the checksum (NA flags; reserved in NS)
    target: int
    lladdr: bytes | None  # source link-layer option (NS) or target link-layer option (NA)


def parse_nd(msg: Buffer) -> NdMessage | None:
    """Parse an NS/NA body (msg starts at the ICMPv6 header); None if malformed (RFC 4861 7.1)."""
    if len(msg) < 24:
        return None
    flags = HEADER.unpack_from(msg, 0)[3]
    target = int.from_bytes(memoryview(msg)[8:24], "big")
    want = OPT_SOURCE_LL if msg[0] == NEIGHBOR_SOLICITATION else OPT_TARGET_LL
    lladdr = None
    pos = 24
    while pos + 2 <= len(msg):
        kind, units = msg[pos], msg[pos + 1]
        if units == 0 or pos + units * 8 > len(msg):
            return None  # RFC 4861 4.6: a zero-length option invalidates the message
        if kind == want and units == 1:
            lladdr = bytes(msg[pos + 2 : pos + 8])
        pos += units * 8
    return NdMessage(flags, target, lladdr)


def nd_body(target: int, option: int, mac: bytes) -> bytes:
    """Target address followed by one link-layer address option (NS or NA body)."""
    return target.to_bytes(16, "big") + bytes([option, 1]) + mac
