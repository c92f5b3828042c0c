"""The rules for every ICMP error hopgate originates (docs/behaviour.md, "Every ICMP error
hopgate sends")."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
)

from hopgate.pipeline.counters import NotSent
from hopgate.pipeline.ratelimit import IcmpRateSettings
from tests.unit.frames import (
    CLIENT4,
    CLIENT6,
    GW_C4,
    SERVER4,
    SERVER6,
    C,
    from_client,
    resolved_router,
    sent,
)


def ttl1(**ip: Any) -> IP:
    fields: dict[str, Any] = {"src": CLIENT4, "dst": SERVER4, "ttl": 1}
    fields.update(ip)
    return IP(**fields)


def test_never_about_an_icmp_error() -> None:
    r = resolved_router()
    inner = IP(src=SERVER4, dst=CLIENT4) / UDP()
    out = r.process(from_client(ttl1() / ICMP(type=3, code=1) / inner), C, 1.0)
    assert sent(out) == []
    assert r.counters.icmp_not_sent[NotSent.ABOUT_ICMP_ERROR] == 1


def test_unknown_icmp_type_counts_as_an_error_as_linux() -> None:
    r = resolved_router()
    out = r.process(from_client(ttl1() / ICMP(type=42)), C, 1.0)
    assert sent(out) == []


def test_echo_request_is_answered_with_time_exceeded() -> None:
    r = resolved_router()
    (err,) = sent(r.process(from_client(ttl1() / ICMP(type=8)), C, 1.0))
    assert err[ICMP].type == 11


def test_never_about_a_later_fragment() -> None:
    r = resolved_router()
    out = r.process(from_client(ttl1(frag=100) / (b"x" * 16)), C, 1.0)
    assert sent(out) == []
    assert r.counters.icmp_not_sent[NotSent.LATER_FRAGMENT] == 1


def test_first_fragment_is_answered() -> None:
    r = resolved_router()
    (err,) = sent(r.process(from_client(ttl1(flags="MF") / UDP() / (b"x" * 16)), C, 1.0))
    assert err[ICMP].type == 11


def test_never_to_a_link_layer_broadcast_or_multicast_frame() -> None:
    r = resolved_router()
    for mac in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"):
        frame = from_client(IP(src=CLIENT4, dst=GW_C4) / UDP(dport=9), dst_mac=mac)
        assert sent(r.process(frame, C, 1.0)) == []
    assert r.counters.icmp_not_sent[NotSent.LINK_LAYER_BROADCAST] == 2


def test_never_to_a_source_that_is_not_one_host_v6() -> None:
    r = resolved_router()
    out = r.process(from_client(IPv6(src="::", dst="2001:2:0:1::1") / UDP(dport=9)), C, 1.0)
    assert sent(out) == []


def test_v6_never_about_a_later_fragment() -> None:
    r = resolved_router()
    pkt = IPv6(src=CLIENT6, dst=SERVER6, hlim=1) / IPv6ExtHdrFragment(offset=10, id=1) / (b"x" * 16)
    assert sent(r.process(from_client(pkt), C, 1.0)) == []


def test_v6_never_about_an_icmpv6_error() -> None:
    r = resolved_router()
    pkt = (
        IPv6(src=CLIENT6, dst=SERVER6, hlim=1)
        / ICMPv6DestUnreach()
        / IPv6(src=SERVER6, dst=CLIENT6)
    )
    assert sent(r.process(from_client(pkt), C, 1.0)) == []


def test_quote_v4_is_capped_at_576_bytes_and_at_least_header_plus_8() -> None:
    r = resolved_router()
    small = sent(r.process(from_client(ttl1() / UDP(sport=1, dport=2)), C, 1.0))[0]
    assert len(small[IP]) == 20 + 8 + 28
    big = sent(r.process(from_client(ttl1() / UDP() / (b"y" * 1400)), C, 2.0))[0]
    assert len(big[IP]) == 576


def test_quote_v6_is_capped_at_1280_bytes() -> None:
    r = resolved_router()
    pkt = IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6EchoRequest(data=b"q" * 1440)
    (err,) = sent(r.process(from_client(pkt), C, 1.0))
    assert len(err[IPv6]) == 1280 and err[ICMPv6PacketTooBig].mtu == 1400


def test_per_destination_limit_is_linux_burst_of_6_then_1_per_second() -> None:
    r = resolved_router()
    sent_count = 0
    for _ in range(20):
        sent_count += len(sent(r.process(from_client(ttl1() / UDP()), C, 10.0)))
    assert sent_count == 6
    assert r.counters.icmp_rate_limited[(4, 11, 0, "per-destination")] == 14
    # one more token a second
    assert len(sent(r.process(from_client(ttl1() / UDP()), C, 11.0))) == 1
    assert len(sent(r.process(from_client(ttl1() / UDP()), C, 11.1))) == 0


def test_frag_needed_is_exempt_from_rate_limits() -> None:
    r = resolved_router()
    n = 0
    for _ in range(100):
        pkt = IP(src=CLIENT4, dst=SERVER4, flags="DF") / UDP() / (b"z" * 1450)
        n += len(sent(r.process(from_client(pkt), C, 10.0)))
    assert n == 100


def test_global_limit_applies_across_destinations() -> None:
    settings = IcmpRateSettings(ratelimit_interval_ms=0, msgs_per_second=10, msgs_burst=5)
    r = resolved_router(icmp=settings)
    n = 0
    for i in range(50):
        pkt = IP(src=f"198.18.1.{20 + i}", dst=SERVER4, ttl=1) / UDP()
        n += len(sent(r.process(from_client(pkt), C, 10.0)))
    assert n == 5
    assert r.counters.icmp_rate_limited[(4, 11, 0, "global")] == 45


def test_zero_turns_limits_off() -> None:
    settings = IcmpRateSettings(ratelimit_interval_ms=0, msgs_per_second=0)
    r = resolved_router(icmp=settings)
    n = sum(len(sent(r.process(from_client(ttl1() / UDP()), C, 1.0))) for _ in range(200))
    assert n == 200


def test_echo_replies_are_not_rate_limited() -> None:
    r = resolved_router()
    n = sum(
        len(sent(r.process(from_client(IP(src=CLIENT4, dst=GW_C4) / ICMP()), C, 1.0)))
        for _ in range(100)
    )
    assert n == 100
