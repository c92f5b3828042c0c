"""NAT behind NAT, end to end on the wire (tests/unit/wire.py): an inside host,
hopgate NAT 1, hopgate NAT 2 (a carrier-grade NAT in front of it), and a server
the test plays.  Every frame between the two NATs is one NAT's transmit
carried to the other; the routers resolve each other with ARP and Neighbor
Discovery across the wire.

    host ── (n1-in) nat1 (n1-out) ── mid ── (n2-in) nat2 (n2-out) ── server

What docs/behaviour.md, "NAT", promises for one NAT must hold through two:
flows and replies translated twice, traceroute showing each hop, ICMP errors
from beyond both translated back with their quotes restored to what the host
sent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)
from scapy.packet import Packet, Raw

from hopgate.pipeline.model import (
    IPNetwork,
    NatSpec,
    NextHopSpec,
    PortSpec,
    RouterSpec,
    RouteSpec,
    SnatSpec,
)
from tests.unit.frames import mac, one
from tests.unit.nat_frames import checksums_ok
from tests.unit.wire import Host, Wire

N1_IN_MAC, N1_OUT_MAC = "02:00:00:01:01:01", "02:00:00:01:02:01"
N2_IN_MAC, N2_OUT_MAC = "02:00:00:02:02:02", "02:00:00:02:04:01"
HOST_MAC, SERVER_MAC = "02:00:00:01:01:0a", "02:00:00:02:04:0a"


@dataclass(frozen=True)
class Plan:
    """One family's addresses."""

    host: str
    n1_in: str
    n1_out: str  # NAT 1's outside address: what NAT 2 sees as the inside host
    n2_in: str
    n2_out: str  # NAT 2's outside address: what the server sees
    server: str
    inside: str  # NAT 1's inside prefix
    mid: str  # NAT 2's inside prefix: the link between the NATs
    default: str


V4 = Plan(
    "198.18.1.10", "198.18.1.1", "198.18.2.1", "198.18.2.2", "198.18.4.1", "198.18.4.10",
    "198.18.1.0/24", "198.18.2.0/24", "0.0.0.0/0",
)  # fmt: skip
V6 = Plan(
    "2001:2:0:1::10", "2001:2:0:1::1", "2001:2:0:2::1", "2001:2:0:2::2", "2001:2:0:4::1",
    "2001:2:0:4::10", "2001:2:0:1::/64", "2001:2:0:2::/64", "::/0",
)  # fmt: skip
PLANS = {"ipv4": V4, "ipv6": V6}


def _ifaces(*texts: str) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
    return tuple(ipaddress.ip_interface(t) for t in texts)


def _nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def nat_spec(
    inside: tuple[str, str, str],
    outside: tuple[str, str, str],
    snat: tuple[str, ...],
    default: tuple[str, ...] = (),
) -> RouterSpec:
    """A NAT router: ``inside``/``outside`` are (name, MAC, IPv4 address); the
    IPv6 address is made from the same last byte."""
    ports = []
    for name, hw, a4 in (inside, outside):
        net, last = a4.rsplit(".", 1)
        a6 = f"2001:2:0:{net.rsplit('.', 1)[1]}::{last}"
        ports.append(PortSpec(name, mac(hw), 1500, _ifaces(f"{a4}/24", f"{a6}/64")))
    routes = tuple(
        RouteSpec(ipaddress.ip_network(V4.default if "." in via else V6.default),
                  (NextHopSpec(ipaddress.ip_address(via)),))
        for via in default
    )  # fmt: skip
    nat = NatSpec(snat=(SnatSpec(_nets(*snat), outside[0]),), seed=1)
    return RouterSpec(tuple(ports), routes, nat=nat)


def two_nats() -> tuple[Wire, Host, Host]:
    wire = Wire()
    wire.router(
        "nat1",
        nat_spec(
            ("n1-in", N1_IN_MAC, V4.n1_in), ("n1-out", N1_OUT_MAC, V4.n1_out),
            (V4.inside, V6.inside), (V4.n2_in, V6.n2_in),
        ),
    )  # fmt: skip
    wire.router(
        "nat2",
        nat_spec(
            ("n2-in", N2_IN_MAC, V4.n2_in), ("n2-out", N2_OUT_MAC, V4.n2_out),
            (V4.mid, V6.mid),
        ),
    )  # fmt: skip
    wire.plug("inside", "nat1", "n1-in")
    wire.plug("mid", "nat1", "n1-out")
    wire.plug("mid", "nat2", "n2-in")
    wire.plug("edge", "nat2", "n2-out")
    host = wire.host("inside", "host", HOST_MAC, V4.host, V6.host)
    server = wire.host("edge", "server", SERVER_MAC, V4.server, V6.server)
    return wire, host, server


def ip(plan: Plan, src: str, dst: str, ttl: int = 64) -> Packet:
    """An IPv4 or IPv6 header; ``ttl`` is the hop limit for IPv6."""
    if plan is V4:
        return IP(src=src, dst=dst, ttl=ttl)
    return IPv6(src=src, dst=dst, hlim=ttl)


@pytest.mark.parametrize("family", list(PLANS))
def test_a_flow_and_its_replies_are_translated_twice(family: str) -> None:
    p = PLANS[family]
    wire, host, server = two_nats()
    host.send(ip(p, p.host, p.server) / UDP(sport=40000, dport=53) / Raw(b"query"), N1_IN_MAC)
    got = one(server.take())
    assert got.src == N2_OUT_MAC, "nat2 did not send the flow to the server itself"
    assert got.payload.src == p.n2_out and got.payload.dst == p.server, "nat2 did not translate"
    assert got[UDP].dport == 53 and bytes(got[UDP].payload) == b"query"
    assert checksums_ok(got.payload), "the flow's checksums are wrong after two NATs"
    # Between the two NATs, the flow came from NAT 1's outside address.
    (mid,) = [f for f in wire.segments["mid"].seen("nat1") if UDP in f]
    assert mid.payload.src == p.n1_out and mid.payload.dst == p.server, "nat1 did not translate"

    reply = ip(p, p.server, p.n2_out) / UDP(sport=53, dport=got[UDP].sport) / Raw(b"answer")
    server.send(reply, got.src)
    back = one(host.take())
    assert back.src == N1_IN_MAC and back.dst == HOST_MAC, "nat1 did not deliver the reply"
    assert (back.payload.src, back.payload.dst) == (p.server, p.host), "reply not translated back"
    assert (back[UDP].sport, back[UDP].dport) == (53, 40000)
    assert bytes(back[UDP].payload) == b"answer" and checksums_ok(back.payload)
    assert wire.all_drops() == []


@pytest.mark.parametrize("family", list(PLANS))
def test_echo_identifiers_come_back_as_the_host_sent_them(family: str) -> None:
    p = PLANS[family]
    _, host, server = two_nats()
    echo = ICMP(type=8, id=77, seq=5) if p is V4 else ICMPv6EchoRequest(id=77, seq=5)
    host.send(ip(p, p.host, p.server) / echo / Raw(b"ping"), N1_IN_MAC)
    got = one(server.take())
    assert got.payload.src == p.n2_out, "nat2 did not translate the echo request"
    req = got[ICMP] if p is V4 else got[ICMPv6EchoRequest]
    answer = ICMP(type=0, id=req.id, seq=req.seq) if p is V4 else ICMPv6EchoReply(id=req.id, seq=5)
    server.send(ip(p, p.server, p.n2_out) / answer / Raw(b"ping"), got.src)
    back = one(host.take())
    rep = back[ICMP] if p is V4 else back[ICMPv6EchoReply]
    assert back.payload.dst == p.host and (rep.id, rep.seq) == (77, 5), "echo reply not restored"
    assert checksums_ok(back.payload)


def _time_exceeded(p: Plan, frame: Packet) -> tuple[Packet, Packet]:
    """The error's IP header, and the packet it quotes."""
    if p is V4:
        assert frame[ICMP].type == 11 and frame[ICMP].code == 0, frame.summary()
        return frame[IP], frame[IPerror]
    assert ICMPv6TimeExceeded in frame, frame.summary()
    return frame[IPv6], frame[IPerror6]


@pytest.mark.parametrize("family", list(PLANS))
def test_traceroute_through_both_nats_shows_every_hop(family: str) -> None:
    """UDP probes with TTL 1, 2, 3: nat1 answers, then nat2 about nat1's
    translated probe (nat1 translates that error back), then the server."""
    p = PLANS[family]
    _, host, server = two_nats()
    hops = []
    for ttl in (1, 2, 3):
        probe = ip(p, p.host, p.server, ttl=ttl) / UDP(sport=50000, dport=33433 + ttl) / (b"t" * 8)
        host.send(probe, N1_IN_MAC)
        if ttl == 3:
            # The server gets the probe and answers port unreachable about it.
            got = one(server.take())
            assert got.payload.src == p.n2_out
            quote = bytes(got.payload)
            err = ICMP(type=3, code=3) if p is V4 else ICMPv6DestUnreach(code=4)
            server.send(ip(p, p.server, p.n2_out) / err / Raw(quote), got.src)
        frame = one(host.take())
        assert frame.dst == HOST_MAC and checksums_ok(frame.payload), f"hop {ttl}"
        outer = frame.payload
        if ttl < 3:
            outer, quoted = _time_exceeded(p, frame)
        else:
            quoted = frame[IPerror] if p is V4 else frame[IPerror6]
        # The quote reads as the host sent it: its address and ports, not a NAT's.
        assert (quoted.src, quoted.dst) == (p.host, p.server), f"hop {ttl}: quote not restored"
        assert (quoted[UDPerror].sport, quoted[UDPerror].dport) == (50000, 33433 + ttl)
        assert outer.dst == p.host
        hops.append(outer.src)
    assert hops == [p.n1_in, p.n2_in, p.server], f"traceroute through nat1 and nat2: {hops}"
    assert server.take() == []
