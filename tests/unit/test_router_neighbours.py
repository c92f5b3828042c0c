"""ARP and Neighbor Discovery resolution, retries and failure, with a fake clock."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.neighbours import State
from tests.unit.frames import (
    ANSWER,
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    GW_C4,
    GW_C6,
    GW_U4,
    GW_U6,
    GW_U_MAC,
    SERVER4,
    SERVER6,
    UPSTREAM4,
    UPSTREAM6,
    UPSTREAM_MAC,
    C,
    U,
    drops,
    from_client,
    from_upstream,
    router,
    sent,
)


def _ip(text: str) -> int:
    import ipaddress

    return int(ipaddress.ip_address(text))


def test_unresolved_next_hop_is_arped_and_the_packet_waits() -> None:
    r = router()
    out = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=8)), C, 0.0)
    (req,) = sent(out, U)
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req.src == GW_U_MAC
    assert req[ARP].op == 1 and req[ARP].pdst == UPSTREAM4 and req[ARP].psrc == GW_U4
    assert drops(out) == []
    reply = Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / ARP(
        op=2, hwsrc=UPSTREAM_MAC, psrc=UPSTREAM4, hwdst=GW_U_MAC, pdst=GW_U4
    )
    out = r.process(bytearray(bytes(reply)), U, 0.2)
    (fwd,) = sent(out, U)
    assert fwd.dst == UPSTREAM_MAC and fwd[IP].dst == SERVER4 and fwd[IP].ttl == 63
    entry = r.arp.table.get(U, _ip(UPSTREAM4))
    assert entry is not None and entry.state == State.REACHABLE


def test_next_hop_that_never_answers_gives_host_unreachable_after_3_tries() -> None:
    r = router()
    first = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=8)), C, 0.0)
    second = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=9)), C, 0.5)
    assert len(sent(first, U)) == 1 and sent(second, U) == []  # one resolution at a time
    retries = r.poll(1.0) + r.poll(2.0)
    assert [f[ARP].pdst for f in sent(retries, U)] == [UPSTREAM4, UPSTREAM4]
    assert r.poll(2.9) == []
    out = r.poll(3.0)
    assert drops(out) == [DropReason.NEIGHBOUR_UNREACHABLE] * 2
    errs = sent(out, C)
    assert len(errs) == 2
    for e in errs:
        assert (e[ICMP].type, e[ICMP].code) == (3, 1)
        assert e[IP].src == GW_C4 and e.dst == CLIENT_MAC  # back the way the packets came
        assert e[IPerror].dst == SERVER4
    assert r.arp.table.get(U, _ip(UPSTREAM4)) is None


def test_absent_host_on_connected_subnet_v6_gives_address_unreachable() -> None:
    r = router()
    out = r.process(from_client(IPv6(src=CLIENT6, dst="2001:2:0:2::99") / UDP()), C, 0.0)
    (ns,) = sent(out, U)
    assert ns[IPv6].dst == "ff02::1:ff00:99" and ns.dst == "33:33:ff:00:00:99"
    assert ns[IPv6].hlim == 255 and ns[IPv6].src == GW_U6
    assert ns[ICMPv6ND_NS].tgt == "2001:2:0:2::99"
    assert ns[ICMPv6NDOptSrcLLAddr].lladdr == GW_U_MAC
    out = r.poll(1.0) + r.poll(2.0) + r.poll(3.0)
    (err,) = sent(out, C)
    assert err[ICMPv6DestUnreach].code == 3 and err[IPv6].src == GW_C6


def test_neighbor_advertisement_resolves_and_flushes() -> None:
    r = router()
    r.process(from_client(IPv6(src=CLIENT6, dst=SERVER6) / UDP()), C, 0.0)
    na = (
        IPv6(src=UPSTREAM6, dst=GW_U6, hlim=255)
        / ICMPv6ND_NA(tgt=UPSTREAM6, S=1, O=1, R=1)
        / ICMPv6NDOptDstLLAddr(lladdr=UPSTREAM_MAC)
    )
    (fwd,) = sent(r.process(from_upstream(na), U, 0.1), U)
    assert fwd[IPv6].dst == SERVER6 and fwd.dst == UPSTREAM_MAC


def test_queue_is_bounded_and_drops_the_oldest() -> None:
    r = router()
    limit = r.spec.neighbour.queue_len
    reasons = []
    for i in range(limit + 5):
        reasons += drops(
            r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=i)), C, 0.0)
        )
    assert reasons == [DropReason.NEIGHBOUR_QUEUE_FULL] * 5
    entry = r.arp.table.get(U, _ip(UPSTREAM4))
    assert entry is not None and len(entry.queue) == limit


def test_stale_entry_is_reprobed_by_unicast_and_removed_if_silent() -> None:
    r = router()
    out: list[Action] = []
    r.arp.table.learn(U, _ip(UPSTREAM4), bytes.fromhex("020000000202"), ANSWER, 0.0, out)
    # still REACHABLE: no ARP
    assert sent(r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, 10.0), U)[
        0
    ].haslayer(IP)
    # after reachable_time (30 s) it is STALE: used, and probed after delay_first_probe (5 s)
    fwd = sent(r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, 31.0), U)
    assert len(fwd) == 1 and fwd[0].haslayer(IP)
    probe = sent(r.poll(36.0), U)
    assert probe[0][ARP].op == 1 and probe[0].dst == UPSTREAM_MAC  # unicast probe
    r.poll(37.0)
    r.poll(38.0)
    r.poll(39.0)
    assert r.arp.table.get(U, _ip(UPSTREAM4)) is None


def test_probe_answered_keeps_entry() -> None:
    r = router()
    out: list[Action] = []
    r.arp.table.learn(U, _ip(UPSTREAM4), bytes.fromhex("020000000202"), ANSWER, 0.0, out)
    r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, 31.0)
    r.poll(36.0)
    reply = Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / ARP(
        op=2, hwsrc=UPSTREAM_MAC, psrc=UPSTREAM4, pdst=GW_U4
    )
    r.process(bytearray(bytes(reply)), U, 36.5)
    r.poll(40.0)
    entry = r.arp.table.get(U, _ip(UPSTREAM4))
    assert entry is not None and entry.state == State.REACHABLE


def test_unused_entries_are_garbage_collected() -> None:
    r = router()
    out: list[Action] = []
    r.arp.table.learn(C, _ip(CLIENT4), bytes.fromhex("02000000010a"), ANSWER, 0.0, out)
    r.poll(200.0)
    r.poll(400.0)
    assert len(r.arp.table) == 0


def test_unsolicited_reply_does_not_create_an_entry() -> None:
    r = router()
    reply = Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / ARP(
        op=2, hwsrc=UPSTREAM_MAC, psrc=UPSTREAM4, pdst=GW_U4
    )
    r.process(bytearray(bytes(reply)), U, 0.0)
    assert len(r.arp.table) == 0


def test_arp_from_off_subnet_sender_is_not_learnt() -> None:
    r = router()
    req = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=CLIENT_MAC, psrc="198.18.77.1", pdst=GW_C4
    )
    out = r.process(bytearray(bytes(req)), C, 0.0)
    assert len(sent(out)) == 1 and len(r.arp.table) == 0
