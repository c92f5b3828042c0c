"""The full-NAT load balancer on exact bytes: translation, source in source out for
every protocol, the VIP as a host, ICMP errors both ways (docs/behaviour.md, "Load
balancer")."""

from __future__ import annotations

import random
from collections import Counter
from ipaddress import ip_address

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hopgate.control import views
from hopgate.packet.proto import PROTO_UDP
from hopgate.pipeline.actions import Action, DropReason, Transmit
from hopgate.pipeline.router import Router
from tests.unit.frames import drops
from tests.unit.lb_frames import (
    BE1,
    BE1_6,
    BE1_MAC,
    BE2,
    BE2_6,
    BE2_MAC,
    CLIENT4,
    CLIENT6,
    GW_B_MAC,
    GW_S_MAC,
    LIPS4,
    RB4,
    RB_MAC,
    VIP4,
    VIP6,
    B,
    S,
    from_backend,
    lb_router,
    service,
    service6,
    via_b,
)
from tests.unit.nat_frames import checksums_ok


def out_on(actions: list[Action]) -> list[tuple[int, Ether]]:
    return [(a.port, Ether(bytes(a.frame))) for a in actions if isinstance(a, Transmit)]


def only(actions: list[Action]) -> tuple[int, Ether]:
    sent = out_on(actions)
    assert len(sent) == 1, sent
    return sent[0]


def syn(sport: int = 40000, ttl: int = 64) -> IP:
    return IP(src=CLIENT4, dst=VIP4, ttl=ttl) / TCP(sport=sport, dport=80, flags="S", seq=100)


def test_a_connection_to_the_vip_goes_to_a_backend_from_a_local_address() -> None:
    r = lb_router()
    port, f = only(r.process(via_b(syn()), B, 1.0))
    assert port == S and f.src == GW_S_MAC and f.dst in ("02:00:00:00:05:0b", BE2_MAC)
    assert f[IP].src in LIPS4 and f[IP].dst in (BE1, BE2) and f[TCP].dport == 80
    assert f[TCP].sport >= 1024 and checksums_ok(f[IP])


def test_replies_go_back_the_way_the_client_came_not_by_the_default_route() -> None:
    r = lb_router()
    _, fwd = only(r.process(via_b(syn()), B, 1.0))
    reply = IP(src=fwd[IP].dst, dst=fwd[IP].src) / TCP(
        sport=80, dport=fwd[TCP].sport, flags="SA", ack=101
    )
    mac = BE2_MAC if fwd[IP].dst == BE2 else "02:00:00:00:05:0b"
    port, back = only(r.process(from_backend(reply, mac), S, 1.1))
    # the default route says A; the client came through B: B it is, to B's MAC
    assert port == B and back.dst == RB_MAC and back.src == GW_B_MAC
    assert back[IP].src == VIP4 and back[IP].dst == CLIENT4 and back[TCP].sport == 80
    assert back[TCP].dport == 40000 and checksums_ok(back[IP])


def test_a_ping_to_the_vip_is_answered_by_the_vip_back_through_b() -> None:
    r = lb_router()
    port, rep = only(r.process(via_b(IP(src=CLIENT4, dst=VIP4) / ICMP(id=5, seq=1)), B, 1.0))
    assert port == B and rep.dst == RB_MAC and rep[IP].src == VIP4 and rep[ICMP].type == 0


def test_udp_to_a_vip_port_without_service_gets_port_unreachable_from_the_vip() -> None:
    r = lb_router()
    out = r.process(via_b(IP(src=CLIENT4, dst=VIP4) / UDP(sport=5000, dport=33434)), B, 1.0)
    port, err = only(out)
    assert port == B and err.dst == RB_MAC
    assert err[IP].src == VIP4 and (err[ICMP].type, err[ICMP].code) == (3, 3)


def test_tcp_to_a_vip_port_without_service_is_reset_by_the_vip() -> None:
    r = lb_router()
    port, rst = only(
        r.process(via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=5000, dport=22, flags="S")), B, 1.0)
    )
    assert port == B and rst[IP].src == VIP4 and rst[TCP].flags == "RA"


def test_the_vip_is_the_destination_even_at_ttl_1() -> None:
    r = lb_router()
    port, f = only(r.process(via_b(syn(ttl=1)), B, 1.0))
    assert port == S and f[IP].ttl == 1  # no Time Exceeded: the VIP is where it was going


def test_packet_too_big_from_the_clients_path_reaches_the_backend() -> None:
    r = lb_router()
    _, fwd = only(r.process(via_b(syn()), B, 1.0))
    be, lip, lport = fwd[IP].dst, fwd[IP].src, fwd[TCP].sport
    mac = BE2_MAC if be == BE2 else "02:00:00:00:05:0b"
    data = IP(src=be, dst=lip, flags="DF") / TCP(sport=80, dport=lport, flags="A") / (b"d" * 1400)
    _, big = only(r.process(from_backend(data, mac), S, 1.1))
    # router B cannot pass it on: it says so to the VIP, about the packet as B saw it
    frag_needed = (
        IP(src=RB4, dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(big[IP])[:28])
    )
    port, err = only(r.process(via_b(frag_needed), B, 1.2))
    assert port == S and err.dst == mac  # to the backend that sent the big segments
    assert err[IP].dst == be and err[ICMP].nexthopmtu == 1400 and checksums_ok(err[IP])
    assert err[IPerror].src == be and err[IPerror].dst == lip
    assert err[TCPerror].sport == 80 and err[TCPerror].dport == lport


def test_an_error_from_the_servers_side_reaches_the_client_through_b() -> None:
    r = lb_router()
    _, fwd = only(r.process(via_b(syn()), B, 1.0))
    # something on the server LAN says the backend is unreachable, about our SYN
    err = IP(src="198.18.20.254", dst=fwd[IP].src) / ICMP(type=3, code=1) / Raw(bytes(fwd[IP])[:28])
    port, back = only(r.process(from_backend(err, "02:00:00:00:05:fe"), S, 1.1))
    assert port == B and back.dst == RB_MAC and back[IP].dst == CLIENT4
    assert back[IPerror].src == CLIENT4 and back[IPerror].dst == VIP4 and back[TCPerror].dport == 80


def test_weights_1_and_3_split_new_connections_1_to_3() -> None:
    r = lb_router()
    got: Counter[str] = Counter()
    for sport in range(1024, 1424):
        _, f = only(r.process(via_b(syn(sport)), B, 1.0))
        got[f[IP].dst] += 1
    assert got == {BE1: 100, BE2: 300}


def test_round_robin_and_least_connections() -> None:
    r = lb_router(service(scheduler="rr"))
    seen = [only(r.process(via_b(syn(s)), B, 1.0))[1][IP].dst for s in range(2000, 2006)]
    assert seen[0::2] == [seen[0]] * 3 and seen[1::2] == [seen[1]] * 3 and seen[0] != seen[1]
    r = lb_router(service(scheduler="lc"))
    first = only(r.process(via_b(syn(3000)), B, 1.0))[1][IP].dst  # BE2: (0+1)/3 < (0+1)/1
    assert first == BE2
    loads = Counter(only(r.process(via_b(syn(s)), B, 1.0))[1][IP].dst for s in range(3001, 3008))
    assert loads == {BE1: 2, BE2: 5}  # 2 and 6 connections: 3:1 loads... as weighted


def test_maglev_picks_the_same_backend_on_two_nodes() -> None:
    one, two = lb_router(service(scheduler="maglev")), lb_router(service(scheduler="maglev"))
    for sport in range(5000, 5100):
        a = only(one.process(via_b(syn(sport)), B, 1.0))[1][IP].dst
        b = only(two.process(via_b(syn(sport)), B, 1.0))[1][IP].dst
        assert a == b


def test_no_backend_up_drops_and_counts() -> None:
    r = lb_router()
    for b in r.nat.services.all[0].backends:  # type: ignore[union-attr]
        b.up = False
    out = r.process(via_b(syn()), B, 1.0)
    assert drops(out) == [DropReason.LB_NO_BACKEND]
    # as IPVS, the client is told at once: port unreachable from the VIP, back via B
    port, err = only(out)
    assert port == B and err.dst == RB_MAC and err[IP].src == VIP4
    assert (err[ICMP].type, err[ICMP].code) == (3, 3) and err[TCPerror].dport == 80


def _close(r: Router, fwd: Ether, mac: str) -> None:
    """Finish the connection ``fwd`` opened: handshake, then FINs both ways."""
    be, lip, lport = fwd[IP].dst, fwd[IP].src, fwd[TCP].sport

    def from_be(flags: str) -> None:
        seg = IP(src=be, dst=lip) / TCP(sport=80, dport=lport, flags=flags, seq=500, ack=101)
        r.process(from_backend(seg, mac), S, 1.1)

    def from_client(flags: str) -> None:
        seg = IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=80, flags=flags, seq=101, ack=501)
        r.process(via_b(seg), B, 1.1)

    from_be("SA")
    from_client("A")
    from_client("FA")
    from_be("FA")
    from_client("A")


def test_a_syn_reusing_a_finished_connections_tuple_is_scheduled_afresh() -> None:
    r = lb_router(service(scheduler="rr"))
    _, first = only(r.process(via_b(syn()), B, 1.0))
    mac = BE2_MAC if first[IP].dst == BE2 else "02:00:00:00:05:0b"
    # a retransmitted SYN of an open connection stays with its backend
    _, again = only(r.process(via_b(syn()), B, 1.05))
    assert (again[IP].dst, again[TCP].sport) == (first[IP].dst, first[TCP].sport)
    _close(r, first, mac)
    # the client reuses its port at once (TIME_WAIT): round robin moves it on
    _, second = only(r.process(via_b(syn()), B, 1.2))
    assert second[IP].dst != first[IP].dst
    assert r.nat is not None and r.nat.counters["connections-rescheduled"] == 1


class _OfferFirst(random.Random):
    """NAT's random stream, but its first pick is ``port``."""

    def __init__(self, port: int) -> None:
        super().__init__(7)
        self.first = [port]

    def randint(self, a: int, b: int) -> int:
        return self.first.pop() if self.first else super().randint(a, b)


def test_a_rescheduled_connections_local_port_rests_until_its_deadline() -> None:
    """The backend may still hold the old connection's tuple in TIME_WAIT: no
    new connection leaves from that local address and port to it before the
    old one's deadline (it would meet PAWS: an ACK for its SYN); after it, the
    port is free again."""
    r = lb_router(service(scheduler="rr", local_addresses=(int(ip_address(LIPS4[0])),)))
    _, first = only(r.process(via_b(syn()), B, 1.0))
    mac = BE2_MAC if first[IP].dst == BE2 else BE1_MAC
    _close(r, first, mac)
    lport = first[TCP].sport
    # The client reuses its port at once: rescheduled (to the other backend),
    # the old connection forgotten.
    _, moved = only(r.process(via_b(syn()), B, 1.2))
    assert moved[IP].dst != first[IP].dst
    # The next connection goes to the first backend again (round robin), and
    # is offered the old local port first: it takes another.
    assert r.nat is not None
    r.nat.fnat._rng = _OfferFirst(lport)
    _, third = only(r.process(via_b(syn(sport=40001)), B, 1.3))
    assert third[IP].dst == first[IP].dst and third[TCP].sport != lport
    # Past the old connection's deadline (TIME_WAIT's two minutes) it may.
    only(r.process(via_b(syn(sport=40002)), B, 1.4))  # to the other backend
    r.nat.fnat._rng = _OfferFirst(lport)
    _, fourth = only(r.process(via_b(syn(sport=40003)), B, 200.0))
    assert fourth[IP].dst == first[IP].dst and fourth[TCP].sport == lport


def test_a_syn_on_the_tuple_of_a_failed_backend_goes_elsewhere() -> None:
    r = lb_router()
    _, first = only(r.process(via_b(syn()), B, 1.0))
    assert r.nat is not None
    (svc,) = r.nat.services.all
    gone = next(b for b in svc.backends if b.name.startswith(first[IP].dst))
    mac = BE2_MAC if first[IP].dst == BE2 else "02:00:00:00:05:0b"
    synack = IP(src=first[IP].dst, dst=first[IP].src) / TCP(
        sport=first[TCP].dport, dport=first[TCP].sport, flags="SA", seq=500, ack=101
    )
    only(r.process(from_backend(synack, mac), S, 1.05))
    gone.up = False
    # packets of the open connection still go to it (keep: existing ones are left alone)
    ack = IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=80, flags="A", seq=101, ack=501)
    _, kept = only(r.process(via_b(ack), B, 1.1))
    assert kept[IP].dst == first[IP].dst
    # but a new SYN on the same tuple is a new connection, to a live backend
    _, moved = only(r.process(via_b(syn()), B, 1.2))
    assert moved[IP].dst != first[IP].dst


def test_echo_forwarded_to_a_backend_when_so_configured() -> None:
    r = lb_router(service(echo="forward"))
    port, f = only(r.process(via_b(IP(src=CLIENT4, dst=VIP4) / ICMP(id=9, seq=1)), B, 1.0))
    assert port == S and f[IP].src in LIPS4 and f[IP].dst in (BE1, BE2) and checksums_ok(f[IP])
    reply = IP(src=f[IP].dst, dst=f[IP].src) / ICMP(type=0, id=f[ICMP].id, seq=1)
    mac = BE2_MAC if f[IP].dst == BE2 else "02:00:00:00:05:0b"
    port, back = only(r.process(from_backend(reply, mac), S, 1.1))
    assert port == B and back[IP].src == VIP4 and back[ICMP].id == 9


def test_udp_service() -> None:
    r = lb_router(service(protocol=PROTO_UDP, port=53))
    port, f = only(
        r.process(via_b(IP(src=CLIENT4, dst=VIP4) / UDP(sport=4000, dport=53) / b"q"), B, 1.0)
    )
    assert port == S and f[UDP].dport == 80 and checksums_ok(f[IP])


def test_ipv6_service_and_source_in_source_out() -> None:
    r = lb_router(service6())
    f6 = bytearray(
        bytes(
            Ether(src=RB_MAC, dst=GW_B_MAC)
            / IPv6(src=CLIENT6, dst=VIP6)
            / TCP(sport=7000, dport=80, flags="S")
        )
    )
    port, f = only(r.process(f6, B, 1.0))
    assert port == S and f[IPv6].dst in (BE1_6, BE2_6) and checksums_ok(f[IPv6])
    reply = IPv6(src=f[IPv6].dst, dst=f[IPv6].src) / TCP(sport=80, dport=f[TCP].sport, flags="SA")
    port, back = only(r.process(from_backend(reply), S, 1.1))
    assert port == B and back.dst == RB_MAC and back[IPv6].src == VIP6 and checksums_ok(back[IPv6])
    ping = bytearray(
        bytes(
            Ether(src=RB_MAC, dst=GW_B_MAC) / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=3)
        )
    )
    port, rep = only(r.process(ping, B, 1.2))
    assert port == B and rep[IPv6].src == VIP6 and rep.haslayer(ICMPv6EchoReply)


def test_status_lists_services_and_backends() -> None:
    r = lb_router()
    r.process(via_b(syn()), B, 1.0)
    (svc,) = views.router(r.state())["nat"]["services"]
    assert svc["vip"] == VIP4 and svc["scheduler"] == "wrr"
    assert sum(b["active"] for b in svc["backends"]) == 1
