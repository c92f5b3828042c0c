"""The NAT as the filter it promises, on exact bytes (issue 9): from a translating
interface only replies, related errors, DNAT'd flows and traffic to hopgate's
own addresses come in; redirects and PMTU errors with impossible MTUs are never
translated; fragments to the outside address are reassembled and answered."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_Redirect,
    ICMPv6PacketTooBig,
    ICMPv6Unknown,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Packet, Raw

from hopgate.control.config import ConfigError, parse
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.model import DnatSpec, NatSpec, SnatSpec
from hopgate.pipeline.router import Router
from tests.unit.frames import CLIENT_MAC, UPSTREAM4, UPSTREAM6, UPSTREAM_MAC, C, U, drops, one, sent
from tests.unit.lb_frames import RB_MAC, VIP4, lb_router, service, via_b
from tests.unit.nat_frames import (
    A4,
    A6,
    B4,
    OUT4,
    OUT6,
    SERVER4,
    SERVER6,
    checksums_ok,
    inside,
    nat_router,
    outside,
)

# -- unsolicited traffic from the translating interface ------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        IP(src=SERVER4, dst=A4) / UDP(sport=53, dport=40000) / b"in",
        IP(src=SERVER4, dst=A4) / TCP(sport=80, dport=22, flags="S"),
        IP(src=SERVER4, dst=A4) / ICMP(id=1),
        IP(src=SERVER4, dst=A4, proto=47) / (b"\x00" * 24),
        IP(src=SERVER4, dst=A4, id=9, frag=100) / (b"x" * 64),
        IP(src=UPSTREAM4, dst=A4) / ICMP(type=3, code=1) / Raw(bytes(IP(src=A4, dst=SERVER4))),
        IPv6(src=SERVER6, dst=A6) / UDP(sport=53, dport=40000) / b"in",
        IPv6(src=SERVER6, dst=A6) / ICMPv6EchoRequest(id=1),
    ],
    ids=["udp", "tcp-syn", "echo", "gre", "later-fragment", "error", "udp6", "echo6"],
)
def test_unsolicited_to_an_inside_address_is_dropped(packet: Packet) -> None:
    r = nat_router()
    out = r.process(outside(packet), U, 1.0)
    assert sent(out) == [] and drops(out) == [DropReason.NAT_UNSOLICITED]
    assert r.counters.drops[(U, DropReason.NAT_UNSOLICITED)] == 1


def test_forward_unsolicited_routes_it() -> None:
    r = nat_router(forward_unsolicited=True)
    for packet in (
        IP(src=SERVER4, dst=A4) / UDP(sport=53, dport=40000),
        IPv6(src=SERVER6, dst=A6) / UDP(sport=53, dport=40000),
    ):
        got = one(sent(r.process(outside(packet), U, 1.0), C))
        assert got.dst == CLIENT_MAC and got[UDP].dport == 40000


def test_replies_and_published_flows_still_come_in() -> None:
    r = nat_router()
    req = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)))
    reply = IP(src=SERVER4, dst=OUT4) / UDP(sport=53, dport=req[UDP].sport)
    assert one(sent(r.process(outside(reply), U, 1.1), C))[IP].dst == A4
    # the same ports straight to the inside address are no reply: dropped
    direct = IP(src=SERVER4, dst=A4) / UDP(sport=53, dport=40000)
    assert drops(r.process(outside(direct), U, 1.2)) == [DropReason.NAT_UNSOLICITED]
    # a published port (DNAT) and an error about the live flow come in
    syn = IP(src=SERVER4, dst=OUT4) / TCP(sport=5000, dport=8080, flags="S")
    assert one(sent(r.process(outside(syn), U, 1.3), C))[IP].dst == A4
    quote = bytes(IP(src=OUT4, dst=SERVER4, ttl=63) / UDP(sport=req[UDP].sport, dport=53))
    err = IP(src=UPSTREAM4, dst=OUT4) / ICMP(type=3, code=1) / Raw(quote)
    assert one(sent(r.process(outside(err), U, 1.4), C))[IP].dst == A4


def test_only_the_inside_prefixes_are_guarded() -> None:
    """Transit that is not to a translated prefix is routed as before: the NAT
    tracks only its own flows, so it cannot filter anything else."""
    r = nat_router()
    other = IP(src=UPSTREAM4, dst="198.18.3.99") / UDP(sport=1, dport=2)
    assert one(sent(r.process(outside(other), U, 1.0), U))[IP].dst == "198.18.3.99"


def test_inside_hosts_reach_each_other_and_hairpin() -> None:
    r = nat_router()
    # from the inside interface: never unsolicited, even to the inside prefix
    got = one(sent(r.process(inside(IP(src=A4, dst=B4) / UDP(sport=1, dport=2)), C, 1.0), C))
    assert got[IP].dst == B4
    syn = IP(src=B4, dst=OUT4) / TCP(sport=5000, dport=8080, flags="S")
    got = one(sent(r.process(inside(syn, "02:00:00:00:01:0b"), C, 1.1), C))
    assert got[IP].dst == A4 and got[IP].src == OUT4


def test_an_interface_with_no_snat_rule_does_not_filter() -> None:
    """A load balancer's services use the NAT engine with no SNAT rule: nothing
    is unsolicited, so traffic through it is routed as ever."""
    r = lb_router(service())
    plain = IP(src="198.18.31.10", dst="198.18.20.11") / UDP(sport=1, dport=2)
    assert sent(r.process(via_b(plain), 1, 1.0), 2)  # from uplink B to the server LAN
    assert not r.nat._guarded  # type: ignore[union-attr]


# -- ICMP redirects -------------------------------------------------------------------


def test_a_v4_redirect_about_a_live_flow_is_not_translated() -> None:
    r = nat_router()
    req = one(sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)))
    quote = bytes(req[IP])[:28]
    for code in (0, 1):
        redirect = IP(src=UPSTREAM4, dst=OUT4) / ICMP(type=5, code=code, gw="198.18.2.9")
        out = r.process(outside(redirect / Raw(quote)), U, 1.1)
        assert sent(out) == [] and drops(out) == [DropReason.NAT_ICMP_REDIRECT]
    # an unreachable about the same flow still is
    err = IP(src=UPSTREAM4, dst=OUT4) / ICMP(type=3, code=1) / Raw(quote)
    assert one(sent(r.process(outside(err), U, 1.2), C))[IP].dst == A4


def test_a_v6_redirect_is_not_translated() -> None:
    r = nat_router()
    # an ICMPv6 message that opens an address-only connection for its reply tuple
    msg = IPv6(src=A6, dst=SERVER6) / ICMPv6Unknown(type=200, msgbody=b"x" * 8)
    one(sent(r.process(inside(msg), C, 1.0), U))
    redirect = (
        IPv6(src=SERVER6, dst=OUT6, hlim=255)
        / ICMPv6ND_Redirect(tgt="2001:2:0:2::9", dst="2001:2:0:3::77")
        / Raw(b"\x04\x01" + bytes(6))  # a Redirected Header option with nothing quoted
    )
    out = r.process(outside(redirect), U, 1.1)
    assert sent(out) == [] and drops(out) == [DropReason.NAT_ICMP_REDIRECT]
    # without a connection it is hopgate's own message, ignored as any redirect
    r2 = nat_router()
    assert drops(r2.process(outside(redirect), U, 1.1)) == [DropReason.ICMP_IGNORED]


# -- fragmentation needed / Packet Too Big with an MTU that cannot be ----------------


def _big_udp_out(r: Router) -> bytes:
    """A 1000-byte UDP packet from A to the server, as it left the NAT."""
    pkt = IP(src=A4, dst=SERVER4, flags="DF") / UDP(sport=40000, dport=9) / (b"d" * 972)
    return bytes(one(sent(r.process(inside(pkt), C, 1.0), U)).payload)


@pytest.mark.parametrize(
    ("mtu", "delivered"),
    [(0, False), (67, False), (68, True), (576, True), (999, True), (1000, False), (65535, False)],
)
@pytest.mark.parametrize("quote", [28, None], ids=["8-bytes", "full"])
def test_frag_needed_with_an_impossible_mtu_is_dropped(
    mtu: int, delivered: bool, quote: int | None
) -> None:
    r = nat_router()
    t = _big_udp_out(r)
    assert len(t) == 1000
    err = (
        IP(src=UPSTREAM4, dst=OUT4)
        / ICMP(type=3, code=4, nexthopmtu=mtu)
        / Raw(t if quote is None else t[:quote])
    )
    out = r.process(outside(err), U, 1.1)
    if delivered:
        got = one(sent(out, C))
        assert got[IP].dst == A4 and got[ICMP].nexthopmtu == mtu and checksums_ok(got[IP])
    else:
        assert sent(out) == [] and drops(out) == [DropReason.NAT_BAD_MTU]


@pytest.mark.parametrize(
    ("mtu", "delivered"),
    [(0, False), (1000, False), (1279, False), (1280, True), (1347, True), (1348, False)],
)
def test_packet_too_big_with_an_impossible_mtu_is_dropped(mtu: int, delivered: bool) -> None:
    r = nat_router()
    pkt = IPv6(src=A6, dst=SERVER6) / UDP(sport=40000, dport=9) / (b"d" * 1300)
    t = bytes(one(sent(r.process(inside(pkt), C, 1.0), U)).payload)
    assert len(t) == 1348  # an MTU of 1348 or more: it would have fitted
    err = IPv6(src=UPSTREAM6, dst=OUT6) / ICMPv6PacketTooBig(mtu=mtu) / Raw(t[:48])
    out = r.process(outside(err), U, 1.1)
    if delivered:
        got = one(sent(out, C))
        assert got[IPv6].dst == A6 and got[ICMPv6PacketTooBig].mtu == mtu
    else:
        assert sent(out) == [] and drops(out) == [DropReason.NAT_BAD_MTU]


# -- fragments ---------------------------------------------------------------------


def test_a_fragmented_ping_to_the_outside_address_is_answered() -> None:
    r = nat_router()
    ping = IP(src=SERVER4, dst=OUT4, id=4321) / ICMP(id=5, seq=1) / (b"p" * 3000)
    pieces = fragment(ping, fragsize=1000)  # type: ignore[no-untyped-call]
    assert len(pieces) == 4
    out = []
    for i, p in enumerate(pieces):
        got = r.process(outside(p), U, 1.0 + i / 100)
        assert DropReason.NAT_FRAGMENT_UNMATCHED not in drops(got)
        out += sent(got, U)
    assert len(out) > 1 and all(f.dst == UPSTREAM_MAC for f in out)  # fragmented on gw-u
    reply = defragment([f[IP] for f in out])  # type: ignore[no-untyped-call]
    assert len(reply) == 1
    echo = IP(bytes(reply[0]))
    assert echo.src == OUT4 and echo.dst == SERVER4 and echo[ICMP].type == 0
    assert echo[ICMP].id == 5 and bytes(echo[ICMP].payload) == b"p" * 3000
    assert r.counters.reassembled == 1


def test_a_fragmented_ping6_to_the_outside_address_is_answered() -> None:
    r = nat_router()
    ping = (
        IPv6(src=SERVER6, dst=OUT6)
        / IPv6ExtHdrFragment(id=77)
        / ICMPv6EchoRequest(id=5, seq=1, data=b"p" * 3000)
    )
    pieces = fragment6(ping, 1280)  # type: ignore[no-untyped-call]
    out = []
    for p in pieces:
        got = r.process(outside(p), U, 1.0)
        assert DropReason.NAT_FRAGMENT_UNMATCHED not in drops(got)
        out += sent(got, U)
    assert len(out) > 1
    data = b""
    for f in sorted(out, key=lambda f: f[IPv6ExtHdrFragment].offset):
        data += bytes(f[IPv6ExtHdrFragment].payload)
    echo = ICMPv6EchoReply(data)
    assert out[0][IPv6].src == OUT6 and echo.id == 5 and echo.data == b"p" * 3000


def test_a_fragmented_flow_to_a_published_port_follows_its_first_fragment() -> None:
    udp_rule = DnatSpec("udp", ipaddress.ip_address(OUT4), ipaddress.ip_address(A4), 5353, 53)
    r = nat_router(dnat=(udp_rule,))
    big = IP(src=SERVER4, dst=OUT4, id=99) / UDP(sport=4000, dport=5353) / (b"q" * 2000)
    pieces = fragment(big, fragsize=800)  # type: ignore[no-untyped-call]
    outs = [one(sent(r.process(outside(p), U, 1.0), C)) for p in pieces]
    assert all(o[IP].dst == A4 and o[IP].id == 99 for o in outs)
    whole = defragment([o[IP] for o in outs])  # type: ignore[no-untyped-call]
    assert IP(bytes(whole[0]))[UDP].dport == 53 and r.counters.reassembled == 0


def test_a_stray_later_fragment_to_the_outside_address_waits_for_reassembly() -> None:
    r = nat_router()
    later = IP(src=SERVER4, dst=OUT4, id=5, frag=100, proto=1) / (b"x" * 64)
    out = r.process(outside(later), U, 1.0)
    assert out == [] and len(r.reassembler) == 1
    # no first fragment ever came: forgotten quietly at the timeout
    assert sent(r.poll(32.0)) == [] and len(r.reassembler) == 0


def test_a_later_fragment_to_a_pool_address_hopgate_does_not_own_is_unmatched() -> None:
    pool = ipaddress.ip_address("198.18.9.1")  # routed to hopgate, on no subnet of its own
    rule = SnatSpec((ipaddress.ip_network("198.18.1.0/24"),), "gw-u", (pool,))
    r = nat_router(snat=(rule,), dnat=())
    later = IP(src=SERVER4, dst=str(pool), id=5, frag=100) / (b"x" * 64)
    assert drops(r.process(outside(later), U, 1.0)) == [DropReason.NAT_FRAGMENT_UNMATCHED]


def test_a_fragmented_ping_to_a_vip_is_answered() -> None:
    r = lb_router(service())
    ping = IP(src="198.18.31.10", dst=VIP4, id=8) / ICMP(id=5) / (b"v" * 2000)
    out = []
    for p in fragment(ping, fragsize=1000):  # type: ignore[no-untyped-call]
        out += sent(r.process(via_b(p), 1, 1.0), 1)
    assert out and all(f.dst == RB_MAC and f[IP].src == VIP4 for f in out)
    reply = IP(bytes(defragment([f[IP] for f in out])[0]))  # type: ignore[no-untyped-call]
    assert reply[ICMP].type == 0 and bytes(reply[ICMP].payload) == b"v" * 2000


# -- the setting ---------------------------------------------------------------------

_CONFIG = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24"]

[[interface]]
name = "gw-u"
addresses = ["198.18.2.1/24"]

[[nat.snat]]
inside = ["198.18.1.0/24"]
interface = "gw-u"
"""
_LINKS = {"gw-c": (b"\x02" * 6, 1500), "gw-u": (b"\x04" * 6, 1500)}


def test_forward_unsolicited_is_off_unless_set() -> None:
    default = parse(_CONFIG).router_spec(_LINKS).nat
    assert default is not None and default.forward_unsolicited is False
    assert NatSpec().forward_unsolicited is False
    cfg = parse(
        _CONFIG.replace("[[nat.snat]]", "[nat]\nforward_unsolicited = true\n\n[[nat.snat]]")
    )
    spec = cfg.router_spec(_LINKS).nat
    assert spec is not None and spec.forward_unsolicited is True


def test_a_bad_forward_unsolicited_is_named_by_its_key_path() -> None:
    text = _CONFIG.replace("[[nat.snat]]", '[nat]\nforward_unsolicited = "yes"\n\n[[nat.snat]]')
    with pytest.raises(ConfigError) as e:
        parse(text, "t.toml")
    assert [i.path for i in e.value.issues] == ["nat.forward_unsolicited"]
