"""The fast path across a restart (issue 12; xdp/dataplane.py, Tables.adopt):
the program a stopped hopgate leaves attached forwards the established
connections for ``[dataplane] handover`` seconds, then nothing; the next
hopgate takes its tables over, with the connections it restored from the state
file, and forwards them as the program did.  Root only (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from hopgate.pipeline import tcptrack
from hopgate.pipeline.nat import persist
from hopgate.pipeline.router import Router
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject
from tests.unit import nat_frames as N
from tests.unit.frames import C, U
from tests.unit.test_persist import _tcp
from tests.unit.test_xdp_nat import _run, _sent, _snat_stream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

LO = 1


def _tables(obj: BpfObject, router: Router) -> T.Tables:
    tables = T.Tables(obj, time.monotonic_ns())  # the pipeline's 0 s is now
    tables.fill(router, dict.fromkeys(range(len(router.ports)), LO))
    return tables


def test_past_its_time_the_program_forwards_nothing(obj: BpfObject) -> None:
    r, _, orig, _ = _snat_stream(False)
    tables = _tables(obj, r)
    assert r.nat is not None
    tables.sync_connections(r.nat.table)
    frame = bytes(N.inside(orig))
    assert _run(obj, frame, C)[0] == XDP_REDIRECT
    tables.forward_until(5.0)  # 5 s of the pipeline's clock, which started now
    assert _run(obj, frame, C)[0] == XDP_REDIRECT
    tables.forward_until(-1.0)  # a second ago
    assert _run(obj, frame, C)[0] == XDP_PASS, "the fast path forwarded past its time"
    tables.forward_until(None)
    assert _run(obj, frame, C)[0] == XDP_REDIRECT


def test_the_next_hopgate_takes_over_the_flows_the_program_kept(obj: BpfObject) -> None:
    # The hopgate before: a UDP stream and a TCP connection in the program.
    r, stream, orig, reply = _snat_stream(False)
    assert r.nat is not None
    a, srv = N.A4, N.SERVER4
    syn = _tcp(a, srv, 41000, 80, "S", 100, 0)
    assert _sent(r, bytes(N.inside(syn)), C, 3.1)
    (tcp,) = [c for c in r.nat.table.connections() if c.key_orig[3] == 41000]
    port = tcp.key_reply[5]
    assert _sent(r, bytes(N.outside(_tcp(srv, N.OUT4, 80, port, "SA", 500, 101))), U, 3.2)
    seq = 101
    for i in range(20):  # enough for the pipeline to hand it over
        assert _sent(r, bytes(N.inside(_tcp(a, srv, 41000, 80, "A", seq, 501))), C, 3.3 + i / 100)
    before = _tables(obj, r)
    before.sync_connections(r.nat.table)
    assert tcp in r.nat.table.offloaded and stream in r.nat.table.offloaded
    # It stops: the state file, as it writes it, read back by the next one.
    text = b"".join(persist.lines(r.nat, 4.0, 1000.0, exact=False))
    nxt = N.nat_router()
    assert nxt.nat is not None
    assert persist.restore(nxt.nat, text.splitlines(), 4.0, 1000.5).restored == 2
    # The same, with the pipeline alone: what it would send (``nxt``'s pipeline
    # gives a segment of a connection the program holds to the program).
    ref = N.nat_router()
    assert ref.nat is not None
    assert persist.restore(ref.nat, text.splitlines(), 4.0, 1000.5).restored == 2
    # Meanwhile the program went on: a segment further in the TCP stream.
    data = bytes(N.inside(_tcp(a, srv, 41000, 80, "A", seq, 501)))
    assert _run(obj, data, C)[0] == XDP_REDIRECT
    # The next hopgate's object, on the same tables.
    with BpfObject(T.OBJECT, {n: obj.map_fd(n) for n in T.TAKEN_OVER}) as again:
        tables = T.Tables(again, time.monotonic_ns())
        assert tables.layout_of() == T.LAYOUT
        taken = tables.adopt(nxt, dict.fromkeys(range(len(nxt.ports)), LO))
        assert taken == 2
        ours = {c.key_orig[3]: c for c in nxt.nat.table.connections()}
        assert set(ours.values()) <= nxt.nat.table.offloaded
        # The tracker is the program's, not the state file's.
        assert list(ours[41000].tcp) == list(_tracker(again, tables, ours[41000]))  # type: ignore[arg-type]
        # Nothing handed over twice.
        assert tables.sync_connections(nxt.nat.table) == []
        assert not nxt.nat.table.to_offload
        for frame, at in ((bytes(N.inside(orig)), C), (bytes(N.outside(reply)), U), (data, C)):
            verdict, out = _run(again, frame, at)
            sent = _sent(ref, frame, at, 4.5)
            assert verdict == XDP_REDIRECT, "the taken-over fast path passed up a kept flow"
            assert len(sent) == 1 and bytes(sent[0].frame) == out, (
                "the taken-over fast path forwarded otherwise than the new pipeline"
            )


def _tracker(obj: BpfObject, tables: T.Tables, conn: object) -> list[int]:
    ids = tables._ids[conn]  # type: ignore[index]
    tc = T.TcpConn()
    assert obj.lookup("tcp_conns", ctypes.c_uint32(ids[0]), tc, lock=True)
    raw = ctypes.string_at(ctypes.addressof(tc) + T.TRACKER_AT, 4 * tcptrack.FIELDS)
    return list(memoryview(raw).cast("I"))
