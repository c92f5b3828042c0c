"""Established TCP connections in the XDP fast path, against the pipeline
(issue 11's rule).  Once NAT's connection is established and assured the
pipeline hands it to the program with its tracker (tcptrack's windows); the
program forwards the plain ACKs that lie in both windows, learning from them
as tcptrack does, and passes everything else up, after which the connection is
the pipeline's again with the tracker as the program left it.

The differential test runs generated segment sequences (data, pure ACKs,
retransmissions, segments beyond the window, acks of unsent data, zero and
scaled windows, SYN, FIN, RST, expiring TTLs) through two routers built the
same way: one with the pipeline alone, one with the program in front of it.
For each segment the program forwards exactly the bytes the pipeline sends, or
passes it up untouched and the pipeline behind it answers as the other does;
after each, the two trackers are the same.  Root only (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from hopgate.pipeline import conntrack, tcptrack
from hopgate.pipeline.conntrack import Conn, TcpState
from hopgate.pipeline.router import Router
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject
from tests.unit import nat_frames as N
from tests.unit.frames import C, U
from tests.unit.test_xdp_nat import _conn, _executed, _run, _sent, _tables

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

CLIENT_ISN, SERVER_ISN = 1_000_000, 4_000_000_000  # the server's wraps past 2**32


@pytest.fixture(autouse=True)
def _at_once(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection is handed over as soon as it is established and assured,
    so that every segment after the handshake is the program's to judge (but
    in the test of the threshold itself)."""
    if "threshold" not in request.node.name:
        monkeypatch.setattr(conntrack, "TCP_OFFLOAD_AFTER", 0)


@dataclass
class Endpoint:
    nxt: int  # the next sequence number it sends
    scale: int | None  # the window scale its SYN offers


@dataclass
class Conversation:
    """A client inside and a server outside, talking through the NAT router:
    what each has sent, for building the next segment."""

    v6: bool
    client: Endpoint
    server: Endpoint
    mapped: int = 0  # the port the NAT gave the client
    liberal: bool = False  # tracked liberally (see Pair)
    window: int = 65535  # what each advertises unless told otherwise

    def segment(
        self,
        direction: int,
        flags: str = "A",
        size: int = 0,
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        ttl: int = 64,
        advance: bool = True,
        padding: int = 0,
    ) -> tuple[bytes, int]:
        """A segment from the client (0) or the server (1) as it arrives at the
        router (``padding``: bytes of Ethernet padding after it), and the
        router's port it arrives on."""
        me, peer = (self.client, self.server) if direction == 0 else (self.server, self.client)
        seq = me.nxt if seq is None else seq
        ack = peer.nxt if ack is None else ack
        opts = []
        if "S" in flags and me.scale is not None:
            opts = [("WScale", me.scale)]
        tcp = TCP(
            sport=40000 if direction == 0 else 80,
            dport=80 if direction == 0 else self.mapped,
            seq=seq % 2**32,
            ack=ack % 2**32 if "A" in flags else 0,
            flags=flags,
            window=self.window if window is None else window,
            options=opts,
        ) / (b"d" * size)
        if advance and seq == me.nxt:
            me.nxt = (me.nxt + size + ("S" in flags) + ("F" in flags)) % 2**32
        if direction == 0:
            src, dst = (N.A6, N.SERVER6) if self.v6 else (N.A4, N.SERVER4)
            ip = IPv6(src=src, dst=dst, hlim=ttl) if self.v6 else IP(src=src, dst=dst, ttl=ttl)
            return bytes(N.inside(ip / tcp)) + bytes(padding), C
        src, dst = (N.SERVER6, N.OUT6) if self.v6 else (N.SERVER4, N.OUT4)
        ip = IPv6(src=src, dst=dst, hlim=ttl) if self.v6 else IP(src=src, dst=dst, ttl=ttl)
        return bytes(N.outside(ip / tcp)) + bytes(padding), U


def _handshake(routers: tuple[Router, ...], talk: Conversation, now: float) -> None:
    """SYN, SYN-ACK, ACK through each router's pipeline: established and assured."""
    frame, port = talk.segment(0, "S")
    for r in routers:
        assert _sent(r, frame, port, now)
    talk.mapped = _conn(routers[0]).key_reply[5]
    for i, (direction, flags) in enumerate(((1, "SA"), (0, "A"))):
        frame, port = talk.segment(direction, flags)
        for r in routers:
            assert _sent(r, frame, port, now + 0.01 * (i + 1))
    for r in routers:
        conn = _conn(r)
        assert conn.state == TcpState.ESTABLISHED and conn.assured


def _talk(v6: bool, client_scale: int | None = 7, server_scale: int | None = 7) -> Conversation:
    return Conversation(v6, Endpoint(CLIENT_ISN, client_scale), Endpoint(SERVER_ISN, server_scale))


def _tracker(tables: T.Tables, conn: Conn) -> list[int]:
    """The connection's tracker: the program's if it holds it, else the pipeline's."""
    ids = tables._ids.get(conn)  # what the test checks is where it lives
    if ids is not None:
        tc = T.TcpConn()
        assert tables.obj.lookup("tcp_conns", ctypes.c_uint32(ids[0]), tc, lock=True)
        raw = ctypes.string_at(ctypes.addressof(tc) + T.TRACKER_AT, 4 * 15)
        return list(memoryview(raw).cast("I"))
    assert conn.tcp is not None
    return list(conn.tcp)


class Pair:
    """Two NAT routers with the same connection: ``ref`` has the pipeline alone,
    ``fast`` has the program in front of its pipeline."""

    def __init__(self, obj: BpfObject, talk: Conversation, liberal: bool = False) -> None:
        """``liberal``: the connection is tracked liberally (as one restored
        from a checkpoint, or picked up in mid-stream)."""
        self.ref, self.fast = N.nat_router(), N.nat_router()
        self.now = 0.02
        _handshake((self.ref, self.fast), talk, 0.0)
        if liberal:
            for r in (self.ref, self.fast):
                tcptrack.be_liberal(_conn(r).tcp)  # type: ignore[arg-type]
        self.obj = obj
        self.tables = _tables(obj, self.fast)
        self.table = self.fast.nat.table  # type: ignore[union-attr]
        self.sync()
        self.forwarded = 0

    def sync(self) -> None:
        """What the loop does at the end of every turn."""
        assert self.tables.sync_connections(self.table) == []
        assert self.tables.failed == []

    def step(self, frame: bytes, port: int) -> None:
        self.now += 0.01
        expected = [bytes(t.frame) for t in _sent(self.ref, frame, port, self.now)]
        verdict, out = _run(self.obj, frame, port)
        if verdict == XDP_REDIRECT:
            self.forwarded += 1
            assert expected == [out], "hopgate's fast path forwarded what the pipeline does not"
        else:
            assert verdict == XDP_PASS
            assert out == frame, "hopgate's fast path changed a frame it passed up"
            got = self.pipeline(frame, port)
            assert got == expected, "the pipeline behind hopgate's fast path answered otherwise"
        self.check()

    def pipeline(self, frame: bytes, port: int) -> list[bytes]:
        """What the router with the fast path sends of a frame that reached its
        pipeline, its actions run as the loop runs them."""
        actions = self.fast.process(bytearray(frame), port, self.now)
        return [
            bytes(t.frame) for t in _executed(self.obj, self.tables, self.fast, actions, self.now)
        ]

    def reordered(
        self,
        late: list[tuple[bytes, int]],
        meanwhile: list[tuple[bytes, int]] = (),  # type: ignore[assignment]
    ) -> None:
        """Segments that came in the order ``late``, then ``meanwhile``, ``late``
        just before the handover: the program forwards ``meanwhile`` as they
        come, and the pipeline reads ``late`` from its socket only after (they
        waited there).  ``ref``, the pipeline alone, takes them all in the
        order they came.  Each router sends each segment as the other does,
        and their trackers end the same."""
        expected = []
        for frame, port in (*late, *meanwhile):
            self.now += 0.01
            expected.append([bytes(t.frame) for t in _sent(self.ref, frame, port, self.now)])
        for i, (frame, port) in enumerate(meanwhile, len(late)):
            verdict, out = _run(self.obj, frame, port)
            assert verdict == XDP_REDIRECT and [out] == expected[i], (
                "hopgate's fast path forwarded otherwise than the pipeline",
                i,
                verdict,
            )
            self.forwarded += 1
            self.sync()
        for i, (frame, port) in enumerate(late):
            assert self.pipeline(frame, port) == expected[i], (
                "hopgate with its fast path answered a segment from before the handover otherwise"
            )
        self.check()

    def check(self) -> None:
        self.sync()
        a, b = self.ref.nat.table.connections(), self.table.connections()  # type: ignore[union-attr]
        assert len(a) == len(b)
        if a:
            assert b[0].state == a[0].state
            assert _tracker(self.tables, b[0]) == list(a[0].tcp), (  # type: ignore[arg-type]
                "hopgate's fast path tracked the windows otherwise than the pipeline"
            )


# -- the basics -----------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_established_connection_is_forwarded_both_ways_as_the_pipeline_does(
    obj: BpfObject, v6: bool
) -> None:
    talk = _talk(v6)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    assert conn in pair.table.offloaded and conn not in (pair.table.to_offload or ())
    for direction, size in ((0, 100), (1, 1340), (1, 1340), (0, 0), (1, 0), (0, 512)):
        pair.step(*talk.segment(direction, "PA" if size else "A", size))
    assert pair.forwarded == 6, "hopgate's fast path passed up plain in-window segments"
    # What it forwarded is the connection's, in its counters.
    ref = _conn(pair.ref)
    pair.tables.read_flows(pair.table)
    assert (conn.packets_orig, conn.packets_reply, conn.bytes_orig, conn.bytes_reply) == (
        ref.packets_orig,
        ref.packets_reply,
        ref.bytes_orig,
        ref.bytes_reply,
    )


def test_a_connection_is_handed_over_past_the_threshold_only(obj: BpfObject) -> None:
    """A short exchange stays the pipeline's (its handover and take-back would
    cost more than its segments); past ``TCP_OFFLOAD_AFTER`` packets it is the
    program's."""
    talk = _talk(False)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    assert conn not in pair.table.offloaded, "handed over at its handshake"
    sent = conn.packets_orig + conn.packets_reply
    for i in range(conntrack.TCP_OFFLOAD_AFTER - sent):
        assert conn not in pair.table.offloaded
        pair.step(*talk.segment(i % 2, "PA", 10))
    pair.step(*talk.segment(0, "A"))
    assert conn in pair.table.offloaded and pair.tables._ids.get(conn) is not None
    before = pair.forwarded
    pair.step(*talk.segment(1, "PA", 10))
    assert pair.forwarded == before + 1


def test_a_padded_pure_ack_stays_in_the_fast_path(obj: BpfObject) -> None:
    """A pure ACK without options fills a 54-byte frame, sent as 60: the
    padding is cut and the segment forwarded; the connection stays the
    program's."""
    talk = _talk(False)
    pair = Pair(obj, talk)
    before = pair.forwarded
    pair.step(*talk.segment(1, "PA", 500))
    pair.step(*talk.segment(0, "A", padding=6))
    assert pair.forwarded == before + 2
    assert pair.table.counters["fastpath-taken-back"] == 0


def test_a_window_that_fills_closes_and_overflows_is_tracked_as_the_pipeline_does(
    obj: BpfObject,
) -> None:
    talk = _talk(False, None, None)  # no scaling: windows as advertised
    talk.window = 1000
    pair = Pair(obj, talk)
    pair.step(*talk.segment(1, "PA", 1000))  # fills the client's window
    pair.step(*talk.segment(0, "A", window=0))  # closes it
    pair.step(*talk.segment(1, "PA", 100))  # past the edge: the window is taken to be larger
    pair.step(*talk.segment(0, "A", window=500))  # opens it again
    pair.step(*talk.segment(1, "PA", 500))
    pair.step(*talk.segment(0, "A"))
    assert pair.forwarded == 6


@pytest.mark.parametrize("flags", ["FA", "RA", "R", "S", "P"])
def test_a_segment_that_moves_the_state_takes_the_connection_back(
    obj: BpfObject, flags: str
) -> None:
    talk = _talk(False)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    pair.step(*talk.segment(1, "PA", 1000))  # the program forwards and learns
    pair.step(*talk.segment(0, flags))  # passed up: the pipeline's from here
    assert conn not in pair.table.offloaded and conn not in pair.tables._ids
    assert pair.table.counters["fastpath-taken-back"] == 1
    # The segment the program forwarded is counted on the connection.
    assert conn.packets_reply == _conn(pair.ref).packets_reply
    assert not pair.obj.keys("flows", T.FlowKey) and not pair.obj.keys("tcp_conns", ctypes.c_uint32)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_segments_from_before_the_handover_are_the_programs_and_the_connection_stays(
    obj: BpfObject, v6: bool
) -> None:
    """Segments received before the handover reach the pipeline after it (they
    waited in its socket), after later ones the program forwarded: the
    pipeline gives them to the program, which forwards them as the pipeline
    would have as they came, learning from them; the connection stays the
    program's.  (Taking it back at each of them made the handover flap under
    a fast stream.)"""
    talk = _talk(v6)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    late = [talk.segment(1, "PA", 1000), talk.segment(0, "A"), talk.segment(1, "PA", 500)]
    meanwhile = [talk.segment(1, "PA", 1000), talk.segment(0, "A"), talk.segment(1, "PA", 200)]
    pair.reordered(late, meanwhile)
    counters = pair.table.counters
    assert (counters["fastpath-replayed"], counters["fastpath-taken-back"]) == (3, 0)
    assert conn in pair.table.offloaded and conn in pair.tables._ids
    before = pair.forwarded
    pair.step(*talk.segment(0, "A"))
    assert pair.forwarded == before + 1, "the program no longer forwards after the late segments"


@pytest.mark.parametrize(("flags", "ttl"), [("FA", 64), ("A", 1)], ids=["fin", "ttl-1"])
def test_a_segment_from_before_the_handover_that_the_program_passes_takes_it_back(
    obj: BpfObject, flags: str, ttl: int
) -> None:
    """A late segment the program would not forward (a FIN; a TTL to answer,
    which it passes up before it looks at the connection, marking nothing) goes
    back to the pipeline, with the connection, and is answered as the pipeline
    alone answers it."""
    talk = _talk(False)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    pair.reordered([talk.segment(0, flags, ttl=ttl, advance=ttl > 1)])
    counters = pair.table.counters
    assert (counters["fastpath-replayed"], counters["fastpath-replay-passed"]) == (1, 1)
    assert counters["fastpath-taken-back"] == 1
    assert conn not in pair.tables._ids
    assert _conn(pair.fast).state == _conn(pair.ref).state


def test_a_segment_from_before_the_handover_beyond_the_window_goes_to_the_pipeline(
    obj: BpfObject,
) -> None:
    """A late ACK of data never sent was out of window as it came too (what a
    side has sent only grows): the program passes it up, and the pipeline,
    taking the connection back, drops it as the pipeline alone does."""
    talk = _talk(False)
    pair = Pair(obj, talk)
    pair.reordered([talk.segment(0, "A", ack=talk.server.nxt + 10_000)])
    counters, ref = pair.table.counters, pair.ref.nat.table.counters  # type: ignore[union-attr]
    assert counters["tcp-out-of-window"] == ref["tcp-out-of-window"] == 1
    assert (counters["fastpath-replay-passed"], counters["fastpath-taken-back"]) == (1, 1)


def test_a_segment_from_before_the_handover_too_old_as_it_came_goes_through(
    obj: BpfObject,
) -> None:
    """The one answer that differs from the pipeline's: a late ACK that was
    already too old as it came (its ack more than a window behind) goes
    through, learning nothing, where the pipeline alone drops it.  The program
    cannot tell it from one that became too old while it waited (the next
    test); TCP ignores an old ACK."""
    talk = _talk(False, None, None)  # no scaling: the ack window is 66,000
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    before = _tracker(pair.tables, conn)
    frame, port = talk.segment(0, "A", ack=talk.server.nxt - 70_000)
    assert _sent(pair.ref, frame, port, pair.now) == []  # the pipeline alone drops it
    (sent,) = pair.pipeline(frame, port)
    assert IP(sent[14:])[TCP].ack == (talk.server.nxt - 70_000) % 2**32
    assert _tracker(pair.tables, conn)[:12] == before[:12], "the program learned from it"
    counters = pair.table.counters
    assert (counters["fastpath-replayed"], counters["fastpath-taken-back"]) == (1, 0)
    assert counters["tcp-out-of-window"] == 0


def test_a_segment_in_window_as_it_came_but_stale_when_read_goes_through(
    obj: BpfObject,
) -> None:
    """A client's ACK that came just before the handover, read by the pipeline
    only after the program forwarded more than a window of the server's data:
    it was in window as it came, so it goes through, though the program's
    tracker, ahead now, finds its ack too old (Linux, taking segments in the
    order they came, passes it).  The program learns nothing from it."""
    talk = _talk(False, None, None)  # no scaling: the ack window is 66,000
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    late = [talk.segment(0, "A")]  # acknowledges what the server has sent so far
    meanwhile = []
    for _ in range(7):  # 70,000 bytes, acknowledged as they go
        meanwhile += [talk.segment(1, "PA", 1000) for _ in range(10)]
        meanwhile.append(talk.segment(0, "A"))
    pair.reordered(late, meanwhile)
    counters = pair.table.counters
    assert counters["tcp-out-of-window"] == 0, "a segment in window as it came was dropped"
    assert (counters["fastpath-replayed"], counters["fastpath-taken-back"]) == (1, 0)
    assert conn in pair.table.offloaded and conn in pair.tables._ids


def test_out_of_window_goes_up_and_the_next_segment_in_window_hands_it_over_again(
    obj: BpfObject,
) -> None:
    talk = _talk(False)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    frame, port = talk.segment(0, "PA", 100, seq=talk.client.nxt + 2**30, advance=False)
    pair.step(frame, port)  # beyond the window: the pipeline drops it (both do)
    assert pair.table.counters["tcp-out-of-window"] == 1
    assert conn not in pair.table.offloaded
    pair.step(*talk.segment(0, "PA", 100))  # in window: through the pipeline, handed over
    assert conn in pair.table.offloaded and conn in pair.tables._ids
    before = pair.forwarded
    pair.step(*talk.segment(1, "A"))
    assert pair.forwarded == before + 1


def test_the_deadline_follows_unacknowledged_data(obj: BpfObject) -> None:
    """Established connections live 5 days idle, but 300 s if data waits for
    an acknowledgement (Linux's nf_conntrack_tcp_timeout_unacknowledged), and
    the program's segments say which."""
    talk = _talk(False)
    pair = Pair(obj, talk)
    conn = _conn(pair.fast)
    t = pair.table.timeouts
    pair.step(*talk.segment(0, "PA", 100))  # not acknowledged yet
    pair.tables.read_flows(pair.table)
    assert conn.expires < t.tcp_unacknowledged + 10
    pair.step(*talk.segment(1, "A"))  # now it is
    pair.tables.read_flows(pair.table)
    assert conn.expires > t.tcp_established - 10


def test_a_liberally_tracked_connection_takes_segments_beyond_its_windows(
    obj: BpfObject,
) -> None:
    """As the pipeline does for such a connection: out of window, yet
    forwarded, and nothing learned from it."""
    talk = _talk(False)
    pair = Pair(obj, talk, liberal=True)
    before = pair.forwarded
    pair.step(*talk.segment(0, "PA", 100, seq=talk.client.nxt + 2**29, advance=False))
    pair.step(*talk.segment(1, "A", ack=talk.client.nxt + 2**20))
    assert pair.forwarded == before + 2


def test_a_connection_gone_from_the_table_leaves_the_program(obj: BpfObject) -> None:
    talk = _talk(True)
    pair = Pair(obj, talk)
    pair.table.remove(_conn(pair.fast))
    pair.sync()
    assert not pair.obj.keys("flows", T.FlowKey) and not pair.obj.keys("tcp_conns", ctypes.c_uint32)
    verdict, _ = _run(pair.obj, talk.segment(1, "A")[0], U)
    assert verdict == XDP_PASS


# -- the differential test ------------------------------------------------------------

# Plain segments in the window weigh most: they are what the program takes.
KINDS = (
    *["data"] * 5, *["ack"] * 3, "padded-ack", "retransmit", "beyond", "ack-unsent", "old-ack",
    "zero-window", "ttl1", "syn", "fin", "rst", "no-ack",
)  # fmt: skip


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Conversation, list[tuple[int, str, int, int]]]:
    scales = st.one_of(st.none(), st.sampled_from([0, 2, 7, 14]))
    talk = _talk(draw(st.booleans()), draw(scales), draw(scales))
    talk.liberal = draw(st.booleans())
    steps = draw(
        st.lists(
            st.tuples(
                st.integers(0, 1),
                st.sampled_from(KINDS),
                st.one_of(st.just(0), st.integers(1, 1300), st.integers(1300, 1450)),
                st.one_of(st.just(65535), st.just(65535), st.integers(0, 65535)),
            ),
            min_size=1,
            max_size=40,
        )
    )
    return talk, steps


def _frame(talk: Conversation, step: tuple[int, str, int, int]) -> tuple[bytes, int]:
    direction, kind, size, window = step
    me, peer = (talk.client, talk.server) if direction == 0 else (talk.server, talk.client)
    match kind:
        case "data":
            return talk.segment(direction, "PA", size, window=window)
        case "ack":
            return talk.segment(direction, "A", window=window)
        case "padded-ack":  # a pure ACK filled up to Ethernet's 60 bytes
            return talk.segment(direction, "A", window=window, padding=6)
        case "retransmit":
            return talk.segment(direction, "PA", size, seq=me.nxt - size, window=window)
        case "beyond":
            return talk.segment(direction, "PA", size, seq=me.nxt + 2**29, window=window)
        case "ack-unsent":
            return talk.segment(direction, "A", ack=peer.nxt + 2**20, window=window)
        case "old-ack":
            return talk.segment(direction, "A", ack=peer.nxt - 2**29, window=window)
        case "zero-window":
            return talk.segment(direction, "A", window=0)
        case "ttl1":
            return talk.segment(direction, "PA", size, ttl=1, window=window, advance=False)
        case "syn":
            return talk.segment(direction, "S", seq=me.nxt + 12345, advance=False)
        case "fin":
            return talk.segment(direction, "FA", window=window)
        case "rst":
            return talk.segment(direction, "RA", window=window, advance=False)
        case _:
            return talk.segment(direction, "P", size, window=window)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(conversations())
def test_any_segment_sequence_is_answered_as_the_pipeline_does(
    obj: BpfObject, drawn: tuple[Conversation, list[tuple[int, str, int, int]]]
) -> None:
    talk, steps = drawn
    for name in ("flows", "tcp_conns"):  # what an earlier example left
        for key in obj.keys(name, T.LAYOUTS[name][0]):
            obj.delete(name, key)
    pair = Pair(obj, talk, talk.liberal)
    for step in steps:
        pair.step(*_frame(talk, step))
    event(f"forwarded by the program: {min(pair.forwarded, 5)}+")


def test_the_tracker_layouts_agree() -> None:
    """The program's tracker is tcptrack's array after the lock and the flag."""
    assert ctypes.sizeof(T.TcpConn) == 4 * 2 + 4 * 15 + 4
    assert T.TcpConn.last_end.offset - T.TRACKER_AT == 4 * 14
