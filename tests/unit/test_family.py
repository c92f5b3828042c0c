"""The families (pipeline/family.py): a packet's one reading agrees with the
reference classifier (packet/flows.py) whichever way it is read (``admit``'s
inline fast path for packets from the wire, ``describe`` for packets picked up
again), and every error hopgate sends has a type and code in each family that
can send it."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import GRE
from scapy.packet import Packet as ScapyPacket

from hopgate.packet import flows, icmp4, icmp6
from hopgate.pipeline.context import FIRST, LATER, WHOLE, Packet
from hopgate.pipeline.family import ON, Error, Family, Inet4, Inet6
from tests.unit import frames as F

S4, D4 = F.CLIENT4, F.SERVER4
S6, D6 = F.CLIENT6, F.SERVER6

V4_PACKETS: list[ScapyPacket] = [
    IP(src=S4, dst=D4) / UDP(sport=1000, dport=53) / b"q",
    IP(src=S4, dst=D4) / TCP(sport=1000, dport=80, flags="S"),
    IP(src=S4, dst=D4, options=b"\x01\x01\x01\x00") / TCP(sport=1000, dport=80),
    IP(src=S4, dst=D4) / ICMP(type=8, id=7, seq=1),
    IP(src=S4, dst=D4) / ICMP(type=0, id=7, seq=1),
    IP(src=S4, dst=D4) / ICMP(type=3, code=4) / IPerror(src=D4, dst=S4) / UDPerror(),
    IP(src=S4, dst=D4) / ICMP(type=13),
    IP(src=S4, dst=D4) / GRE() / (b"x" * 8),
    IP(src=S4, dst=D4, flags="MF", id=9) / UDP(sport=1000, dport=53) / (b"x" * 64),
    IP(src=S4, dst=D4, frag=8, id=9, proto=17) / (b"x" * 64),
    IP(src=S4, dst=D4, proto=6) / b"\x00\x01",  # too short for its ports
]

V6_PACKETS: list[ScapyPacket] = [
    IPv6(src=S6, dst=D6) / UDP(sport=1000, dport=53) / b"q",
    IPv6(src=S6, dst=D6) / TCP(sport=1000, dport=80, flags="S"),
    IPv6(src=S6, dst=D6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2),
    IPv6(src=S6, dst=D6) / ICMPv6EchoRequest(id=7),
    IPv6(src=S6, dst=D6) / ICMPv6EchoReply(id=7),
    IPv6(src=S6, dst=D6) / ICMPv6PacketTooBig(mtu=1280) / IPerror6(src=D6, dst=S6) / UDPerror(),
    IPv6(src=S6, dst=D6) / IPv6ExtHdrFragment(m=1, id=5, nh=17) / UDP(sport=1, dport=2),
    IPv6(src=S6, dst=D6) / IPv6ExtHdrFragment(offset=8, id=5, nh=17) / (b"x" * 16),
    IPv6(src=S6, dst=D6, nh=0) / (b"\x11\x05" + b"\x00" * 4),  # a chain that runs out
    IPv6(src=S6, dst=D6, nh=59),
]


def _fields(pkt: Packet) -> tuple[object, ...]:
    return (
        pkt.src, pkt.dst, pkt.end, pkt.proto, pkt.at, pkt.kind, pkt.sport, pkt.dport,
        pkt.fragment, pkt.bad_chain,
    )  # fmt: skip


def _read(fam: Family, frame: bytearray, admitted: bool) -> Packet:
    pkt = Packet(frame, F.C, 14, fam, 0.0, [])
    if admitted:
        assert fam.admit(pkt) is ON
    else:
        fam.describe(pkt)
    return pkt


@pytest.mark.parametrize("ip", V4_PACKETS + V6_PACKETS, ids=lambda p: p.summary())
def test_admit_and_describe_read_a_packet_alike_and_as_flows_does(ip: ScapyPacket) -> None:
    r = F.router()
    v6 = ip.haslayer(IPv6)
    fam: Family = r.inet6 if v6 else r.inet4
    frame = F.from_client(ip)
    admitted, described = _read(fam, bytearray(frame), True), _read(fam, bytearray(frame), False)
    assert _fields(admitted) == _fields(described)
    end = 14 + len(bytes(ip))
    assert admitted.end == end
    ref = flows.v6(frame, 14, end) if v6 else flows.v4(frame, 14, end)
    if admitted.bad_chain:
        assert ref.kind == flows.UNREADABLE
        return
    assert (admitted.kind, admitted.proto, admitted.sport, admitted.dport, admitted.at) == (
        ref.kind,
        ref.proto,
        ref.sport,
        ref.dport,
        ref.at,
    )
    expected = {flows.LATER_FRAGMENT: LATER}.get(ref.kind, admitted.fragment)
    assert admitted.fragment == expected
    if admitted.fragment == WHOLE:
        assert not ((ip.haslayer(IP) and ip[IP].flags.MF) or ip.haslayer(IPv6ExtHdrFragment))
    if admitted.fragment == FIRST:
        assert ref.kind != flows.LATER_FRAGMENT


def test_every_error_has_a_type_and_code_in_each_family() -> None:
    assert set(Inet6.errors) == set(Error)
    # IPv4 has no scopes: "beyond scope" is IPv6's alone (Family.out_of_scope).
    assert set(Inet4.errors) == set(Error) - {Error.BEYOND_SCOPE}
    assert not Inet4.has_scopes and Inet6.has_scopes
    for fam in (Inet4, Inet6):
        is_error = icmp4.is_error if fam is Inet4 else icmp6.is_error
        assert all(is_error(t) for t, _ in fam.errors.values())
