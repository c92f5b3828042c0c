"""Any byte string is either handled or dropped with a reason; nothing raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from hopgate.pipeline.actions import Drop, Transmit
from tests.unit.frames import (
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    GW_C4,
    GW_C6,
    GW_C_MAC,
    SERVER4,
    SERVER6,
    C,
    resolved_router,
)
from tests.unit.nat_frames import nat_router

SEEDS = [
    bytes(Ether(src=CLIENT_MAC, dst=GW_C_MAC) / p)
    for p in (
        IP(src=CLIENT4, dst=SERVER4, ttl=1) / UDP() / (b"x" * 20),
        IP(src=CLIENT4, dst=GW_C4) / ICMP() / (b"y" * 20),
        IP(src=CLIENT4, dst=GW_C4) / TCP(flags="S"),
        IP(src=CLIENT4, dst=GW_C4, flags="MF") / UDP() / (b"z" * 32),
        IP(src=CLIENT4, dst=SERVER4, ttl=1) / ICMP(type=3) / IP(src=SERVER4, dst=CLIENT4) / UDP(),
        IPv6(src=CLIENT6, dst=SERVER6, hlim=1) / UDP() / (b"x" * 20),
        IPv6(src=CLIENT6, dst=GW_C6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / ICMPv6EchoRequest(),
        IPv6(src=CLIENT6, dst=GW_C6) / IPv6ExtHdrFragment(m=1, id=5) / UDP() / (b"f" * 24),
        IPv6(src=CLIENT6, dst="ff02::1:ff00:1", hlim=255)
        / ICMPv6ND_NS(tgt=GW_C6)
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC),
        Dot1Q(vlan=3) / IP(src=CLIENT4, dst=SERVER4) / UDP(),
        ARP(op=1, hwsrc=CLIENT_MAC, psrc=CLIENT4, pdst=GW_C4),
        IP(src=CLIENT4, dst=SERVER4) / UDP(sport=40000, dport=53) / (b"d" * 8),
        IP(src=CLIENT4, dst=SERVER4) / ICMP(type=8, id=7),
        IP(src="198.18.2.2", dst="198.18.2.1")
        / ICMP(type=11)
        / IP(src="198.18.2.1", dst=SERVER4)
        / UDP(sport=40000, dport=53),
        IPv6(src="2001:2:0:2::2", dst="2001:2:0:2::1")
        / ICMPv6EchoRequest()
        / IPv6(src="2001:2:0:2::1", dst=SERVER6)
        / UDP(sport=40000, dport=53),
        IP(src=SERVER4, dst="198.18.2.1", flags="MF") / UDP(sport=53, dport=40000) / (b"f" * 16),
    )
]


def _run(frames: list[bytes], poll_at: float, nat: bool = False) -> None:
    r = nat_router() if nat else resolved_router()
    for i, frame in enumerate(frames):
        out = r.process(bytearray(frame), C, float(i) * 0.01)
        assert all(isinstance(a, (Transmit, Drop)) for a in out)
        for a in out:
            if isinstance(a, Transmit):
                assert 14 <= len(a.frame) <= 1500 + 22
    r.poll(poll_at)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=20), st.floats(0, 100), st.booleans())
def test_random_bytes_never_raise(frames: list[bytes], poll_at: float, nat: bool) -> None:
    _run(frames, poll_at, nat)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(12, len(frame) - 1))
        frame[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(14, len(frame)))
    return bytes(frame[:cut]) + draw(st.binary(max_size=16))


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=8), st.floats(0, 100), st.booleans())
def test_mutated_valid_frames_never_raise(frames: list[bytes], poll_at: float, nat: bool) -> None:
    _run(frames, poll_at, nat)
