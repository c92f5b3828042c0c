"""Ethernet, ARP, Neighbor Discovery, address helpers and ICMP classification,
checked against scapy and against known values."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether, getmacbyip
from scapy.packet import Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from hopgate.packet import addr, arp, ethernet, icmp4, icmp6

FAST = settings(max_examples=200, deadline=None)
SLOW = settings(max_examples=100, deadline=None)

u32 = st.integers(0, 2**32 - 1)
u128 = st.integers(0, 2**128 - 1)
macs = st.binary(min_size=6, max_size=6)

MAC_A = "02:00:00:00:01:01"
MAC_B = "02:00:00:00:02:0a"


def v4(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def v6(a: int) -> str:
    return str(ipaddress.IPv6Address(a))


def v6int(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def v4int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# ---------------------------------------------------------------------------
# ethernet


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Ether(dst=MAC_A, src=MAC_B) / IP(), (0x0800, 14)),
        (Ether(dst=MAC_A, src=MAC_B) / IPv6(), (0x86DD, 14)),
        (Ether(dst=MAC_A, src=MAC_B) / ARP(), (0x0806, 14)),
        (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=10) / IP(), (0x0800, 18)),
        (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=4094, prio=5) / IPv6(), (0x86DD, 18)),
        (Ether(dst=MAC_A, src=MAC_B) / Dot1AD(vlan=100) / IPv6(), (0x86DD, 18)),
        (Ether(dst=MAC_A, src=MAC_B) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / ARP(), (0x0806, 22)),
        (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP(), (0x0800, 22)),
        (
            Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(),
            (-1, 0),
        ),
        (
            Ether(dst=MAC_A, src=MAC_B) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(),
            (-1, 0),
        ),
        (Ether(dst=MAC_A, src=MAC_B, type=0x88CC) / Raw(b"lldp"), (0x88CC, 14)),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "arp",
        "dot1q",
        "dot1q-prio",
        "dot1ad",
        "qinq-ad",
        "qinq-q",
        "three-tags",
        "three-tags-ad",
        "lldp",
    ],
)
def test_ethernet_parse(frame: Ether, expected: tuple[int, int]) -> None:
    raw = bytes(frame)
    assert ethernet.parse(raw) == expected
    assert ethernet.parse(bytearray(raw)) == expected
    assert ethernet.parse(memoryview(raw)) == expected


@FAST
@given(
    st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8]), st.integers(0, 0xFFFF)), max_size=4),
    st.integers(0, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)),
    st.binary(max_size=40),
)
def test_ethernet_parse_any_tags(tags: list[tuple[int, int]], inner: int, rest: bytes) -> None:
    types = [tpid for tpid, _ in tags] + [inner]
    frame = bytes.fromhex("020000000101020000000202") + struct.pack("!H", types[0])
    for i, (_, tci) in enumerate(tags):
        frame += struct.pack("!HH", tci, types[i + 1])
    frame += rest
    if len(tags) <= ethernet.MAX_TAGS:
        assert ethernet.parse(frame) == (inner, 14 + 4 * len(tags))
    else:
        assert ethernet.parse(frame) == (-1, 0)


@pytest.mark.parametrize("size", range(14))
def test_ethernet_parse_runt(size: int) -> None:
    raw = bytes(Ether(dst=MAC_A, src=MAC_B) / IP())
    assert ethernet.parse(raw[:size]) == (-1, 0)


def test_ethernet_parse_truncated_tags() -> None:
    one = bytes(Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=7) / IP())
    for size in range(14, 18):
        assert ethernet.parse(one[:size]) == (-1, 0)
    assert ethernet.parse(one[:18]) == (0x0800, 18)
    two = bytes(Ether(dst=MAC_A, src=MAC_B) / Dot1AD(vlan=7) / Dot1Q(vlan=8) / IP())
    for size in range(18, 22):
        assert ethernet.parse(two[:size]) == (-1, 0)
    assert ethernet.parse(two[:22]) == (0x0800, 22)
    assert ethernet.parse(one[:14]) == (-1, 0)
    assert ethernet.parse(bytes(Ether(dst=MAC_A, src=MAC_B) / IP())[:14]) == (0x0800, 14)


@pytest.mark.parametrize(
    ("mac", "group"),
    [
        ("ff:ff:ff:ff:ff:ff", True),
        ("01:00:5e:00:00:01", True),
        ("33:33:00:00:00:01", True),
        ("03:00:00:00:00:00", True),
        ("02:00:00:00:00:01", False),
        ("00:11:22:33:44:55", False),
        ("fe:ff:ff:ff:ff:ff", False),
    ],
)
def test_ethernet_is_group(mac: str, group: bool) -> None:
    assert ethernet.is_group(ethernet.parse_mac(mac)) is group


@FAST
@given(u32)
def test_multicast_mac_v4_matches_scapy(low: int) -> None:
    a = (0xE0000000 | low) & 0xEFFFFFFF  # 224.0.0.0/4
    assert ethernet.format_mac(ethernet.multicast_mac_v4(a)) == getmacbyip(v4(a))


@FAST
@given(u128)
def test_multicast_mac_v6_matches_scapy(a: int) -> None:
    a = (0xFF << 120) | (a & ((1 << 120) - 1))
    packed = a.to_bytes(16, "big")
    assert ethernet.format_mac(ethernet.multicast_mac_v6(a)) == in6_getnsmac(packed).lower()


def test_multicast_macs_known_values() -> None:
    assert ethernet.multicast_mac_v4(v4int("224.0.0.251")) == bytes.fromhex("01005e0000fb")
    assert ethernet.multicast_mac_v4(v4int("239.255.255.250")) == bytes.fromhex("01005e7ffffa")
    assert ethernet.multicast_mac_v6(v6int("ff02::1")) == bytes.fromhex("333300000001")
    assert ethernet.multicast_mac_v6(v6int("ff02::1:ff12:3456")) == bytes.fromhex("3333ff123456")


@FAST
@given(macs)
def test_mac_format_parse_round_trip(mac: bytes) -> None:
    text = ethernet.format_mac(mac)
    assert text == mac_str(mac)
    assert ethernet.parse_mac(text) == mac
    assert ethernet.parse_mac(text.upper()) == mac


def test_parse_mac_short_parts_and_errors() -> None:
    assert ethernet.parse_mac("2:0:0:0:1:a") == bytes.fromhex("02000000010a")
    for bad in [
        "",
        "02:00:00:00:01",
        "02:00:00:00:01:0a:0b",
        "002:00:00:00:01:0a",
        "zz:00:00:00:00:00",
    ]:
        with pytest.raises(ValueError):
            ethernet.parse_mac(bad)


def test_ethernet_header() -> None:
    dst, src = ethernet.parse_mac(MAC_A), ethernet.parse_mac(MAC_B)
    assert ethernet.header(dst, src, ethernet.ETH_P_IPV6) == bytes(
        Ether(dst=MAC_A, src=MAC_B, type=0x86DD)
    )


# ---------------------------------------------------------------------------
# arp


@FAST
@given(st.integers(1, 2), macs, u32, macs, u32, st.integers(0, 20))
def test_arp_parse_scapy(op: int, sha: bytes, spa: int, tha: bytes, tpa: int, lead: int) -> None:
    body = bytes(ARP(op=op, hwsrc=mac_str(sha), psrc=v4(spa), hwdst=mac_str(tha), pdst=v4(tpa)))
    assert len(body) == arp.BODY_LEN
    buf = bytes(lead) + body + bytes(18)  # Ethernet padding after the body
    assert arp.parse(buf, lead) == arp.Arp(op, sha, spa, tha, tpa)
    assert arp.build(op, sha, spa, tha, tpa) == body


@FAST
@given(macs, macs, st.integers(1, 2), u32, macs, u32)
def test_arp_frame_read_by_scapy(
    dst: bytes, src: bytes, op: int, spa: int, tha: bytes, tpa: int
) -> None:
    frame = arp.frame(dst, src, op, spa, tha, tpa)
    assert isinstance(frame, bytearray)
    assert len(frame) == 60
    assert frame[42:] == bytes(18)
    p = Ether(bytes(frame))
    assert (p.dst, p.src, p.type) == (mac_str(dst), mac_str(src), 0x0806)
    a = p[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen) == (1, 0x0800, 6, 4)
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (
        op,
        mac_str(src),
        v4(spa),
        mac_str(tha),
        v4(tpa),
    )
    assert ethernet.parse(frame) == (ethernet.ETH_P_ARP, 14)
    assert arp.parse(frame, 14) == arp.Arp(op, src, spa, tha, tpa)


@pytest.mark.parametrize(
    "fields",
    [
        {"hwtype": 6},
        {"ptype": 0x86DD},
        {"hwlen": 8},
        {"plen": 16},
    ],
)
def test_arp_parse_refuses_other_kinds(fields: dict[str, Any]) -> None:
    body = bytes(ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2", **fields))[:28]
    assert arp.parse(body, 0) is None


def test_arp_parse_truncated() -> None:
    body = bytes(ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert arp.parse(body, 0) is not None
    for size in range(28):
        assert arp.parse(body[:size], 0) is None
    assert arp.parse(bytes(14) + body[:27], 14) is None
    assert arp.parse(bytes(14) + body, 14) is not None


# ---------------------------------------------------------------------------
# icmp6: Neighbor Discovery


def nd_message(layers: object) -> bytes:
    return bytes(IPv6(src="fe80::1", dst="ff02::1:ff00:2") / layers)[40:]


@FAST
@given(u128, macs)
def test_parse_ns_with_source_lladdr(target: int, mac: bytes) -> None:
    msg = nd_message(ICMPv6ND_NS(tgt=v6(target)) / ICMPv6NDOptSrcLLAddr(lladdr=mac_str(mac)))
    assert icmp6.parse_nd(msg) == icmp6.NdMessage(0, target, mac)


@FAST
@given(u128, macs, st.booleans(), st.booleans(), st.booleans())
def test_parse_na_with_target_lladdr(target: int, mac: bytes, r: bool, s: bool, o: bool) -> None:
    na = ICMPv6ND_NA(R=int(r), S=int(s), O=int(o), tgt=v6(target))
    msg = nd_message(na / ICMPv6NDOptDstLLAddr(lladdr=mac_str(mac)))
    flags = (icmp6.NA_ROUTER if r else 0) | (icmp6.NA_SOLICITED if s else 0)
    flags |= icmp6.NA_OVERRIDE if o else 0
    assert icmp6.parse_nd(msg) == icmp6.NdMessage(flags, target, mac)


def test_parse_nd_skips_other_options() -> None:
    mac = bytes.fromhex("020000000203")
    ns = (
        ICMPv6ND_NS(tgt="2001:db8::2")
        / ICMPv6NDOptUnknown(type=14, data=b"nonce!")  # a nonce (RFC 3971), 8 bytes
        / ICMPv6NDOptMTU(mtu=1500)
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:09:09")  # the wrong kind for an NS
        / ICMPv6NDOptSrcLLAddr(lladdr=mac_str(mac))
        / ICMPv6NDOptUnknown(type=200, data=b"\x00" * 14)  # 16 bytes
    )
    msg = nd_message(ns)
    assert len(msg) == 24 + 8 + 8 + 8 + 8 + 16
    assert icmp6.parse_nd(msg) == icmp6.NdMessage(0, v6int("2001:db8::2"), mac)


def test_parse_nd_without_lladdr() -> None:
    assert icmp6.parse_nd(nd_message(ICMPv6ND_NS(tgt="2001:db8::5"))) == icmp6.NdMessage(
        0, v6int("2001:db8::5"), None
    )
    # an NA carrying only a source link-layer option has no target link-layer address
    na = ICMPv6ND_NA(R=0, S=1, O=0, tgt="2001:db8::5") / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A)
    assert icmp6.parse_nd(nd_message(na)) == icmp6.NdMessage(
        icmp6.NA_SOLICITED, v6int("2001:db8::5"), None
    )


@pytest.mark.parametrize("where", ["first", "after-lladdr"])
def test_parse_nd_zero_length_option_refused(where: str) -> None:
    base = nd_message(ICMPv6ND_NS(tgt="2001:db8::2"))
    sll = bytes(ICMPv6NDOptSrcLLAddr(lladdr=MAC_A))
    zero = bytes([icmp6.OPT_SOURCE_LL, 0]) + bytes(6)
    msg = base + (zero + sll if where == "first" else sll + zero)
    assert icmp6.parse_nd(msg) is None


def test_parse_nd_option_overrunning_message_refused() -> None:
    base = nd_message(ICMPv6ND_NS(tgt="2001:db8::2"))
    sll = bytearray(bytes(ICMPv6NDOptSrcLLAddr(lladdr=MAC_A)))
    sll[1] = 2  # claims 16 bytes, has 8
    assert icmp6.parse_nd(base + bytes(sll)) is None


def test_parse_nd_short_message_refused() -> None:
    msg = nd_message(ICMPv6ND_NS(tgt="2001:db8::2"))
    assert len(msg) == 24
    for size in range(24):
        assert icmp6.parse_nd(msg[:size]) is None
    assert icmp6.parse_nd(msg) is not None


@FAST
@given(u128, u128, u128, macs)
def test_nd_body_build_matches_scapy(src: int, dst: int, target: int, mac: bytes) -> None:
    ns = icmp6.build(
        src, dst, icmp6.NEIGHBOR_SOLICITATION, 0, 0, icmp6.nd_body(target, icmp6.OPT_SOURCE_LL, mac)
    )
    want = IPv6(src=v6(src), dst=v6(dst)) / ICMPv6ND_NS(tgt=v6(target))
    want /= ICMPv6NDOptSrcLLAddr(lladdr=mac_str(mac))
    assert bytes(ns) == bytes(want)[40:]
    flags = icmp6.NA_SOLICITED | icmp6.NA_OVERRIDE
    na = icmp6.build(
        src,
        dst,
        icmp6.NEIGHBOR_ADVERTISEMENT,
        0,
        flags,
        icmp6.nd_body(target, icmp6.OPT_TARGET_LL, mac),
    )
    want_na = IPv6(src=v6(src), dst=v6(dst)) / ICMPv6ND_NA(R=0, S=1, O=1, tgt=v6(target))
    want_na /= ICMPv6NDOptDstLLAddr(lladdr=mac_str(mac))
    assert bytes(na) == bytes(want_na)[40:]
    assert icmp6.parse_nd(na) == icmp6.NdMessage(flags, target, mac)


@FAST
@given(u128, u128, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100))
def test_icmp6_echo_build_matches_scapy(
    src: int, dst: int, ident: int, seq: int, data: bytes
) -> None:
    msg = icmp6.build(src, dst, icmp6.ECHO_REQUEST, 0, (ident << 16) | seq, data)
    want = IPv6(src=v6(src), dst=v6(dst)) / ICMPv6EchoRequest(id=ident, seq=seq, data=data)
    assert bytes(msg) == bytes(want)[40:]
    assert icmp6.checksum(src, dst, msg) == 0  # a message with its checksum sums to zero...
    zeroed = bytearray(msg)
    zeroed[2:4] = b"\x00\x00"
    assert icmp6.checksum(src, dst, zeroed) == struct.unpack_from("!H", msg, 2)[0]


@FAST
@given(st.integers(0, 255), st.integers(0, 255), u32, st.binary(max_size=100))
def test_icmp4_build_any_type(icmp_type: int, code: int, rest: int, data: bytes) -> None:
    msg = icmp4.build(icmp_type, code, rest, data)
    unsummed = struct.pack("!BBHI", icmp_type, code, 0, rest) + data
    csum = ~_naive_sum(unsummed) & 0xFFFF
    assert bytes(msg) == unsummed[:2] + struct.pack("!H", csum) + unsummed[4:]


def test_icmp4_echo_build_matches_scapy() -> None:
    msg = icmp4.build(icmp4.ECHO_REQUEST, 0, (0x1234 << 16) | 7, b"abcdefgh")
    assert bytes(msg) == bytes(ICMP(type=8, id=0x1234, seq=7) / Raw(b"abcdefgh"))
    unreach = icmp4.build(icmp4.DEST_UNREACH, icmp4.FRAG_NEEDED_CODE, 1400, bytes(28))
    assert bytes(unreach) == bytes(ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(28)))


def _naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


# ---------------------------------------------------------------------------
# addr


@FAST
@given(u128)
def test_solicited_node_matches_scapy(a: int) -> None:
    expected = in6_getnsma(socket.inet_pton(socket.AF_INET6, v6(a)))
    assert addr.v6_solicited_node(a) == int.from_bytes(expected, "big")


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("2001:db8::1:2:3", "ff02::1:ff02:3"),
        ("fe80::211:22ff:fe33:4455", "ff02::1:ff33:4455"),
        ("::", "ff02::1:ff00:0"),
        ("2001:2:0:1::1", "ff02::1:ff00:1"),
    ],
)
def test_solicited_node_known(address: str, group: str) -> None:
    assert addr.v6_solicited_node(v6int(address)) == v6int(group)


@pytest.mark.parametrize(
    ("mac", "link_local"),
    [
        ("00:11:22:33:44:55", "fe80::211:22ff:fe33:4455"),
        ("02:00:00:00:01:01", "fe80::ff:fe00:101"),
        ("52:54:00:12:34:56", "fe80::5054:ff:fe12:3456"),
        ("ff:ff:ff:ff:ff:ff", "fe80::fdff:ffff:feff:ffff"),
    ],
)
def test_link_local_from_mac_known(mac: str, link_local: str) -> None:
    assert addr.v6_link_local_from_mac(ethernet.parse_mac(mac)) == v6int(link_local)


@FAST
@given(macs)
def test_link_local_from_mac_matches_scapy(mac: bytes) -> None:
    iid = in6_mactoifaceid(mac_str(mac))
    got = addr.v6_link_local_from_mac(mac)
    assert got == v6int("fe80::" + iid)
    assert addr.v6_is_link_local(got)


@pytest.mark.parametrize(
    ("a", "martian_src", "martian_dst", "multicast"),
    [
        ("0.0.0.0", True, True, False),
        ("0.1.2.3", True, True, False),
        ("1.0.0.0", False, False, False),
        ("10.0.0.1", False, False, False),
        ("126.255.255.255", False, False, False),
        ("127.0.0.1", True, True, False),
        ("127.255.255.255", True, True, False),
        ("128.0.0.0", False, False, False),
        ("169.254.1.1", False, False, False),
        ("223.255.255.255", False, False, False),
        ("224.0.0.0", True, False, True),
        ("239.255.255.255", True, False, True),
        ("240.0.0.1", True, False, False),
        ("255.255.255.255", True, False, False),
    ],
)
def test_v4_martians(a: str, martian_src: bool, martian_dst: bool, multicast: bool) -> None:
    n = v4int(a)
    assert addr.v4_is_martian_source(n) is martian_src
    assert addr.v4_is_martian_destination(n) is martian_dst
    assert addr.v4_is_multicast(n) is multicast


@pytest.mark.parametrize(
    ("a", "martian_src", "multicast", "link_local"),
    [
        ("::", True, False, False),
        ("::1", True, False, False),
        ("::2", False, False, False),
        ("2001:db8::1", False, False, False),
        ("fe80::1", False, False, True),
        ("febf:ffff::1", False, False, True),
        ("fec0::1", False, False, False),
        ("fe7f::1", False, False, False),
        ("ff02::1", True, True, False),
        ("ff05::1:3", True, True, False),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True, True, False),
        ("feff::1", False, False, False),
    ],
)
def test_v6_classes(a: str, martian_src: bool, multicast: bool, link_local: bool) -> None:
    n = v6int(a)
    ip = ipaddress.IPv6Address(a)
    assert addr.v6_is_martian_source(n) is martian_src
    assert addr.v6_is_multicast(n) is multicast is ip.is_multicast
    assert addr.v6_is_link_local(n) is link_local is ip.is_link_local
    assert addr.v6_is_unspecified(n) is ip.is_unspecified
    assert addr.v6_is_loopback(n) is ip.is_loopback


@FAST
@given(u128)
def test_v6_classes_match_ipaddress(n: int) -> None:
    ip = ipaddress.IPv6Address(n)
    assert addr.v6_is_multicast(n) is ip.is_multicast
    assert addr.v6_is_link_local(n) is ip.is_link_local
    assert addr.v6_is_martian_source(n) is (ip.is_unspecified or ip.is_loopback or ip.is_multicast)


@FAST
@given(u32)
def test_v4_multicast_matches_ipaddress(n: int) -> None:
    assert addr.v4_is_multicast(n) is ipaddress.IPv4Address(n).is_multicast


def test_well_known_v6_constants() -> None:
    assert v6int("ff02::1") == addr.V6_ALL_NODES
    assert v6int("ff02::2") == addr.V6_ALL_ROUTERS
    assert v4int("255.255.255.255") == addr.V4_LIMITED_BROADCAST


@pytest.mark.parametrize(
    ("version", "prefixlen", "expected"),
    [
        (4, 0, 0),
        (4, 8, 0xFF000000),
        (4, 24, 0xFFFFFF00),
        (4, 32, 0xFFFFFFFF),
        (6, 0, 0),
        (6, 64, ((1 << 64) - 1) << 64),
        (6, 128, (1 << 128) - 1),
    ],
)
def test_mask(version: int, prefixlen: int, expected: int) -> None:
    assert addr.mask(version, prefixlen) == expected
    net = ipaddress.ip_network(f"{'0.0.0.0' if version == 4 else '::'}/{prefixlen}")
    assert addr.mask(version, prefixlen) == int(net.netmask)


def test_ip_str() -> None:
    assert addr.ip_str(4, 0xC6120101) == "198.18.1.1"
    assert addr.ip_str(6, v6int("2001:2:0:1::1")) == "2001:2:0:1::1"
    assert addr.v4_str(0) == "0.0.0.0"
    assert addr.v6_str(1) == "::1"


# ---------------------------------------------------------------------------
# ICMP error or query


ICMP4_QUERIES = [0, 8, 9, 10, 13, 14, 15, 16, 17, 18]
ICMP4_ERRORS = [3, 4, 5, 11, 12]


@pytest.mark.parametrize("icmp_type", ICMP4_QUERIES)
def test_icmp4_queries_are_not_errors(icmp_type: int) -> None:
    assert icmp4.is_error(icmp_type) is False


@pytest.mark.parametrize("icmp_type", ICMP4_ERRORS)
def test_icmp4_errors(icmp_type: int) -> None:
    assert icmp4.is_error(icmp_type) is True


@pytest.mark.parametrize("icmp_type", [1, 2, 6, 7, 19, 30, 40, 42, 43, 253, 255])
def test_icmp4_unknown_types_count_as_errors(icmp_type: int) -> None:
    assert icmp4.is_error(icmp_type) is True


def test_icmp4_named_constants() -> None:
    assert not icmp4.is_error(icmp4.ECHO_REQUEST)
    assert not icmp4.is_error(icmp4.ECHO_REPLY)
    assert not icmp4.is_error(icmp4.TIMESTAMP)
    assert not icmp4.is_error(icmp4.TIMESTAMP_REPLY)
    for t in (icmp4.DEST_UNREACH, icmp4.SOURCE_QUENCH, icmp4.REDIRECT):
        assert icmp4.is_error(t)
    assert icmp4.is_error(icmp4.TIME_EXCEEDED) and icmp4.is_error(icmp4.PARAMETER_PROBLEM)


@pytest.mark.parametrize("icmp_type", range(256))
def test_icmp6_is_error(icmp_type: int) -> None:
    # RFC 4443 2.1: the high-order bit of the type tells errors (0..127) from informational
    assert icmp6.is_error(icmp_type) is (icmp_type < 128)


def test_icmp6_named_constants() -> None:
    for t in (icmp6.DEST_UNREACH, icmp6.PACKET_TOO_BIG, icmp6.TIME_EXCEEDED):
        assert icmp6.is_error(t)
    assert icmp6.is_error(icmp6.PARAMETER_PROBLEM)
    for t in (
        icmp6.ECHO_REQUEST,
        icmp6.ECHO_REPLY,
        icmp6.ROUTER_SOLICITATION,
        icmp6.ROUTER_ADVERTISEMENT,
        icmp6.NEIGHBOR_SOLICITATION,
        icmp6.NEIGHBOR_ADVERTISEMENT,
        icmp6.REDIRECT,
    ):
        assert not icmp6.is_error(t)
