"""Forwarding and the errors of the forwarding path (docs/behaviour.md, "Forwarding
(IPv4 / IPv6)")."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)
from scapy.layers.l2 import Dot1Q, Ether

from hopgate.pipeline.actions import DropReason
from tests.unit.frames import (
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    GW_C4,
    GW_C6,
    GW_C_MAC,
    GW_U_MAC,
    SERVER4,
    SERVER6,
    UPSTREAM_MAC,
    C,
    U,
    drops,
    from_client,
    resolved_router,
    sent,
)


def test_forward_v4_decrements_ttl_and_rewrites_macs() -> None:
    r = resolved_router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=SERVER4, ttl=9) / UDP(sport=1, dport=2) / b"x"), C, 1.0
    )
    (frame,) = sent(out, U)
    assert frame.src == GW_U_MAC and frame.dst == UPSTREAM_MAC
    ip = frame[IP]
    assert ip.ttl == 8
    # scapy recomputes the header checksum: it must equal what we wrote incrementally.
    rebuilt = IP(bytes(ip))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum
    assert drops(out) == []
    assert r.counters.forwarded[C] == 1


def test_forward_v4_strips_ethernet_padding() -> None:
    r = resolved_router()
    frame = from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=1, dport=2))
    frame += b"\x00" * 18  # padding to the 60-byte minimum, as NICs add it
    (out,) = sent(r.process(frame, C, 1.0), U)
    assert len(bytes(out)) == 14 + 28


def test_forward_v6_decrements_hop_limit() -> None:
    r = resolved_router()
    out = r.process(
        from_client(IPv6(src=CLIENT6, dst=SERVER6, hlim=7) / UDP(sport=1, dport=2)), C, 1.0
    )
    (frame,) = sent(out, U)
    assert frame[IPv6].hlim == 6
    assert frame.dst == UPSTREAM_MAC


def test_vlan_tag_is_passed_through() -> None:
    r = resolved_router()
    frame = bytearray(
        bytes(
            Ether(src=CLIENT_MAC, dst=GW_C_MAC)
            / Dot1Q(vlan=42)
            / IP(src=CLIENT4, dst=SERVER4)
            / UDP()
        )
    )
    (out,) = sent(r.process(frame, C, 1.0), U)
    assert out[Dot1Q].vlan == 42 and out[IP].ttl == 63


def test_ttl_exceeded_v4_from_ingress_address_back_to_sender() -> None:
    r = resolved_router()
    probe = (
        IP(src=CLIENT4, dst=SERVER4, ttl=1, id=4242) / UDP(sport=40000, dport=33434) / (b"p" * 32)
    )
    out = r.process(from_client(probe), C, 1.0)
    assert drops(out) == [DropReason.TTL_EXCEEDED]
    (err,) = sent(out)
    assert err.dst == CLIENT_MAC and err.src == GW_C_MAC  # source in, source out
    assert err[IP].src == GW_C4 and err[IP].dst == CLIENT4
    assert err[IP].tos == 0xC0 and err[IP].ttl == 64
    assert err[ICMP].type == 11 and err[ICMP].code == 0
    assert err[IPerror].id == 4242 and err[IPerror].ttl == 1
    assert err[UDPerror].sport == 40000 and err[UDPerror].dport == 33434
    assert sent(out, U) == []


def test_ttl_exceeded_v6() -> None:
    r = resolved_router()
    out = r.process(
        from_client(IPv6(src=CLIENT6, dst=SERVER6, hlim=1) / UDP(sport=5, dport=33434)), C, 1.0
    )
    (err,) = sent(out)
    assert err[IPv6].src == GW_C6 and err[IPv6].dst == CLIENT6 and err.dst == CLIENT_MAC
    assert err[ICMPv6TimeExceeded].code == 0
    assert err[IPerror6].hlim == 1


def test_no_route_v4_is_net_unreachable() -> None:
    r = resolved_router(routes=())
    out = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / ICMP()), C, 1.0)
    assert drops(out) == [DropReason.NO_ROUTE]
    (err,) = sent(out)
    assert (err[ICMP].type, err[ICMP].code) == (3, 0) and err[IP].src == GW_C4


def test_no_route_v6_is_no_route() -> None:
    r = resolved_router(routes=())
    out = r.process(from_client(IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6EchoRequest()), C, 1.0)
    (err,) = sent(out)
    assert err[ICMPv6DestUnreach].code == 0 and err[IPv6].src == GW_C6


def test_route_is_looked_up_before_ttl_as_linux() -> None:
    r = resolved_router(routes=())
    out = r.process(from_client(IP(src=CLIENT4, dst=SERVER4, ttl=1) / ICMP()), C, 1.0)
    assert drops(out) == [DropReason.NO_ROUTE]


def test_df_packet_over_mtu_gets_frag_needed_with_next_hop_mtu() -> None:
    r = resolved_router()
    big = IP(src=CLIENT4, dst=SERVER4, flags="DF") / ICMP() / (b"z" * 1472)
    out = r.process(from_client(big), C, 1.0)
    assert drops(out) == [DropReason.MTU_EXCEEDED]
    (err,) = sent(out)
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, 1400)
    assert err[IP].src == GW_C4
    # The quote is the 576-byte maximum, not the whole 1500-byte packet.
    assert len(err[IP]) == 576


def test_packet_of_exactly_mtu_is_forwarded() -> None:
    r = resolved_router()
    pkt = IP(src=CLIENT4, dst=SERVER4, flags="DF") / ICMP() / (b"z" * (1400 - 28))
    (out,) = sent(r.process(from_client(pkt), C, 1.0), U)
    assert len(out[IP]) == 1400


def test_packet_over_mtu_without_df_is_fragmented() -> None:
    r = resolved_router()
    payload = bytes(range(256)) * 5 + b"t" * 172  # 1452 bytes: fits gw-c, not gw-u (1400)
    pkt = IP(src=CLIENT4, dst=SERVER4, id=77) / UDP(sport=9, dport=10) / payload
    out = r.process(from_client(pkt), C, 1.0)
    pieces = sent(out, U)
    assert len(pieces) == 2
    for p in pieces:
        assert len(p[IP]) <= 1400 and p[IP].id == 77 and p[IP].ttl == 63
    assert pieces[0][IP].flags.MF and not pieces[1][IP].flags.MF
    assert pieces[1][IP].frag * 8 == len(pieces[0][IP].payload)
    data = bytes(pieces[0][IP].payload) + bytes(pieces[1][IP].payload)
    assert data[8:] == payload
    assert r.counters.fragments_created == 2


def test_v6_packet_over_mtu_gets_packet_too_big() -> None:
    r = resolved_router()
    big = IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6EchoRequest(data=b"q" * 1452)
    out = r.process(from_client(big), C, 1.0)
    (err,) = sent(out)
    assert err[ICMPv6PacketTooBig].mtu == 1400
    assert len(err[IPv6]) == 1280  # the RFC 4443 maximum
    assert err[IPv6].src == GW_C6 and err.dst == CLIENT_MAC


def test_v6_link_local_source_is_beyond_scope() -> None:
    r = resolved_router()
    out = r.process(from_client(IPv6(src="fe80::10", dst=SERVER6) / UDP()), C, 1.0)
    assert drops(out) == [DropReason.SOURCE_BEYOND_SCOPE]
    (err,) = sent(out)
    assert err[ICMPv6DestUnreach].code == 2
    assert err[IPv6].src.startswith("fe80::")  # link-local to link-local


def test_v6_link_local_destination_is_not_forwarded() -> None:
    r = resolved_router()
    out = r.process(from_client(IPv6(src=CLIENT6, dst="fe80::99") / UDP()), C, 1.0)
    assert drops(out) == [DropReason.LINK_LOCAL_NOT_FORWARDED] and sent(out) == []


def test_unicast_ip_in_link_layer_broadcast_is_not_forwarded() -> None:
    r = resolved_router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(), dst_mac="ff:ff:ff:ff:ff:ff"), C, 1.0
    )
    assert drops(out) == [DropReason.L2_BROADCAST_NOT_FORWARDED] and sent(out) == []


def test_frame_for_another_mac_is_ignored() -> None:
    r = resolved_router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(), dst_mac="02:99:99:99:99:99"), C, 1.0
    )
    assert drops(out) == [DropReason.L2_NOT_FOR_US]


def test_martian_and_spoofed_sources_are_dropped_silently() -> None:
    r = resolved_router()
    for src in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "240.0.0.1", GW_C4, "198.18.1.255"):
        out = r.process(from_client(IP(src=src, dst=SERVER4, ttl=1) / UDP()), C, 1.0)
        assert drops(out) == [DropReason.MARTIAN_SOURCE], src
        assert sent(out) == []


def test_malformed_ipv4_is_dropped_with_reason() -> None:
    r = resolved_router()
    good = from_client(IP(src=CLIENT4, dst=SERVER4) / UDP())
    bad_sum = bytearray(good)
    bad_sum[14 + 10] ^= 0xFF
    bad_version = bytearray(good)
    bad_version[14] = 0x55
    bad_len = bytearray(good)
    bad_len[14 + 2 : 14 + 4] = (2000).to_bytes(2, "big")
    cases = {
        DropReason.IPV4_BAD_CHECKSUM: bad_sum,
        DropReason.IPV4_BAD_VERSION: bad_version,
        DropReason.IPV4_BAD_TOTAL_LENGTH: bad_len,
        DropReason.IPV4_TRUNCATED: good[:30],
    }
    for reason, frame in cases.items():
        out = r.process(frame, C, 1.0)
        assert drops(out) == [reason] and sent(out) == []


def test_gro_super_frame_is_not_a_packet() -> None:
    r = resolved_router()
    frame = from_client(IP(src=CLIENT4, dst=SERVER4) / UDP() / (b"a" * 9000))
    out = r.process(frame, C, 1.0)
    assert drops(out) == [DropReason.FRAME_EXCEEDS_MTU]


def test_directed_broadcast_is_not_forwarded_or_answered() -> None:
    r = resolved_router()
    out = r.process(from_client(IP(src=CLIENT4, dst="198.18.1.255") / ICMP()), C, 1.0)
    assert drops(out) == [DropReason.BROADCAST_IGNORED] and sent(out) == []
