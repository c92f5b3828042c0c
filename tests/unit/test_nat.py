"""NAT on exact bytes: SNAT with endpoint-independent mapping, DNAT, hairpinning,
echo identifiers, TCP states, expiry and limits (docs/behaviour.md, "NAT")."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror, fragment
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from hopgate.control import views
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import TcpState, Timeouts
from hopgate.pipeline.router import Router
from tests.unit.frames import CLIENT_MAC, GW_C4, GW_U_MAC, UPSTREAM_MAC, C, U, drops, one, sent
from tests.unit.nat_frames import (
    A4,
    A6,
    B4,
    B_MAC,
    OUT4,
    OUT6,
    SERVER4,
    SERVER6,
    checksums_ok,
    inside,
    nat_router,
    outside,
)


def test_udp_out_takes_the_outside_address_and_keeps_its_port() -> None:
    r = nat_router()
    out = one(
        sent(
            r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53) / b"q"), C, 1.0),
            U,
        )
    )
    assert out[IP].src == OUT4 and out[UDP].sport == 40000 and out[IP].dst == SERVER4
    assert out.dst == UPSTREAM_MAC and checksums_ok(out[IP])
    back = one(
        sent(
            r.process(
                outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=40000) / b"a"), U, 1.1
            ),
            C,
        )
    )
    assert back[IP].dst == A4 and back[UDP].dport == 40000 and back.dst == CLIENT_MAC
    assert back[IP].ttl == 63 and checksums_ok(back[IP])
    assert len(r.nat.table) == 1  # type: ignore[union-attr]


def test_mapping_is_endpoint_independent() -> None:
    r = nat_router()
    r.process(
        inside(IP(src=B4, dst=SERVER4) / UDP(sport=40000, dport=53), B_MAC), C, 1.0
    )  # B takes :40000
    first = one(
        sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0), U)
    )
    second = one(
        sent(
            r.process(inside(IP(src=A4, dst="198.18.3.99") / UDP(sport=40000, dport=53)), C, 1.0), U
        )
    )
    assert first[UDP].sport != 40000  # taken by B: A gets another port...
    assert second[UDP].sport == first[UDP].sport  # ...and keeps it whatever it talks to
    assert first[IP].src == second[IP].src == OUT4


def test_privileged_ports_stay_privileged() -> None:
    r = nat_router()
    r.process(inside(IP(src=B4, dst=SERVER4) / UDP(sport=123, dport=123), B_MAC), C, 1.0)
    a = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=123, dport=123)), C, 1.0), U))
    assert a[UDP].sport != 123 and 1 <= a[UDP].sport <= 511


def test_two_hosts_ping_with_the_same_identifier() -> None:
    r = nat_router()
    out_a = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / ICMP(id=7, seq=1)), C, 1.0), U))
    out_b = one(
        sent(r.process(inside(IP(src=B4, dst=SERVER4) / ICMP(id=7, seq=1), B_MAC), C, 1.0), U)
    )
    assert out_a[ICMP].id == 7 and out_b[ICMP].id != 7
    assert checksums_ok(out_a[IP]) and checksums_ok(out_b[IP])
    for out, host in ((out_b, B4), (out_a, A4)):
        reply = IP(src=SERVER4, dst=OUT4) / ICMP(type=0, id=out[ICMP].id, seq=1)
        back = one(sent(r.process(outside(reply), U, 1.1), C))
        assert back[IP].dst == host and back[ICMP].id == 7 and checksums_ok(back[IP])


def test_icmpv6_echo_identifier_and_checksum() -> None:
    r = nat_router()
    out = one(
        sent(
            r.process(inside(IPv6(src=A6, dst=SERVER6) / ICMPv6EchoRequest(id=9, seq=2)), C, 1.0), U
        )
    )
    assert out[IPv6].src == OUT6 and checksums_ok(out[IPv6])
    reply = IPv6(src=SERVER6, dst=OUT6) / ICMPv6EchoReply(id=out[ICMPv6EchoRequest].id, seq=2)
    back = one(sent(r.process(outside(reply), U, 1.1), C))
    assert back[IPv6].dst == A6 and back[ICMPv6EchoReply].id == 9 and checksums_ok(back[IPv6])


def test_nat66_tcp() -> None:
    r = nat_router()
    out = one(
        sent(
            r.process(
                inside(IPv6(src=A6, dst=SERVER6) / TCP(sport=5555, dport=443, flags="S")), C, 1.0
            ),
            U,
        )
    )
    assert out[IPv6].src == OUT6 and out[TCP].sport == 5555 and checksums_ok(out[IPv6])


def test_tcp_states_and_their_timeouts() -> None:
    r = nat_router()
    nat = r.nat
    assert nat is not None

    def state() -> TcpState:
        return nat.connections()[0].state

    r.process(inside(IP(src=A4, dst=SERVER4) / TCP(sport=5000, dport=80, flags="S", seq=1)), C, 1.0)
    (conn,) = nat.connections()
    assert (state(), conn.expires) == (TcpState.SYN_SENT, 1.0 + 120)
    r.process(
        outside(IP(src=SERVER4, dst=OUT4) / TCP(sport=80, dport=5000, flags="SA", seq=9, ack=2)),
        U,
        1.1,
    )
    assert state() == TcpState.SYN_RECV
    r.process(
        inside(IP(src=A4, dst=SERVER4) / TCP(sport=5000, dport=80, flags="A", seq=2, ack=10)),
        C,
        1.2,
    )
    assert state() == TcpState.ESTABLISHED and conn.assured and conn.expires == 1.2 + 432000
    r.process(inside(IP(src=A4, dst=SERVER4) / TCP(sport=5000, dport=80, flags="FA")), C, 2.0)
    assert state() == TcpState.FIN_WAIT
    r.process(outside(IP(src=SERVER4, dst=OUT4) / TCP(sport=80, dport=5000, flags="FA")), U, 2.1)
    assert state() == TcpState.LAST_ACK
    r.process(inside(IP(src=A4, dst=SERVER4) / TCP(sport=5000, dport=80, flags="A")), C, 2.2)
    assert state() == TcpState.TIME_WAIT and conn.expires == 2.2 + 120
    r.poll(2.2 + 121)
    assert len(nat.table) == 0 and nat.state().mappings == 0


def test_a_lone_rst_from_inside_is_not_leaked() -> None:
    r = nat_router()
    out = r.process(inside(IP(src=A4, dst=SERVER4) / TCP(sport=5000, dport=80, flags="R")), C, 1.0)
    assert drops(out) == [DropReason.NAT_INVALID] and sent(out, U) == []


def test_unsolicited_inbound_is_not_translated() -> None:
    r = nat_router()
    # to the outside address, no connection: hopgate itself answers (port unreachable)
    out = r.process(outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=40000)), U, 1.0)
    assert sent(out, C) == [] and drops(out) == [DropReason.LOCAL_UDP_PORT_CLOSED]


def test_idle_udp_mapping_expires_after_its_timeout() -> None:
    r = nat_router(timeouts=Timeouts(udp=5))
    nat = r.nat
    assert nat is not None
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)
    r.poll(5.9)
    assert len(nat.table) == 1
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 4.0)  # refreshes
    r.poll(8.9)
    assert len(nat.table) == 1
    r.poll(9.1)
    assert len(nat.table) == 0 and nat.state().mappings == 0
    out = r.process(outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=40000)), U, 9.2)
    assert sent(out, C) == []


def test_replied_udp_lives_longer() -> None:
    r = nat_router()
    nat = r.nat
    assert nat is not None
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)
    r.process(outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=40000)), U, 1.5)
    (conn,) = nat.connections()
    # a query and its answer: not yet a stream (Linux waits 2 s), still evictable
    assert not conn.assured and conn.expires == 1.5 + 30
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 3.5)
    assert conn.assured and conn.expires == 3.5 + 120


def _assured_udp(r: Router, sport: int) -> None:
    """A UDP flow answered and still talking after 2 s: assured, as Linux."""
    assert sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=sport, dport=53)), C, 1.0), U)
    back = r.process(outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=sport)), U, 1.1)
    assert sent(back, C)
    assert sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=sport, dport=53)), C, 3.5), U)


def test_a_table_full_of_assured_flows_refuses_new_ones_and_keeps_the_old() -> None:
    r = nat_router(max_connections=2)
    for sport in (1001, 1002):
        _assured_udp(r, sport)
    out = r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1003, dport=53)), C, 4.0)
    assert drops(out) == [DropReason.CONNTRACK_FULL] and sent(out, U) == []
    assert sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1001, dport=53)), C, 4.1), U)
    back = r.process(outside(IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=1002)), U, 4.2)
    assert one(sent(back, C))[IP].dst == A4
    assert r.nat is not None and r.nat.counters["connections-refused-full"] == 1


def test_a_full_table_evicts_its_oldest_unassured_flow_first() -> None:
    r = nat_router(max_connections=3)
    nat = r.nat
    assert nat is not None
    _assured_udp(r, 1001)
    for sport, t in ((1002, 5.0), (1003, 6.0)):  # unanswered: unassured
        assert sent(
            r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=sport, dport=53)), C, t), U
        )
    out = r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1004, dport=53)), C, 7.0)
    assert sent(out, U) and drops(out) == []
    ports = sorted(c.key_orig[3] for c in nat.connections())
    assert ports == [1001, 1003, 1004]  # 1002, the oldest unassured, made room
    assert nat.counters["connections-early-dropped"] == 1


def test_per_source_limit() -> None:
    r = nat_router(max_connections_per_source=2)
    for sport in (1001, 1002):
        assert sent(
            r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=sport, dport=53)), C, 1.0), U
        )
    out = r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1003, dport=53)), C, 1.0)
    assert drops(out) == [DropReason.CONNTRACK_SOURCE_LIMIT]
    # another inside host is not affected
    other = IP(src=B4, dst=SERVER4) / UDP(sport=1003, dport=53)
    assert sent(r.process(inside(other, B_MAC), C, 1.0), U)


def test_dnat_publishes_an_inside_server() -> None:
    r = nat_router()
    syn = IP(src=SERVER4, dst=OUT4) / TCP(sport=33000, dport=8080, flags="S")
    fwd = one(sent(r.process(outside(syn), U, 1.0), C))
    assert fwd[IP].dst == A4 and fwd[TCP].dport == 80 and fwd[IP].src == SERVER4
    assert checksums_ok(fwd[IP])
    synack = IP(src=A4, dst=SERVER4) / TCP(sport=80, dport=33000, flags="SA")
    back = one(sent(r.process(inside(synack), C, 1.1), U))
    assert back[IP].src == OUT4 and back[TCP].sport == 8080 and checksums_ok(back[IP])


def test_dnat_v6() -> None:
    r = nat_router()
    syn = IPv6(src=SERVER6, dst=OUT6) / TCP(sport=33000, dport=8080, flags="S")
    fwd = one(sent(r.process(outside(syn), U, 1.0), C))
    assert fwd[IPv6].dst == A6 and fwd[TCP].dport == 80 and checksums_ok(fwd[IPv6])


def test_hairpin_to_a_published_port() -> None:
    r = nat_router()
    syn = IP(src=B4, dst=OUT4) / TCP(sport=44000, dport=8080, flags="S")
    fwd = one(sent(r.process(inside(syn, B_MAC), C, 1.0), C))
    # to A's port 80, seeming to come from the NAT's outside address
    assert fwd[IP].dst == A4 and fwd[TCP].dport == 80 and fwd[IP].src == OUT4
    assert checksums_ok(fwd[IP])
    reply = IP(src=A4, dst=OUT4) / TCP(sport=80, dport=fwd[TCP].sport, flags="SA")
    back = one(sent(r.process(inside(reply), C, 1.1), C))
    assert back[IP].dst == B4 and back[IP].src == OUT4 and back[TCP].sport == 8080
    assert back[TCP].dport == 44000 and back.dst == B_MAC


def test_hairpin_to_another_hosts_mapping() -> None:
    r = nat_router()
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)  # A: OUT4:40000
    fwd = one(
        sent(
            r.process(inside(IP(src=B4, dst=OUT4) / UDP(sport=41000, dport=40000), B_MAC), C, 1.1),
            C,
        )
    )
    assert fwd[IP].dst == A4 and fwd[UDP].dport == 40000 and fwd[IP].src == OUT4


def test_ttl_exceeded_for_a_translated_flow_quotes_what_was_sent() -> None:
    r = nat_router()
    out = r.process(inside(IP(src=A4, dst=SERVER4, ttl=1) / UDP(sport=40000, dport=33434)), C, 1.0)
    err = one(sent(out, C))
    assert err[IP].src == GW_C4 and err[IPerror].src == A4 and err[UDPerror].sport == 40000
    assert len(r.nat.table) == 0  # type: ignore[union-attr]  # a dropped probe leaves no state


def test_host_unreachable_for_a_translated_packet_quotes_it_untranslated() -> None:
    r = nat_router()
    r.arp.table._entries.clear()  # the upstream router no longer answers
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53) / b"x"), C, 1.0)
    out = r.poll(2.0) + r.poll(3.0) + r.poll(4.0)
    err = one(sent(out, C))
    assert (err[ICMP].type, err[ICMP].code) == (3, 1) and err.dst == CLIENT_MAC
    assert err[IPerror].src == A4 and err[UDPerror].sport == 40000


def test_first_and_later_fragments_are_translated_alike() -> None:
    r = nat_router()
    big = IP(src=A4, dst=SERVER4, id=321) / UDP(sport=40000, dport=9) / (b"F" * 1300)
    pieces = fragment(big, fragsize=600)  # type: ignore[no-untyped-call]
    outs = [one(sent(r.process(inside(p), C, 1.0), U)) for p in pieces]
    assert all(o[IP].src == OUT4 and o[IP].id == 321 for o in outs)
    assert outs[0][UDP].sport == 40000
    assert all(checksums_ok(IP(bytes(o[IP])[: o[IP].ihl * 4])) for o in outs)


def test_later_fragment_without_its_first_is_not_leaked() -> None:
    r = nat_router()
    later = IP(src=A4, dst=SERVER4, id=5, frag=100) / (b"x" * 64)
    out = r.process(inside(later), C, 1.0)
    assert drops(out) == [DropReason.NAT_FRAGMENT_UNMATCHED] and sent(out, U) == []


def test_other_protocols_are_translated_by_address() -> None:
    r = nat_router()
    gre = IP(src=A4, dst=SERVER4, proto=47) / (b"\x00" * 24)
    out = one(sent(r.process(inside(gre), C, 1.0), U))
    assert out[IP].src == OUT4 and checksums_ok(out[IP])
    back = one(
        sent(r.process(outside(IP(src=SERVER4, dst=OUT4, proto=47) / (b"\x00" * 24)), U, 1.1), C)
    )
    assert back[IP].dst == A4


def test_not_translated_when_leaving_by_another_interface() -> None:
    r = nat_router()
    out = one(
        sent(r.process(inside(IP(src=A4, dst="198.18.1.11") / UDP(sport=1, dport=2)), C, 1.0), C)
    )
    assert out[IP].src == A4 and len(r.nat.table) == 0  # type: ignore[union-attr]


def test_status_shows_the_table() -> None:
    r = nat_router()
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)
    state = views.router(r.state())["nat"]
    assert state["connections"] == 1 and state["mappings"] == 1
    assert state["counters"]["connections-created"] == 1


def test_arp_is_answered_for_a_pool_address_on_the_subnet() -> None:
    from scapy.layers.l2 import ARP

    from hopgate.pipeline.model import SnatSpec

    pool = (ipaddress.ip_address("198.18.2.50"),)
    snat = (SnatSpec((ipaddress.ip_network("198.18.1.0/24"),), "gw-u", pool),)
    r = nat_router(snat=snat, dnat=())
    out = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1, dport=2)), C, 1.0), U))
    assert out[IP].src == "198.18.2.50"
    req = Ether(src=UPSTREAM_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=UPSTREAM_MAC, psrc="198.18.2.2", pdst="198.18.2.50"
    )
    rep = one(sent(r.process(bytearray(bytes(req)), U, 1.0)))
    assert rep[ARP].op == 2 and rep[ARP].hwsrc == GW_U_MAC


def test_every_protocol_of_an_inside_host_takes_the_same_pool_address() -> None:
    # "Paired" pooling (RFC 4787 REQ-2), with a pool size where a choice by
    # address modulo the size and one by hash disagree.
    from hopgate.pipeline.model import SnatSpec

    pool = tuple(ipaddress.ip_address(f"198.18.2.{50 + i}") for i in range(7))
    snat = (SnatSpec((ipaddress.ip_network("198.18.1.0/24"),), "gw-u", pool),)
    r = nat_router(snat=snat, dnat=())
    udp = inside(IP(src=A4, dst=SERVER4) / UDP(sport=1, dport=2))
    gre = inside(IP(src=A4, dst=SERVER4, proto=47) / (b"\x00" * 24))
    by_udp = one(sent(r.process(udp, C, 1.0), U))[IP].src
    by_gre = one(sent(r.process(gre, C, 1.0), U))[IP].src
    assert by_gre == by_udp


def test_icmpv6_echo_with_identifier_zero_keeps_a_valid_checksum() -> None:
    # found by test_nat_properties: an identifier of 0 was taken for "no identifier"
    r = nat_router()
    out = one(
        sent(r.process(inside(IPv6(src=A6, dst=SERVER6) / ICMPv6EchoRequest(id=0)), C, 1.0), U)
    )
    assert out[IPv6].src == OUT6 and checksums_ok(out[IPv6])


def test_other_icmpv6_messages_are_translated_with_their_pseudo_header() -> None:
    from scapy.layers.inet6 import ICMPv6Unknown, in6_chksum

    r = nat_router()
    msg = IPv6(src=A6, dst=SERVER6) / ICMPv6Unknown(type=200, msgbody=b"x" * 8)
    out = one(sent(r.process(inside(msg), C, 1.0), U))
    assert out[IPv6].src == OUT6
    body = bytes(out[IPv6].payload)  # scapy reads an unknown type as raw bytes
    zeroed = body[:2] + b"\x00\x00" + body[4:]
    expected = in6_chksum(58, out[IPv6], zeroed)  # type: ignore[no-untyped-call]
    assert expected == int.from_bytes(body[2:4], "big")


def test_echo_reply_whose_words_become_all_zero_gets_0xffff() -> None:
    # found by test_nat_properties: RFC 1624 eqn. 3 yields 0x0000 there
    r = nat_router()
    r.process(inside(IP(src=B4, dst=SERVER4) / ICMP(id=0, seq=0), B_MAC), C, 1.0)  # B: id 0
    req = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / ICMP(id=0, seq=0)), C, 1.0), U))
    assert req[ICMP].id != 0  # A's identifier 0 is moved...
    reply = IP(src=SERVER4, dst=OUT4) / ICMP(type=0, id=req[ICMP].id, seq=0)
    back = one(sent(r.process(outside(reply), U, 1.1), C))
    assert back[ICMP].id == 0 and back[ICMP].chksum == 0xFFFF  # ...and back to all zeros
    assert checksums_ok(back[IP])
