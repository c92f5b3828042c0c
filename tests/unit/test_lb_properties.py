"""Properties of the full-NAT path over many flows at once: what reaches a backend
comes from a local address and verifies; every reply, and every ICMP error about a
reply (full or 8-byte quote), finds its own client again, by the way it came."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hopgate.packet.proto import PROTO_TCP, PROTO_UDP
from tests.unit.lb_frames import (
    BE1,
    BE1_6,
    BE1_MAC,
    BE2,
    BE2_6,
    BE2_MAC,
    GW_B_MAC,
    LIPS4,
    LIPS6,
    RB4,
    RB6,
    RB_MAC,
    VIP4,
    VIP6,
    B,
    S,
    from_backend,
    lb_router,
    service,
    service6,
)
from tests.unit.nat_frames import checksums_ok
from tests.unit.test_lb import only

MAC_OF = {BE1: BE1_MAC, BE2: BE2_MAC, BE1_6: BE1_MAC, BE2_6: BE2_MAC}
L4 = {PROTO_TCP: TCP, PROTO_UDP: UDP}


@st.composite
def flows(draw: st.DrawFn) -> tuple[bool, str, int, int, bytes, bool]:
    """(IPv6?, client address, protocol, client port, payload, 8-byte quote?)"""
    v6 = draw(st.booleans())
    host = draw(st.integers(1, 250))
    client = f"2001:2:0:31::{host:x}" if v6 else f"198.18.31.{host}"
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_UDP]))
    return (
        v6,
        client,
        proto,
        draw(st.integers(1, 65535)),
        draw(st.binary(max_size=40)),
        draw(st.booleans()),
    )


def _ip(v6: bool, src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst, hlim=60) if v6 else IP(src=src, dst=dst, ttl=60, flags="DF")


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(flows(), min_size=1, max_size=8, unique_by=lambda f: (f[0], f[1], f[2], f[3])))
def test_every_flow_reaches_a_backend_and_comes_back_the_way_it_came(
    cases: list[tuple[bool, str, int, int, bytes, bool]],
) -> None:
    r = lb_router(
        service(),
        service(name="dns", protocol=PROTO_UDP),
        service6(),
        service6(name="dns6", protocol=PROTO_UDP),
    )
    forwarded = []
    for v6, client, proto, cport, data, _ in cases:
        vip = VIP6 if v6 else VIP4
        l4 = (
            TCP(sport=cport, dport=80, flags="S")
            if proto == PROTO_TCP
            else UDP(sport=cport, dport=80)
        )
        frame = bytearray(bytes(Ether(src=RB_MAC, dst=GW_B_MAC) / _ip(v6, client, vip) / l4 / data))
        port, f = only(r.process(frame, B, 1.0))
        ip = f[IPv6] if v6 else f[IP]
        assert port == S and checksums_ok(ip)
        assert ip.src in (LIPS6 if v6 else LIPS4)
        assert ip.dst in ((BE1_6, BE2_6) if v6 else (BE1, BE2))
        assert f[L4[proto]].dport == 80 and bytes(f[L4[proto]].payload) == data
        forwarded.append(f)
    # all flows are open at once: each reply must find its own client
    for (v6, client, proto, cport, _, short), f in zip(cases, forwarded, strict=True):
        ip = f[IPv6] if v6 else f[IP]
        t = f[L4[proto]]
        reply_l4 = L4[proto](sport=80, dport=t.sport) / (b"r" * 1300)
        if proto == PROTO_TCP:
            reply_l4[TCP].flags = "SA"
        reply = _ip(v6, ip.dst, ip.src) / reply_l4
        port, back = only(r.process(from_backend(reply, MAC_OF[ip.dst]), S, 1.1))
        bip = back[IPv6] if v6 else back[IP]
        assert port == B and back.dst == RB_MAC and checksums_ok(bip)
        assert bip.src == (VIP6 if v6 else VIP4) and bip.dst == client
        assert back[L4[proto]].sport == 80 and back[L4[proto]].dport == cport
        # router B cannot pass the reply on: its error reaches the backend that sent it
        quoted = bytes(bip)[: (48 if v6 else 28) if short else 1200]
        err: Packet
        if v6:
            err = IPv6(src=RB6, dst=VIP6) / ICMPv6PacketTooBig(mtu=1280) / Raw(quoted)
        else:
            err = IP(src=RB4, dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(quoted)
        frame = bytearray(bytes(Ether(src=RB_MAC, dst=GW_B_MAC) / err))
        port, to_be = only(r.process(frame, B, 1.2))
        eip = to_be[IPv6] if v6 else to_be[IP]
        assert port == S and to_be.dst == MAC_OF[ip.dst] and checksums_ok(eip)
        assert eip.dst == ip.dst
        inner = to_be[IPerror6] if v6 else to_be[IPerror]
        assert inner.src == ip.dst and inner.dst == ip.src
        quote = to_be[{PROTO_TCP: TCPerror, PROTO_UDP: UDPerror}[proto]]
        assert quote.sport == 80 and quote.dport == t.sport
        if v6:
            assert to_be[ICMPv6PacketTooBig].mtu == 1280
        else:
            assert to_be[ICMP].nexthopmtu == 1280
