"""Equal-cost multipath: the 5-tuple hash, and ICMP errors following their flow."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.packet import Packet

from hopgate.pipeline.actions import Action
from hopgate.pipeline.model import NextHopSpec, RouteSpec
from hopgate.pipeline.router import Router
from tests.unit.frames import (
    ANSWER,
    CLIENT4,
    CLIENT6,
    SERVER4,
    SERVER6,
    C,
    U,
    from_client,
    router,
    sent,
)

HOPS4 = ("198.18.2.2", "198.18.2.3", "198.18.2.4")
HOPS6 = ("2001:2:0:2::2", "2001:2:0:2::3")
MACS = {h: f"02:00:00:00:02:{i + 2:02x}" for i, h in enumerate(HOPS4 + HOPS6)}


def ecmp_router() -> Router:
    routes = (
        RouteSpec(
            ipaddress.ip_network("0.0.0.0/0"),
            tuple(NextHopSpec(ipaddress.ip_address(h)) for h in HOPS4),
        ),
        RouteSpec(
            ipaddress.ip_network("::/0"), tuple(NextHopSpec(ipaddress.ip_address(h)) for h in HOPS6)
        ),
    )
    r = router(routes=routes)
    out: list[Action] = []
    for h in HOPS4:
        r.arp.table.learn(
            U,
            int(ipaddress.ip_address(h)),
            bytes.fromhex(MACS[h].replace(":", "")),
            ANSWER,
            0.0,
            out,
        )
    for h in HOPS6:
        r.nd.table.learn(
            U,
            int(ipaddress.ip_address(h)),
            bytes.fromhex(MACS[h].replace(":", "")),
            ANSWER,
            0.0,
            out,
        )
    return r


def hop_of(r: Router, pkt: Packet) -> str:
    (f,) = sent(r.process(from_client(pkt), C, 1.0), U)
    return str(f.dst)


@pytest.mark.slow
def test_flows_spread_over_all_next_hops_and_stay_put() -> None:
    r = ecmp_router()
    spread: Counter[str] = Counter()
    for sport in range(1000, 1600):
        mac = hop_of(r, IP(src=CLIENT4, dst=SERVER4) / TCP(sport=sport, dport=80))
        spread[mac] += 1
        assert (
            hop_of(r, IP(src=CLIENT4, dst=SERVER4) / TCP(sport=sport, dport=80, flags="A")) == mac
        )
    assert set(spread) == {MACS[h] for h in HOPS4}
    assert min(spread.values()) > 600 / 3 * 0.7


def test_icmp_error_follows_the_flow_it_quotes() -> None:
    r = ecmp_router()
    for sport in range(2000, 2050):
        flow = hop_of(r, IP(src=CLIENT4, dst=SERVER4) / UDP(sport=sport, dport=53))
        # the client's host reports a problem with the server's reply to that flow
        quoted = IP(src=SERVER4, dst=CLIENT4) / UDP(sport=53, dport=sport)
        err = IP(src=CLIENT4, dst=SERVER4) / ICMP(type=3, code=4, nexthopmtu=1280) / quoted
        assert hop_of(r, err) == flow


def test_icmpv6_error_follows_the_flow_it_quotes() -> None:
    r = ecmp_router()
    for sport in range(3000, 3040):
        flow = hop_of(r, IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=sport, dport=443))
        quoted = IPv6(src=SERVER6, dst=CLIENT6) / TCP(sport=443, dport=sport)
        err = IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6PacketTooBig(mtu=1280) / quoted
        assert hop_of(r, err) == flow


def test_echo_identifiers_spread_but_sequence_numbers_do_not() -> None:
    r = ecmp_router()
    seen = set()
    for ident in range(60):
        first = hop_of(r, IP(src=CLIENT4, dst=SERVER4) / ICMP(id=ident, seq=1))
        assert hop_of(r, IP(src=CLIENT4, dst=SERVER4) / ICMP(id=ident, seq=2)) == first
        seen.add(first)
    assert len(seen) == 3
