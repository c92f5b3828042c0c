"""IPv4 (RFC 791): header layout, validation, building, and fragmentation."""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from hopgate.packet import checksum as cs
from hopgate.packet.types import Buffer

HEADER_LEN = 20
MAX_HEADER_LEN = 60
MIN_MTU = 68

# version/ihl, tos, total length, id, flags/fragment offset, ttl, protocol, checksum, src, dst
HEADER = Struct("!BBHHHBBHII")
_U16 = Struct("!H")
_ADDRS = Struct("!II")

OFF_TOS = 1
OFF_TOTAL_LEN = 2
OFF_ID = 4
OFF_FRAG = 6
OFF_TTL = 8
OFF_PROTO = 9
OFF_CSUM = 10
OFF_SRC = 12
OFF_DST = 16

FLAG_DF = 0x4000
FLAG_MF = 0x2000
FRAG_OFFSET_MASK = 0x1FFF

# Reasons a header is refused; the pipeline counts them under these names.
BAD_TRUNCATED = "ipv4-truncated"
BAD_VERSION = "ipv4-bad-version"
BAD_HEADER_LEN = "ipv4-bad-header-length"
BAD_TOTAL_LEN = "ipv4-bad-total-length"
BAD_CHECKSUM = "ipv4-bad-checksum"


def check(buf: Buffer, off: int, end: int) -> str | None:
    """Why the header at ``off`` (with ``end`` bytes of frame) is malformed, or None."""
    if end - off < HEADER_LEN:
        return BAD_TRUNCATED
    vihl = buf[off]
    if vihl >> 4 != 4:
        return BAD_VERSION
    ihl = (vihl & 0xF) << 2
    if ihl < HEADER_LEN:
        return BAD_HEADER_LEN
    total = _U16.unpack_from(buf, off + OFF_TOTAL_LEN)[0]
    if total < ihl or off + total > end:
        return BAD_TOTAL_LEN
    if not cs.verify(memoryview(buf)[off : off + ihl]):
        return BAD_CHECKSUM
    return None


def header_len(buf: Buffer, off: int) -> int:
    return (buf[off] & 0xF) << 2


def total_len(buf: Buffer, off: int) -> int:
    return int(_U16.unpack_from(buf, off + OFF_TOTAL_LEN)[0])


def addrs(buf: Buffer, off: int) -> tuple[int, int]:
    """(source, destination) as integers."""
    src, dst = _ADDRS.unpack_from(buf, off + OFF_SRC)
    return src, dst


def frag_field(buf: Buffer, off: int) -> int:
    return int(_U16.unpack_from(buf, off + OFF_FRAG)[0])


def is_fragment(frag: int) -> bool:
    return bool(frag & (FLAG_MF | FRAG_OFFSET_MASK))


def is_later_fragment(frag: int) -> bool:
    """True for any fragment but the first: those carry no transport header."""
    return bool(frag & FRAG_OFFSET_MASK)


def decrement_ttl(buf: bytearray | memoryview, off: int) -> None:
    """TTL - 1 with the header checksum updated incrementally.

    RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), with m the TTL/protocol word and
    m' = m - 0x100: ~m + m' is the constant 0xFEFF, and one fold is enough.
    """
    buf[off + OFF_TTL] -= 1
    at = off + OFF_CSUM
    total = (~((buf[at] << 8) | buf[at + 1]) & 0xFFFF) + 0xFEFF
    total = (total & 0xFFFF) + (total >> 16)
    hc = ~total & 0xFFFF
    buf[at] = hc >> 8
    buf[at + 1] = hc & 0xFF


def set_checksum(buf: bytearray | memoryview, off: int) -> None:
    ihl = header_len(buf, off)
    buf[off + OFF_CSUM] = 0
    buf[off + OFF_CSUM + 1] = 0
    _U16.pack_into(buf, off + OFF_CSUM, cs.checksum(memoryview(buf)[off : off + ihl]))


class Fields(NamedTuple):
    """The header fields a sender chooses beyond addresses, protocol and length:
    type of service, identification, flags and fragment offset, time to live."""

    tos: int = 0
    ident: int = 0
    frag: int = 0  # flags (FLAG_DF, FLAG_MF) and fragment offset
    ttl: int = 64


DEFAULT_FIELDS = Fields()


def build_header(
    src: int, dst: int, proto: int, payload_len: int, fields: Fields = DEFAULT_FIELDS
) -> bytearray:
    """A 20-byte header with its checksum."""
    tos, ident, frag, ttl = fields
    hdr = bytearray(
        HEADER.pack(0x45, tos, HEADER_LEN + payload_len, ident, frag, ttl, proto, 0, src, dst)
    )
    _U16.pack_into(hdr, OFF_CSUM, cs.checksum(hdr))
    return hdr


def _options_for_later_fragments(options: memoryview) -> bytes:
    """The options whose copied flag is set, padded to 4 bytes (RFC 791 p. 24)."""
    out = bytearray()
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            break  # malformed: copy nothing further
        length = options[i + 1]
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    while len(out) & 3:
        out.append(0)
    return bytes(out)


def fragment(packet: memoryview, mtu: int) -> list[bytearray]:
    """Split ``packet`` (an IPv4 packet with DF clear) into fragments that fit ``mtu``.

    Offsets stay multiples of 8; a packet that was itself a fragment keeps its
    offset base and its MF flag on the last piece (RFC 791 fragmentation procedure).
    """
    ihl = header_len(packet, 0)
    total = total_len(packet, 0)
    frag = frag_field(packet, 0)
    base = (frag & FRAG_OFFSET_MASK) * 8
    last_had_mf = bool(frag & FLAG_MF)
    header = packet[:ihl]
    later_options = _options_for_later_fragments(packet[HEADER_LEN:ihl])
    payload = packet[ihl:total]

    if total <= mtu:
        return [bytearray(packet[:total])]
    pieces: list[bytearray] = []
    pos = 0
    hlen = ihl
    while pos < len(payload):
        left = len(payload) - pos
        # Only the last piece may end off an 8-byte boundary (offsets count in 8s).
        room = left if hlen + left <= mtu else (mtu - hlen) & ~7
        if room <= 0:
            raise ValueError(f"MTU {mtu} too small to fragment a {hlen}-byte header")
        chunk = payload[pos : pos + room]
        more = pos + len(chunk) < len(payload) or last_had_mf
        if pos == 0:
            hdr = bytearray(header)
        else:
            hdr = bytearray(header[:HEADER_LEN]) + later_options
            hdr[0] = 0x40 | (len(hdr) >> 2)
        flags = (frag & ~(FLAG_MF | FRAG_OFFSET_MASK)) | (FLAG_MF if more else 0)
        _U16.pack_into(hdr, OFF_FRAG, flags | ((base + pos) >> 3))
        _U16.pack_into(hdr, OFF_TOTAL_LEN, len(hdr) + len(chunk))
        set_checksum(hdr, 0)
        pieces.append(hdr + chunk)
        pos += len(chunk)
        hlen = HEADER_LEN + len(later_options)
    return pieces
