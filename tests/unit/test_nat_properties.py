"""Properties of translation: checksums always verify, undoing a translation
gives the original bytes back, and a reply finds its way to the right host."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Packet

from hopgate.pipeline.conntrack import ORIG
from tests.unit.frames import C, U, sent
from tests.unit.nat_frames import B_MAC, checksums_ok, inside, nat_router, outside

HOSTS4 = ["198.18.1.10", "198.18.1.11"]
HOSTS6 = ["2001:2:0:1::10", "2001:2:0:1::11"]
SERVERS4 = ["198.18.3.10", "198.18.3.20"]
SERVERS6 = ["2001:2:0:3::10", "2001:2:0:3::20"]
MACS = ["02:00:00:00:01:0a", B_MAC]

port = st.integers(1, 65535)


@st.composite
def flows(draw: st.DrawFn) -> tuple[int, Packet, Packet]:
    """(host index, the packet a host sends, the template of the server's reply)."""
    v6 = draw(st.booleans())
    h = draw(st.integers(0, 1))
    src = (HOSTS6 if v6 else HOSTS4)[h]
    dst = draw(st.sampled_from(SERVERS6 if v6 else SERVERS4))
    ip = IPv6(src=src, dst=dst, hlim=64) if v6 else IP(src=src, dst=dst, ttl=64, id=draw(port))
    data = draw(st.binary(max_size=64))
    kind = draw(st.sampled_from(["udp", "tcp", "echo"]))
    sp, dp = draw(port), draw(port)
    if kind == "udp":
        return h, ip / UDP(sport=sp, dport=dp) / data, UDP(sport=dp, dport=sp) / data
    if kind == "tcp":
        return (
            h,
            ip / TCP(sport=sp, dport=dp, flags="S") / data,
            TCP(sport=dp, dport=sp, flags="SA"),
        )
    ident = draw(st.integers(0, 65535))
    if v6:
        return h, ip / ICMPv6EchoRequest(id=ident, data=data), ICMPv6EchoReply(id=ident, data=data)
    return h, ip / ICMP(type=8, id=ident) / data, ICMP(type=0, id=ident) / data


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(flows(), min_size=1, max_size=6))
def test_translate_verify_undo_and_reply(cases: list[tuple[int, Packet, Packet]]) -> None:
    r = nat_router()
    nat = r.nat
    assert nat is not None
    for h, pkt, reply_l4 in cases:
        original = bytes(pkt)
        (out,) = sent(r.process(inside(pkt.__class__(original), MACS[h]), C, 1.0), U)
        t = out.payload
        v6 = isinstance(t, IPv6)
        assert checksums_ok(t)
        # undo: the packet as the host sent it, but for the hop hopgate counted
        frame = bytearray(bytes(out))
        side = nat.table.lookup(_tuple(pkt, v6))
        assert side is not None and side.direction == ORIG
        nat.undo(side)(frame, 14)
        lowered = pkt.__class__(original)
        if v6:
            lowered.hlim -= 1
        else:
            lowered.ttl -= 1
            del lowered.chksum
        assert bytes(frame[14:]) == bytes(lowered)
        # a reply to what left comes back to the host, to its own port
        reply_ip = IPv6(src=t.dst, dst=t.src) if v6 else IP(src=t.dst, dst=t.src)
        reply = reply_ip / _reply_for(reply_l4, t)
        (back,) = sent(r.process(outside(reply), U, 1.1), C)
        assert back.payload.dst == pkt.src and checksums_ok(back.payload)
        assert _dport(back.payload) == _sport(pkt)


def _tuple(p: Packet, v6: bool) -> tuple[int, int, int, int, int, int]:
    """The conntrack tuple of a packet a host sent (see conntrack.py)."""
    if p.haslayer(UDP) or p.haslayer(TCP):
        proto = 17 if p.haslayer(UDP) else 6
        ports = (_sport(p), _dport(p))
    else:
        proto = 58 if v6 else 1
        ports = (_sport(p), 0)  # an echo request: the identifier as the source port
    src, dst = int(ipaddress.ip_address(p.src)), int(ipaddress.ip_address(p.dst))
    return (6 if v6 else 4, proto, src, ports[0], dst, ports[1])


def _sport(p: Packet) -> int:
    for layer in (UDP, TCP):
        if p.haslayer(layer):
            return int(p[layer].sport)
    if p.haslayer(ICMPv6EchoRequest):
        return int(p[ICMPv6EchoRequest].id)
    return int(p[ICMP].id)


def _dport(p: Packet) -> int:
    for layer in (UDP, TCP):
        if p.haslayer(layer):
            return int(p[layer].dport)
    if p.haslayer(ICMPv6EchoReply):
        return int(p[ICMPv6EchoReply].id)
    return int(p[ICMP].id)


def _reply_for(template: Packet, t: Packet) -> Packet:
    reply = template.copy()
    if isinstance(reply, (UDP, TCP)):
        reply.dport = _sport(t)
    else:
        reply.id = _sport(t)
    return reply
