"""Listing and deleting connections a slice at a time (issue 9): the loop never
holds on to one job for long, and what it lists in slices is what one unsliced
pass would have listed."""

from __future__ import annotations

import ipaddress
import json
import select
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import pytest
from scapy.layers.inet import IP, UDP

from hopgate.control import conns
from hopgate.control.conns import STEP, Filters
from hopgate.io import mailbox as mb
from hopgate.io.mailbox import JobStalledError, Mailbox, Steps
from hopgate.packet.proto import PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.pipeline.conntrack import Conn, TcpState, Translation
from tests.unit.frames import C
from tests.unit.nat_frames import A4, B4, SERVER4, inside, nat_router

if TYPE_CHECKING:
    from hopgate.pipeline.nat import Nat

NOW = 100.0
INSIDE = [int(ipaddress.ip_address(f"198.18.1.{10 + i}")) for i in range(4)]
OUT = int(ipaddress.ip_address("198.18.2.1"))
SERVERS = [int(ipaddress.ip_address(f"198.18.3.{10 + i}")) for i in range(3)]
IN6 = int(ipaddress.ip_address("2001:2:0:1::10"))
OUT6 = int(ipaddress.ip_address("2001:2:0:2::1"))
SERVER6 = int(ipaddress.ip_address("2001:2:0:3::10"))


class FakeTable:
    def __init__(self, items: list[Conn]) -> None:
        self.held = dict.fromkeys(items)
        self.offloaded: set[Conn] = set()  # no fast path

    def __len__(self) -> int:
        return len(self.held)

    def remove(self, conn: Conn) -> None:
        self.held.pop(conn, None)


class FakeNat:
    """What conns needs of a Nat: its connections, its table, its port names."""

    port_names = ("gw-c", "gw-u")

    def __init__(self, items: list[Conn]) -> None:
        self.table = FakeTable(items)

    def connections(self) -> list[Conn]:
        return list(self.table.held)


def _table(n: int) -> list[Conn]:
    """n connections of every kind: UDP and TCP (in several states) over IPv4,
    ICMPv6 echo, to several servers from several inside hosts."""
    out = []
    states = list(TcpState)
    for i in range(n):
        kind = i % 5
        if kind == 4:
            ident = i % 65536
            orig = (6, PROTO_ICMPV6, IN6, ident, SERVER6, ident)
            to = Translation(OUT6, ident, SERVER6, ident)
            conn = Conn(orig, to, NOW, echo=True)
        else:
            proto = PROTO_TCP if kind in (1, 3) else PROTO_UDP
            src, sport = INSIDE[i % len(INSIDE)], 1024 + i % 60000
            dst, dport = SERVERS[i % len(SERVERS)], (53, 80, 443)[i % 3]
            conn = Conn(
                (4, proto, src, sport, dst, dport), Translation(OUT, sport, dst, dport), NOW
            )
            if proto == PROTO_TCP:
                conn.state = states[i % len(states)]
        conn.expires = NOW + i % 120
        out.append(conn)
    return out


def _as_nat(nat: FakeNat) -> Nat:
    return cast("Nat", nat)


def _job(action: str, nat: FakeNat | None, query: dict[str, str]) -> Steps:
    return conns.job(action, None if nat is None else _as_nat(nat), lambda: NOW, query)


def _run(steps: Steps) -> tuple[bytes, int]:
    """All of a job's output, and how many slices it took."""
    out, n = [], 0
    for chunk in steps:
        out.append(chunk)
        n += 1
    return b"".join(out), n


def _reference(nat: FakeNat, query: dict[str, str]) -> list[dict[str, Any]]:
    """The listing done the plain way: every connection, filtered, formatted."""
    rows = []
    for c in nat.connections():
        fam, _, src, sport, dst, dport = c.key_orig
        t = c.to
        row = conns.describe(c, NOW, nat.port_names)
        if "family" in query and fam != int(query["family"]):
            continue
        if "protocol" in query and row["protocol"] != query["protocol"]:
            continue
        if "address" in query:
            a = ipaddress.ip_address(query["address"])
            if a.version != fam or int(a) not in (src, dst, t.src, t.dst):
                continue
        if "port" in query and int(query["port"]) not in (sport, dport, t.sport, t.dport):
            continue
        if "state" in query and row["state"] != query["state"]:
            continue
        rows.append(row)
    return rows


QUERIES = [
    {},
    {"protocol": "tcp"},
    {"protocol": "tcp", "state": "established"},
    {"family": "6"},
    {"address": "198.18.3.11"},
    {"address": "198.18.1.12", "port": "443"},
    {"port": "80"},
    {"address": "::c612:10a"},  # 198.18.1.10's number as an IPv6 address: no match
]


@pytest.mark.parametrize("query", QUERIES, ids=[repr(q) for q in QUERIES])
def test_the_sliced_listing_is_the_unsliced_one(query: dict[str, str]) -> None:
    nat = FakeNat(_table(10 * STEP + 7))
    body, slices = _run(_job("list", nat, {**query, "limit": "0"}))
    got = json.loads(body)
    want = _reference(nat, query)
    assert got == {"nat": True, "connections": want, "total": len(want), "shown": len(want)}
    assert slices >= 10  # it did go in slices
    assert body.count(b"\n{") == len(want)  # one connection a line


def test_a_limit_shows_the_first_ones_and_counts_them_all() -> None:
    nat = FakeNat(_table(5 * STEP))
    want = _reference(nat, {"protocol": "udp"})
    got = json.loads(_run(_job("list", nat, {"protocol": "udp", "limit": "7"}))[0])
    assert got["connections"] == want[:7] and got["shown"] == 7 and got["total"] == len(want)
    default = json.loads(_run(_job("list", FakeNat(_table(3000)), {}))[0])
    assert default["shown"] == conns.DEFAULT_LIMIT and default["total"] == 3000


class CountingFilters(Filters):
    examined: list[int]

    def match(self, conn: Conn) -> bool:
        self.examined[-1] += 1
        return super().match(conn)


def test_each_slice_examines_and_formats_at_most_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    nat = FakeNat(_table(20 * STEP + 3))
    formatted = [0]
    describe = conns.describe

    def counting_describe(*args: Any) -> dict[str, Any]:
        formatted[-1] += 1
        return describe(*args)

    monkeypatch.setattr(conns, "describe", counting_describe)
    filters = CountingFilters()
    object.__setattr__(filters, "examined", [0])
    for _ in conns.list_steps(_as_nat(nat), lambda: NOW, filters, 0):
        assert filters.examined[-1] <= STEP and formatted[-1] <= STEP
        filters.examined.append(0)
        formatted.append(0)
    assert sum(filters.examined) == sum(formatted) == 20 * STEP + 3


def test_no_nat_lists_nothing_and_deletes_nothing() -> None:
    listed = json.loads(_run(_job("list", None, {}))[0])
    assert listed == {"nat": False, "connections": [], "total": 0, "shown": 0}
    assert json.loads(_run(_job("flush", None, {}))[0])["deleted"] == 0


def test_delete_removes_what_matches_a_step_at_a_time() -> None:
    items = _table(10 * STEP)
    nat = FakeNat(items)
    query = {"protocol": "tcp", "address": "198.18.3.10"}
    doomed = {id(r) for r in items if r.key_orig[1] == PROTO_TCP and r.to.dst == SERVERS[0]}
    steps = _job("delete", nat, query)
    out = [next(steps)]  # the snapshot
    # one that goes by itself meanwhile (it expired) is not counted
    gone = next(c for c in reversed(items) if id(c) in doomed)
    nat.table.remove(gone)
    size = len(nat.table)
    for chunk in steps:
        assert size - len(nat.table) <= STEP
        size = len(nat.table)
        out.append(chunk)
    assert json.loads(b"".join(out)) == {"nat": True, "deleted": len(doomed) - 1}
    assert not any(id(c) in doomed for c in nat.connections())
    assert len(nat.table) == len(items) - len(doomed)


def test_a_connection_made_after_a_flush_began_is_not_flushed() -> None:
    nat = FakeNat(_table(3 * STEP))
    steps = _job("flush", nat, {})
    first = next(steps)
    late = _table(1)[0]
    nat.table.held[late] = None
    assert json.loads(first + b"".join(steps)) == {"nat": True, "deleted": 3 * STEP}
    assert nat.connections() == [late]


def test_flush_and_delete_release_the_real_nats_mappings() -> None:
    r = nat_router()
    frame = inside(IP(src=A4, dst=SERVER4) / UDP(sport=1, dport=1, chksum=0) / b"x")
    other = inside(IP(src=B4, dst=SERVER4) / UDP(sport=1, dport=1, chksum=0) / b"x")
    for i in range(3 * STEP):
        for base in (frame, other):
            f = bytearray(base)
            struct.pack_into("!HH", f, 34, 20000 + i, 53)
            r.process(f, C, 1.0)
    nat = r.nat
    assert nat is not None and len(nat.table) == 6 * STEP
    body, _ = _run(conns.job("delete", nat, lambda: 2.0, {"address": B4}))
    assert json.loads(body) == {"nat": True, "deleted": 3 * STEP}
    assert len(nat.table) == 3 * STEP and nat.state().mappings == 3 * STEP
    body, _ = _run(conns.job("flush", nat, lambda: 2.0, {}))
    assert json.loads(body) == {"nat": True, "deleted": 3 * STEP}
    assert len(nat.table) == 0 and nat.state().mappings == 0
    # and the same flow makes a new connection at once
    r.process(bytearray(frame), C, 3.0)
    assert len(nat.table) == 1


@pytest.mark.parametrize(
    ("action", "query", "message"),
    [
        ("list", {"family": "5"}, "family: 4 or 6"),
        ("list", {"family": "x"}, "family: a number"),
        ("list", {"protocol": "carrier-pigeon"}, "protocol: one of tcp"),
        ("list", {"address": "198.18.300.1"}, "address: '198.18.300.1' is not an IP address"),
        ("list", {"port": "65536"}, "port: a number from 0 to 65535"),
        ("list", {"state": "happy"}, "state: one of none, syn-sent"),
        ("list", {"limit": "-1"}, "limit: a number"),
        ("list", {"colour": "red"}, "unknown filter colour"),
        ("delete", {}, "no filter"),
        ("delete", {"port": "80", "limit": "3"}, "limit: only for listing"),
        ("flush", {"port": "80"}, "flush takes no filter"),
        ("reboot", {}, "unknown action"),
    ],
)
def test_a_query_that_does_not_parse_says_which_key(
    action: str, query: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _job(action, FakeNat([]), query)


# -- the mailbox runs jobs in slices ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _woken(box: Mailbox) -> bool:
    readable, _, _ = select.select([box.wake_fd], [], [], 0)
    box.drain()
    return bool(readable)


def test_the_loop_runs_a_job_for_its_budget_then_wakes_itself_for_more() -> None:
    clock = FakeClock()
    box = Mailbox(clock)
    ran: list[int] = []

    def steps() -> Steps:
        for i in range(10):
            ran.append(i)
            clock.now += mb.JOB_BUDGET / 3  # each slice takes a third of the budget
            yield str(i).encode()

    try:
        job = box.start(steps())
        assert _woken(box) and not ran  # nothing runs in the caller's thread
        box.run_calls()
        assert ran == [0, 1, 2] and _woken(box)  # the budget is spent: back to the frames
        box.run_calls()
        assert ran == [0, 1, 2, 3, 4, 5] and _woken(box)
        while _woken(box) or job.slices < 10:
            box.run_calls()
        box.run_calls()
        assert b"".join(job.chunks(1.0)) == b"0123456789"
        box.run_calls()
        assert not _woken(box)  # nothing left to do: the loop may sleep
    finally:
        box.close()


def test_a_job_whose_reader_falls_behind_waits_and_is_woken_when_it_reads() -> None:
    box = Mailbox(FakeClock())

    def steps() -> Steps:
        for _ in range(3 * mb.JOB_BACKLOG):
            yield b"x"

    try:
        job = box.start(steps())
        for _ in range(3):
            box.run_calls()  # the fake clock stands still: one slice a turn
        for _ in range(2 * mb.JOB_BACKLOG):
            box.run_calls()
        assert job.slices == mb.JOB_BACKLOG  # paused with a full backlog...
        _woken(box)
        box.run_calls()
        assert job.slices == mb.JOB_BACKLOG and not _woken(box)  # ...and the loop may sleep
        reader = job.chunks(1.0)
        next(reader)
        assert _woken(box)  # reading woke the loop
        box.run_calls()
        assert job.slices == mb.JOB_BACKLOG + 1
        reader.close()
    finally:
        box.close()


def test_an_abandoned_job_is_dropped_and_closed() -> None:
    box = Mailbox(FakeClock())
    closed = []

    def steps() -> Steps:
        try:
            while True:
                yield b"x"
        finally:
            closed.append(True)

    try:
        job = box.start(steps())
        box.run_calls()
        reader = job.chunks(1.0)
        next(reader)
        reader.close()  # the client went away
        box.run_calls()
        assert closed == [True] and job.cancelled
        _woken(box)
        box.run_calls()
        assert not _woken(box)
    finally:
        box.close()


def test_a_reader_gives_up_on_a_job_that_makes_no_progress() -> None:
    box = Mailbox(FakeClock())
    try:
        job = box.start(c for c in (b"a", b"b"))
        with pytest.raises(JobStalledError):
            list(job.chunks(0.05))  # no loop turns at all
        box.run_calls()
        assert job.cancelled  # and the loop drops it
    finally:
        box.close()


def test_a_slow_job_that_keeps_going_is_not_cut_off() -> None:
    """20 quiet slices of 20 ms each, read with a 100 ms stall timeout."""
    box = Mailbox()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            select.select([box.wake_fd], [], [], 0.01)
            box.drain()
            box.run_calls()

    def steps() -> Steps:
        for _ in range(20):
            time.sleep(0.02)
            yield b""
        yield b"done"

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert b"".join(box.start(steps()).chunks(0.1)) == b"done"
    finally:
        stop.set()
        thread.join()
        box.close()


def test_a_job_that_raises_hands_the_error_to_its_reader() -> None:
    box = Mailbox(FakeClock())

    def steps() -> Steps:
        yield b"a"
        raise RuntimeError("boom")

    try:
        job = box.start(steps())
        box.run_calls()
        box.run_calls()
        reader = job.chunks(1.0)
        assert next(reader) == b"a"
        with pytest.raises(RuntimeError, match="boom"):
            next(reader)
    finally:
        box.close()
