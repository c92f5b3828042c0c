"""One packet, one parse: a packet's IP header and flow are read once, by its
family, and every later step (NAT, the connection table, the rewrite, ECMP)
reads the ``Packet`` (docs/architecture.md, "pipeline/")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from hopgate.packet import flows, ipv4, ipv6
from hopgate.pipeline import family
from hopgate.pipeline.actions import Transmit
from hopgate.pipeline.model import NextHopSpec, RouteSpec
from hopgate.pipeline.router import Router
from tests.unit import frames as F
from tests.unit import nat_frames as N

# Everything that reads a header or a flow from the bytes.
_READERS: list[tuple[object, str]] = [
    (family.Inet4, "admit"),
    (family.Inet4, "describe"),
    (family.Inet6, "admit"),
    (family.Inet6, "describe"),
    (ipv4, "check"),
    (ipv6, "check"),
    (ipv6, "walk"),
    (ipv6, "fragment_header"),
    (flows, "v4"),
    (flows, "v6"),
    (flows, "transport"),
    (flows, "classify"),
]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """How many times each reader ran."""
    counts: Counter[str] = Counter()

    def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for owner, attr in _READERS:
        name = f"{getattr(owner, '__name__', owner)}.{attr}"
        monkeypatch.setattr(owner, attr, counting(name, getattr(owner, attr)))
    yield counts


# An IPv6 packet's one reading: the header checked, then described.
_V6_ONCE = {"Inet6.admit": 1, "hopgate.packet.ipv6.check": 1, "Inet6.describe": 1}


def _through(r: Router, frame: bytearray, port: int, reads: Counter[str]) -> Counter[str]:
    """Send one frame through ``r``; what read it, and how often."""
    reads.clear()
    out = r.process(frame, port, 1.0)
    assert any(isinstance(a, Transmit) for a in out), out
    return Counter(reads)


def test_an_ipv6_tcp_connection_through_snat_is_read_once_per_packet(
    reads: Counter[str],
) -> None:
    r = N.nat_router()
    there, back = IPv6(src=N.A6, dst=N.SERVER6), IPv6(src=N.SERVER6, dst=N.OUT6)
    syn = N.inside(there / TCP(sport=5555, dport=443, flags="S", seq=100))
    assert _through(r, syn, F.C, reads) == _V6_ONCE
    synack = N.outside(back / TCP(sport=443, dport=5555, flags="SA", seq=900, ack=101))
    assert _through(r, synack, F.U, reads) == _V6_ONCE
    ack = N.inside(there / TCP(sport=5555, dport=443, flags="A", seq=101, ack=901))
    assert _through(r, ack, F.C, reads) == _V6_ONCE


def test_an_extension_header_chain_is_walked_once(reads: Counter[str]) -> None:
    r = N.nat_router()
    there = IPv6(src=N.A6, dst=N.SERVER6) / IPv6ExtHdrDestOpt()
    syn = N.inside(there / TCP(sport=5556, dport=443, flags="S", seq=100))
    assert _through(r, syn, F.C, reads) == {**_V6_ONCE, "hopgate.packet.ipv6.walk": 1}


def test_ipv4_through_snat_reads_the_header_once(reads: Counter[str]) -> None:
    r = N.nat_router()
    udp = N.inside(IP(src=N.A4, dst=N.SERVER4) / UDP(sport=4000, dport=53) / b"q")
    # admit reads an option-less header inline; nothing else reads it.
    assert _through(r, udp, F.C, reads) == {"Inet4.admit": 1}
    reply = N.outside(IP(src=N.SERVER4, dst=N.OUT4) / UDP(sport=53, dport=4000) / b"a")
    assert _through(r, reply, F.U, reads) == {"Inet4.admit": 1}


def test_ecmp_hashes_the_flow_already_read(reads: Counter[str]) -> None:
    hops = ("198.18.2.2", "198.18.2.3", "198.18.2.4")
    routes = (RouteSpec(ip_network("0.0.0.0/0"), tuple(NextHopSpec(ip_address(h)) for h in hops)),)
    r = F.router(routes=routes)
    F.learn_neighbours(r, [(F.U, h, f"02:00:00:00:02:{i + 2:02x}") for i, h in enumerate(hops)])
    for sport in range(40000, 40010):
        frame = F.from_client(IP(src=F.CLIENT4, dst=F.SERVER4) / TCP(sport=sport, dport=80))
        assert _through(r, frame, F.C, reads) == {"Inet4.admit": 1}
