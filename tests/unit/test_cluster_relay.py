"""A load balancer node of a cluster (``[relay]``): PMTU errors about flows it does
not hold go to its peers, marked; the copies come back to the node that holds
the flow and are delivered; nothing is relayed twice."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hopgate.control import views
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.model import RelaySpec
from hopgate.pipeline.relay import RelaySettings
from hopgate.pipeline.router import Router
from tests.unit.frames import ANSWER, drops
from tests.unit.lb_frames import (
    BE1,
    BE2_MAC,
    CLIENT4,
    CLIENT6,
    GW_B_MAC,
    RB4,
    RB6,
    RB_MAC,
    VIP4,
    VIP6,
    A,
    B,
    S,
    lb_router,
    service,
    service6,
    via_b,
)
from tests.unit.nat_frames import checksums_ok
from tests.unit.test_lb import only, out_on, syn

PEERS = ("198.18.12.7", "198.18.12.8")
PEER_MACS = ("02:00:00:00:0b:07", "02:00:00:00:0b:08")


def node(peers: tuple[str, ...] = (), **settings: object) -> Router:
    spec = RelaySpec(
        ("gw-b",),
        tuple(ipaddress.ip_address(p) for p in peers),
        RelaySettings(**settings),  # type: ignore[arg-type]
    )
    return lb_router(service(), service6(), relay=spec)


def frag_needed_about(client_port: int, *, src: str = RB4) -> Packet:
    """Router B's error about a reply from the VIP to the client's ``client_port``."""
    big = (
        IP(src=VIP4, dst=CLIENT4, flags="DF")
        / TCP(sport=80, dport=client_port, flags="A")
        / (b"d" * 1400)
    )
    return IP(src=src, dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(big)[:28])


def marked_broadcast(pkt: Packet) -> bytearray:
    pkt = pkt.copy()
    pkt.tos = 63 << 2
    return bytearray(bytes(Ether(src="02:00:00:00:0b:09", dst="ff:ff:ff:ff:ff:ff") / pkt))


def test_an_error_about_a_flow_held_elsewhere_is_broadcast_marked() -> None:
    r = node()
    out = r.process(via_b(frag_needed_about(45000)), B, 1.0)
    port, copy = only(out)
    assert port == B and copy.dst == "ff:ff:ff:ff:ff:ff" and copy.src == GW_B_MAC
    assert copy[IP].tos == 63 << 2 and checksums_ok(copy[IP]) and drops(out) == []
    assert bytes(copy[IP].payload) == bytes(frag_needed_about(45000).payload)
    assert r.cluster is not None
    assert views.relay(r.cluster.state())["interfaces"][0] == {
        "interface": "gw-b", "seen": 1, "relayed": 1, "dropped": {},
    }  # fmt: skip


def test_only_on_the_relays_interfaces() -> None:
    r = node()
    frame = bytearray(
        bytes(Ether(src="02:00:00:00:0a:02", dst="02:00:00:00:0a:01") / frag_needed_about(45000))
    )
    out = r.process(frame, A, 1.0)
    assert out_on(out) == [] and drops(out) == [DropReason.NAT_ICMP_UNMATCHED]


def test_other_unmatched_errors_are_not_relayed() -> None:
    r = node()
    err = frag_needed_about(45000)
    err[ICMP].code = 3
    out = r.process(via_b(err), B, 1.0)
    assert out_on(out) == [] and drops(out) == [DropReason.NAT_ICMP_UNMATCHED]
    assert r.cluster is not None and views.relay(r.cluster.state())["interfaces"][0]["seen"] == 0


def test_a_copy_for_a_flow_held_here_is_delivered_to_its_backend() -> None:
    r = node()
    _, fwd = only(r.process(via_b(syn(46000)), B, 1.0))  # the flow is here
    be, lip, lport = fwd[IP].dst, fwd[IP].src, fwd[TCP].sport
    mac = BE2_MAC if be != BE1 else "02:00:00:00:05:0b"
    data = IP(src=be, dst=lip) / TCP(sport=80, dport=lport, flags="A")
    r.process(bytearray(bytes(Ether(src=mac, dst="02:00:00:00:05:01") / data)), S, 1.1)
    out = r.process(marked_broadcast(frag_needed_about(46000)), B, 1.2)
    port, err = only(out)
    assert port == S and err.dst == mac and err[IP].dst == be and err[ICMP].nexthopmtu == 1400
    assert err[IPerror].src == be and err[IPerror].dst == lip and checksums_ok(err[IP])


def test_a_copy_for_a_flow_held_nowhere_here_is_counted_and_dropped_never_relayed() -> None:
    r = node()
    out = r.process(marked_broadcast(frag_needed_about(47000)), B, 1.0)
    assert out_on(out) == [] and drops(out) == [DropReason.NAT_ICMP_UNMATCHED]
    assert r.cluster is not None
    assert views.relay(r.cluster.state())["interfaces"][0]["dropped"] == {"relayed-copy": 1}


def test_an_unmarked_broadcast_is_not_taken_for_a_copy() -> None:
    r = node()
    only(r.process(via_b(syn(46001)), B, 1.0))
    pkt = frag_needed_about(46001)
    frame = bytearray(bytes(Ether(src="02:00:00:00:0b:09", dst="ff:ff:ff:ff:ff:ff") / pkt))
    out = r.process(frame, B, 1.1)
    assert out_on(out) == [] and drops(out) == [DropReason.L2_BROADCAST_NOT_FORWARDED]


def test_rate_limited_like_the_standalone_relay() -> None:
    r = node(src_rate=1.0, src_burst=2.0)
    outs = [r.process(via_b(frag_needed_about(48000 + i)), B, 1.0) for i in range(5)]
    assert [len(out_on(o)) for o in outs] == [1, 1, 0, 0, 0]
    assert drops(outs[4]) == [DropReason.NAT_ICMP_UNMATCHED]
    assert r.cluster is not None
    assert views.relay(r.cluster.state())["interfaces"][0]["dropped"] == {"rate-limited-source": 3}


def test_unicast_to_each_peer_once_resolved() -> None:
    r = node(PEERS)
    out: list[Action] = []
    for addr, hw in zip(PEERS, PEER_MACS, strict=True):
        mac = bytes.fromhex(hw.replace(":", ""))
        r.arp.table.learn(B, int(ipaddress.ip_address(addr)), mac, ANSWER, 0.0, out)
    sent = out_on(r.process(via_b(frag_needed_about(49000)), B, 1.0))
    assert sorted((p, f.dst) for p, f in sent) == [(B, PEER_MACS[0]), (B, PEER_MACS[1])]
    assert all(f[IP].tos == 63 << 2 and f[IP].dst == VIP4 and checksums_ok(f[IP]) for _, f in sent)
    assert r.cluster is not None and views.relay(r.cluster.state())["sent_to_peers"] == 2


def test_unicast_peers_are_resolved_first() -> None:
    r = node(PEERS)
    sent = out_on(r.process(via_b(frag_needed_about(49001)), B, 1.0))
    # ARP requests for both peers; the copies wait for the answers
    assert len(sent) == 2 and all(
        f.dst == "ff:ff:ff:ff:ff:ff" and f.type == 0x0806 for _, f in sent
    )


def test_ipv6_packet_too_big_both_ways() -> None:
    r = node()
    big = IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=45000, flags="A")
    ptb = IPv6(src=RB6, dst=VIP6) / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(big)[:48])
    frame = bytearray(bytes(Ether(src=RB_MAC, dst=GW_B_MAC) / ptb))
    port, copy = only(r.process(frame, B, 1.0))
    assert port == B and copy.dst == "ff:ff:ff:ff:ff:ff" and copy[IPv6].tc == 63 << 2
    # the copy itself, back at this node (as at a peer): not relayed again
    out = r.process(bytearray(bytes(copy)), B, 1.1)
    assert out_on(out) == [] and drops(out) == [DropReason.NAT_ICMP_UNMATCHED]
