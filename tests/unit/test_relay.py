"""The PMTU relay's checks, marks and rate limits, on exact frames with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from hopgate.packet import ethernet
from hopgate.pipeline.relay import (
    PmtuMessage,
    Relay,
    RelayDrop,
    RelaySettings,
    is_marked,
    read,
    relayed_copy,
)
from tests.unit.nat_frames import checksums_ok

ROUTER4, SHARED4, CLIENT4 = "198.18.51.1", "198.18.60.1", "198.18.50.10"
ROUTER6, SHARED6, CLIENT6 = "2001:2:0:51::1", "2001:2:0:60::1", "2001:2:0:50::10"
HOST_MAC = "02:00:00:00:00:11"
MY_MAC = bytes.fromhex("020000000022")


def big4(sport: int = 80) -> bytes:
    return bytes(IP(src=SHARED4, dst=CLIENT4, flags="DF") / TCP(sport=sport, dport=40000))


def big6(sport: int = 80) -> bytes:
    return bytes(IPv6(src=SHARED6, dst=CLIENT6) / TCP(sport=sport, dport=40000))


def frag_needed(
    mtu: int = 1400, quote: bytes | None = None, src: str = ROUTER4, **ip: object
) -> bytes:
    q = big4()[:28] if quote is None else quote
    return bytes(
        Ether(dst=HOST_MAC)
        / IP(src=src, dst=SHARED4, **ip)  # type: ignore[arg-type]
        / ICMP(type=3, code=4, nexthopmtu=mtu)
        / Raw(q)
    )


def too_big(mtu: int = 1280, quote: bytes | None = None, src: str = ROUTER6) -> bytes:
    q = big6()[:48] if quote is None else quote
    return bytes(
        Ether(dst=HOST_MAC) / IPv6(src=src, dst=SHARED6) / ICMPv6PacketTooBig(mtu=mtu) / Raw(q)
    )


def test_fragmentation_needed_is_read_with_its_quote() -> None:
    msg = read(frag_needed(1400))
    assert isinstance(msg, PmtuMessage)
    assert (msg.family, msg.l3, msg.mtu, msg.quoted_sport) == (4, 14, 1400, 80)
    assert msg.source == int.from_bytes(bytes(map(int, ROUTER4.split("."))), "big")


def test_packet_too_big_is_read_with_its_quote() -> None:
    msg = read(too_big(1280))
    assert isinstance(msg, PmtuMessage)
    assert (msg.family, msg.mtu, msg.quoted_sport) == (6, 1280, 80)


def test_a_vlan_tag_is_looked_past() -> None:
    f = Ether(frag_needed())
    tagged = bytes(Ether(dst=f.dst, src=f.src) / Dot1Q(vlan=7) / f.payload)
    msg = read(tagged)
    assert isinstance(msg, PmtuMessage) and msg.l3 == 18


def test_the_port_is_found_behind_extension_headers_of_the_quote() -> None:
    quoted = bytes(IPv6(src=SHARED6, dst=CLIENT6) / IPv6ExtHdrDestOpt() / UDP(sport=443))[:56]
    msg = read(too_big(quote=quoted))
    assert isinstance(msg, PmtuMessage) and msg.quoted_sport == 443


@pytest.mark.parametrize(
    "frame",
    [
        bytes(Ether() / IP(dst=SHARED4) / ICMP(type=3, code=3) / Raw(big4()[:28])),
        bytes(Ether() / IP(dst=SHARED4) / ICMP(type=8)),
        bytes(Ether() / IP(dst=SHARED4) / UDP()),
        bytes(Ether() / IPv6(dst=SHARED6) / ICMPv6DestUnreach() / Raw(big6()[:48])),
        # a later fragment of an error: no ICMP header to read
        bytes(Ether() / IP(dst=SHARED4, frag=10, proto=1) / Raw(b"\x03\x04" + b"\x00" * 30)),
        bytes(
            Ether()
            / IPv6(dst=SHARED6)
            / IPv6ExtHdrFragment(offset=0, m=1)
            / ICMPv6PacketTooBig()
            / Raw(big6()[:48])
        ),
        frag_needed()[:30],  # truncated IPv4 header
        bytes(Ether(type=0x0806) / Raw(b"\x00" * 28)),
    ],
    ids=["port-unreach", "echo", "udp", "v6-unreach", "v4-later-frag", "v6-frag", "short", "arp"],
)
def test_anything_else_is_not_a_pmtu_message(frame: bytes) -> None:
    assert read(frame) is RelayDrop.NOT_PMTU


def test_a_corrupt_ipv4_header_is_not_believed() -> None:
    f = bytearray(frag_needed())
    f[14 + 10] ^= 0xFF  # header checksum
    assert read(bytes(f)) is RelayDrop.NOT_PMTU


@pytest.mark.parametrize(
    "frame",
    [
        frag_needed(quote=b""),
        frag_needed(quote=big4()[:27]),  # the header but not 8 bytes of transport
        frag_needed(quote=big6()[:48]),  # an IPv6 packet quoted in ICMPv4
        too_big(quote=big6()[:47]),
        too_big(quote=big4()[:48]),
    ],
)
def test_the_quoted_packet_must_be_there(frame: bytes) -> None:
    relay = Relay(RelaySettings(), 1)
    assert relay.consider(frame, 0, 0.0) is RelayDrop.NO_QUOTE
    assert relay.counters[0].dropped == {"no-quoted-packet": 1}


@pytest.mark.parametrize(
    ("frame", "verdict"),
    [
        (frag_needed(0), RelayDrop.MTU_INSANE),  # a pre-RFC 1191 router
        (frag_needed(67), RelayDrop.MTU_INSANE),
        (frag_needed(68), None),
        (too_big(1279), RelayDrop.MTU_INSANE),
        (too_big(1280), None),
        (too_big(65536), RelayDrop.MTU_INSANE),
        (too_big(2**32 - 1), RelayDrop.MTU_INSANE),
    ],
)
def test_the_mtu_must_be_sane(frame: bytes, verdict: RelayDrop | None) -> None:
    got = Relay(RelaySettings(), 1).consider(frame, 0, 0.0)
    assert (got if isinstance(got, RelayDrop) else None) is verdict


def test_a_stricter_range_and_a_port_filter() -> None:
    relay = Relay(RelaySettings(min_mtu=1200, max_mtu=1480, ports=frozenset({443})), 1)
    assert relay.consider(frag_needed(1100), 0, 0.0) is RelayDrop.MTU_OUT_OF_RANGE
    assert relay.consider(frag_needed(1492), 0, 0.0) is RelayDrop.MTU_OUT_OF_RANGE
    assert relay.consider(frag_needed(1400), 0, 0.0) is RelayDrop.PORT_FILTERED
    ok = relay.consider(frag_needed(1400, quote=big4(sport=443)[:28]), 0, 0.0)
    assert isinstance(ok, PmtuMessage)
    # no transport ports at all (an ICMP echo quoted): not a service's packet
    echo = bytes(IP(src=SHARED4, dst=CLIENT4) / ICMP(type=0))[:28]
    assert relay.consider(frag_needed(1400, quote=echo), 0, 0.0) is RelayDrop.PORT_FILTERED


def test_relayed_copies_are_never_relayed_again() -> None:
    relay = Relay(RelaySettings(), 1)
    original = frag_needed()
    msg = relay.consider(original, 0, 0.0)
    assert isinstance(msg, PmtuMessage)
    broadcast = relayed_copy(original, msg.l3, ethernet.BROADCAST, MY_MAC, 63)
    unicast = relayed_copy(original, msg.l3, bytes.fromhex("020000000033"), MY_MAC, 63)
    assert relay.consider(bytes(broadcast), 0, 0.1) is RelayDrop.RELAYED_COPY
    assert relay.consider(bytes(unicast), 0, 0.2) is RelayDrop.RELAYED_COPY
    assert relay.counters[0].relayed == 1 and relay.counters[0].seen == 3


def test_the_copy_is_marked_and_otherwise_what_arrived() -> None:
    original = frag_needed(tos=0x03)  # ECN bits set: kept
    copy = relayed_copy(original, 14, ethernet.BROADCAST, MY_MAC, 63)
    e = Ether(bytes(copy))
    assert e.dst == "ff:ff:ff:ff:ff:ff" and e.src == "02:00:00:00:00:22"
    assert e[IP].tos == (63 << 2) | 0x03 and checksums_ok(e[IP])
    assert is_marked(copy, 14, 63) and not is_marked(original, 14, 63)
    assert bytes(e[IP].payload) == bytes(Ether(original)[IP].payload)
    original6 = bytes(
        Ether(dst=HOST_MAC)
        / IPv6(src=ROUTER6, dst=SHARED6, tc=0x01, fl=0xABCDE)
        / ICMPv6PacketTooBig(mtu=1280)
        / Raw(big6()[:48])
    )
    copy6 = Ether(bytes(relayed_copy(original6, 14, ethernet.BROADCAST, MY_MAC, 63)))
    assert copy6[IPv6].tc == (63 << 2) | 0x01 and copy6[IPv6].fl == 0xABCDE
    assert is_marked(bytes(copy6), 14, 63)


def test_per_source_rate_limit_with_a_burst() -> None:
    relay = Relay(RelaySettings(src_rate=2.0, src_burst=3.0, iface_rate=1000, iface_burst=1000), 1)
    verdicts = [relay.consider(frag_needed(), 0, 0.0) for _ in range(5)]
    assert [isinstance(v, PmtuMessage) for v in verdicts] == [True, True, True, False, False]
    assert verdicts[3] is RelayDrop.RATE_SOURCE
    # another router has its own bucket
    assert isinstance(relay.consider(frag_needed(src="198.18.51.9"), 0, 0.0), PmtuMessage)
    # half a second later: one more token at 2 a second
    assert isinstance(relay.consider(frag_needed(), 0, 0.5), PmtuMessage)
    assert relay.consider(frag_needed(), 0, 0.5) is RelayDrop.RATE_SOURCE


def test_per_interface_rate_limit_holds_against_many_sources() -> None:
    relay = Relay(RelaySettings(src_rate=10, src_burst=10, iface_rate=5, iface_burst=5), 2)
    relayed = sum(
        isinstance(
            relay.consider(frag_needed(src=f"198.18.{i // 250}.{i % 250 + 1}"), 0, 0.0), PmtuMessage
        )
        for i in range(100)
    )
    assert relayed == 5 and relay.counters[0].dropped["rate-limited-interface"] == 95
    # the other interface has its own budget
    assert isinstance(relay.consider(frag_needed(), 1, 0.0), PmtuMessage)


@pytest.mark.slow
def test_the_sources_table_is_bounded() -> None:
    relay = Relay(RelaySettings(max_sources=10, iface_rate=1e9, iface_burst=1e9), 1)
    for i in range(1000):
        relay.consider(frag_needed(src=f"198.18.{i // 250}.{i % 250 + 1}"), 0, float(i))
    assert len(relay._sources) == 10


def test_counters_and_snapshot() -> None:
    relay = Relay(RelaySettings(), 1)
    relay.consider(frag_needed(), 0, 0.0)
    relay.consider(frag_needed(10), 0, 0.0)
    relay.consider(bytes(Ether() / IP() / UDP()), 0, 0.0)  # not counted: not a PMTU message
    assert relay.snapshot(["eth0"]) == [
        {"interface": "eth0", "seen": 2, "relayed": 1, "dropped": {"mtu-insane": 1}}
    ]


SEEDS = [frag_needed(), too_big(), frag_needed(quote=big4(443)[:40])]


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255))),
    st.integers(0, 140),
)
def test_any_mutation_is_read_or_refused_never_raises(
    seed: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(seed)
    for pos, value in changes:
        if pos < len(frame):
            frame[pos] = value
    relay = Relay(RelaySettings(), 1)
    got = relay.consider(bytes(frame[:cut]), 0, 0.0)
    if isinstance(got, PmtuMessage):
        copy = relayed_copy(bytes(frame[:cut]), got.l3, ethernet.BROADCAST, MY_MAC, 63)
        assert relay.consider(bytes(copy), 0, 0.0) is RelayDrop.RELAYED_COPY


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_never_raise(frame: bytes) -> None:
    assert isinstance(Relay(RelaySettings(), 1).consider(frame, 0, 0.0), (PmtuMessage, RelayDrop))
