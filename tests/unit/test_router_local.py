"""Packets to the router's own addresses: echo, UDP, TCP, other protocols, ARP and ND."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6ParamProblem,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import ARP, Ether

from hopgate.pipeline.actions import Action, DropReason
from tests.unit.frames import (
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    GW_C4,
    GW_C6,
    GW_C_MAC,
    GW_U4,
    C,
    drops,
    from_client,
    resolved_router,
    router,
    sent,
)


def test_echo_request_v4_is_answered_from_the_address_it_was_sent_to() -> None:
    r = router()
    req = IP(src=CLIENT4, dst=GW_U4, tos=0x10) / ICMP(id=0x1234, seq=9) / b"abcdefgh"
    out = r.process(from_client(req), C, 1.0)
    (rep,) = sent(out)
    assert rep.dst == CLIENT_MAC and rep.src == GW_C_MAC
    assert rep[IP].src == GW_U4 and rep[IP].dst == CLIENT4 and rep[IP].tos == 0x10
    assert rep[ICMP].type == 0 and rep[ICMP].id == 0x1234 and rep[ICMP].seq == 9
    assert bytes(rep[ICMP].payload) == b"abcdefgh"
    # scapy's own checksum of the reply equals ours
    check = ICMP(bytes(rep[ICMP]))
    del check.chksum
    assert ICMP(bytes(check)).chksum == rep[ICMP].chksum
    assert drops(out) == []
    assert r.counters.icmp_sent[(4, 0, 0)] == 1


def test_an_echo_reply_whose_words_are_all_zero_has_checksum_0xffff() -> None:
    # RFC 1624's blind spot: the incremental update would give 0x0000 here.
    out = router().process(from_client(IP(src=CLIENT4, dst=GW_U4) / ICMP(id=0, seq=0)), C, 1.0)
    (rep,) = sent(out)
    assert rep[ICMP].type == 0 and rep[ICMP].chksum == 0xFFFF


def test_echo_request_v6() -> None:
    r = router()
    out = r.process(
        from_client(IPv6(src=CLIENT6, dst=GW_C6) / ICMPv6EchoRequest(id=5, seq=6, data=b"hi")),
        C,
        1.0,
    )
    (rep,) = sent(out)
    assert rep[IPv6].src == GW_C6 and rep[IPv6].dst == CLIENT6
    e = rep[ICMPv6EchoReply]
    assert (e.id, e.seq, e.data) == (5, 6, b"hi")
    check = IPv6(bytes(rep[IPv6]))
    del check[ICMPv6EchoReply].cksum
    assert IPv6(bytes(check))[ICMPv6EchoReply].cksum == e.cksum


def test_echo_to_all_nodes_is_answered_from_a_unicast_address() -> None:
    r = router()
    req = IPv6(src="fe80::10", dst="ff02::1") / ICMPv6EchoRequest(id=1, seq=1)
    out = r.process(from_client(req, dst_mac="33:33:00:00:00:01"), C, 1.0)
    (rep,) = sent(out)
    assert rep[IPv6].src.startswith("fe80::") and rep[IPv6].dst == "fe80::10"


def test_large_fragmented_echo_is_reassembled_and_answered_in_fragments() -> None:
    r = router()
    req = IP(src=CLIENT4, dst=GW_C4, id=99) / ICMP(id=3, seq=4) / (b"L" * 3000)
    frags = fragment(req, fragsize=1480)  # type: ignore[no-untyped-call]
    out: list[Action] = []
    for f in frags:
        out += r.process(from_client(f), C, 1.0)
    replies = sent(out)
    assert len(replies) == 3 and r.counters.reassembled == 1
    data = b"".join(bytes(p[IP].payload) for p in sorted(replies, key=lambda p: p[IP].frag))
    assert data[0] == 0 and data[8:] == b"L" * 3000  # an echo reply carrying the same data


def test_large_fragmented_echo_v6_is_reassembled_and_answered_in_fragments() -> None:
    r = router()
    req = (
        IPv6(src=CLIENT6, dst=GW_C6)
        / IPv6ExtHdrFragment(id=7)
        / ICMPv6EchoRequest(id=1, data=b"M" * 3000)
    )
    out: list[Action] = []
    for f in fragment6(req, 1280):  # type: ignore[no-untyped-call]
        out += r.process(from_client(f), C, 1.0)
    replies = sent(out)
    assert len(replies) >= 3 and r.counters.reassembled == 1
    assert all(len(p[IPv6]) <= 1500 for p in replies)


def test_udp_to_own_address_gets_port_unreachable() -> None:
    r = router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=GW_C4) / UDP(sport=5000, dport=33434) / b"x"), C, 1.0
    )
    assert drops(out) == [DropReason.LOCAL_UDP_PORT_CLOSED]
    (err,) = sent(out)
    assert (err[ICMP].type, err[ICMP].code) == (3, 3) and err[IP].src == GW_C4
    assert err[IPerror].dst == GW_C4


def test_udp_to_own_address_v6_gets_port_unreachable() -> None:
    r = router()
    out = r.process(
        from_client(IPv6(src=CLIENT6, dst=GW_C6) / UDP(sport=5000, dport=33434)), C, 1.0
    )
    (err,) = sent(out)
    assert err[ICMPv6DestUnreach].code == 4


def test_udp_with_bad_checksum_to_own_address_is_dropped_silently() -> None:
    r = router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=GW_C4) / UDP(sport=1, dport=2, chksum=0x1234) / b"x"),
        C,
        1.0,
    )
    assert drops(out) == [DropReason.LOCAL_BAD_CHECKSUM] and sent(out) == []


def test_tcp_syn_to_own_address_gets_rst_ack() -> None:
    r = router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst=GW_C4) / TCP(sport=40001, dport=80, flags="S", seq=1000)),
        C,
        1.0,
    )
    (rst,) = sent(out)
    t = rst[TCP]
    assert t.flags == "RA" and t.seq == 0 and t.ack == 1001
    assert (t.sport, t.dport) == (80, 40001)
    assert rst[IP].src == GW_C4 and rst.dst == CLIENT_MAC
    check = IP(bytes(rst[IP]))
    del check[TCP].chksum
    assert IP(bytes(check))[TCP].chksum == t.chksum


def test_tcp_ack_to_own_address_gets_rst_with_its_ack_as_seq() -> None:
    r = router()
    out = r.process(
        from_client(
            IPv6(src=CLIENT6, dst=GW_C6) / TCP(sport=1, dport=22, flags="A", seq=5, ack=777)
        ),
        C,
        1.0,
    )
    (rst,) = sent(out)
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777


def test_rst_is_never_answered() -> None:
    r = router()
    out = r.process(from_client(IP(src=CLIENT4, dst=GW_C4) / TCP(flags="R")), C, 1.0)
    assert sent(out) == [] and drops(out) == [DropReason.LOCAL_TCP_RST_IGNORED]


def test_other_protocol_gets_protocol_unreachable() -> None:
    r = router()
    out = r.process(from_client(IP(src=CLIENT4, dst=GW_C4, proto=47) / (b"\x00" * 20)), C, 1.0)
    (err,) = sent(out)
    assert (err[ICMP].type, err[ICMP].code) == (3, 2)


def test_other_next_header_gets_parameter_problem_pointing_at_it() -> None:
    r = router()
    out = r.process(from_client(IPv6(src=CLIENT6, dst=GW_C6, nh=47) / (b"\x00" * 20)), C, 1.0)
    (err,) = sent(out)
    pp = err[ICMPv6ParamProblem]
    assert pp.code == 1 and pp.ptr == 6  # the Next Header field of the IPv6 header


def test_arp_request_for_own_address_is_answered() -> None:
    r = router()
    req = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=CLIENT_MAC, psrc=CLIENT4, pdst=GW_C4
    )
    out = r.process(bytearray(bytes(req)), C, 1.0)
    (rep,) = sent(out)
    assert rep.dst == CLIENT_MAC
    a = rep[ARP]
    assert a.op == 2 and a.hwsrc == GW_C_MAC and a.psrc == GW_C4 and a.pdst == CLIENT4
    assert a.hwdst == CLIENT_MAC
    # and the requester is learnt, so a reply to it needs no ARP of our own
    entry = r.arp.table.get(C, int.from_bytes(bytes([198, 18, 1, 10]), "big"))
    assert entry is not None and entry.mac == bytes.fromhex(CLIENT_MAC.replace(":", ""))


def test_arp_for_another_ports_address_is_not_answered() -> None:
    r = router()
    req = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=CLIENT_MAC, psrc=CLIENT4, pdst=GW_U4
    )
    out = r.process(bytearray(bytes(req)), C, 1.0)
    assert sent(out) == [] and drops(out) == [DropReason.ARP_NOT_FOR_US]


def test_neighbor_solicitation_is_answered_with_hop_limit_255() -> None:
    r = router()
    ns = (
        IPv6(src=CLIENT6, dst="ff02::1:ff00:1", hlim=255)
        / ICMPv6ND_NS(tgt=GW_C6)
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    )
    out = r.process(from_client(ns, dst_mac="33:33:ff:00:00:01"), C, 1.0)
    (na,) = sent(out)
    assert na.dst == CLIENT_MAC and na[IPv6].hlim == 255
    assert na[IPv6].src == GW_C6 and na[IPv6].dst == CLIENT6
    adv = na[ICMPv6ND_NA]
    assert adv.tgt == GW_C6 and adv.R == 1 and adv.S == 1 and adv.O == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == GW_C_MAC


def test_duplicate_address_detection_is_answered_to_all_nodes() -> None:
    r = router()
    ns = IPv6(src="::", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=GW_C6)
    (na,) = sent(r.process(from_client(ns, dst_mac="33:33:ff:00:00:01"), C, 1.0))
    assert na[IPv6].dst == "ff02::1" and na[ICMPv6ND_NA].S == 0


def test_neighbor_solicitation_with_wrong_hop_limit_is_ignored() -> None:
    r = router()
    ns = (
        IPv6(src=CLIENT6, dst=GW_C6, hlim=64)
        / ICMPv6ND_NS(tgt=GW_C6)
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    )
    out = r.process(from_client(ns), C, 1.0)
    assert sent(out) == [] and drops(out) == [DropReason.ND_MALFORMED]


def test_echo_to_broadcast_is_ignored() -> None:
    r = router()
    out = r.process(
        from_client(IP(src=CLIENT4, dst="255.255.255.255") / ICMP(), dst_mac="ff:ff:ff:ff:ff:ff"),
        C,
        1.0,
    )
    assert sent(out) == [] and drops(out) == [DropReason.BROADCAST_IGNORED]


def test_icmp_error_to_router_is_consumed() -> None:
    r = resolved_router()
    err = IP(src=CLIENT4, dst=GW_C4) / ICMP(type=3, code=3) / IP(src=GW_C4, dst=CLIENT4) / UDP()
    out = r.process(from_client(err), C, 1.0)
    assert sent(out) == [] and drops(out) == [DropReason.ICMP_ERROR_TO_ROUTER]
