"""IPv6 (RFC 8200): the fixed header and the chain of extension headers."""

from __future__ import annotations

from struct import Struct
from typing import Final, NamedTuple

from hopgate.packet.proto import (
    PROTO_AH,
    PROTO_DSTOPTS,
    PROTO_ESP,
    PROTO_FRAGMENT,
    PROTO_HOPOPTS,
    PROTO_ICMPV6,
    PROTO_MH,
    PROTO_NONE,
    PROTO_ROUTING,
    PROTO_TCP,
    PROTO_UDP,
)
from hopgate.packet.types import Buffer

HEADER_LEN = 40
MIN_MTU = 1280

# version/class/flow, payload length, next header, hop limit (addresses read separately)
HEADER = Struct("!IHBB")
_U16 = Struct("!H")

OFF_PAYLOAD_LEN = 4
OFF_NEXT_HEADER = 6
OFF_HOP_LIMIT = 7
OFF_SRC = 8
OFF_DST = 24

# Next Header values are IP protocol numbers (``proto``); these are their
# RFC 8200 names, which the header chain below is written in.
NH_HOP_BY_HOP: Final = PROTO_HOPOPTS
NH_TCP: Final = PROTO_TCP
NH_UDP: Final = PROTO_UDP
NH_ROUTING: Final = PROTO_ROUTING
NH_FRAGMENT: Final = PROTO_FRAGMENT
NH_ESP: Final = PROTO_ESP
NH_AH: Final = PROTO_AH
NH_ICMPV6: Final = PROTO_ICMPV6
NH_NONE: Final = PROTO_NONE
NH_DEST_OPTS: Final = PROTO_DSTOPTS
NH_MOBILITY: Final = PROTO_MH

EXTENSIONS = frozenset({NH_HOP_BY_HOP, NH_ROUTING, NH_FRAGMENT, NH_AH, NH_DEST_OPTS, NH_MOBILITY})
# A chain longer than this is refused rather than walked: a cheap bound on work per packet.
MAX_EXTENSION_HEADERS = 16

BAD_TRUNCATED = "ipv6-truncated"
BAD_VERSION = "ipv6-bad-version"
BAD_PAYLOAD_LEN = "ipv6-bad-payload-length"
BAD_EXTENSION = "ipv6-bad-extension-header"


def check(buf: Buffer, off: int, end: int) -> str | None:
    if end - off < HEADER_LEN:
        return BAD_TRUNCATED
    if buf[off] >> 4 != 6:
        return BAD_VERSION
    plen = _U16.unpack_from(buf, off + OFF_PAYLOAD_LEN)[0]
    # A zero payload length means a jumbogram (RFC 2675), which no Ethernet carries.
    if plen == 0 and buf[off + OFF_NEXT_HEADER] == NH_HOP_BY_HOP:
        return BAD_PAYLOAD_LEN
    if off + HEADER_LEN + plen > end:
        return BAD_PAYLOAD_LEN
    return None


def payload_len(buf: Buffer, off: int) -> int:
    return int(_U16.unpack_from(buf, off + OFF_PAYLOAD_LEN)[0])


def src(buf: Buffer, off: int) -> int:
    return int.from_bytes(memoryview(buf)[off + OFF_SRC : off + OFF_DST], "big")


def dst(buf: Buffer, off: int) -> int:
    return int.from_bytes(memoryview(buf)[off + OFF_DST : off + HEADER_LEN], "big")


class Chain(NamedTuple):
    """Where the extension-header chain of a packet leads."""

    proto: int  # the upper-layer protocol (or NH_NONE, NH_ESP: opaque)
    offset: int  # absolute offset of the upper-layer header
    frag_offset: int  # fragment offset in bytes; 0 when not a fragment
    is_fragment: bool
    # Absolute offset of the "next header" byte naming ``proto``: the
    # Parameter Problem pointer for an unrecognised next header (RFC 4443 3.4).
    nh_field: int


def walk(buf: Buffer, off: int, end: int) -> Chain | str:
    """Follow the extension headers of the packet at ``off``; a reason string if malformed."""
    nh = buf[off + OFF_NEXT_HEADER]
    nh_field = off + OFF_NEXT_HEADER
    pos = off + HEADER_LEN
    frag_offset = 0
    fragment = False
    count = 0
    while nh in EXTENSIONS:
        count += 1
        if count > MAX_EXTENSION_HEADERS or pos + 8 > end:
            return BAD_EXTENSION
        if nh == NH_HOP_BY_HOP and count != 1:
            return BAD_EXTENSION  # RFC 8200 4.3: only right after the IPv6 header
        if nh == NH_FRAGMENT:
            field = _U16.unpack_from(buf, pos + 2)[0]
            frag_offset = field & 0xFFF8
            fragment = True
            length = 8
        elif nh == NH_AH:
            length = (buf[pos + 1] + 2) << 2
        else:
            length = (buf[pos + 1] + 1) << 3
        if pos + length > end:
            return BAD_EXTENSION
        nh_field = pos
        nh = buf[pos]
        pos += length
        if frag_offset:
            break  # the rest of a later fragment is not a header chain
    return Chain(nh, pos, frag_offset, fragment, nh_field)


def build_header(
    src: int,
    dst: int,
    next_header: int,
    payload_len: int,
    *,
    hop_limit: int = 64,  # of the packets hopgate sends (Linux's default, as IPv4's ttl)
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytearray:
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return bytearray(
        HEADER.pack(first, payload_len, next_header, hop_limit)
        + src.to_bytes(16, "big")
        + dst.to_bytes(16, "big")
    )


FRAGMENT_HEADER = Struct("!BBHI")  # next header, reserved, offset/flags, identification
FRAGMENT_HEADER_LEN = 8


class FragmentHeader(NamedTuple):
    at: int  # absolute offset of the fragment header
    nh_field: int  # absolute offset of the "next header" byte that names it
    next_header: int
    offset: int  # in bytes
    more: bool
    ident: int


def fragment_header(buf: Buffer, off: int, end: int) -> FragmentHeader | None:
    """Find the fragment header of a packet already known to be a fragment."""
    nh = buf[off + OFF_NEXT_HEADER]
    nh_field = off + OFF_NEXT_HEADER
    pos = off + HEADER_LEN
    for _ in range(MAX_EXTENSION_HEADERS):
        if pos + 8 > end or nh not in EXTENSIONS:
            return None
        if nh == NH_FRAGMENT:
            next_header, _, field, ident = FRAGMENT_HEADER.unpack_from(buf, pos)
            return FragmentHeader(
                pos, nh_field, next_header, field & 0xFFF8, bool(field & 1), ident
            )
        length = (buf[pos + 1] + 2) << 2 if nh == NH_AH else (buf[pos + 1] + 1) << 3
        nh_field = pos
        nh = buf[pos]
        pos += length
    return None


def fragment(packet: memoryview, mtu: int, ident: int) -> list[bytearray]:
    """Fragment a packet this node originates (RFC 8200 4.5).

    The unfragmentable part is the IPv6 header alone: the packets hopgate
    originates carry no extension headers.
    """
    nh = packet[OFF_NEXT_HEADER]
    body = packet[HEADER_LEN:]
    room = (mtu - HEADER_LEN - FRAGMENT_HEADER_LEN) & ~7
    if room <= 0:
        raise ValueError(f"MTU {mtu} too small to fragment")
    pieces: list[bytearray] = []
    pos = 0
    while pos < len(body):
        chunk = body[pos : pos + room]
        more = pos + len(chunk) < len(body)
        hdr = bytearray(packet[:HEADER_LEN])
        hdr[OFF_NEXT_HEADER] = NH_FRAGMENT
        _U16.pack_into(hdr, OFF_PAYLOAD_LEN, FRAGMENT_HEADER_LEN + len(chunk))
        hdr += FRAGMENT_HEADER.pack(nh, 0, pos | int(more), ident)
        hdr += chunk
        pieces.append(hdr)
        pos += len(chunk)
    return pieces
