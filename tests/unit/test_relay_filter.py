"""``hopgate relay``'s eBPF socket filter (xdp/relayfilter.c) against its
specification: the classic filter (io/capture.py) followed by pipeline/relay.py's
checks and buckets.  For every frame the program admits what they admit and
refuses the rest for the same reason.  The program runs on each frame through
BPF_PROG_TEST_RUN (root only, as CI runs), the classic filter in a small
interpreter here, the relay on a fake clock that does not move (the frames of a
test run follow one another within a millisecond: a bucket refills by
rate x 1 ms, under a message at the rates used here)."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hopgate.io import capture as C
from hopgate.io.peers import PeerTable
from hopgate.io.relayloop import RelayLoop
from hopgate.packet import ethernet
from hopgate.pipeline.relay import PmtuMessage, Relay, RelayDrop, RelaySettings, relayed_copy
from hopgate.xdp import relayfilter as RF
from hopgate.xdp.libbpf import run_socket_filter
from tests.unit.test_relay import (
    CLIENT4,
    CLIENT6,
    MY_MAC,
    ROUTER4,
    SHARED4,
    SHARED6,
    big4,
    big6,
    frag_needed,
    too_big,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

LO = 1  # a test run's frame arrives on lo: the relay's interface 0 here

# A test run takes the first 14 bytes for the Ethernet header and gives the
# program what follows, where an AF_PACKET socket's filter sees the whole frame:
# each frame goes in behind a header of its own, whose destination sets the
# packet type (lo's MAC, all zeros: PACKET_HOST; broadcast: PACKET_BROADCAST).
AS_HOST = bytes(12) + b"\x88\xb5"
AS_BROADCAST = b"\xff" * 6 + bytes(6) + b"\x88\xb5"
PACKET_BROADCAST = 1

UNLIMITED = RelaySettings(src_rate=1e6, src_burst=1e6, iface_rate=1e6, iface_burst=1e6)


@contextmanager
def loaded(relay_settings: RelaySettings) -> Iterator[RF.RelayFilter]:
    assert RF.OBJECT.exists(), f"{RF.OBJECT} is not built: run scripts/bootstrap"
    f = RF.RelayFilter(relay_settings, [LO])
    try:
        yield f
    finally:
        f.close()


def kernel(f: RF.RelayFilter, frame: bytes, pkttype: int = C.PACKET_HOST) -> str:
    """What the program did with ``frame``: the outcome it counted."""
    before = f.counts(0)
    head = AS_HOST if pkttype == C.PACKET_HOST else AS_BROADCAST
    ret = run_socket_filter(f.prog_fd, head + frame)
    changed = [k for k, v in f.counts(0).items() if v != before[k]]
    assert len(changed) == 1, changed
    assert (ret != 0) == (changed[0] == RF.PASSED), (ret, changed)
    return str(changed[0])


def classic(frame: bytes, pkttype: int = C.PACKET_HOST) -> bool:
    """Whether io/capture.py's classic filter passes ``frame`` (a load past the
    end refuses it, as in the kernel)."""
    prog = C.pmtu_filter()
    pc = a = x = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == C.BPF_RET_K:
            return k != 0
        if code in (C.BPF_JEQ_K, C.BPF_JSET_K):
            hit = a == k if code == C.BPF_JEQ_K else bool(a & k)
            pc += jt if hit else jf
            continue
        if code == C.BPF_LD_W_ABS and k == C.SKF_AD_PKTTYPE:
            a = pkttype
            continue
        at = k + x if code == C.BPF_LD_B_IND else k
        size = 2 if code == C.BPF_LD_H_ABS else 1
        if at + size > len(frame):
            return False
        if code == C.BPF_LDX_B_MSH:
            x = (frame[at] & 0xF) << 2
        else:
            a = int.from_bytes(frame[at : at + size], "big")


def spec(relay: Relay, frame: bytes, pkttype: int = C.PACKET_HOST) -> str:
    """What the classic filter and the relay make of ``frame``, as an outcome."""
    if not classic(frame, pkttype):
        return RF.NOT_PMTU
    got = relay.consider(frame, 0, 0.0)
    if isinstance(got, PmtuMessage):
        return RF.PASSED
    return RF.NOT_PMTU if got is RelayDrop.NOT_PMTU else str(got)


def both(relay_settings: RelaySettings, frames: list[bytes]) -> tuple[list[str], list[str]]:
    """Each frame's outcome, one after the other, from the program and from the spec."""
    relay = Relay(relay_settings, 1)
    with loaded(relay_settings) as f:
        return [kernel(f, fr) for fr in frames], [spec(relay, fr) for fr in frames]


# -- without root ------------------------------------------------------------------------


def test_the_settings_the_kernel_buckets_hold_exactly() -> None:
    assert RF.unsupported(RelaySettings()) is None
    assert RF.unsupported(RelaySettings(src_rate=0.5, src_burst=2.5)) is None
    assert RF.bucket_params(10, 10) == (10_000, 10 * RF.ONE, 10**9)  # empty to full: 1 s
    assert RF.bucket_params(3, 1) == (3_000, RF.ONE, 333_333_334)  # 1/3 s, rounded up
    assert "thousandths" in (RF.unsupported(RelaySettings(src_rate=0.0001)) or "")
    assert "--iface-burst" in (RF.unsupported(RelaySettings(iface_burst=2e6)) or "")
    assert "sources" in (RF.unsupported(RelaySettings(max_sources=10)) or "")


def test_what_the_kernel_admitted_is_checked_again_but_not_metered_again() -> None:
    relay = Relay(RelaySettings(src_rate=1, src_burst=1, iface_rate=1, iface_burst=1), 1)
    got = [relay.consider_admitted(frag_needed(), 0) for _ in range(3)]
    assert all(isinstance(g, PmtuMessage) for g in got)
    assert relay.consider_admitted(frag_needed(10), 0) is RelayDrop.MTU_INSANE
    # the kernel's refusals, as last read, are seen and not relayed
    relay.counters[0].kernel_dropped = Counter({RelayDrop.RATE_SOURCE: 40, RelayDrop.NO_QUOTE: 2})
    assert relay.snapshot(["eth0"]) == [
        {
            "interface": "eth0",
            "seen": 46,
            "relayed": 3,
            "dropped": {"mtu-insane": 1, "rate-limited-source": 40, "no-quoted-packet": 2},
        }
    ]


def test_the_classic_filter_interpreter_reads_the_program_as_the_kernel_does() -> None:
    assert classic(frag_needed()) and classic(too_big())
    assert not classic(frag_needed(), PACKET_BROADCAST)
    assert not classic(frag_needed()[:30])
    assert not classic(bytes(Ether() / IP() / ICMP()))


# -- the program ---------------------------------------------------------------------------


@root_only
def test_python_and_c_agree_on_every_table_layout() -> None:
    with loaded(RelaySettings()) as f:
        for name, (key, value) in RF.LAYOUTS.items():
            assert f.obj.map_sizes(name) == (ctypes.sizeof(key), ctypes.sizeof(value)), name


@root_only
@pytest.mark.parametrize(
    "frame",
    [
        frag_needed(),
        frag_needed(options=b"\x01\x01\x01\x01"),  # IPv4 options: the ICMP header further on
        frag_needed(quote=big4()[:40]),
        too_big(),
        too_big(9000),
        frag_needed(quote=bytes(IP(src=SHARED4, dst=CLIENT4) / ICMP(type=8))[:28]),
    ],
    ids=["v4", "v4-options", "v4-long-quote", "v6", "v6-jumbo-mtu", "v4-quoting-echo"],
)
def test_pmtu_messages_pass(frame: bytes) -> None:
    assert both(RelaySettings(), [frame]) == ([RF.PASSED], [RF.PASSED])


OTHERS = {
    "port-unreach": bytes(Ether() / IP(dst=SHARED4) / ICMP(type=3, code=3) / Raw(big4()[:28])),
    "echo": bytes(Ether() / IP(dst=SHARED4) / ICMP(type=8)),
    "udp": bytes(Ether() / IP(dst=SHARED4) / UDP()),
    "tcp-v6": bytes(Ether() / IPv6(dst=SHARED6) / TCP()),
    "v4-later-fragment": bytes(
        Ether() / IP(dst=SHARED4, frag=10, proto=1) / Raw(bytes(ICMP(type=3, code=4)) + big4())
    ),
    "v4-first-fragment": frag_needed(flags="MF"),
    "v6-extension-header": bytes(
        Ether() / IPv6(dst=SHARED6) / IPv6ExtHdrDestOpt() / ICMPv6PacketTooBig() / Raw(big6())
    ),
    "v4-truncated": frag_needed()[:30],
    "v4-bad-checksum": frag_needed(chksum=0x1234),
    "v4-total-length-past-the-end": frag_needed(len=200),
    "v4-icmp-cut-short": frag_needed(len=20 + 6),
    "v6-payload-length-past-the-end": bytes(
        Ether(dst="02:00:00:00:00:11") / IPv6(dst=SHARED6, plen=500) / ICMPv6PacketTooBig()
    ),
    "arp": bytes(Ether(type=0x0806) / Raw(b"\x00" * 28)),
}


@root_only
@pytest.mark.parametrize("frame", OTHERS.values(), ids=OTHERS.keys())
def test_anything_else_is_refused_and_not_counted_as_seen(frame: bytes) -> None:
    assert both(RelaySettings(), [frame]) == ([RF.NOT_PMTU], [RF.NOT_PMTU])


@root_only
def test_what_is_not_addressed_to_the_host_is_refused() -> None:
    # a relayed copy as it arrives: to the broadcast address
    with loaded(RelaySettings()) as f:
        assert kernel(f, frag_needed(), PACKET_BROADCAST) == RF.NOT_PMTU
        assert spec(Relay(RelaySettings(), 1), frag_needed(), PACKET_BROADCAST) == RF.NOT_PMTU


def _marked(frame: bytes, dst: bytes = bytes.fromhex("020000000033")) -> bytes:
    msg = Relay(RelaySettings(), 1).consider(frame, 0, 0.0)
    assert isinstance(msg, PmtuMessage)
    return bytes(relayed_copy(frame, msg.l3, dst, MY_MAC, 63))


COUNTED = {
    "no-quote-v4": (frag_needed(quote=b""), RelayDrop.NO_QUOTE),
    "no-transport-v4": (frag_needed(quote=big4()[:27]), RelayDrop.NO_QUOTE),
    "v6-quoted-in-v4": (frag_needed(quote=big6()[:48]), RelayDrop.NO_QUOTE),
    "no-transport-v6": (too_big(quote=big6()[:47]), RelayDrop.NO_QUOTE),
    "v4-quoted-in-v6": (too_big(quote=big4()[:48]), RelayDrop.NO_QUOTE),
    "unicast-copy-v4": (_marked(frag_needed()), RelayDrop.RELAYED_COPY),
    "unicast-copy-v6": (_marked(too_big()), RelayDrop.RELAYED_COPY),
    "group-mac": (_marked(frag_needed(), ethernet.BROADCAST), RelayDrop.RELAYED_COPY),
    "mtu-0": (frag_needed(0), RelayDrop.MTU_INSANE),
    "mtu-67": (frag_needed(67), RelayDrop.MTU_INSANE),
    "mtu-1279-v6": (too_big(1279), RelayDrop.MTU_INSANE),
    "mtu-65536-v6": (too_big(65536), RelayDrop.MTU_INSANE),
    "mtu-max-v6": (too_big(2**32 - 1), RelayDrop.MTU_INSANE),
}


@root_only
@pytest.mark.parametrize(("frame", "reason"), COUNTED.values(), ids=COUNTED.keys())
def test_what_is_refused_is_counted_by_the_relays_reason(frame: bytes, reason: str) -> None:
    assert both(RelaySettings(), [frame]) == ([reason], [reason])


@root_only
def test_a_stricter_range_and_a_port_filter() -> None:
    s = RelaySettings(min_mtu=1300, max_mtu=1480, ports=frozenset({443, 8443}))
    quote6 = bytes(IPv6(src=SHARED6, dst=CLIENT6) / UDP(sport=443))
    behind = bytes(IPv6(src=SHARED6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / TCP(sport=8443))
    frames = [
        frag_needed(1100),
        frag_needed(1492),
        too_big(1281),
        frag_needed(1400),  # port 80
        frag_needed(1400, quote=big4(sport=443)[:28]),
        frag_needed(1400, quote=bytes(IP(src=SHARED4) / UDP(sport=8443))[:28]),
        frag_needed(1400, quote=bytes(IP(src=SHARED4, frag=3) / UDP(sport=443))[:28]),
        frag_needed(1400, quote=bytes(IP(src=SHARED4) / ICMP(type=0))[:28]),
        too_big(1400, quote=quote6[:48]),
        too_big(1400, quote=behind[:72]),  # the port behind two extension headers
        too_big(1400, quote=behind[:57]),  # ...cut within the port
        too_big(1400, quote=big6(sport=443)[:48]),
        too_big(1400, quote=big6(sport=444)[:48]),
    ]
    got, want = both(s, frames)
    assert got == want
    assert got == [
        RelayDrop.MTU_OUT_OF_RANGE,
        RelayDrop.MTU_OUT_OF_RANGE,
        RelayDrop.MTU_OUT_OF_RANGE,
        RelayDrop.PORT_FILTERED,
        RF.PASSED,
        RF.PASSED,
        RelayDrop.PORT_FILTERED,  # a later fragment quoted: no port
        RelayDrop.PORT_FILTERED,
        RF.PASSED,
        RF.PASSED,
        RelayDrop.PORT_FILTERED,
        RF.PASSED,
        RelayDrop.PORT_FILTERED,
    ]


@root_only
def test_the_per_source_burst_then_nothing_and_another_source_has_its_own() -> None:
    burst = 5
    s = RelaySettings(src_rate=2, src_burst=burst, iface_rate=1000, iface_burst=1000)
    frames = [frag_needed()] * (burst + 1) + [frag_needed(src="198.18.51.9")]
    frames += [too_big()] * (burst + 1)
    got, want = both(s, frames)
    admitted = [RF.PASSED] * burst
    refused = [RelayDrop.RATE_SOURCE]
    assert got == want == admitted + refused + [RF.PASSED] + admitted + refused


@root_only
def test_the_per_interface_burst_holds_against_many_sources() -> None:
    s = RelaySettings(src_rate=10, src_burst=10, iface_rate=5, iface_burst=5)
    frames = [frag_needed(src=f"198.18.{i // 250}.{i % 250 + 1}") for i in range(20)]
    got, want = both(s, frames)
    assert got == want == [RF.PASSED] * 5 + [RelayDrop.RATE_INTERFACE] * 15


@root_only
def test_the_source_token_is_spent_when_the_interface_has_none() -> None:
    # As in Relay._admit: the source's bucket first, its token gone even when
    # the interface's bucket then refuses.
    s = RelaySettings(src_rate=1, src_burst=2, iface_rate=1, iface_burst=1)
    got, want = both(s, [frag_needed()] * 3)
    assert got == want == [RF.PASSED, RelayDrop.RATE_INTERFACE, RelayDrop.RATE_SOURCE]


@root_only
def test_a_bucket_refills_at_its_rate() -> None:
    # 10 a second, burst 1: a message every 100 ms, on the kernel's clock
    s = RelaySettings(src_rate=10, src_burst=1, iface_rate=1e6, iface_burst=1e6)
    with loaded(s) as f:
        first = kernel(f, frag_needed())
        second = kernel(f, frag_needed())
        time.sleep(0.15)
        third = kernel(f, frag_needed())
    assert (first, second, third) == (RF.PASSED, RelayDrop.RATE_SOURCE, RF.PASSED)


# -- the relay's choice of filter -------------------------------------------------------


def _loop(relay_settings: RelaySettings, mode: str) -> RelayLoop:
    relay = Relay(relay_settings, 1)
    return RelayLoop(relay, ("lo",), [bytes(6)], PeerTable((), ("lo",)), 63, filter_mode=mode)


@root_only
@pytest.mark.parametrize(
    ("relay_settings", "mode", "used", "note"),
    [
        (RelaySettings(), "auto", "ebpf", ""),
        (RelaySettings(), "classic", "classic", "asked for"),
        (RelaySettings(src_rate=0.0001), "auto", "classic", "--src-rate 0.0001/s is not"),
    ],
)
def test_the_relay_takes_the_ebpf_filter_where_it_can(
    relay_settings: RelaySettings, mode: str, used: str, note: str
) -> None:
    loop = _loop(relay_settings, mode)
    try:
        loop.open()
        assert (loop.filter_name, loop.filter_note[: len(note)]) == (used, note)
        assert (loop.kernel is not None) == (used == "ebpf")
        assert loop.interfaces_state()[0].keys() >= {"seen", "relayed", "dropped", "missed"}
    finally:
        loop.close()


@root_only
def test_the_relay_will_not_start_without_the_ebpf_filter_when_told_to_use_it() -> None:
    loop = _loop(RelaySettings(src_burst=2e6), "ebpf")
    try:
        with pytest.raises(C.FilterError, match="the eBPF filter: --src-burst 2e"):
            loop.open()
        assert loop.sockets == [] and loop.kernel is None
    finally:
        loop.close()


# -- the same verdicts for any frame -----------------------------------------------------

SEEDS = [
    frag_needed(),
    too_big(),
    frag_needed(quote=big4(443)[:40]),
    too_big(quote=bytes(IPv6(src=SHARED6) / IPv6ExtHdrDestOpt() / UDP(sport=443))[:56]),
    frag_needed(options=b"\x01\x01\x01\x01", src=ROUTER4),
]


# without, and with a stricter range and a port filter
ANY_FRAME = (
    UNLIMITED,
    dataclasses.replace(UNLIMITED, min_mtu=1280, ports=frozenset({443})),
)


@pytest.fixture(scope="module")
def any_frame_filters() -> Iterator[tuple[RF.RelayFilter, RF.RelayFilter]]:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    with loaded(ANY_FRAME[0]) as a, loaded(ANY_FRAME[1]) as b:
        yield a, b


@pytest.mark.slow
@settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 130), st.integers(0, 255)), max_size=4),
    st.integers(0, 140),
    st.booleans(),
)
def test_any_frame_gets_the_relays_verdict(
    any_frame_filters: tuple[RF.RelayFilter, RF.RelayFilter],
    seed: bytes,
    changes: list[tuple[int, int]],
    cut: int,
    with_ports: bool,
) -> None:
    frame = bytearray(seed)
    for pos, value in changes:
        if pos < len(frame):
            frame[pos] = value
    f = any_frame_filters[with_ports]
    relay = Relay(ANY_FRAME[with_ports], 1)
    assert kernel(f, bytes(frame[:cut])) == spec(relay, bytes(frame[:cut]))
