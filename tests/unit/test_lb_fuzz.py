"""A load balancer node with health checks and a PMTU relay: any frame, on any
port, mutated or random, is handled or dropped with a reason; nothing raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hopgate.packet.proto import PROTO_UDP
from hopgate.pipeline.actions import Drop, Transmit
from hopgate.pipeline.lb import HealthKind, HealthSpec
from hopgate.pipeline.model import RelaySpec
from hopgate.pipeline.router import Router
from tests.unit.lb_frames import (
    BE1,
    BE2,
    BE2_MAC,
    CLIENT4,
    CLIENT6,
    GW_B_MAC,
    GW_S4,
    GW_S_MAC,
    LIPS4,
    RB4,
    RB6,
    RB_MAC,
    VIP4,
    VIP6,
    lb_router,
    service,
    service6,
)

_big4 = bytes(IP(src=VIP4, dst=CLIENT4, flags="DF") / TCP(sport=80, dport=40000))
_big6 = bytes(IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=40000))
_to_b = Ether(src=RB_MAC, dst=GW_B_MAC)
_to_s = Ether(src=BE2_MAC, dst=GW_S_MAC)
SEEDS = [
    bytes(_to_b / IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=80, flags="S")),
    bytes(_to_b / IP(src=CLIENT4, dst=VIP4) / UDP(sport=40000, dport=53) / b"q"),
    bytes(_to_b / IP(src=CLIENT4, dst=VIP4, ttl=1) / UDP(sport=5, dport=33434)),
    bytes(_to_b / IP(src=CLIENT4, dst=VIP4) / ICMP(id=3)),
    bytes(_to_b / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")),
    bytes(_to_b / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest()),
    bytes(_to_b / IP(src=RB4, dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(_big4[:28])),
    bytes(
        Ether(src=RB_MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=RB4, dst=VIP4, tos=252)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / Raw(_big4[:28])
    ),
    bytes(_to_b / IPv6(src=RB6, dst=VIP6) / ICMPv6PacketTooBig(mtu=1280) / Raw(_big6[:48])),
    bytes(_to_s / IP(src=BE2, dst=LIPS4[0]) / TCP(sport=80, dport=2000, flags="SA")),
    bytes(_to_s / IP(src=BE1, dst=GW_S4) / TCP(sport=80, dport=40000, flags="SA")),
    bytes(_to_s / IP(src=BE2, dst=GW_S4) / ICMP(type=0, id=40000)),
    bytes(_to_s / IP(src="198.18.20.254", dst=LIPS4[0]) / ICMP(type=3, code=1) / Raw(_big4[:28])),
]


def node() -> Router:
    tcp_checked = service(health=HealthSpec(kind=HealthKind.TCP, interval=0.5, timeout=0.2, fall=1))
    return lb_router(
        tcp_checked,
        service(name="dns", protocol=PROTO_UDP, port=53, health=HealthSpec(kind=HealthKind.ICMP)),
        service6(),
        relay=RelaySpec(("gw-b",)),
    )


def _run(frames: list[tuple[int, bytes]], poll_at: float) -> None:
    r = node()
    for i, (port, frame) in enumerate(frames):
        now = float(i) * 0.05
        for out in (r.process(bytearray(frame), port, now), r.poll(now)):
            assert all(isinstance(a, (Transmit, Drop)) for a in out)
            for a in out:
                if isinstance(a, Transmit):
                    assert 14 <= len(a.frame) <= 1500 + 22
    r.poll(poll_at)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(frame) - 1))
        frame[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(14, len(frame)))
    return draw(st.integers(0, 2)), bytes(frame[:cut]) + draw(st.binary(max_size=16))


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=10), st.floats(0, 100))
def test_mutated_frames_never_raise(frames: list[tuple[int, bytes]], poll_at: float) -> None:
    _run(frames, poll_at)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=200)), max_size=15), st.floats(0, 100)
)
def test_random_bytes_never_raise(frames: list[tuple[int, bytes]], poll_at: float) -> None:
    _run(frames, poll_at)
