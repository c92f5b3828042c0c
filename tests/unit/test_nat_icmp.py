"""ICMP errors through the NAT, on exact bytes (RFC 5508; docs/behaviour.md, "NAT").

For each error: the packet the inside host sent (O), what it became outside (T),
and an error that a router beyond the NAT sends about T.  Translated, the error
must read exactly as if that router had sent it about O: the quote restored to
O's addresses, ports or identifier, with O's checksums where the quote holds the
whole segment and T's transport checksum where it does not.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.packet import Packet, Raw

from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.router import Router
from tests.unit.frames import CLIENT_MAC, UPSTREAM4, UPSTREAM6, C, U, drops, sent
from tests.unit.nat_frames import (
    A4,
    A6,
    OUT4,
    OUT6,
    SERVER4,
    SERVER6,
    checksums_ok,
    inside,
    nat_router,
    outside,
)

FLOWS4 = {
    "udp": UDP(sport=40000, dport=33434) / Raw(b"u" * 24),
    "tcp": TCP(sport=40001, dport=80, flags="S", seq=12345),
    "echo": ICMP(type=8, id=77, seq=3) / Raw(b"e" * 16),
}
FLOWS6 = {
    "udp": UDP(sport=40000, dport=33434) / Raw(b"u" * 24),
    "tcp": TCP(sport=40001, dport=80, flags="S", seq=12345),
    "echo": ICMPv6EchoRequest(id=77, seq=3, data=b"e" * 16),
}


def _taken_out(r: Router, pkt: Packet) -> bytes:
    """Send ``pkt`` from the inside host; the IP packet as it left the NAT."""
    (frame,) = sent(r.process(inside(pkt), C, 1.0), U)
    return bytes(frame.payload)


def _translated(r: Router, error: Packet) -> Packet:
    (frame,) = sent(r.process(outside(error), U, 1.5), C)
    assert frame.dst == CLIENT_MAC
    return frame.payload


def _sized(flow: Packet, error: str) -> Packet:
    """The flow's packet, larger than the MTU a PMTU error gives (1280): one the
    packet would have fitted is not translated (nat-bad-mtu)."""
    return flow / Raw(b"p" * 1300) if error in ("frag-needed", "packet-too-big") else flow


def _quote(packet: bytes, size: int | None) -> bytes:
    return packet if size is None else packet[:size]


def _lowered(packet: bytes, v6: bool) -> bytes:
    """The packet with its TTL / hop limit one lower, as it was when quoted."""
    p = (IPv6 if v6 else IP)(packet)
    if v6:
        p.hlim -= 1
    else:
        p.ttl -= 1
        del p.chksum
    return bytes(p)


ERRORS4: dict[str, Callable[[], Packet]] = {
    "time-exceeded": lambda: ICMP(type=11, code=0),
    "port-unreachable": lambda: ICMP(type=3, code=3),
    "frag-needed": lambda: ICMP(type=3, code=4, nexthopmtu=1280),
    "host-unreachable": lambda: ICMP(type=3, code=1),
}


@pytest.mark.parametrize("quote", [None, 28], ids=["full", "8-bytes"])
@pytest.mark.parametrize("flow", list(FLOWS4))
@pytest.mark.parametrize("error", list(ERRORS4))
def test_v4_error_from_beyond_reads_as_about_what_the_host_sent(
    error: str, flow: str, quote: int | None
) -> None:
    r = nat_router()
    original = bytes(IP(src=A4, dst=SERVER4, ttl=64, id=99) / _sized(FLOWS4[flow], error))
    t = _taken_out(r, IP(original))
    assert IP(t).src == OUT4
    # as the packet reached the router: T, one hop lower
    err = IP(src=UPSTREAM4, dst=OUT4, id=555) / ERRORS4[error]() / Raw(_quote(t, quote))
    got = _translated(r, err)
    assert got[IP].src == UPSTREAM4 and got[IP].dst == A4 and got[IP].id == 555
    assert checksums_ok(got)  # outer IP and ICMP checksums
    # read by offset: scapy takes a quote beyond 128 bytes for RFC 4884 extensions
    inner = bytes(got)[28:]
    expected = _quote(_lowered(original, v6=False), quote)
    if quote is None or flow == "udp":
        # the whole packet back as sent; an 8-byte UDP quote holds its checksum
        # field, which stays as T had it when the segment is not all there
        if quote is not None and flow == "udp":
            expected = expected[:26] + t[26:28]
        assert inner == expected
    else:
        assert inner[:20] == expected[:20]  # the IP header, checksum and all
        if flow == "echo":
            # type and code; the checksum as T had it (the message is not all
            # there); the identifier and sequence as sent
            assert inner[20:22] == expected[20:22] and inner[22:24] == t[22:24]
            assert inner[24:28] == expected[24:28]
        else:
            assert inner[20:28] == expected[20:28]  # ports and sequence number


def test_v4_error_from_the_destination_itself() -> None:
    r = nat_router()
    original = bytes(IP(src=A4, dst=SERVER4) / FLOWS4["udp"])
    t = _taken_out(r, IP(original))
    got = _translated(r, IP(src=SERVER4, dst=OUT4) / ICMP(type=3, code=3) / Raw(t))
    assert got[IP].src == SERVER4 and got[IP].dst == A4
    assert bytes(got[ICMP].payload) == _lowered(original, v6=False) and checksums_ok(got)


ERRORS6: dict[str, Callable[[], Packet]] = {
    "time-exceeded": lambda: ICMPv6TimeExceeded(code=0),
    "port-unreachable": lambda: ICMPv6DestUnreach(code=4),
    "packet-too-big": lambda: ICMPv6PacketTooBig(mtu=1280),
}


@pytest.mark.parametrize("quote", [None, 48], ids=["full", "8-bytes"])
@pytest.mark.parametrize("flow", list(FLOWS6))
@pytest.mark.parametrize("error", list(ERRORS6))
def test_v6_error_from_beyond_reads_as_about_what_the_host_sent(
    error: str, flow: str, quote: int | None
) -> None:
    r = nat_router()
    original = bytes(IPv6(src=A6, dst=SERVER6, hlim=64) / _sized(FLOWS6[flow], error))
    t = _taken_out(r, IPv6(original))
    err = IPv6(src=UPSTREAM6, dst=OUT6) / ERRORS6[error]() / Raw(_quote(t, quote))
    got = _translated(r, err)
    assert got[IPv6].src == UPSTREAM6 and got[IPv6].dst == A6
    assert checksums_ok(got)  # the ICMPv6 checksum over the new pseudo-header
    inner = bytes(got.payload)[8:]
    lowered = _lowered(original, v6=True)
    if quote is None:
        assert inner == lowered
    else:
        assert inner[:40] == lowered[:40]  # the IPv6 header
        if flow == "udp":
            assert inner[40:46] == lowered[40:46]  # ports and length
            assert inner[46:48] == t[46:48]  # checksum: left as it was
        elif flow == "echo":
            assert inner[40:42] == lowered[40:42]  # type and code
            assert inner[42:44] == t[42:44]  # checksum: left as it was
            assert inner[44:48] == lowered[44:48]  # identifier and sequence as sent
        else:
            assert inner[40:48] == lowered[40:48]  # ports and sequence number


def test_error_from_inside_about_a_reply_goes_out_translated() -> None:
    """The inside host answers the server's reply with port unreachable: the
    error leaves from the outside address, quoting the reply as the server sent it."""
    r = nat_router()
    _taken_out(r, IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53))
    reply = bytes(IP(src=SERVER4, dst=OUT4, ttl=50) / UDP(sport=53, dport=40000) / b"r")
    (delivered,) = sent(r.process(outside(IP(reply)), U, 1.1), C)
    as_received = bytes(delivered.payload)
    err = IP(src=A4, dst=SERVER4) / ICMP(type=3, code=3) / Raw(as_received)
    (frame,) = sent(r.process(inside(err), C, 1.2), U)
    got = frame.payload
    assert got[IP].src == OUT4 and got[IP].dst == SERVER4 and checksums_ok(got)
    assert bytes(got[ICMP].payload) == _lowered(reply, v6=False)


def test_error_about_a_dnat_flow_comes_from_the_published_address() -> None:
    r = nat_router()
    syn = bytes(IP(src=SERVER4, dst=OUT4, ttl=60) / TCP(sport=33000, dport=8080, flags="S"))
    (fwd,) = sent(r.process(outside(IP(syn)), U, 1.0), C)
    err = IP(src=A4, dst=SERVER4) / ICMP(type=3, code=3) / Raw(bytes(fwd.payload))
    (frame,) = sent(r.process(inside(err), C, 1.1), U)
    got = frame.payload
    assert got[IP].src == OUT4 and checksums_ok(got)
    assert bytes(got[ICMP].payload) == _lowered(syn, v6=False)


def test_an_error_never_creates_a_mapping() -> None:
    r = nat_router()
    stray = IP(src=OUT4, dst=SERVER4) / UDP(sport=40000, dport=53)
    out = r.process(
        outside(IP(src=UPSTREAM4, dst=OUT4) / ICMP(type=11) / Raw(bytes(stray))), U, 1.0
    )
    assert drops(out) == [DropReason.NAT_ICMP_UNMATCHED] and sent(out) == []
    assert len(r.nat.table) == 0  # type: ignore[union-attr]


def test_an_error_from_inside_about_nothing_known_is_not_leaked() -> None:
    r = nat_router()
    err = (
        IP(src=A4, dst=SERVER4)
        / ICMP(type=3, code=3)
        / IP(src=SERVER4, dst=A4)
        / UDP(sport=1, dport=2)
    )
    out = r.process(inside(err), C, 1.0)
    assert drops(out) == [DropReason.NAT_ICMP_UNMATCHED] and sent(out, U) == []


@pytest.mark.parametrize("flow", ["udp", "tcp", "echo"])
@pytest.mark.parametrize("quote", [None, 28], ids=["full", "8-bytes"])
def test_v4_quote_gets_its_own_port_back_when_it_was_remapped(flow: str, quote: int | None) -> None:
    r = nat_router()
    from tests.unit.nat_frames import B4, B_MAC

    other = IP(src=B4, dst=SERVER4) / FLOWS4[flow]  # B takes the port (or identifier) first
    sent(r.process(inside(other, B_MAC), C, 0.5), U)
    original = bytes(IP(src=A4, dst=SERVER4, id=7) / FLOWS4[flow])
    t = _taken_out(r, IP(original))
    moved = IP(t)
    if flow == "echo":
        assert moved[ICMP].id != 77
    else:
        assert moved.sport != IP(original).sport
    got = _translated(r, IP(src=UPSTREAM4, dst=OUT4) / ICMP(type=11) / Raw(_quote(t, quote)))
    inner = bytes(got[ICMP].payload)
    lowered = _lowered(original, v6=False)
    if quote is None:
        assert inner == lowered
    elif flow == "echo":
        assert inner[24:26] == lowered[24:26]  # the identifier as A sent it
    else:
        assert inner[20:24] == lowered[20:24]  # the ports as A sent them
    assert checksums_ok(got)
