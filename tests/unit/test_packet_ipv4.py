"""IPv4 header validation, TTL decrement, header building and fragmentation, with scapy
as the independent encoder and decoder."""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import (
    IP,
    UDP,
    IPOption_LSRR,
    IPOption_MTU_Probe,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Security,
    IPOption_SSRR,
    IPOption_Stream_Id,
    IPOption_Traceroute,
    defragment,
)
from scapy.packet import Raw

from hopgate.packet import ipv4
from hopgate.packet.proto import PROTO_UDP

FAST = settings(max_examples=200, deadline=None)
SLOW = settings(max_examples=100, deadline=None)

# ---------------------------------------------------------------------------
# Helpers


def v4(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def naive_checksum(data: bytes) -> int:
    """RFC 1071, word by word: independent of hopgate.packet.checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def refresh_checksum(buf: bytearray, off: int = 0) -> None:
    ihl = (buf[off] & 0xF) * 4
    struct.pack_into("!H", buf, off + 10, 0)
    struct.pack_into("!H", buf, off + 10, naive_checksum(bytes(buf[off : off + ihl])))


def scapy_checksum(header: bytes) -> int:
    """The checksum scapy computes for this header (its own field ignored)."""
    p = IP(header)
    del p.chksum
    return int(IP(bytes(p)).chksum)


def build(
    *,
    src: int = 0xC0000201,
    dst: int = 0xC6336402,
    ident: int = 0x1234,
    ttl: int = 64,
    tos: int = 0,
    proto: int = 253,
    flags: int = 0,
    frag: int = 0,
    options: list[Any] | None = None,
    payload: bytes = b"",
) -> bytes:
    pkt = IP(
        src=v4(src),
        dst=v4(dst),
        id=ident,
        ttl=ttl,
        tos=tos,
        proto=proto,
        flags=flags,
        frag=frag,
        options=options or [],
    )
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


def option_bytes(options: list[Any]) -> bytes:
    return b"".join(bytes(o) for o in options)


def pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def copied_option_bytes(options: list[Any]) -> bytes:
    """What RFC 791 puts in the later fragments: the options with the copied flag, padded."""
    return pad4(b"".join(bytes(o) for o in options if o.copy_flag))


def header_options(piece: bytes) -> bytes:
    return piece[20 : (piece[0] & 0xF) * 4]


# ---------------------------------------------------------------------------
# Strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
routers = st.lists(u32.map(v4), min_size=1, max_size=3)

ip_option = st.one_of(
    st.builds(IPOption_RR, routers=routers),  # 7: not copied
    st.builds(IPOption_LSRR, routers=routers),  # 131: copied
    st.builds(IPOption_SSRR, routers=routers),  # 137: copied
    st.builds(IPOption_Router_Alert, alert=u16),  # 148: copied
    st.builds(IPOption_Stream_Id, security=u16),  # 136: copied
    st.builds(IPOption_Security),  # 130: copied
    st.builds(IPOption_MTU_Probe, mtu=u16),  # 11: not copied
    st.builds(IPOption_Traceroute),  # 82: not copied
    st.builds(IPOption_NOP),  # 1: not copied
)
ip_options = st.lists(ip_option, max_size=6).filter(lambda opts: len(option_bytes(opts)) <= 40)

header_fields = st.fixed_dictionaries(
    {
        "src": u32,
        "dst": u32,
        "ident": u16,
        "ttl": st.integers(1, 255),
        "tos": u8,
        "proto": u8,
        "options": ip_options,
    }
)

# For the tests that hand fragments to scapy's defragment(): scapy parses the
# reassembled payload as the protocol named (a random "UDP header" with a bogus
# length makes it rebuild a different packet), so these use 253, which it leaves raw.
scapy_fields = header_fields.map(lambda f: {**f, "proto": 253})


# ---------------------------------------------------------------------------
# check()


@FAST
@given(header_fields, st.binary(max_size=200), st.integers(0, 30), st.integers(0, 30))
def test_check_accepts_scapy_packets(
    fields: dict[str, Any], payload: bytes, lead: int, trail: int
) -> None:
    raw = build(**fields, payload=payload)
    buf = bytes(lead) + raw + b"\xee" * trail  # inside a frame, with Ethernet padding after
    assert ipv4.check(buf, lead, len(buf)) is None
    assert ipv4.check(bytearray(buf), lead, len(buf)) is None
    assert ipv4.check(memoryview(buf), lead, lead + len(raw)) is None
    ihl = 20 + len(pad4(option_bytes(fields["options"])))
    assert ipv4.header_len(buf, lead) == ihl
    assert ipv4.total_len(buf, lead) == len(raw) == ihl + len(payload)
    assert ipv4.addrs(buf, lead) == (fields["src"], fields["dst"])
    assert ipv4.frag_field(buf, lead) == 0


@pytest.mark.parametrize("size", range(20))
def test_check_truncated(size: int) -> None:
    raw = build(payload=b"abcd")
    assert ipv4.check(raw[:size], 0, size) == ipv4.BAD_TRUNCATED
    assert ipv4.check(raw, 0, size) == ipv4.BAD_TRUNCATED  # end, not len(buf), decides
    framed = bytes(14) + raw
    assert ipv4.check(framed, 14, 14 + size) == ipv4.BAD_TRUNCATED


@pytest.mark.parametrize("version", [v for v in range(16) if v != 4])
def test_check_bad_version(version: int) -> None:
    buf = bytearray(build(payload=b"x" * 8))
    buf[0] = (version << 4) | 5
    refresh_checksum(buf)
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_VERSION


@pytest.mark.parametrize("ihl", range(5))
def test_check_bad_header_length(ihl: int) -> None:
    buf = bytearray(build(payload=b"x" * 8))
    buf[0] = 0x40 | ihl
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_HEADER_LEN


@pytest.mark.parametrize("delta", [1, 2, 100])
def test_check_total_length_beyond_frame(delta: int) -> None:
    buf = bytearray(build(payload=b"y" * 30))
    struct.pack_into("!H", buf, 2, len(buf) + delta)
    refresh_checksum(buf)
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_TOTAL_LEN
    # with the frame long enough it is fine again
    assert ipv4.check(bytes(buf) + bytes(delta), 0, len(buf) + delta) is None


@pytest.mark.parametrize("total", [0, 1, 19, 20, 23])
def test_check_total_length_below_header_length(total: int) -> None:
    buf = bytearray(build(options=[IPOption_Router_Alert()], payload=b"z" * 10))  # IHL 24
    struct.pack_into("!H", buf, 2, total)
    refresh_checksum(buf)
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_TOTAL_LEN


def test_check_header_with_options_longer_than_frame() -> None:
    raw = build(options=[IPOption_Security(), IPOption_LSRR(routers=["1.1.1.1"] * 6)])
    assert ipv4.header_len(raw, 0) == 60
    assert ipv4.check(raw, 0, 40) == ipv4.BAD_TOTAL_LEN
    assert ipv4.check(raw, 0, 60) is None


def test_check_total_length_equal_to_header_is_fine() -> None:
    raw = build()
    assert len(raw) == 20
    assert ipv4.check(raw, 0, 20) is None


@FAST
@given(header_fields, st.data())
def test_check_bad_checksum(fields: dict[str, Any], draw: st.DataObject) -> None:
    raw = build(**fields, payload=b"payload!")
    ihl = ipv4.header_len(raw, 0)
    # any bit of the header outside version/IHL and total length
    index = draw.draw(st.sampled_from([1, *range(4, ihl)]))
    bit = draw.draw(st.integers(0, 7))
    buf = bytearray(raw)
    buf[index] ^= 1 << bit
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_CHECKSUM
    # the checksum covers the header only
    body = bytearray(raw)
    body[-1] ^= 1 << bit
    assert ipv4.check(body, 0, len(body)) is None


def test_check_reason_precedence() -> None:
    buf = bytearray(build(payload=b"q" * 4))
    buf[0] = 0x63  # bad version and bad IHL
    struct.pack_into("!H", buf, 2, 9999)  # and bad length
    buf[8] ^= 0x01  # and a stale checksum
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_VERSION
    buf[0] = 0x43
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_HEADER_LEN
    buf[0] = 0x45
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_TOTAL_LEN
    struct.pack_into("!H", buf, 2, len(buf))
    assert ipv4.check(buf, 0, len(buf)) == ipv4.BAD_CHECKSUM
    assert ipv4.check(buf, 0, 19) == ipv4.BAD_TRUNCATED


# ---------------------------------------------------------------------------
# decrement_ttl()


@pytest.mark.slow
@FAST
@given(header_fields, st.binary(max_size=64), st.integers(0, 22))
def test_decrement_ttl_matches_scapy(fields: dict[str, Any], payload: bytes, lead: int) -> None:
    raw = build(**fields, payload=payload)
    buf = bytearray(b"\xab" * lead + raw)
    ipv4.decrement_ttl(buf, lead)
    out = bytes(buf[lead:])
    assert buf[:lead] == b"\xab" * lead
    assert out == build(**{**fields, "ttl": fields["ttl"] - 1}, payload=payload)
    parsed = IP(out)
    assert parsed.ttl == fields["ttl"] - 1
    assert parsed.chksum == scapy_checksum(out)
    assert ipv4.check(buf, lead, len(buf)) is None


def test_decrement_ttl_on_memoryview_and_to_zero() -> None:
    buf = bytearray(build(ttl=1, proto=17, payload=b"abc"))
    ipv4.decrement_ttl(memoryview(buf), 0)
    assert buf[8] == 0
    assert bytes(buf) == build(ttl=0, proto=17, payload=b"abc")


# ---------------------------------------------------------------------------
# build_header()


@FAST
@given(u32, u32, u8, st.integers(0, 0xFFFF - 20), u8, u8, u16, u16)
def test_build_header_matches_scapy(
    src: int, dst: int, proto: int, plen: int, ttl: int, tos: int, ident: int, frag: int
) -> None:
    fields = ipv4.Fields(tos=tos, ident=ident, frag=frag, ttl=ttl)
    hdr = ipv4.build_header(src, dst, proto, plen, fields)
    expected = IP(
        src=v4(src),
        dst=v4(dst),
        proto=proto,
        ttl=ttl,
        tos=tos,
        id=ident,
        flags=frag >> 13,
        frag=frag & 0x1FFF,
        len=20 + plen,
    )
    assert isinstance(hdr, bytearray)
    assert bytes(hdr) == bytes(expected)


def test_build_header_defaults() -> None:
    hdr = ipv4.build_header(0x0A000001, 0x0A000002, PROTO_UDP, 8)
    assert bytes(hdr) == bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=17, ttl=64, id=0, len=28))
    assert ipv4.check(bytes(hdr) + bytes(8), 0, 28) is None


# ---------------------------------------------------------------------------
# fragment()


def reassemble(pieces: list[bytes]) -> tuple[int, bool, bytes]:
    """(offset base in bytes, MF of the last piece, data), asserting pieces are contiguous."""
    parsed = sorted(((ipv4.frag_field(p, 0) & 0x1FFF) * 8, p) for p in pieces)
    base = parsed[0][0]
    data = b""
    for offset, piece in parsed:
        assert offset == base + len(data), "gap or overlap between fragments"
        data += piece[(piece[0] & 0xF) * 4 : struct.unpack_from("!H", piece, 2)[0]]
    last_mf = bool(ipv4.frag_field(parsed[-1][1], 0) & ipv4.FLAG_MF)
    return base, last_mf, data


def scapy_defragment(packets: list[Any]) -> list[Any]:
    return list(defragment(packets))  # type: ignore[no-untyped-call]


def scapy_arrival_order(pieces: list[bytes], rnd: random.Random) -> list[Any]:
    """The pieces in random order but for the last one: scapy's defragment() reassembles
    when it meets the fragment without MF, so that one must come last."""
    packets = [IP(p) for p in pieces]
    last = [p for p in packets if not p.flags.MF]
    others = [p for p in packets if p.flags.MF]
    rnd.shuffle(others)
    return others + last


def assert_well_formed_pieces(
    pieces: list[bytes], original: bytes, mtu: int, first_options: bytes, later_options: bytes
) -> None:
    orig = IP(original)
    n = len(pieces)
    for i, piece in enumerate(pieces):
        assert len(piece) <= mtu
        assert ipv4.check(piece, 0, len(piece)) is None
        assert ipv4.total_len(piece, 0) == len(piece)
        p = IP(piece)
        assert (p.src, p.dst, p.id, p.proto, p.ttl, p.tos) == (
            orig.src,
            orig.dst,
            orig.id,
            orig.proto,
            orig.ttl,
            orig.tos,
        )
        assert p.chksum == scapy_checksum(piece)
        assert not p.flags.DF
        want_options = first_options if i == 0 else later_options
        assert header_options(piece) == want_options
        data_len = len(piece) - (piece[0] & 0xF) * 4
        if i < n - 1:
            assert p.flags.MF
            assert data_len % 8 == 0
            # every piece but the last is filled as far as 8-byte alignment allows
            assert data_len == (mtu - (piece[0] & 0xF) * 4) & ~7
        assert data_len > 0


@pytest.mark.slow
@SLOW
@given(scapy_fields, st.integers(1, 4000), st.integers(68, 1500), st.randoms())
def test_fragment_properties_and_scapy_reassembly(
    fields: dict[str, Any], size: int, mtu: int, rnd: random.Random
) -> None:
    payload = rnd.randbytes(size)
    raw = build(**fields, payload=payload)
    opts = fields["options"]
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), mtu)]
    if len(raw) <= mtu:
        assert pieces == [raw]
        return
    assert len(pieces) >= 2
    _assert_well_formed_with_options(pieces, raw, mtu, opts)
    assert not IP(pieces[-1]).flags.MF
    assert IP(pieces[0]).frag == 0

    base, last_mf, data = reassemble(pieces)
    assert (base, last_mf, data) == (0, False, payload)

    whole = scapy_defragment(scapy_arrival_order(pieces, rnd))
    assert len(whole) == 1
    assert bytes(whole[0][IP].payload) == payload
    assert bytes(whole[0]) == raw


def _assert_well_formed_with_options(
    pieces: list[bytes], raw: bytes, mtu: int, opts: list[Any]
) -> None:
    assert_well_formed_pieces(
        pieces, raw, mtu, raw[20 : ipv4.header_len(raw, 0)], copied_option_bytes(opts)
    )


@pytest.mark.slow
@SLOW
@given(header_fields, st.integers(100, 3000), st.integers(68, 1500), st.randoms())
def test_fragment_options_in_later_fragments(
    fields: dict[str, Any], size: int, mtu: int, rnd: random.Random
) -> None:
    raw = build(**fields, payload=rnd.randbytes(size))
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), mtu)]
    if len(pieces) > 1:
        _assert_well_formed_with_options(pieces, raw, mtu, fields["options"])


def test_fragment_copies_only_copied_options_exact() -> None:
    opts = [
        IPOption_RR(routers=["10.0.0.1"]),  # 7: not copied
        IPOption_LSRR(routers=["10.9.9.9"]),  # 131: copied
        IPOption_NOP(),
        IPOption_Router_Alert(),  # 148: copied
        IPOption_MTU_Probe(mtu=1500),  # 11: not copied
    ]
    raw = build(options=opts, payload=bytes(range(256)) * 4)
    assert ipv4.header_len(raw, 0) == 44
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), 576)]
    assert len(pieces) == 2
    assert header_options(pieces[0]) == raw[20:44]
    lsrr = bytes.fromhex("8307040a090909")
    router_alert = bytes.fromhex("94040000")
    assert header_options(pieces[1]) == lsrr + router_alert + b"\x00"
    assert pieces[1][0] == 0x48
    # 576 - 44 = 532 -> 528 bytes of data in the first piece
    assert len(pieces[0]) == 44 + 528
    assert len(pieces[1]) == 32 + 1024 - 528
    assert struct.unpack_from("!H", pieces[1], 6)[0] == 528 // 8
    assert struct.unpack_from("!H", pieces[0], 6)[0] == ipv4.FLAG_MF


def test_fragment_without_copied_options_drops_all_options() -> None:
    opts = [IPOption_RR(routers=["10.0.0.1", "10.0.0.2"]), IPOption_NOP(), IPOption_Traceroute()]
    raw = build(options=opts, payload=b"\x55" * 1000)
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), 300)]
    assert len(pieces) > 2
    assert header_options(pieces[0]) == raw[20 : ipv4.header_len(raw, 0)]
    for piece in pieces[1:]:
        assert piece[0] == 0x45


@SLOW
@given(
    header_fields,
    st.integers(0, 1000),  # offset base in 8-byte units
    st.integers(1, 300),  # data length in 8-byte units
    st.booleans(),  # MF on the packet being fragmented
    st.integers(0, 7),  # odd tail for a last fragment
    st.integers(68, 1000),
    st.randoms(),
)
def test_fragment_a_fragment_keeps_base_and_mf(
    fields: dict[str, Any],
    base_units: int,
    units: int,
    mf: bool,
    tail: int,
    mtu: int,
    rnd: random.Random,
) -> None:
    size = units * 8 + (0 if mf else tail)
    data = rnd.randbytes(size)
    raw = build(**fields, flags=1 if mf else 0, frag=base_units, payload=data)
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), mtu)]
    for piece in pieces:
        assert len(piece) <= mtu
        assert ipv4.check(piece, 0, len(piece)) is None
    base, last_mf, got = reassemble(pieces)
    assert base == base_units * 8
    assert last_mf is mf
    assert got == data
    assert ipv4.frag_field(pieces[0], 0) & 0x1FFF == base_units
    for piece in pieces[:-1]:
        assert ipv4.frag_field(piece, 0) & ipv4.FLAG_MF
    if len(pieces) == 1:
        assert pieces == [raw]


@pytest.mark.slow
@SLOW
@given(scapy_fields, st.integers(200, 4000), st.data(), st.randoms())
def test_fragment_twice_then_scapy_reassembles(
    fields: dict[str, Any], size: int, draw: st.DataObject, rnd: random.Random
) -> None:
    """A fragment forwarded onto a smaller link is fragmented again; the receiver
    reassembles the original from the pieces of pieces."""
    payload = rnd.randbytes(size)
    raw = build(**fields, payload=payload)
    mtu1 = draw.draw(st.integers(200, 1500))
    mtu2 = draw.draw(st.integers(68, mtu1))
    first = [bytes(p) for p in ipv4.fragment(memoryview(raw), mtu1)]
    second = [bytes(q) for p in first for q in ipv4.fragment(memoryview(p), mtu2)]
    for piece in second:
        assert len(piece) <= mtu2
        assert ipv4.check(piece, 0, len(piece)) is None
    assert reassemble(second) == (0, False, payload)
    whole = scapy_defragment(scapy_arrival_order(second, rnd))
    assert len(whole) == 1
    assert bytes(whole[0]) == raw


def test_fragment_real_udp_datagram() -> None:
    pkt = IP(src="198.18.1.10", dst="198.18.3.10", id=777, ttl=63) / UDP(sport=5000, dport=53)
    raw = bytes(pkt / Raw(bytes(range(256)) * 8))
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), 1500)]
    assert [len(p) for p in pieces] == [1500, 20 + 2056 - 1480]
    assert [ipv4.frag_field(p, 0) for p in pieces] == [ipv4.FLAG_MF, 1480 // 8]
    whole = scapy_defragment([IP(p) for p in pieces])
    assert bytes(whole[0]) == raw
    assert whole[0][UDP].dport == 53


def test_fragment_ignores_ethernet_padding_after_total_length() -> None:
    raw = build(payload=b"\x11" * 100)
    padded = raw + b"\xff" * 30
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(padded), 68)]
    assert reassemble(pieces) == (0, False, b"\x11" * 100)
    assert sum(len(p) - 20 for p in pieces) == 100


@pytest.mark.parametrize(("ihl_options", "mtu"), [([], 27), ([IPOption_Security()] * 3, 63)])
def test_fragment_mtu_too_small(ihl_options: list[Any], mtu: int) -> None:
    raw = build(options=ihl_options, payload=b"x" * 200)
    with pytest.raises(ValueError, match="too small"):
        ipv4.fragment(memoryview(raw), mtu)


def test_fragment_at_minimum_mtu_with_full_options() -> None:
    opts = [IPOption_LSRR(routers=["1.1.1.1"] * 9)]  # 39 bytes of copied options: IHL 60
    raw = build(options=opts, payload=b"\x22" * 100)
    assert ipv4.header_len(raw, 0) == 60
    pieces = [bytes(p) for p in ipv4.fragment(memoryview(raw), ipv4.MIN_MTU)]
    assert all(len(p) == 68 for p in pieces[:-1])
    assert all(ipv4.header_len(p, 0) == 60 for p in pieces)
    assert reassemble(pieces) == (0, False, b"\x22" * 100)
    assert len(pieces) == 13  # 100 bytes, 8 at a time


# ---------------------------------------------------------------------------
# Fragment flags


@pytest.mark.parametrize(
    ("flags", "frag", "is_frag", "is_later"),
    [
        (0, 0, False, False),
        (2, 0, False, False),  # DF alone
        (1, 0, True, False),  # first fragment
        (1, 10, True, True),
        (0, 10, True, True),  # last fragment
        (0, 0x1FFF, True, True),
        (3, 1, True, True),
    ],
)
def test_fragment_field_predicates(flags: int, frag: int, is_frag: bool, is_later: bool) -> None:
    raw = build(flags=flags, frag=frag)
    field = ipv4.frag_field(raw, 0)
    assert field == (flags << 13) | frag
    assert ipv4.is_fragment(field) is is_frag
    assert ipv4.is_later_fragment(field) is is_later
