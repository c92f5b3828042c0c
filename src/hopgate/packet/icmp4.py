"""ICMP for IPv4 (RFC 792, RFC 1191, RFC 1812)."""

from __future__ import annotations

from struct import Struct

from hopgate.packet import checksum as cs
from hopgate.packet.types import Buffer

HEADER = Struct("!BBHI")  # type, code, checksum, rest of header
HEADER_LEN = 8
ECHO = Struct("!BBHHH")  # type, code, checksum, identifier, sequence
FRAG_NEEDED = Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU

ECHO_REPLY = 0
DEST_UNREACH = 3
SOURCE_QUENCH = 4
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
TIMESTAMP = 13
TIMESTAMP_REPLY = 14

# Destination Unreachable codes
NET_UNREACH = 0
HOST_UNREACH = 1
PROTO_UNREACH = 2
PORT_UNREACH = 3
FRAG_NEEDED_CODE = 4
# Time Exceeded codes
TTL_EXCEEDED = 0
REASSEMBLY_EXCEEDED = 1

_QUERY_TYPES = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})
_HIGHEST_KNOWN_TYPE = 18


def is_error(icmp_type: int) -> bool:
    """True for error messages.  As Linux does, an unknown type counts as an error,
    so that hopgate never answers a message it cannot classify."""
    return icmp_type > _HIGHEST_KNOWN_TYPE or icmp_type not in _QUERY_TYPES


def build(icmp_type: int, code: int, rest: int, data: Buffer) -> bytearray:
    """An ICMP message with its checksum: 8-byte header then ``data``."""
    msg = bytearray(HEADER.pack(icmp_type, code, 0, rest))
    msg += data
    HEADER.pack_into(msg, 0, icmp_type, code, cs.checksum(msg), rest)
    return msg
