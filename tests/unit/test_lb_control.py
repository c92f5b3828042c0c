"""The load balancer's control plane out of the packet path (issue 10, item 8):
backend changes as typed events, Maglev tables computed outside the pipeline's
calls and installed in one step, and what the data path does in between."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP

from hopgate.control.lbcontrol import RingWorker, process_executor
from hopgate.packet.proto import PROTO_TCP
from hopgate.pipeline.actions import Action
from hopgate.pipeline.events import BackendChanged
from hopgate.pipeline.lb import (
    BackendSpec,
    HealthKind,
    HealthSpec,
    MaglevControl,
    Scheduler,
    Service,
    ServiceSpec,
    maglev,
)
from hopgate.pipeline.router import Router
from tests.unit.lb_frames import (
    BE1,
    BE2,
    CLIENT4,
    VIP4,
    B,
    answer_syns,
    lb_router,
    logged,
    probes,
    service,
    via_b,
)

SMALL = 5003  # a prime table size that keeps the tests quick
BE1_NAME, BE2_NAME = f"{BE1}:80", f"{BE2}:80"


def _syn_to(r: Router, sport: int, now: float) -> str:
    """Where a new connection from ``sport`` goes."""
    out = r.process(
        via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S")), B, now
    )
    (sent,) = [p for p in probes(out) if p.haslayer(TCP) and p[TCP].dport == 80]
    return str(sent[IP].dst)


def _run_checks(
    r: Router, start: float, end: float, answering: tuple[str, ...], step: float = 1.0
) -> list[Action]:
    """Poll from ``start`` to ``end``; the ``answering`` backends pass their checks."""
    out: list[Action] = []
    t = start
    while t < end:
        out += r.poll(t)
        answer_syns(r, out, t + 0.1, from_be=answering)
        t += step
    return out


def _svc(r: Router) -> Service:
    assert r.nat is not None
    (svc,) = r.nat.services.all
    return svc


# -- typed events -------------------------------------------------------------------------


def test_a_flip_is_a_typed_event_whose_text_is_the_log_line_of_before() -> None:
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1)
    r = lb_router(service(health=health, on_backend_down="close"))
    for sport in range(6000, 6004):  # weights 1 and 3: one connection to BE1
        r.process(via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S")), B, 0.0)
    _run_checks(r, 0.0, 2.0, answering=(BE2,))
    assert list(r.events) == [BackendChanged("web", BE1_NAME, up=False, closed=1)]
    assert logged(r) == [f"service web: backend {BE1_NAME} is down; 1 connections closed"]
    _run_checks(r, 2.0, 6.0, answering=(BE1, BE2), step=2.0)
    assert r.events[-1] == BackendChanged("web", BE1_NAME, up=True)
    assert logged(r)[-1] == f"service web: backend {BE1_NAME} is up"
    assert r.nat is not None
    assert r.nat.counters["backends-down"] == 1 and r.nat.counters["backends-up"] == 1


def test_a_kept_backends_event_says_nothing_of_closing() -> None:
    event = BackendChanged("web", "[2001:2:0:20::11]:80", up=False)
    assert event.closed is None
    assert str(event) == "service web: backend [2001:2:0:20::11]:80 is down"


# -- Maglev: between a flip and the install ------------------------------------------------


def _maglev_router(notified: list[int]) -> Router:
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1)
    return lb_router(
        service(scheduler="maglev", maglev_table_size=SMALL, health=health),
        on_ring=lambda: notified.append(1),
    )


def test_a_backend_that_fails_is_skipped_at_once_and_its_table_installed_later() -> None:
    notified: list[int] = []
    r = _maglev_router(notified)
    svc = _svc(r)
    be1 = svc.backends[0]
    old = list(svc.table)
    assert old == maglev.build([BE1_NAME, BE2_NAME], [1, 3], SMALL)
    assert {_syn_to(r, p, 0.01) for p in range(5000, 5040)} == {BE1, BE2}
    _run_checks(r, 0.0, 2.0, answering=(BE2,))  # BE1 fails its check (fall = 1)
    assert not be1.healthy and not be1.up and notified == [1]
    assert logged(r) == [f"service web: backend {BE1_NAME} is down"]  # at once
    # nothing was computed in the pipeline: the old table is still there ...
    assert list(svc.table) == old
    # ... and no new connection goes to BE1
    assert {_syn_to(r, p, 2.5) for p in range(7000, 7100)} == {BE2}
    (request,) = r.maglev.pending()
    assert request.weights == (0, 3) and r.maglev.pending() == []
    r.maglev.install(request, request.compute())
    assert list(svc.table) == maglev.build([BE1_NAME, BE2_NAME], [0, 3], SMALL)
    assert len(r.events) == 1  # installing a table without it is no news


def test_a_backend_that_comes_back_is_up_once_its_table_is_installed() -> None:
    notified: list[int] = []
    r = _maglev_router(notified)
    svc = _svc(r)
    be1 = svc.backends[0]
    _run_checks(r, 0.0, 2.0, answering=(BE2,))
    (down,) = r.maglev.pending()
    r.maglev.install(down, down.compute())
    _run_checks(r, 2.0, 6.0, answering=(BE1, BE2), step=2.0)  # rise = 2
    # healthy, but not in the table yet: not up, not chosen, not announced
    assert be1.healthy and not be1.up and len(notified) == 2
    assert logged(r) == [f"service web: backend {BE1_NAME} is down"]
    assert {_syn_to(r, p, 6.5) for p in range(7000, 7100)} == {BE2}
    (back,) = r.maglev.pending()
    r.maglev.install(back, back.compute())
    assert be1.up and logged(r)[-1] == f"service web: backend {BE1_NAME} is up"
    # the same table as a node that never saw BE1 fail, and the same choices
    other = lb_router(service(scheduler="maglev", maglev_table_size=SMALL))
    assert list(svc.table) == list(_svc(other).table)
    for sport in range(8000, 8100):
        assert _syn_to(r, sport, 7.0) == _syn_to(other, sport, 7.0)


def test_the_table_computed_at_once_is_the_one_the_control_plane_installs() -> None:
    """The synchronous path (no on_ring) and the deferred one end with the same
    table: maglev.build over the backends that are up."""
    at_once = lb_router(
        service(
            scheduler="maglev",
            maglev_table_size=SMALL,
            health=HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1),
        )
    )
    deferred = _maglev_router([])
    for r in (at_once, deferred):
        _run_checks(r, 0.0, 2.0, answering=(BE2,))
    for request in deferred.maglev.pending():
        deferred.maglev.install(request, request.compute())
    expected = maglev.build([BE1_NAME, BE2_NAME], [0, 3], SMALL)
    assert list(_svc(at_once).table) == list(_svc(deferred).table) == expected
    assert logged(at_once) == logged(deferred)


# -- Maglev: the skipping rule, on a service of its own -------------------------------------

NAMES = [f"198.18.20.{i}" for i in range(11, 16)]


def _service(weights: tuple[int, ...] = (1, 1, 1, 1, 1)) -> Service:
    return Service(
        ServiceSpec(
            name="m",
            family=4,
            protocol=PROTO_TCP,
            vip=int(ipaddress.ip_address(VIP4)),
            port=80,
            backends=tuple(
                BackendSpec(int(ipaddress.ip_address(n)), 80, w)
                for n, w in zip(NAMES, weights, strict=True)
            ),
            local_addresses=(1,),
            scheduler=Scheduler.MAGLEV,
            maglev_table_size=SMALL,
        )
    )


def _fail(svc: Service, index: int) -> None:
    b = svc.backends[index]
    b.healthy = False
    svc.settle(b)


KEYS = [n.to_bytes(4, "big") for n in range(3000)]


def test_a_flow_on_a_failed_backends_slot_takes_the_next_slot_whose_backend_is_up() -> None:
    svc = _service()
    before = {k: svc.pick(k) for k in KEYS}
    _fail(svc, 2)
    table = svc.table
    for k in KEYS:
        got = svc.pick(k)
        assert got is not None and got.up
        if before[k] is not svc.backends[2]:
            assert got is before[k]  # flows of backends that are up stay put
            continue
        slot = maglev.flow_hash(k) % len(table)
        while not svc.backends[table[slot]].up:
            slot = (slot + 1) % len(table)
        assert got is svc.backends[table[slot]]
    # a second node that saw the same flip chooses alike
    other = _service()
    _fail(other, 2)
    assert [svc.pick(k).index for k in KEYS] == [other.pick(k).index for k in KEYS]  # type: ignore[union-attr]


def test_nothing_is_chosen_when_no_backend_of_the_table_is_up() -> None:
    svc = _service((1, 1, 0, 0, 0))
    _fail(svc, 1)
    request = svc.ring_request()
    assert svc.install(request, request.compute()) == []  # a table of backend 0 alone
    # backend 1 comes back (not in the table yet), backend 0 fails
    svc.backends[1].healthy = True
    assert not svc.settle(svc.backends[1])
    _fail(svc, 0)
    assert all(svc.pick(k) is None for k in KEYS[:50])
    request = svc.ring_request()
    assert svc.install(request, request.compute()) == [svc.backends[1]]
    assert {svc.pick(k).index for k in KEYS[:50]} == {1}  # type: ignore[union-attr]


def test_a_backend_of_weight_0_comes_back_healthy_but_holds_no_slot_and_is_not_up() -> None:
    """Weight 0 takes no new connections (as IPVS): ``up`` says whether a backend
    takes them, ``healthy`` what its checks say."""
    svc = _service((1, 1, 0, 1, 1))
    _fail(svc, 2)
    request = svc.ring_request()
    svc.install(request, request.compute())
    svc.backends[2].healthy = True
    assert not svc.settle(svc.backends[2])
    request = svc.ring_request()
    assert svc.install(request, request.compute()) == []
    assert 2 not in set(svc.table)
    state = svc.backends[2].describe()
    assert state.healthy and not state.up and state.weight == 0


def test_a_table_older_than_the_installed_one_is_ignored_and_requests_coalesce() -> None:
    svc = _service()
    came: list[str] = []
    notified: list[int] = []
    control = MaglevControl(lambda b: came.append(b.name), lambda: notified.append(1))
    _fail(svc, 0)
    control.changed(svc)
    older = svc.ring_request()
    _fail(svc, 1)
    control.changed(svc)
    (newer,) = control.pending()  # two flips, one table: of the backends as they are now
    assert notified == [1, 1] and newer.weights == (0, 0, 1, 1, 1)
    control.install(newer, newer.compute())
    control.install(older, older.compute())
    assert list(svc.table) == maglev.build([f"{n}:80" for n in NAMES], [0, 0, 1, 1, 1], SMALL)


# -- the daemon's worker -------------------------------------------------------------------


class FakeLoop:
    """Loop.call: functions queued, run when the test says."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def call(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)

    def run(self, pool: Executor | None = None, rounds: int = 50) -> None:
        for _ in range(rounds):
            if pool is not None:
                pool.submit(int).result()  # what was computed has been handed over
            calls, self.calls = self.calls, []
            for fn in calls:
                fn()


def _worker_router(
    executor: Callable[[], Executor],
) -> tuple[Router, RingWorker, FakeLoop]:
    worker = RingWorker(executor)
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1)
    r = lb_router(
        service(scheduler="maglev", maglev_table_size=SMALL, health=health), on_ring=worker.wake
    )
    loop = FakeLoop()
    worker.start(r.maglev, loop.call, warm=False)
    return r, worker, loop


def test_the_worker_computes_off_the_loop_and_installs_through_it() -> None:
    pool = ThreadPoolExecutor(1)
    r, worker, loop = _worker_router(lambda: pool)
    svc = _svc(r)
    _run_checks(r, 0.0, 2.0, answering=(BE2,))
    assert len(loop.calls) == 1  # nothing taken inside the pipeline's call
    loop.run(pool)
    assert worker.computed == 1 and worker.failed == 0
    assert list(svc.table) == maglev.build([BE1_NAME, BE2_NAME], [0, 3], SMALL)
    _run_checks(r, 2.0, 6.0, answering=(BE1, BE2), step=2.0)
    loop.run(pool)
    assert svc.backends[0].up and logged(r)[-1] == f"service web: backend {BE1_NAME} is up"
    assert list(svc.table) == maglev.build([BE1_NAME, BE2_NAME], [1, 3], SMALL)
    worker.close()


class Broken(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise RuntimeError("the worker process is gone")


def test_a_worker_that_fails_leaves_the_table_to_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    made: list[Executor] = []

    def broken() -> Executor:
        made.append(Broken())
        return made[-1]

    r, worker, loop = _worker_router(broken)
    _run_checks(r, 0.0, 2.0, answering=(BE2,))
    with caplog.at_level(logging.ERROR):
        loop.run()
    assert worker.failed == 1 and len(made) == 2  # and a new worker for the next table
    assert list(_svc(r).table) == maglev.build([BE1_NAME, BE2_NAME], [0, 3], SMALL)
    assert "not computed in the worker" in caplog.text


def test_the_worker_process_computes_the_same_table() -> None:
    """The real thing: a spawned process, the table pickled back."""
    r, worker, loop = _worker_router(process_executor)
    try:
        _run_checks(r, 0.0, 2.0, answering=(BE2,))
        for _ in range(200):  # up to 10 s for the process to start and compute
            loop.run(rounds=1)
            if worker.computed:
                break
            time.sleep(0.05)
        assert worker.computed == 1 and worker.failed == 0
        assert list(_svc(r).table) == maglev.build([BE1_NAME, BE2_NAME], [0, 3], SMALL)
    finally:
        worker.close()
