"""The XDP fast path against the Python pipeline (issue 11's rule): for any
frame, the program either passes it up (XDP_PASS) or forwards exactly what the
pipeline forwards: the same bytes, out of the same port.  The program runs on
each frame through BPF_PROG_TEST_RUN (root only, as CI runs), with its tables
filled from the same router the pipeline runs."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from hopgate.pipeline.actions import Action, Transmit
from hopgate.pipeline.neighbours import Heard, State
from hopgate.pipeline.router import Router
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject
from tests.unit import frames as F
from tests.unit.test_router_ecmp import ecmp_router

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

LO = 1  # test runs need a real ingress device: lo stands for port C


def _router() -> Router:
    r = F.resolved_router()
    # Learned again as answers: REACHABLE, the state the fast path mirrors.
    F.learn_neighbours(
        r,
        [
            (F.U, F.UPSTREAM4, F.UPSTREAM_MAC),
            (F.C, F.CLIENT4, F.CLIENT_MAC),
            (F.U, F.UPSTREAM6, F.UPSTREAM_MAC),
            (F.C, F.CLIENT6, F.CLIENT_MAC),
        ],
    )
    return r


def _tables(obj: BpfObject, router: Router, offset_ns: int = 0) -> T.Tables:
    tables = T.Tables(obj, offset_ns)
    tables.fill(router, {F.C: LO, F.U: LO})
    obj.update("port_of", ctypes.c_uint32(LO), ctypes.c_uint32(F.C + 1))
    return tables


@pytest.fixture(scope="module")
def fastpath() -> Iterator[BpfObject]:
    assert T.OBJECT.exists(), f"{T.OBJECT} is not built: run scripts/bootstrap"
    with BpfObject(T.OBJECT) as obj:
        _tables(obj, _router())
        yield obj


def test_python_and_c_agree_on_every_table_layout(fastpath: BpfObject) -> None:
    for name, (key, value) in T.LAYOUTS.items():
        assert fastpath.map_sizes(name) == (ctypes.sizeof(key), ctypes.sizeof(value)), name


def _both(obj: BpfObject, frame: bytes) -> tuple[int, bytes, list[Transmit]]:
    got = obj.test_run(T.PROGRAM, frame, LO)
    out = [a for a in _router().process(bytearray(frame), F.C, 1.0) if isinstance(a, Transmit)]
    return got.verdict, got.frame, out


@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.CLIENT4, dst=F.SERVER4) / UDP(sport=40000, dport=9) / (b"x" * 18),
        IPv6(src=F.CLIENT6, dst=F.SERVER6) / UDP(sport=40000, dport=9) / (b"x" * 18),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_plain_routed_datagram_is_forwarded_as_the_pipeline_forwards_it(
    fastpath: BpfObject, ip: Packet
) -> None:
    verdict, frame, out = _both(fastpath, bytes(F.from_client(ip)))
    assert verdict == XDP_REDIRECT, f"hopgate's fast path passed a plain datagram up ({verdict})"
    assert len(out) == 1 and out[0].port == F.U and bytes(out[0].frame) == frame


@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.CLIENT4, dst=F.SERVER4) / UDP(sport=40000, dport=9),
        IPv6(src=F.CLIENT6, dst=F.SERVER6) / TCP(sport=40000, dport=80, flags="A"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_padded_frame_leaves_without_its_padding_as_the_pipeline_sends_it(
    fastpath: BpfObject, ip: Packet
) -> None:
    """A short frame filled up to Ethernet's 60 bytes (or more): the padding is
    not part of the packet, and the pipeline forwards the packet alone."""
    verdict, frame, out = _both(fastpath, bytes(F.from_client(ip)) + b"\xaa" * 20)
    assert verdict == XDP_REDIRECT, f"hopgate's fast path passed a padded frame up ({verdict})"
    assert len(out) == 1 and bytes(out[0].frame) == frame
    assert len(frame) == 14 + len(ip)


@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.CLIENT4, dst=F.SERVER4, ttl=1) / UDP(dport=9),  # Time Exceeded is the pipeline's
        IP(src=F.CLIENT4, dst=F.SERVER4, options=b"\x01\x01\x01\x00") / UDP(dport=9),
        IP(src=F.CLIENT4, dst=F.SERVER4, flags="MF") / UDP(dport=9),
        IP(src=F.CLIENT4, dst="198.18.1.1") / ICMP(),  # to hopgate itself
        IP(src=F.CLIENT4, dst=F.SERVER4, flags="DF") / UDP(dport=9) / (b"x" * 1400),  # too big
        IP(src=F.CLIENT4, dst="198.18.1.255") / UDP(dport=9),  # a subnet's broadcast
        IP(src="198.18.1.1", dst=F.SERVER4) / UDP(dport=9),  # hopgate's own address as source
        IPv6(src=F.CLIENT6, dst=F.SERVER6, hlim=1) / UDP(dport=9),
        IPv6(src="fe80::10", dst=F.SERVER6) / UDP(dport=9),  # beyond scope is the pipeline's
        IPv6(src=F.CLIENT6, dst="2001:2:0:1::1") / ICMPv6EchoRequest(),  # to hopgate itself
        IPv6(src=F.CLIENT6, dst="ff02::1") / ICMPv6EchoRequest(),
        IPv6(src=F.CLIENT6, dst=F.SERVER6) / UDP(dport=9) / (b"x" * 1400),  # Packet Too Big
        IPv6(src="2001:2:0:1::1", dst=F.SERVER6) / UDP(dport=9),  # hopgate's own as source
    ],
    ids=lambda p: p.summary(),
)
def test_what_the_pipeline_answers_or_questions_is_passed_up(
    fastpath: BpfObject, ip: Packet
) -> None:
    verdict, _, _ = _both(fastpath, bytes(F.from_client(ip)))
    assert verdict == XDP_PASS, f"hopgate's fast path kept {ip.summary()} ({verdict})"


_DST = st.sampled_from(
    [F.SERVER4, F.UPSTREAM4, F.CLIENT4, "198.18.1.1", "198.18.2.1", "198.18.1.255",
     "255.255.255.255", "224.0.0.5", "127.0.0.1", "0.1.2.3", "198.18.2.77"]
)  # fmt: skip
_MAC = st.sampled_from([F.GW_C_MAC, "ff:ff:ff:ff:ff:ff", "02:00:00:00:99:99", "01:00:5e:00:00:05"])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Half of them plain (the fast path's to take, mostly), half anything."""
    plain = draw(st.booleans())
    l4 = draw(
        st.sampled_from(
            [UDP(sport=1000, dport=9), TCP(sport=1000, dport=80, flags="A"), ICMP(), ICMP(type=3)]
        )
    )
    if draw(st.booleans()):
        return draw(frames6(plain))
    if plain:
        ip = IP(
            src=draw(st.sampled_from([F.CLIENT4, "198.18.1.77", "10.0.0.1"])),
            dst=draw(st.sampled_from([F.SERVER4, F.UPSTREAM4, F.CLIENT4, "198.18.2.77"])),
            ttl=draw(st.integers(1, 255)),
            flags=draw(st.sampled_from([0, "DF"])),
        )
        dst_mac = F.GW_C_MAC
    else:
        ip = IP(
            src=draw(st.sampled_from([F.CLIENT4, "198.18.1.77", "198.18.1.1", "10.0.0.1"])),
            dst=draw(_DST),
            ttl=draw(st.sampled_from([0, 1, 2, 64, 255])),
            flags=draw(st.sampled_from([0, "DF", "MF"])),
            frag=draw(st.sampled_from([0, 0, 0, 5])),
        )
        if draw(st.booleans()):
            ip.options = b"\x01\x01\x01\x00"
        dst_mac = draw(_MAC)
    data = b"x" * draw(st.sampled_from([0, 18, 1300, 1500]))
    raw = bytearray(bytes(Ether(src=F.CLIENT_MAC, dst=dst_mac) / ip / l4 / data))
    if not plain and draw(st.booleans()):
        # A byte of the headers changed after the checksums were made.
        raw[draw(st.integers(14, 14 + 27))] ^= draw(st.integers(1, 255))
    raw += draw(_PADDING)
    return bytes(raw)


# Ethernet padding after the packet: none mostly, or some (a short frame
# filled up to 60 bytes, or more), zeros or not.
_PADDING = st.one_of(st.just(b""), st.just(b""), st.binary(min_size=1, max_size=40))


_DST6 = st.sampled_from(
    [F.SERVER6, F.UPSTREAM6, F.CLIENT6, "2001:2:0:1::1", "2001:2:0:2::1", "ff02::1",
     "fe80::1", "::", "::1", "2001:2:0:2::77", "2001:2:0:1::77"]
)  # fmt: skip


@st.composite
def frames6(draw: st.DrawFn, plain: bool) -> bytes:
    l4 = draw(
        st.sampled_from(
            [
                UDP(sport=1000, dport=9),
                TCP(sport=1000, dport=80, flags="A"),
                ICMPv6EchoRequest(),
                ICMPv6DestUnreach(),
            ]
        )
    )
    if plain:
        ip = IPv6(
            src=draw(st.sampled_from([F.CLIENT6, "2001:2:0:1::77", "2001:2:9::1"])),
            dst=draw(st.sampled_from([F.SERVER6, F.UPSTREAM6, F.CLIENT6, "2001:2:0:2::77"])),
            hlim=draw(st.integers(1, 255)),
        )
        dst_mac = F.GW_C_MAC
    else:
        ip = IPv6(
            src=draw(st.sampled_from([F.CLIENT6, "fe80::10", "2001:2:0:1::1", "::", "ff02::2"])),
            dst=draw(_DST6),
            hlim=draw(st.sampled_from([0, 1, 2, 64, 255])),
        )
        dst_mac = draw(_MAC)
    if draw(st.booleans()):
        l4 = IPv6ExtHdrDestOpt() / l4
    data = b"x" * draw(st.sampled_from([0, 18, 1300, 1500]))
    raw = bytearray(bytes(Ether(src=F.CLIENT_MAC, dst=dst_mac) / ip / l4 / data))
    if not plain and draw(st.booleans()):
        raw[draw(st.integers(14, 14 + 47))] ^= draw(st.integers(1, 255))
    raw += draw(_PADDING)
    return bytes(raw)


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames())
def test_the_fast_path_never_answers_differently_from_the_pipeline(
    fastpath: BpfObject, frame: bytes
) -> None:
    verdict, out_frame, out = _both(fastpath, frame)
    event("forwarded by the fast path" if verdict == XDP_REDIRECT else "passed up")
    assert verdict in (XDP_PASS, XDP_REDIRECT), f"hopgate's fast path returned {verdict}"
    if verdict == XDP_REDIRECT:
        assert len(out) == 1, f"hopgate's fast path forwarded what the pipeline did not: {out}"
        # The same bytes, out of the port whose MAC they now come from.
        assert bytes(out[0].frame) == out_frame
        assert _router().ports[out[0].port].mac == out_frame[6:12]


_PLAIN4 = IP(src=F.CLIENT4, dst=F.SERVER4) / UDP(sport=40000, dport=9) / (b"x" * 18)
_PLAIN6 = IPv6(src=F.CLIENT6, dst=F.SERVER6) / UDP(sport=40000, dport=9) / (b"x" * 18)


@pytest.mark.parametrize(("ip", "upstream"), [(_PLAIN4, F.UPSTREAM4), (_PLAIN6, F.UPSTREAM6)])
def test_a_stale_neighbour_used_by_the_fast_path_is_probed_by_the_pipeline(
    ip: Packet, upstream: str
) -> None:
    """Past its REACHABLE time a neighbour is STALE; both planes still send
    through it, and the program's use, read back, starts the pipeline's
    re-probe (DELAY), as a packet the pipeline sent would have."""
    router = _router()  # its neighbours confirmed at 0 s
    table = router.arp.table if ip.version == 4 else router.nd.table
    entry = table.get(F.U, int(ipaddress.ip_address(upstream)))
    assert entry is not None
    now = entry.until + 10.0
    with BpfObject(T.OBJECT) as obj:
        # The program's clock reads ``now`` of the pipeline's.
        tables = _tables(obj, router, time.monotonic_ns() - int(now * 1e9))
        got = obj.test_run(T.PROGRAM, bytes(F.from_client(ip)), LO)
        assert got.verdict == XDP_REDIRECT, "hopgate's fast path refused a STALE neighbour"
        assert entry.state == State.REACHABLE  # as the pipeline left it: nobody sent since
        assert tables.read_use(router, now + 0.5) == []
        state = table.get(entry.port, entry.addr).state  # type: ignore[union-attr]
        assert state == State.DELAY, "the fast path's use did not start a re-probe"
        assert now - 0.5 < entry.used <= now + 0.5


NEW_MAC = "02:00:00:00:77:77"
# An unsolicited message with another MAC (gratuitous ARP, an NA with O set).
GRATUITOUS = Heard(solicited=False, create=False)


@pytest.mark.parametrize(("ip", "upstream"), [(_PLAIN4, F.UPSTREAM4), (_PLAIN6, F.UPSTREAM6)])
def test_the_tables_follow_the_routers_neighbours(ip: Packet, upstream: str) -> None:
    """The program's neighbours are the pipeline's: a new MAC is followed, an
    entry the pipeline forgets is withdrawn, one it learns again is back, and
    they go with their port's link."""
    router = _router()
    frame = bytes(F.from_client(ip))
    table = router.arp.table if ip.version == 4 else router.nd.table
    addr = int(ipaddress.ip_address(upstream))
    out: list[Action] = []

    def run(now: float = 2.0) -> tuple[int, bytes, list[Transmit]]:
        got = obj.test_run(T.PROGRAM, frame, LO)
        sent = [a for a in router.process(bytearray(frame), F.C, now) if isinstance(a, Transmit)]
        return got.verdict, got.frame, sent

    with BpfObject(T.OBJECT) as obj:
        tables = _tables(obj, router)
        assert run()[0] == XDP_REDIRECT
        # Another MAC, unsolicited: STALE in the pipeline, which sends to the new MAC.
        table.learn(F.U, addr, F.mac(NEW_MAC), GRATUITOUS, 1.0, out)
        assert tables.sync(router) == []
        verdict, forwarded, sent = run()
        assert verdict == XDP_REDIRECT, "hopgate's fast path dropped a STALE neighbour"
        assert forwarded[:6] == F.mac(NEW_MAC) and bytes(sent[0].frame) == forwarded
        # Never answered: the pipeline forgets it, so does the program.
        for t in range(3, 100):
            router.poll(float(t))
        assert table.get(F.U, addr) is None
        tables.sync(router)
        assert run()[0] == XDP_PASS, "hopgate's fast path kept a neighbour the pipeline forgot"
        # Learned again (an answer): back.
        table.learn(F.U, addr, F.mac(NEW_MAC), F.ANSWER, 100.0, out)
        tables.sync(router)
        assert run(101.0)[0] == XDP_REDIRECT, (
            "hopgate's fast path did not take a confirmed neighbour"
        )
        # The link goes down: its neighbours are forgotten, the port is closed.
        router.link_down(F.U)
        tables.drop_port(F.U)
        tables.sync(router)
        # (lo stands for both ports here: it stays port C's way in.)
        obj.update("port_of", ctypes.c_uint32(LO), ctypes.c_uint32(F.C + 1))
        assert run()[0] == XDP_PASS, "hopgate's fast path sent to a port whose link is down"
        name, key = ("neigh4", T.NeighKey) if ip.version == 4 else ("neigh6", T.Neigh6Key)
        left = [k.port for k in obj.keys(name, key)]  # type: ignore[union-attr]
        assert F.U not in left, "a neighbour of a down port stayed in the fast path's table"


@st.composite
def ecmp_frames(draw: st.DrawFn) -> tuple[Packet, bool]:
    """Flows of every kind the program hashes (TCP, UDP, echoes; True) and one
    it leaves to the pipeline (an ICMP error: False), from many sources, to
    destinations behind the multipath default routes."""
    host = draw(st.integers(10, 250))
    dst = draw(st.integers(1, 99))
    ident = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ip: Packet = IPv6(src=f"2001:2:0:1::{host:x}", dst=f"2001:2:9::{dst}")
        echo: Packet = draw(
            st.sampled_from([ICMPv6EchoRequest(id=ident), ICMPv6EchoReply(id=ident)])
        )
        error: Packet = ICMPv6DestUnreach()
    else:
        ip = IP(src=f"198.18.1.{host}", dst=f"198.18.77.{dst}")
        echo = ICMP(type=draw(st.sampled_from([0, 8])), id=ident)
        error = ICMP(type=3, code=1)
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    hashed = [TCP(sport=sport, dport=dport, flags="A"), UDP(sport=sport, dport=dport), echo]
    l4 = draw(st.sampled_from([*hashed, error]))
    return ip / l4 / (b"x" * 18), l4 is not error


@pytest.fixture(scope="module")
def ecmp_fastpath() -> Iterator[BpfObject]:
    """The program with an ECMP router's tables (each example's router is
    built alike: the program's tables are that router's)."""
    with BpfObject(T.OBJECT) as obj:
        _tables(obj, ecmp_router())
        yield obj


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=ecmp_frames())
def test_multipath_picks_the_pipelines_next_hop(
    ecmp_fastpath: BpfObject, case: tuple[Packet, bool]
) -> None:
    ip, hashed = case
    router = ecmp_router()
    frame = bytes(F.from_client(ip))
    got = ecmp_fastpath.test_run(T.PROGRAM, frame, LO)
    out = [a for a in router.process(bytearray(frame), F.C, 1.0) if isinstance(a, Transmit)]
    assert len(out) == 1, f"the pipeline did not forward {ip.summary()}"
    if not hashed:
        assert got.verdict == XDP_PASS, f"hopgate's fast path kept {ip.summary()}"
        return
    assert got.verdict == XDP_REDIRECT, f"hopgate's fast path passed up {ip.summary()}"
    assert bytes(out[0].frame) == got.frame, (
        f"hopgate's fast path took another next hop than the pipeline for {ip.summary()}"
    )
