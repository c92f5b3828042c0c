"""NAT's and the load balancer's connections in the XDP fast path, against the
pipeline (issue 11's rule): once a UDP connection is a stream the pipeline hands
it to the program, which then translates its packets, both ways, exactly as the
pipeline does — the same bytes out of the same port — and hands back what it
forwarded, so that the connection's counters and deadline stay the pipeline's.
Anything else on a NAT router goes up.  Root only (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from hopgate.packet.proto import PROTO_UDP
from hopgate.pipeline.actions import Action, Replay, Transmit
from hopgate.pipeline.conntrack import FAST_PATH_GRACE, Conn
from hopgate.pipeline.router import Router
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject
from tests.unit import lb_frames as L
from tests.unit import nat_frames as N
from tests.unit.frames import UPSTREAM_MAC, C, U

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

LO = 1  # test runs need a real ingress device: lo stands for each port in turn


def _tables(obj: BpfObject, router: Router) -> T.Tables:
    tables = T.Tables(obj, time.monotonic_ns())  # the pipeline's 0 s is now
    tables.fill(router, dict.fromkeys(range(len(router.ports)), LO))
    return tables


def _run(obj: BpfObject, frame: bytes, port: int) -> tuple[int, bytes]:
    obj.update("port_of", ctypes.c_uint32(LO), ctypes.c_uint32(port + 1))
    got = obj.test_run(T.PROGRAM, frame, LO)
    return got.verdict, got.frame


def _sent(router: Router, frame: bytes, port: int, now: float) -> list[Transmit]:
    return [a for a in router.process(bytearray(frame), port, now) if isinstance(a, Transmit)]


def _executed(
    obj: BpfObject, tables: T.Tables, router: Router, actions: list[Action], now: float
) -> list[Transmit]:
    """What ``router`` sends of ``actions``, run as the loop runs them
    (io/loop.py): a ``Replay`` through the program's replay entry, and if the
    program passes it up, through the pipeline again."""
    sent: list[Transmit] = []
    for a in actions:
        if isinstance(a, Transmit):
            sent.append(a)
        elif isinstance(a, Replay):
            obj.update("port_of", ctypes.c_uint32(LO), ctypes.c_uint32(a.port + 1))
            got = tables.replay(a.frame, LO)
            if got is None:
                sent += _executed(obj, tables, router, router.fast_path_passed(a, now), now)
            else:
                sent.append(Transmit(*got))
    return sent


def _conn(router: Router) -> Conn:
    assert router.nat is not None
    (conn,) = router.nat.table.connections()
    return conn


# -- SNAT: an inside host's UDP stream to a server --------------------------------


def _snat_stream(
    v6: bool, r: Router | None = None, sport: int = 40000
) -> tuple[Router, Conn, Packet, Packet]:
    """A NAT router (``r``, or a new one) whose connection inside:``sport`` ->
    server:9 has become a stream (a reply, then more than 2 s of traffic); the
    packets of each direction, as they arrive."""
    r = N.nat_router() if r is None else r
    host, server, out = (N.A6, N.SERVER6, N.OUT6) if v6 else (N.A4, N.SERVER4, N.OUT4)
    ip = IPv6 if v6 else IP
    orig = ip(src=host, dst=server) / UDP(sport=sport, dport=9) / (b"q" * 32)
    assert _sent(r, bytes(N.inside(orig)), C, 0.0)
    assert r.nat is not None
    (conn,) = [c for c in r.nat.table.connections() if c.key_orig[3] == sport]
    port = conn.key_reply[5]  # the mapped port the server answers to
    reply = ip(src=server, dst=out) / UDP(sport=9, dport=port) / (b"a" * 32)
    assert _sent(r, bytes(N.outside(reply)), U, 0.5)
    assert _sent(r, bytes(N.inside(orig)), C, 3.0)
    assert conn.assured
    return r, conn, orig, reply


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_udp_stream_is_translated_both_ways_as_the_pipeline_does(
    obj: BpfObject, v6: bool
) -> None:
    r, _, orig, reply = _snat_stream(v6)
    tables = _tables(obj, r)
    # Not the fast path's before the tables take the pipeline's notes.
    assert _run(obj, bytes(N.inside(orig)), C)[0] == XDP_PASS
    assert tables.sync_connections(r.nat.table) == []  # type: ignore[union-attr]
    for frame, port in ((bytes(N.inside(orig)), C), (bytes(N.outside(reply)), U)):
        verdict, out = _run(obj, frame, port)
        sent = _sent(r, frame, port, 4.0)
        assert verdict == XDP_REDIRECT, "hopgate's fast path passed up an offloaded stream"
        assert len(sent) == 1 and bytes(sent[0].frame) == out, (
            "hopgate's fast path translated otherwise than the pipeline"
        )


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_what_it_forwarded_is_accounted_and_keeps_the_connection(obj: BpfObject, v6: bool) -> None:
    r, conn, orig, reply = _snat_stream(v6)
    nat = r.nat
    assert nat is not None
    tables = _tables(obj, r)
    tables.sync_connections(nat.table)
    before = (conn.packets_orig, conn.packets_reply, conn.bytes_orig)
    for _ in range(5):
        _run(obj, bytes(N.inside(orig)), C)
    _run(obj, bytes(N.outside(reply)), U)
    tables.read_flows(nat.table)
    size = len(orig)
    assert (conn.packets_orig, conn.packets_reply, conn.bytes_orig) == (
        before[0] + 5,
        before[1] + 1,
        before[2] + 5 * size,
    )
    # Read again: nothing new, nothing counted twice.
    tables.read_flows(nat.table)
    assert conn.packets_orig == before[0] + 5
    # The deadline follows the fast path's packets (read at about 0 s of the
    # pipeline's time, as the tables' clock was set).
    assert conn.expires >= nat.table.timeouts.udp_stream - 1.0


def test_the_flows_are_read_back_a_slice_at_a_time(obj: BpfObject) -> None:
    """The daemon reads a large table back a few thousand flows a loop turn:
    read in slices, every flow's packets are counted, once."""
    r, *_ = _snat_stream(False)
    streams = [_snat_stream(False, r, sport) for sport in (40001, 40002, 40003)]
    nat = r.nat
    assert nat is not None
    tables = _tables(obj, r)
    tables.sync_connections(nat.table)
    before = {c: c.packets_orig for c in nat.table.connections()}
    for _, _, orig, _ in streams:
        assert _run(obj, bytes(N.inside(orig)), C)[0] == XDP_REDIRECT
    slices, token = 1, tables.read_flows_from(nat.table, None, 2)
    while token is not None:
        slices += 1
        token = tables.read_flows_from(nat.table, token, 2)
    assert slices >= 4  # 8 flows, 2 a slice
    got = {c: c.packets_orig - before[c] for c in nat.table.connections()}
    assert sorted(got.values()) == [0, 1, 1, 1]
    tables.read_flows(nat.table)  # nothing new: nothing counted again
    assert {c: c.packets_orig - before[c] for c in nat.table.connections()} == got


def test_an_offloaded_connection_outlives_its_deadline_by_the_grace_only(obj: BpfObject) -> None:
    """Expiry waits FAST_PATH_GRACE past the deadline for the fast path's
    packets to be read back; then the connection goes, and so does its flow."""
    r, conn, orig, _ = _snat_stream(False)
    nat = r.nat
    assert nat is not None
    tables = _tables(obj, r)
    tables.sync_connections(nat.table)
    deadline = conn.expires
    r.poll(deadline + 0.5)
    assert nat.table.holds(conn), "expired while the fast path may still be forwarding it"
    r.poll(deadline + FAST_PATH_GRACE + 1.0)
    assert not nat.table.holds(conn)
    tables.sync_connections(nat.table)
    assert _run(obj, bytes(N.inside(orig)), C)[0] == XDP_PASS, (
        "hopgate's fast path kept the flow of an expired connection"
    )


# -- what a NAT router leaves to the pipeline --------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        # A new flow from inside: the pipeline makes its mapping.
        N.inside(IP(src=N.B4, dst=N.SERVER4) / UDP(sport=5000, dport=9)),
        N.inside(IPv6(src=N.B6, dst=N.SERVER6) / UDP(sport=5000, dport=9)),
        # TCP and echoes: not offloaded (yet).
        N.inside(IP(src=N.A4, dst=N.SERVER4) / TCP(sport=5000, dport=80, flags="A")),
        N.inside(IP(src=N.A4, dst=N.SERVER4) / ICMP()),
        # To the outside address: the pipeline's (a reply, or unsolicited).
        N.outside(IP(src=N.SERVER4, dst=N.OUT4) / UDP(sport=9, dport=6000)),
        # From outside to an inside host: unsolicited unless a connection says so.
        N.outside(IP(src=N.SERVER4, dst=N.A4) / UDP(sport=9, dport=6000)),
        N.outside(IPv6(src=N.SERVER6, dst=N.A6) / UDP(sport=9, dport=6000)),
    ],
    ids=lambda f: IP(bytes(f)[14:]).summary() if bytes(f)[14] >> 4 == 4 else "ipv6",
)
def test_a_nat_router_passes_up_what_may_be_a_connection(obj: BpfObject, frame: bytes) -> None:
    r, *_ = _snat_stream(False)
    _tables(obj, r).sync_connections(r.nat.table)  # type: ignore[union-attr]
    port = C if bytes(frame)[6:12] != bytes.fromhex(UPSTREAM_MAC.replace(":", "")) else U
    assert _run(obj, bytes(frame), port)[0] == XDP_PASS


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    v6=st.booleans(),
    reply=st.booleans(),
    size=st.integers(0, 1400),
    zero_sum=st.booleans(),
    ttl=st.sampled_from([2, 64, 255]),
)
def test_any_datagram_of_a_stream_leaves_as_the_pipelines(
    obj: BpfObject, v6: bool, reply: bool, size: int, zero_sum: bool, ttl: int
) -> None:
    r, _, orig, back = _snat_stream(v6)
    _tables(obj, r).sync_connections(r.nat.table)  # type: ignore[union-attr]
    pkt = (back if reply else orig).copy()
    pkt[UDP].remove_payload()
    pkt = pkt / (b"z" * size)
    if v6:
        pkt.hlim = ttl
    else:
        pkt.ttl = ttl
        if zero_sum:
            pkt[UDP].chksum = 0  # no checksum: stays none
    frame = bytes(N.outside(pkt) if reply else N.inside(pkt))
    port = U if reply else C
    verdict, out = _run(obj, frame, port)
    sent = _sent(r, frame, port, 4.0)
    if verdict == XDP_PASS:
        # Too big for the way out: the pipeline's to answer.
        assert len(frame) - 14 > 1400 or not sent, f"passed up {pkt.summary()}"
        return
    assert verdict == XDP_REDIRECT
    assert len(sent) == 1 and bytes(sent[0].frame) == out, pkt.summary()


# -- FNAT: a load-balanced UDP service, source in, source out ----------------------


def test_a_balanced_udp_stream_goes_back_the_way_it_came(obj: BpfObject) -> None:
    """The client's datagrams come in by uplink B while the default route is by
    A: the replies go back by B, to router B's MAC, as the pipeline sends them."""
    svc = L.service(protocol=PROTO_UDP, port=53)
    r = L.lb_router(svc)
    ask = IP(src=L.CLIENT4, dst=L.VIP4) / UDP(sport=33333, dport=53) / (b"q" * 20)
    assert _sent(r, bytes(L.via_b(ask)), L.B, 0.0)
    conn = _conn(r)
    be = ipaddress.ip_address(conn.key_reply[2])
    lip, lport = ipaddress.ip_address(conn.key_reply[4]), conn.key_reply[5]
    backend_mac = L.BE1_MAC if str(be) == L.BE1 else L.BE2_MAC
    answer = IP(src=str(be), dst=str(lip)) / UDP(sport=conn.key_reply[3], dport=lport) / (b"a" * 20)
    assert _sent(r, bytes(L.from_backend(answer, backend_mac)), L.S, 0.5)
    assert _sent(r, bytes(L.via_b(ask)), L.B, 3.0)
    assert conn.assured
    _tables(obj, r).sync_connections(r.nat.table)  # type: ignore[union-attr]
    for frame, port in (
        (bytes(L.via_b(ask)), L.B),
        (bytes(L.from_backend(answer, backend_mac)), L.S),
    ):
        verdict, out = _run(obj, frame, port)
        sent = _sent(r, frame, port, 4.0)
        assert verdict == XDP_REDIRECT, "hopgate's fast path passed up a balanced stream"
        assert len(sent) == 1 and bytes(sent[0].frame) == out
    assert out[:6] == bytes.fromhex(L.RB_MAC.replace(":", "")), "not back the way it came"
