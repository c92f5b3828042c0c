"""IPv6 header validation, the extension-header walk, fragment headers and
fragmentation, with scapy as the independent encoder and decoder."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    defragment6,
)
from scapy.layers.ipsec import AH
from scapy.packet import Raw

from hopgate.packet import ipv6

FAST = settings(max_examples=200, deadline=None)
SLOW = settings(max_examples=100, deadline=None)

SRC = 0x20010DB8000000000000000000000001
DST = 0x20010DB8000000010000000000000002


def v6(a: int) -> str:
    return str(ipaddress.IPv6Address(a))


def packet(next_header: int, rest: bytes, *, src: int = SRC, dst: int = DST, **kw: Any) -> bytes:
    """An IPv6 header built by scapy (payload length computed by scapy), then ``rest``."""
    return bytes(IPv6(src=v6(src), dst=v6(dst), nh=next_header, **kw) / Raw(rest))


# ---------------------------------------------------------------------------
# Extension headers, each serialised by scapy with an explicit next header.

EXT_KINDS = ("hbh", "routing", "dest", "ah", "frag")
KIND_NH = {
    "hbh": ipv6.NH_HOP_BY_HOP,
    "routing": ipv6.NH_ROUTING,
    "dest": ipv6.NH_DEST_OPTS,
    "ah": ipv6.NH_AH,
    "frag": ipv6.NH_FRAGMENT,
}


def ext_header(
    kind: str, nh: int, size: int = 0, frag_offset: int = 0, more: bool = False
) -> bytes:
    """One extension header; ``size`` varies its length."""
    if kind == "hbh":
        opts = [PadN(optdata=b"\x00" * size)] if size else []
        return bytes(IPv6ExtHdrHopByHop(nh=nh, options=opts))
    if kind == "dest":
        opts = [PadN(optdata=b"\x00" * size)] if size else []
        return bytes(IPv6ExtHdrDestOpt(nh=nh, options=opts))
    if kind == "routing":
        addrs = [v6(SRC + i) for i in range(size % 4)]
        return bytes(IPv6ExtHdrRouting(nh=nh, addresses=addrs, segleft=len(addrs)))
    if kind == "ah":
        icv = (4, 12, 20)[size % 3]
        return bytes(
            AH(nh=nh, payloadlen=(12 + icv) // 4 - 2, spi=0x1000 + size, seq=7, icv=b"\xa5" * icv)
        )
    if kind == "frag":
        return bytes(IPv6ExtHdrFragment(nh=nh, offset=frag_offset // 8, m=int(more), id=0xC0FFEE))
    raise AssertionError(kind)


def chain_bytes(kinds: list[tuple[str, int]], upper: int) -> tuple[int, list[bytes]]:
    """(next header of the IPv6 header, serialised headers) for ``kinds`` then ``upper``."""
    out = []
    for i, (kind, size) in enumerate(kinds):
        nh = KIND_NH[kinds[i + 1][0]] if i + 1 < len(kinds) else upper
        more = size % 2 == 1
        out.append(ext_header(kind, nh, size, more=more))
    first = KIND_NH[kinds[0][0]] if kinds else upper
    return first, out


UPPER: dict[int, Callable[[], bytes]] = {
    ipv6.NH_UDP: lambda: bytes(UDP(sport=1234, dport=53) / Raw(b"query")),
    ipv6.NH_TCP: lambda: bytes(TCP(sport=40000, dport=443, flags="S")),
    ipv6.NH_ICMPV6: lambda: bytes(ICMPv6EchoRequest(id=1, seq=2, data=b"ping")),
    ipv6.NH_NONE: lambda: b"",
    ipv6.NH_ESP: lambda: b"\x00\x00\x10\x00" + b"\x00\x00\x00\x01" + b"\xee" * 24,
    253: lambda: b"\x00" * 16,  # unknown protocol; its first bytes look like a HBH header
}

ext_item = st.tuples(st.sampled_from(("routing", "dest", "ah", "frag")), st.integers(0, 20))
chains = st.tuples(st.one_of(st.none(), st.integers(0, 20)), st.lists(ext_item, max_size=6)).map(
    lambda t: ([("hbh", t[0])] if t[0] is not None else []) + t[1]
)


# ---------------------------------------------------------------------------
# check()


@FAST
@given(st.binary(max_size=300), st.integers(0, 255), st.integers(0, 22), st.integers(0, 20))
def test_check_accepts_scapy_packets(payload: bytes, nh: int, lead: int, trail: int) -> None:
    raw = packet(nh, payload)
    if not payload and nh == 0:
        return  # a jumbogram; see below
    buf = bytes(lead) + raw + b"\x99" * trail
    assert ipv6.check(buf, lead, len(buf)) is None
    assert ipv6.check(memoryview(buf), lead, lead + len(raw)) is None
    assert ipv6.payload_len(buf, lead) == len(payload)
    assert ipv6.src(buf, lead) == SRC
    assert ipv6.dst(buf, lead) == DST


@pytest.mark.parametrize("size", range(40))
def test_check_truncated(size: int) -> None:
    raw = packet(ipv6.NH_NONE, b"")
    assert ipv6.check(raw[:size], 0, size) == ipv6.BAD_TRUNCATED
    assert ipv6.check(bytes(14) + raw, 14, 14 + size) == ipv6.BAD_TRUNCATED


@pytest.mark.parametrize("version", [v for v in range(16) if v != 6])
def test_check_bad_version(version: int) -> None:
    buf = bytearray(packet(ipv6.NH_UDP, bytes(UDP())))
    buf[0] = (version << 4) | (buf[0] & 0xF)
    assert ipv6.check(buf, 0, len(buf)) == ipv6.BAD_VERSION


@pytest.mark.parametrize("extra", [1, 8, 1000])
def test_check_payload_length_beyond_frame(extra: int) -> None:
    buf = bytearray(packet(ipv6.NH_UDP, bytes(UDP() / Raw(b"abc"))))
    struct.pack_into("!H", buf, 4, len(buf) - 40 + extra)
    assert ipv6.check(buf, 0, len(buf)) == ipv6.BAD_PAYLOAD_LEN
    assert ipv6.check(bytes(buf) + bytes(extra), 0, len(buf) + extra) is None
    assert ipv6.check(buf, 0, len(buf) - 1) == ipv6.BAD_PAYLOAD_LEN


def test_check_payload_length_short_of_frame_is_padding() -> None:
    raw = packet(ipv6.NH_UDP, bytes(UDP()))
    assert ipv6.check(raw + bytes(10), 0, len(raw) + 10) is None


def test_check_jumbogram_refused() -> None:
    raw = packet(ipv6.NH_HOP_BY_HOP, b"")  # payload length 0 and a hop-by-hop header
    assert ipv6.payload_len(raw, 0) == 0
    padded = raw + bytes(ext_header("hbh", ipv6.NH_NONE))
    assert ipv6.check(padded, 0, len(padded)) == ipv6.BAD_PAYLOAD_LEN
    # payload length 0 is fine with any other next header
    assert ipv6.check(packet(ipv6.NH_NONE, b""), 0, 40) is None


def test_check_reason_precedence() -> None:
    buf = bytearray(packet(ipv6.NH_HOP_BY_HOP, b""))
    buf[0] = 0x40
    assert ipv6.check(buf, 0, 40) == ipv6.BAD_VERSION
    assert ipv6.check(buf, 0, 39) == ipv6.BAD_TRUNCATED


@FAST
@given(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**128 - 1),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
)
def test_build_header_matches_scapy(
    src: int, dst: int, nh: int, plen: int, hlim: int, tc: int, fl: int
) -> None:
    hdr = ipv6.build_header(src, dst, nh, plen, hop_limit=hlim, traffic_class=tc, flow_label=fl)
    expected = IPv6(src=v6(src), dst=v6(dst), nh=nh, plen=plen, hlim=hlim, tc=tc, fl=fl)
    assert isinstance(hdr, bytearray)
    assert bytes(hdr) == bytes(expected)


def test_build_header_defaults() -> None:
    hdr = ipv6.build_header(SRC, DST, ipv6.NH_ICMPV6, 16)
    assert bytes(hdr) == bytes(IPv6(src=v6(SRC), dst=v6(DST), nh=58, plen=16, hlim=64))


# ---------------------------------------------------------------------------
# walk()


def test_walk_without_extension_headers() -> None:
    raw = packet(ipv6.NH_UDP, bytes(UDP()))
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_UDP, 40, 0, False, 6)
    framed = bytes(18) + raw
    assert ipv6.walk(framed, 18, len(framed)) == ipv6.Chain(ipv6.NH_UDP, 58, 0, False, 24)


def test_walk_scapy_composed_chain() -> None:
    pkt = (
        IPv6(src=v6(SRC), dst=v6(DST))
        / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 4)])
        / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(id=5, m=1)
        / UDP(sport=7, dport=9)
        / Raw(b"hello")
    )
    raw = bytes(pkt)
    udp_at = len(raw) - len(bytes(pkt[UDP]))
    frag_at = len(raw) - len(bytes(pkt[IPv6ExtHdrFragment]))
    assert (udp_at, frag_at) == (40 + 8 + 24 + 8 + 8, 40 + 8 + 24 + 8)
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_UDP, udp_at, 0, True, frag_at)
    assert raw[frag_at] == ipv6.NH_UDP


@pytest.mark.slow
@FAST
@given(
    chains,
    st.sampled_from(sorted(UPPER)),
    st.integers(0, 22),
    st.integers(0, 16),
)
def test_walk_chain(kinds: list[tuple[str, int]], upper: int, lead: int, trail: int) -> None:
    first, headers = chain_bytes(kinds, upper)
    body = UPPER[upper]()
    raw = packet(first, b"".join(headers) + body)
    buf = b"\x77" * lead + raw + bytes(trail)
    assert ipv6.check(buf, lead, len(buf)) is None
    starts = [lead + 40 + sum(len(h) for h in headers[:i]) for i in range(len(headers))]
    upper_at = lead + 40 + sum(len(h) for h in headers)
    nh_field = starts[-1] if headers else lead + 6
    is_frag = any(kind == "frag" for kind, _ in kinds)
    got = ipv6.walk(buf, lead, len(buf))
    assert got == ipv6.Chain(upper, upper_at, 0, is_frag, nh_field)
    assert buf[got.nh_field] == upper
    # the chain as scapy reads it back
    parsed = IPv6(raw)
    layer = parsed.payload
    for kind, _ in kinds:
        want = {
            "hbh": IPv6ExtHdrHopByHop,
            "routing": IPv6ExtHdrRouting,
            "dest": IPv6ExtHdrDestOpt,
            "ah": AH,
            "frag": IPv6ExtHdrFragment,
        }[kind]
        assert isinstance(layer, want)
        if kind == "ah":
            break  # scapy does not dissect past an IPv6 AH header
        layer = layer.payload
    # the walk never reads beyond the chain: the frame may end right after it
    chain_end = upper_at
    assert ipv6.walk(buf[:chain_end], lead, chain_end) == got


@pytest.mark.slow
@FAST
@given(chains.filter(bool), st.data())
def test_walk_truncated_chain(kinds: list[tuple[str, int]], draw: st.DataObject) -> None:
    first, headers = chain_bytes(kinds, ipv6.NH_UDP)
    raw = packet(first, b"".join(headers) + bytes(UDP()))
    chain_end = 40 + sum(len(h) for h in headers)
    end = draw.draw(st.integers(40, chain_end - 1))
    assert ipv6.walk(raw[:end], 0, end) == ipv6.BAD_EXTENSION
    assert ipv6.walk(raw, 0, end) == ipv6.BAD_EXTENSION  # ``end`` decides, not len(buf)


@pytest.mark.parametrize(
    "kinds",
    [
        [("dest", 0), ("hbh", 0)],
        [("hbh", 0), ("hbh", 0)],
        [("routing", 1), ("frag", 0), ("hbh", 3)],
        [("ah", 0), ("hbh", 0)],
    ],
)
def test_walk_hop_by_hop_not_first(kinds: list[tuple[str, int]]) -> None:
    first, headers = chain_bytes(kinds, ipv6.NH_UDP)
    raw = packet(first, b"".join(headers) + bytes(UDP()))
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.BAD_EXTENSION


@pytest.mark.parametrize(("count", "hbh_first"), [(16, False), (16, True), (17, False), (17, True)])
def test_walk_header_count_limit(count: int, hbh_first: bool) -> None:
    kinds = [("hbh", 0)] if hbh_first else []
    kinds += [("dest", 0)] * (count - len(kinds))
    first, headers = chain_bytes(kinds, ipv6.NH_UDP)
    raw = packet(first, b"".join(headers) + bytes(UDP()))
    got = ipv6.walk(raw, 0, len(raw))
    if count <= ipv6.MAX_EXTENSION_HEADERS:
        assert got == ipv6.Chain(ipv6.NH_UDP, 40 + 8 * count, 0, False, 40 + 8 * (count - 1))
    else:
        assert got == ipv6.BAD_EXTENSION


def test_walk_header_length_beyond_frame() -> None:
    dest = bytearray(ext_header("dest", ipv6.NH_UDP))
    dest[1] = 255  # 2048 bytes claimed
    raw = packet(ipv6.NH_DEST_OPTS, bytes(dest) + bytes(UDP()))
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.BAD_EXTENSION


def test_walk_ah_length_in_4_byte_units() -> None:
    ah = ext_header("ah", ipv6.NH_TCP, size=0)  # 16 bytes: payloadlen 2
    assert len(ah) == 16 and ah[1] == 2
    raw = packet(ipv6.NH_AH, ah + bytes(TCP()))
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_TCP, 56, 0, False, 40)


def test_walk_mobility_header_is_an_extension() -> None:
    mob = bytes([ipv6.NH_NONE, 1, 0, 0]) + bytes(12)  # 16 bytes
    raw = packet(ipv6.NH_MOBILITY, mob)
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_NONE, 56, 0, False, 40)


@pytest.mark.slow
@FAST
@given(
    st.lists(st.tuples(st.sampled_from(("routing", "dest")), st.integers(0, 20)), max_size=4),
    st.booleans(),
    st.integers(1, 0x1FFF),
    st.booleans(),
    st.sampled_from([17, 0, 43, 44, 51, 60, 135]),  # UDP, then what would be extensions
    st.binary(max_size=64),
)
def test_walk_later_fragment_stops(
    before: list[tuple[str, int]],
    hbh: bool,
    offset_units: int,
    more: bool,
    inner_nh: int,
    rest: bytes,
) -> None:
    """Past the fragment header of a later fragment lies data, not headers."""
    kinds = ([("hbh", 3)] if hbh else []) + before
    first, headers = chain_bytes([*kinds, ("frag", 0)], inner_nh)
    headers[-1] = ext_header("frag", inner_nh, frag_offset=offset_units * 8, more=more)
    raw = packet(first, b"".join(headers) + rest)
    frag_at = 40 + sum(len(h) for h in headers[:-1])
    got = ipv6.walk(raw, 0, len(raw))
    assert got == ipv6.Chain(inner_nh, frag_at + 8, offset_units * 8, True, frag_at)
    assert IPv6(raw)[IPv6ExtHdrFragment].offset == offset_units


def test_walk_first_fragment_continues() -> None:
    frag = ext_header("frag", ipv6.NH_DEST_OPTS, more=True)
    dest = ext_header("dest", ipv6.NH_ICMPV6, size=9)
    raw = packet(ipv6.NH_FRAGMENT, frag + dest + bytes(ICMPv6EchoRequest()))
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_ICMPV6, 40 + 8 + 16, 0, True, 48)


def test_walk_esp_is_opaque() -> None:
    dest = ext_header("dest", ipv6.NH_ESP)
    raw = packet(ipv6.NH_DEST_OPTS, dest + UPPER[ipv6.NH_ESP]())
    assert ipv6.walk(raw, 0, len(raw)) == ipv6.Chain(ipv6.NH_ESP, 48, 0, False, 40)


# ---------------------------------------------------------------------------
# fragment_header()


@pytest.mark.slow
@FAST
@given(
    st.lists(st.tuples(st.sampled_from(("routing", "dest", "ah")), st.integers(0, 20)), max_size=4),
    st.booleans(),
    st.integers(0, 0x1FFF),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 14),
)
def test_fragment_header(
    before: list[tuple[str, int]],
    hbh: bool,
    offset_units: int,
    more: bool,
    ident: int,
    inner_nh: int,
    lead: int,
) -> None:
    kinds = ([("hbh", 5)] if hbh else []) + before
    first, headers = chain_bytes([*kinds, ("frag", 0)], inner_nh)
    frag = IPv6ExtHdrFragment(nh=inner_nh, offset=offset_units, m=int(more), id=ident)
    headers[-1] = bytes(frag)
    buf = bytes(lead) + packet(first, b"".join(headers) + b"\x00" * 16)
    at = lead + 40 + sum(len(h) for h in headers[:-1])
    nh_field = lead + 40 + sum(len(h) for h in headers[:-2]) if len(headers) > 1 else lead + 6
    got = ipv6.fragment_header(buf, lead, len(buf))
    assert got == ipv6.FragmentHeader(at, nh_field, inner_nh, offset_units * 8, more, ident)
    assert buf[got.nh_field] == ipv6.NH_FRAGMENT


@pytest.mark.parametrize(
    "kinds", [[], [("hbh", 0)], [("hbh", 0), ("routing", 2), ("dest", 1)], [("ah", 1)]]
)
def test_fragment_header_absent(kinds: list[tuple[str, int]]) -> None:
    first, headers = chain_bytes(kinds, ipv6.NH_UDP)
    raw = packet(first, b"".join(headers) + bytes(UDP()))
    assert ipv6.fragment_header(raw, 0, len(raw)) is None


def test_fragment_header_truncated() -> None:
    raw = packet(ipv6.NH_FRAGMENT, ext_header("frag", ipv6.NH_UDP, frag_offset=8))
    assert ipv6.fragment_header(raw, 0, len(raw)) is not None
    assert ipv6.fragment_header(raw, 0, len(raw) - 1) is None


# ---------------------------------------------------------------------------
# fragment()


def scapy_defragment6(packets: list[Any]) -> Any:
    return defragment6(packets)  # type: ignore[no-untyped-call]


def reassemble(pieces: list[bytes]) -> bytes:
    """The fragmentable part, asserting the pieces are contiguous and end with M clear."""
    parts = []
    for piece in pieces:
        nh, _, field, _ = struct.unpack_from("!BBHI", piece, 40)
        plen = struct.unpack_from("!H", piece, 4)[0]
        parts.append((field & 0xFFF8, field & 1, nh, piece[48 : 40 + plen]))
    parts.sort()
    data = b""
    for offset, _more, _nh, chunk in parts:
        assert offset == len(data)
        data += chunk
    assert [m for _, m, _, _ in parts] == [1] * (len(parts) - 1) + [0]
    assert len({nh for _, _, nh, _ in parts}) == 1
    return data


def original(kind: str, size: int, rnd: random.Random, **ip: Any) -> bytes:
    data = rnd.randbytes(size)
    base = IPv6(src=v6(SRC), dst=v6(DST), **ip)
    if kind == "udp":
        return bytes(base / UDP(sport=4000, dport=5000) / Raw(data))
    if kind == "icmp":
        return bytes(base / ICMPv6EchoRequest(id=9, seq=10, data=data))
    return bytes(base / Raw(data))  # next header 59 ... with a body: opaque bytes


@pytest.mark.slow
@SLOW
@given(
    st.sampled_from(["udp", "icmp", "raw"]),
    st.integers(1, 5000),
    st.one_of(st.integers(1280, 1500), st.integers(56, 1500)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
    st.integers(1, 255),
    st.randoms(),
)
def test_fragment_properties_and_scapy_reassembly(
    kind: str,
    size: int,
    mtu: int,
    ident: int,
    tc: int,
    fl: int,
    hlim: int,
    rnd: random.Random,
) -> None:
    raw = original(kind, size, rnd, tc=tc, fl=fl, hlim=hlim)
    nh = raw[6]
    pieces = [bytes(p) for p in ipv6.fragment(memoryview(raw), mtu, ident)]
    room = (mtu - 48) & ~7
    assert len(pieces) == max(1, -(-(len(raw) - 40) // room))
    offset = 0
    for i, piece in enumerate(pieces):
        assert len(piece) <= mtu
        assert ipv6.check(piece, 0, len(piece)) is None
        assert ipv6.payload_len(piece, 0) == len(piece) - 40
        assert piece[:4] == raw[:4]  # version, traffic class, flow label
        assert piece[7:40] == raw[7:40]  # hop limit, addresses
        last = i == len(pieces) - 1
        p = IPv6(piece)
        fh = p[IPv6ExtHdrFragment]
        assert (p.nh, fh.nh, fh.id, fh.offset * 8, fh.m) == (44, nh, ident, offset, int(not last))
        data_len = len(piece) - 48
        if not last:
            assert data_len == room
        assert ipv6.walk(piece, 0, len(piece)) == ipv6.Chain(nh, 48, offset, True, 40)
        assert ipv6.fragment_header(piece, 0, len(piece)) == ipv6.FragmentHeader(
            40, 6, nh, offset, not last, ident
        )
        offset += data_len
    assert reassemble(pieces) == raw[40:]
    packets = [IPv6(p) for p in pieces]
    rnd.shuffle(packets)
    assert bytes(scapy_defragment6(packets)) == raw


def test_fragment_exact_sizes() -> None:
    raw = original("udp", 3000 - 8, random.Random(1))
    pieces = [bytes(p) for p in ipv6.fragment(memoryview(raw), 1280, 0x01020304)]
    # 1280 - 48 = 1232 bytes of data per piece (a multiple of 8)
    assert [len(p) for p in pieces] == [1280, 1280, 48 + 3000 - 2 * 1232]
    assert [struct.unpack_from("!H", p, 42)[0] for p in pieces] == [1, 1232 | 1, 2464]
    assert all(p[44:48] == b"\x01\x02\x03\x04" for p in pieces)
    assert all(p[6] == ipv6.NH_FRAGMENT and p[40] == ipv6.NH_UDP for p in pieces)
    assert bytes(scapy_defragment6([IPv6(p) for p in pieces])) == raw


def test_fragment_mtu_too_small() -> None:
    raw = original("raw", 100, random.Random(2))
    with pytest.raises(ValueError, match="too small"):
        ipv6.fragment(memoryview(raw), 55, 1)
    assert len(ipv6.fragment(memoryview(raw), 56, 1)) == 13  # 100 bytes, 8 at a time
