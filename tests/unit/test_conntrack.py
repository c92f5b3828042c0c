"""The connection table over time, as Linux conntrack keeps it: deadlines that
follow the state (earlier as well as later), assured only after both directions,
mid-stream pickups with a short timeout, TCP window tracking (a blind RST does not
end a connection), reopening, and early drop.  Driven through a NAT router with
exact frames and a fake clock."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.packet import Raw

from hopgate.control.config import TimeoutsConfig
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.conntrack import TICK, Conn, TcpState, Timeouts
from hopgate.pipeline.nat import Nat
from hopgate.pipeline.router import Router
from tests.unit.frames import C, U, drops, sent
from tests.unit.nat_frames import A4, B4, B_MAC, OUT4, SERVER4, inside, nat_router, outside

SPORT = 40000
CISN = 1000  # the client's initial sequence number
SISN = 7000  # the server's


@dataclass
class Flow:
    """One TCP connection through the NAT, both ends played by the test."""

    r: Router
    sport: int = SPORT
    cseq: int = CISN + 1  # the client's next sequence number
    sseq: int = SISN + 1

    @property
    def nat(self) -> Nat:
        assert self.r.nat is not None
        return self.r.nat

    def client(self, flags: str, now: float, data: bytes = b"", **kw: int) -> list[Action]:
        seg = TCP(sport=self.sport, dport=80, flags=flags, seq=kw.get("seq", self.cseq))
        seg.ack = kw.get("ack", self.sseq)
        pkt = IP(src=A4, dst=SERVER4) / seg / Raw(data) if data else IP(src=A4, dst=SERVER4) / seg
        out = self.r.process(inside(pkt), C, now)
        if "seq" not in kw and sent(out, U):
            self.cseq += len(data) + ("F" in flags)
        return out

    def server(self, flags: str, now: float, data: bytes = b"", **kw: int) -> list[Action]:
        seg = TCP(sport=80, dport=self.sport, flags=flags, seq=kw.get("seq", self.sseq))
        seg.ack = kw.get("ack", self.cseq)
        ip = IP(src=SERVER4, dst=OUT4)
        pkt = ip / seg / Raw(data) if data else ip / seg
        out = self.r.process(outside(pkt), U, now)
        if "seq" not in kw and sent(out, C):
            self.sseq += len(data) + ("F" in flags)
        return out

    def conn(self) -> Conn:
        (conn,) = (c for c in self.nat.connections() if c.key_orig[3] == self.sport)
        return conn

    def handshake(self, now: float = 1.0) -> Conn:
        r = self.r
        syn = IP(src=A4, dst=SERVER4) / TCP(sport=self.sport, dport=80, flags="S", seq=CISN)
        assert sent(r.process(inside(syn), C, now), U)
        synack = IP(src=SERVER4, dst=OUT4) / TCP(
            sport=80, dport=self.sport, flags="SA", seq=SISN, ack=CISN + 1
        )
        assert sent(r.process(outside(synack), U, now + 0.01), C)
        assert sent(self.client("A", now + 0.02), U)
        return self.conn()


def router(**timeouts: float) -> Router:
    return nat_router(timeouts=Timeouts(**timeouts))


def gone_by(r: Router, deadline: float) -> bool:
    """The connection is still there just before its deadline and gone within a tick."""
    assert r.nat is not None
    r.poll(deadline - 0.01)
    if len(r.nat.table) != 1:
        return False
    r.poll(deadline + TICK)
    return len(r.nat.table) == 0 and r.nat.state().mappings == 0


# -- deadlines follow the state --------------------------------------------------------


def test_handshake_makes_an_assured_established_connection() -> None:
    f = Flow(router())
    conn = f.handshake(1.0)
    assert conn.state == TcpState.ESTABLISHED and conn.assured
    assert conn.expires == pytest.approx(1.02 + 432000)


def test_a_closed_connection_leaves_at_its_time_wait_timeout_not_days_later() -> None:
    f = Flow(router(tcp_time_wait=2))
    f.handshake(1.0)
    f.client("A", 1.1, b"GET / HTTP/1.0\r\n\r\n")
    f.server("A", 1.2, b"HTTP/1.0 200 OK\r\n\r\n")
    assert sent(f.server("FA", 1.3), C)
    assert f.conn().state == TcpState.FIN_WAIT
    assert sent(f.client("FA", 1.4), U)
    assert f.conn().state == TcpState.LAST_ACK
    assert sent(f.server("A", 1.5), C)
    assert f.conn().state == TcpState.TIME_WAIT
    assert gone_by(f.r, 1.5 + 2)


@pytest.mark.parametrize(
    ("steps", "state", "timeout"),
    [
        ((), TcpState.SYN_SENT, "tcp_syn_sent"),
        (("SA",), TcpState.SYN_RECV, "tcp_syn_recv"),
        (("SA", "cA", "cFA"), TcpState.FIN_WAIT, "tcp_fin_wait"),
        (("SA", "cA", "cFA", "A"), TcpState.CLOSE_WAIT, "tcp_close_wait"),
        (("SA", "cA", "cFA", "FA"), TcpState.LAST_ACK, "tcp_last_ack"),
        (("SA", "cA", "cR"), TcpState.CLOSE, "tcp_close"),
    ],
    ids=["syn-sent", "syn-recv", "fin-wait", "close-wait", "last-ack", "close"],
)
def test_each_state_leaves_the_table_at_its_own_timeout(
    steps: tuple[str, ...], state: TcpState, timeout: str
) -> None:
    # Distinct short timeouts, so that a deadline left over from another state shows.
    timeouts = {
        "tcp_syn_sent": 7,
        "tcp_syn_recv": 8,
        "tcp_established": 1000,
        "tcp_fin_wait": 9,
        "tcp_close_wait": 11,
        "tcp_last_ack": 12,
        "tcp_close": 13,
        "tcp_unacknowledged": 500,
    }
    f = Flow(router(**timeouts))
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=CISN)
    assert sent(f.r.process(inside(syn), C, 1.0), U)
    now = 1.0
    for step in steps:
        now += 0.1
        if step == "SA":
            f.server("SA", now, seq=SISN, ack=CISN + 1)
        elif step.startswith("c"):
            f.client(step[1:], now)
        else:
            f.server(step, now)
    conn = f.conn()
    assert conn.state == state
    assert conn.expires == pytest.approx(now + timeouts[timeout])
    assert gone_by(f.r, now + timeouts[timeout])


def test_a_rst_ends_an_established_connection_within_tcp_close() -> None:
    f = Flow(router())
    f.handshake(1.0)
    assert sent(f.server("R", 2.0, seq=f.sseq, ack=0), C)
    assert f.conn().state == TcpState.CLOSE
    assert gone_by(f.r, 2.0 + 10)


def test_data_not_yet_acknowledged_caps_the_timeout() -> None:
    f = Flow(router(tcp_unacknowledged=300))
    f.handshake(1.0)
    f.client("PA", 2.0, b"x" * 100)
    assert f.conn().expires == pytest.approx(2.0 + 300)
    f.server("A", 2.1)  # acknowledges it
    assert f.conn().expires == pytest.approx(2.1 + 432000)


def test_udp_and_icmp_timeouts() -> None:
    r = router(udp=5, icmp=4)
    assert sent(r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=5353, dport=53)), C, 1.0), U)
    assert gone_by(r, 6.0)
    assert sent(r.process(inside(IP(src=A4, dst=SERVER4) / ICMP(id=77, seq=1)), C, 10.0), U)
    assert r.nat is not None and not r.nat.connections()[0].assured
    assert gone_by(r, 14.0)


def test_other_protocols_use_the_generic_timeout() -> None:
    r = router(generic=20)
    gre = IP(src=A4, dst=SERVER4, proto=47) / Raw(b"\x00\x00\x08\x00" + bytes(20))
    assert sent(r.process(inside(gre), C, 1.0), U)
    assert r.nat is not None and not r.nat.connections()[0].assured
    assert gone_by(r, 21.0)


def test_an_echo_answered_is_still_not_assured_as_in_linux() -> None:
    r = router()
    r.process(inside(IP(src=A4, dst=SERVER4) / ICMP(id=77, seq=1)), C, 1.0)
    r.process(outside(IP(src=SERVER4, dst=OUT4) / ICMP(type=0, id=77, seq=1)), U, 1.1)
    assert r.nat is not None and not r.nat.connections()[0].assured


# -- mid-stream pickup ---------------------------------------------------------------------


def test_a_bare_ack_is_picked_up_unassured_with_the_short_timeout() -> None:
    r = router(tcp_unacknowledged=5)
    ack = IP(src=A4, dst="198.19.9.9") / TCP(sport=1234, dport=80, flags="A", seq=5, ack=9)
    assert sent(r.process(inside(ack), C, 1.0), U)
    assert r.nat is not None
    (conn,) = r.nat.connections()
    assert conn.state == TcpState.ESTABLISHED and not conn.assured
    assert conn.expires == pytest.approx(1.0 + 5)
    assert gone_by(r, 6.0)


def test_a_picked_up_connection_is_assured_once_the_other_side_answers() -> None:
    f = Flow(router())
    assert sent(f.client("A", 1.0), U)
    assert sent(f.server("A", 1.1), C)
    assert sent(f.client("A", 1.2), U)
    conn = f.conn()
    assert conn.assured and conn.expires == pytest.approx(1.2 + 432000)


@pytest.mark.parametrize("flags", ["FA", "SA", "R", "RA", ""])
def test_only_a_syn_or_a_plain_ack_starts_a_connection(flags: str) -> None:
    r = router()
    seg = IP(src=A4, dst=SERVER4) / TCP(sport=1234, dport=80, flags=flags, seq=5, ack=9)
    out = r.process(inside(seg), C, 1.0)
    assert sent(out, U) == [] and drops(out) == [DropReason.NAT_INVALID]


# -- window tracking -------------------------------------------------------------------------


def test_a_blind_rst_does_not_end_a_connection() -> None:
    f = Flow(router())
    f.handshake(1.0)
    out = f.server("R", 2.0, seq=f.sseq + 3_000_000, ack=0)
    assert drops(out) == [DropReason.TCP_OUT_OF_WINDOW] and sent(out, C) == []
    assert f.conn().state == TcpState.ESTABLISHED
    assert f.nat.counters["tcp-out-of-window"] == 1
    # and the transfer goes on
    assert sent(f.server("PA", 2.1, b"data"), C)
    assert sent(f.client("A", 2.2), U)


def test_an_in_window_rst_not_at_the_expected_sequence_passes_without_closing() -> None:
    """RFC 5961: the endpoint answers it with a challenge ACK; the state stays."""
    f = Flow(router())
    f.handshake(1.0)
    assert sent(f.server("R", 2.0, seq=f.sseq + 100, ack=0), C)
    assert f.conn().state == TcpState.ESTABLISHED


def test_out_of_window_data_is_dropped_unless_be_liberal() -> None:
    f = Flow(router())
    f.handshake(1.0)
    out = f.client("PA", 2.0, b"x", seq=f.cseq + 10_000_000)
    assert drops(out) == [DropReason.TCP_OUT_OF_WINDOW]
    g = Flow(nat_router(tcp_be_liberal=True))
    g.handshake(1.0)
    assert sent(g.client("PA", 2.0, b"x", seq=g.cseq + 10_000_000), U)
    # even a liberal table never lets an out-of-window RST through
    assert drops(g.server("R", 2.1, seq=g.sseq + 3_000_000, ack=0)) == [
        DropReason.TCP_OUT_OF_WINDOW
    ]
    assert g.conn().state == TcpState.ESTABLISHED


def test_a_fin_from_the_wrong_state_is_invalid() -> None:
    f = Flow(router())
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=CISN)
    f.r.process(inside(syn), C, 1.0)
    out = f.server("FA", 1.1, seq=SISN, ack=CISN + 1)  # a FIN answering a SYN
    assert drops(out) == [DropReason.TCP_INVALID]
    assert f.conn().state == TcpState.SYN_SENT


def test_a_retransmitted_syn_does_not_renew_the_deadline() -> None:
    r = router(tcp_syn_sent=10)
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=CISN)
    r.process(inside(syn), C, 1.0)
    assert sent(r.process(inside(syn), C, 5.0), U)
    assert gone_by(r, 11.0)


def test_a_reset_as_the_only_answer_forgets_the_connection_at_once() -> None:
    f = Flow(router())
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=CISN)
    f.r.process(inside(syn), C, 1.0)
    assert sent(f.server("RA", 1.1, seq=0, ack=CISN + 1), C)
    assert len(f.nat.table) == 0 and f.nat.state().mappings == 0


def test_a_syn_on_an_established_tuple_is_ignored_and_passes() -> None:
    f = Flow(router())
    f.handshake(1.0)
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=99999)
    assert sent(f.r.process(inside(syn), C, 2.0), U)
    assert f.conn().state == TcpState.ESTABLISHED


def test_the_other_side_confirming_an_ignored_syn_resynchronises() -> None:
    """Our state had missed a restart: the server answers the new SYN."""
    f = Flow(router())
    f.handshake(1.0)
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=50000)
    f.r.process(inside(syn), C, 2.0)
    synack = IP(src=SERVER4, dst=OUT4) / TCP(sport=80, dport=SPORT, flags="SA", seq=1, ack=50001)
    assert sent(f.r.process(outside(synack), U, 2.1), C)
    assert f.conn().state == TcpState.SYN_RECV


def test_a_syn_on_a_closed_tuple_reopens_it() -> None:
    f = Flow(router())
    first = f.handshake(1.0)
    f.server("FA", 2.0)
    f.client("FA", 2.1)
    f.server("A", 2.2)
    assert first.state == TcpState.TIME_WAIT
    syn = IP(src=A4, dst=SERVER4) / TCP(sport=SPORT, dport=80, flags="S", seq=CISN + 99999)
    assert sent(f.r.process(inside(syn), C, 3.0), U)
    conn = f.conn()
    assert conn is not first and conn.state == TcpState.SYN_SENT
    assert f.nat.counters["connections-reopened"] == 1


def test_window_scaling_is_honoured() -> None:
    """With a window scale of 7, data far beyond the unscaled window is in window."""
    r = router()
    syn = IP(src=A4, dst=SERVER4) / TCP(
        sport=SPORT, dport=80, flags="S", seq=CISN, window=65535, options=[("WScale", 7)]
    )
    r.process(inside(syn), C, 1.0)
    synack = IP(src=SERVER4, dst=OUT4) / TCP(
        sport=80, dport=SPORT, flags="SA", seq=SISN, ack=CISN + 1, window=65535,
        options=[("WScale", 7)],
    )  # fmt: skip
    r.process(outside(synack), U, 1.1)
    ack = IP(src=A4, dst=SERVER4) / TCP(
        sport=SPORT, dport=80, flags="A", seq=CISN + 1, ack=SISN + 1, window=65535
    )
    r.process(inside(ack), C, 1.2)
    # the server's first scaled window: 65535 << 7 bytes
    window = IP(src=SERVER4, dst=OUT4) / TCP(
        sport=80, dport=SPORT, flags="A", seq=SISN + 1, ack=CISN + 1, window=65535
    )
    r.process(outside(window), U, 1.25)
    far = IP(src=A4, dst=SERVER4) / TCP(
        sport=SPORT, dport=80, flags="PA", seq=CISN + 1 + 1_000_000, ack=SISN + 1, window=65535
    )
    assert sent(r.process(inside(far / Raw(b"x")), C, 1.3), U)
    beyond = IP(src=A4, dst=SERVER4) / TCP(
        sport=SPORT, dport=80, flags="PA", seq=CISN + 1 + 20_000_000, ack=SISN + 1
    )
    assert drops(r.process(inside(beyond / Raw(b"x")), C, 1.4)) == [DropReason.TCP_OUT_OF_WINDOW]


# -- early drop ---------------------------------------------------------------------------------


def test_a_flood_of_bare_acks_cannot_lock_out_another_host() -> None:
    r = router()
    assert r.nat is not None
    r.nat.table.max_connections = 100
    for i in range(300):
        ack = IP(src=A4, dst="198.19.9.9") / TCP(sport=1024 + i, dport=80, flags="A")
        r.process(inside(ack), C, 1.0 + i * 0.001)
    assert len(r.nat.table) == 100
    syn = IP(src=B4, dst=SERVER4) / TCP(sport=50000, dport=80, flags="S", seq=CISN)
    assert sent(r.process(inside(syn, B_MAC), C, 2.0), U)
    ping = IP(src=B4, dst=SERVER4) / ICMP(id=5, seq=1)
    assert sent(r.process(inside(ping, B_MAC), C, 2.1), U)
    assert r.nat.counters["connections-early-dropped"] >= 202


def test_assured_connections_survive_a_syn_flood() -> None:
    r = router()
    assert r.nat is not None
    r.nat.table.max_connections = 50
    f = Flow(r)
    conn = f.handshake(1.0)
    for i in range(500):
        syn = IP(src=B4, dst=SERVER4) / TCP(sport=1024 + i, dport=80, flags="S", seq=i)
        r.process(inside(syn, B_MAC), C, 2.0 + i * 0.001)
    assert conn in r.nat.connections() and len(r.nat.table) == 50
    assert sent(f.client("PA", 3.0, b"still here"), U)


def test_closing_connections_make_room_when_every_entry_is_assured() -> None:
    """Linux's tcp_can_early_drop: an assured connection in TIME_WAIT may go."""
    r = router()
    assert r.nat is not None
    r.nat.table.max_connections = 2
    flows = [Flow(r, sport=41000 + i) for i in range(2)]
    for i, f in enumerate(flows):
        f.handshake(1.0 + i)
    closing = flows[0]
    closing.server("FA", 3.0)
    closing.client("FA", 3.1)
    closing.server("A", 3.2)
    syn = IP(src=B4, dst=SERVER4) / TCP(sport=50000, dport=80, flags="S", seq=CISN)
    assert sent(r.process(inside(syn, B_MAC), C, 4.0), U)
    ports = sorted(c.key_orig[3] for c in r.nat.connections())
    assert ports == [41001, 50000]


@pytest.mark.slow
def test_memory_of_expired_connections_is_reused() -> None:
    """A drained table is rebuilt small (dicts never shrink on deletion)."""
    r = router(udp=1)
    assert r.nat is not None
    for i in range(6000):
        r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=1024 + i, dport=53)), C, 1.0)
    assert len(r.nat.table) == 6000
    peak = r.nat.table._by_key.__sizeof__()
    r.poll(5.0)
    assert len(r.nat.table) == 0
    assert r.nat.table._by_key.__sizeof__() < peak / 10


def test_the_config_offers_every_timeout_with_the_pipelines_default() -> None:
    assert TimeoutsConfig().model_dump() == dataclasses.asdict(Timeouts())


segment = st.tuples(
    st.booleans(),  # from the server
    st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", "", "F", "SF", "SRA"]),
    st.integers(0, 2**32 - 1),  # seq
    st.integers(0, 2**32 - 1),  # ack
    st.integers(0, 65535),  # window
    st.binary(max_size=40),  # payload
    st.sampled_from([[], [("WScale", 14)], [("WScale", 3), ("MSS", 1460)], [("NOP", None)]]),
)


@pytest.mark.slow
@given(st.lists(segment, max_size=12), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_segments_leave_a_valid_state_and_never_raise(
    segments: list[tuple[bool, str, int, int, int, bytes, list[tuple[str, object]]]],
    liberal: bool,
) -> None:
    r = nat_router(tcp_be_liberal=liberal)
    assert r.nat is not None
    now = 1.0
    for from_server, flags, seq, ack, win, data, opts in segments:
        now += 0.01
        tcp = TCP(flags=flags, seq=seq, ack=ack, window=win, options=opts)
        if from_server:
            tcp.sport, tcp.dport = 80, SPORT
            r.process(outside(IP(src=SERVER4, dst=OUT4) / tcp / Raw(data)), U, now)
        else:
            tcp.sport, tcp.dport = SPORT, 80
            r.process(inside(IP(src=A4, dst=SERVER4) / tcp / Raw(data)), C, now)
        for conn in r.nat.connections():
            assert conn.state in TcpState
            assert conn.expires >= now
    r.poll(now + 432000 + 2)
    assert len(r.nat.table) == 0 and r.nat.state().mappings == 0


def test_a_fragment_of_an_evicted_connection_does_not_bring_it_back() -> None:
    """A later fragment is translated by its first's connection, remembered for
    30 s; if that connection was evicted meanwhile, its mapping is gone and may
    be another host's: the fragment is dropped, not translated by it."""
    r = router()
    assert r.nat is not None
    r.nat.table.max_connections = 1
    big = IP(src=A4, dst=SERVER4, id=77) / UDP(sport=5000, dport=53) / Raw(b"x" * 3000)
    first, *rest = fragment(big, fragsize=1400)  # type: ignore[no-untyped-call]
    assert sent(r.process(inside(first), C, 1.0), U)
    # a new flow evicts it (unassured)
    assert sent(r.process(inside(IP(src=B4, dst=SERVER4) / UDP(sport=6000, dport=53)), C, 1.1), U)
    for frag in rest:
        out = r.process(inside(frag), C, 1.2)
        assert sent(out, U) == [] and drops(out) == [DropReason.NAT_FRAGMENT_UNMATCHED]
    assert len(r.nat.table) == 1
    # and early drop still makes room for the next flow
    assert sent(r.process(inside(IP(src=B4, dst=SERVER4) / UDP(sport=6001, dport=53)), C, 1.3), U)
    assert len(r.nat.table) == 1
    assert [c.key_orig[3] for c in r.nat.connections()] == [6001]
