"""Runtime backend control (issue 12, item 2) on exact bytes with a fake clock:
drain, disable, enable and weight as ``hopgate backend`` makes them (the loop
calls ``BackendVerdicts.set_admin`` / ``set_weight``), apart from health, kept in
one place across services built again."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from hopgate.control import backends, metrics, views
from hopgate.pipeline.events import BackendAdmin, BackendChanged
from hopgate.pipeline.lb import (
    AdminState,
    Backend,
    HealthKind,
    HealthSpec,
    Service,
    Services,
    maglev,
)
from hopgate.pipeline.router import Router
from tests.unit.lb_frames import (
    BE1,
    BE1_MAC,
    BE2,
    BE2_MAC,
    CLIENT4,
    VIP4,
    B,
    S,
    from_backend,
    lb_router,
    logged,
    probes,
    service,
    service6,
    via_b,
)
from tests.unit.test_lb_control import SMALL, _run_checks, _svc, _syn_to

BE1_NAME, BE2_NAME = f"{BE1}:80", f"{BE2}:80"


def _be(r: Router, name: str = BE1_NAME) -> Backend:
    return next(b for b in _svc(r).backends if b.name == name)


def _split(r: Router, ports: range, now: float = 1.0) -> Counter[str]:
    return Counter(_syn_to(r, p, now) for p in ports)


def _open(r: Router, sport: int, now: float = 1.0) -> Ether:
    """A connection from ``sport``, its handshake done: the SYN as it left."""
    out = r.process(via_b(_syn(sport)), B, now)
    (fwd,) = [p for p in probes(out) if p.haslayer(TCP)]
    mac = BE1_MAC if fwd[IP].dst == BE1 else BE2_MAC
    synack = IP(src=fwd[IP].dst, dst=fwd[IP].src) / TCP(
        sport=80, dport=fwd[TCP].sport, flags="SA", seq=500, ack=101
    )
    r.process(from_backend(synack, mac), S, now)
    _data(r, sport, now)
    return fwd


def _syn(sport: int) -> IP:
    return IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S", seq=100)


def _data(r: Router, sport: int, now: float) -> str | None:
    """A data segment of the connection from ``sport``: the backend it reached."""
    seg = IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="PA", seq=101, ack=501)
    out = r.process(via_b(seg / b"GET / HTTP/1.0\r\n\r\n"), B, now)
    sent = [p for p in probes(out) if p.haslayer(TCP) and p[TCP].dport == 80]
    return str(sent[0][IP].dst) if sent else None


# -- drain ----------------------------------------------------------------------------


def test_a_drained_backend_gets_no_new_flow_and_keeps_its_open_ones() -> None:
    r = lb_router()  # wrr, weights 1 and 3
    opened = {p: _open(r, p)[IP].dst for p in range(6000, 6008)}
    on_be1 = [p for p, be in opened.items() if be == BE1]
    assert len(on_be1) == 2
    event = r.verdicts.set_admin(_be(r), AdminState.DRAINED)
    assert event == BackendAdmin("web", BE1_NAME, "drained", 1, kept=2)
    assert logged(r)[-1] == (
        f"backend web {BE1_NAME}: drained by the admin; 2 open connections go on"
    )
    assert _split(r, range(7000, 7100)) == {BE2: 100}
    # the open connections go on to BE1, as long as they last
    for p in on_be1:
        assert _data(r, p, 2.0) == BE1
    assert len(_be(r).conns) == 2
    # and a SYN on one of their tuples is a new connection: not to BE1
    assert _syn_to(r, on_be1[0], 3.0) == BE2


def test_enable_brings_a_drained_backend_back_to_the_same_split() -> None:
    r = lb_router()
    before = [_syn_to(r, p, 1.0) for p in range(7000, 7040)]
    r.verdicts.set_admin(_be(r), AdminState.DRAINED)
    assert _split(r, range(8000, 8040)) == {BE2: 40}
    event = r.verdicts.set_admin(_be(r), AdminState.ENABLED)
    assert str(event) == f"backend web {BE1_NAME}: enabled by the admin; up"
    assert _be(r).up and _be(r).admin is AdminState.ENABLED
    assert Counter(before) == _split(r, range(9000, 9040)) == {BE1: 10, BE2: 30}


# -- disable ---------------------------------------------------------------------------


def test_disable_closes_the_connections_when_the_service_closes_a_failed_backends() -> None:
    r = lb_router(service(on_backend_down="close"))
    opened = {p: _open(r, p)[IP].dst for p in range(6000, 6008)}
    on_be1 = [p for p, be in opened.items() if be == BE1]
    event = r.verdicts.set_admin(_be(r), AdminState.DISABLED)
    assert event.closed == 2 and not _be(r).conns
    assert logged(r)[-1] == f"backend web {BE1_NAME}: disabled by the admin; 2 connections closed"
    # their next packets are new flows: to BE2 (which resets them)
    for p in on_be1:
        assert _data(r, p, 2.0) == BE2
    assert _split(r, range(7000, 7050)) == {BE2: 50}


def test_disable_keeps_the_connections_when_the_service_keeps_a_failed_backends() -> None:
    r = lb_router()  # on_backend_down = "keep"
    opened = {p: _open(r, p)[IP].dst for p in range(6000, 6008)}
    on_be1 = [p for p, be in opened.items() if be == BE1]
    event = r.verdicts.set_admin(_be(r), AdminState.DISABLED)
    assert event.closed is None and len(_be(r).conns) == 2
    assert logged(r)[-1] == (
        f"backend web {BE1_NAME}: disabled by the admin; 2 open connections go on"
    )
    assert [_data(r, p, 2.0) for p in on_be1] == [BE1, BE1]
    assert _split(r, range(7000, 7050)) == {BE2: 50}


# -- weight ---------------------------------------------------------------------------


def test_weight_changes_the_wrr_split_of_new_connections() -> None:
    r = lb_router()
    assert _split(r, range(7000, 7400)) == {BE1: 100, BE2: 300}
    event = r.verdicts.set_weight(_be(r), 3)
    assert str(event) == f"backend web {BE1_NAME}: weight 3 (was 1) set by the admin; up"
    assert _split(r, range(8000, 8400)) == {BE1: 200, BE2: 200}
    r.verdicts.set_weight(_be(r, BE2_NAME), 1)
    assert _split(r, range(9000, 9400)) == {BE1: 300, BE2: 100}


def test_weight_0_takes_no_new_connection_and_keeps_the_open_ones() -> None:
    for scheduler in ("wrr", "rr", "lc"):
        r = lb_router(service(scheduler=scheduler))
        opened = {p: _open(r, p)[IP].dst for p in range(6000, 6008)}
        event = r.verdicts.set_weight(_be(r), 0)
        assert event.now == "weight 0: no new connections", scheduler
        assert _split(r, range(7000, 7050)) == {BE2: 50}, scheduler
        assert all(_data(r, p, 2.0) == be for p, be in opened.items()), scheduler
        r.verdicts.set_weight(_be(r), 1)
        assert BE1 in _split(r, range(8000, 8050)), scheduler


def _router(notified: list[int] | None = None, **overrides: object) -> Router:
    """Maglev (unless ``overrides`` say otherwise) with TCP checks (rise 2, fall 1);
    ``notified``: tables left to the test (``on_ring``), else computed at once."""
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1)
    fields: dict[str, object] = {
        "scheduler": "maglev",
        "maglev_table_size": SMALL,
        "health": health,
    }
    fields.update(overrides)
    on_ring = None if notified is None else (lambda: notified.append(1))
    return lb_router(service(**fields), on_ring=on_ring)


def test_maglev_weight_is_a_new_table_computed_off_the_packet_path() -> None:
    notified: list[int] = []
    r = _router(notified)
    svc = _svc(r)
    old = list(svc.table)
    before = _split(r, range(5000, 5400))
    r.verdicts.set_weight(_be(r), 3)  # 1 and 3 -> 3 and 3
    assert notified == [1] and list(svc.table) == old  # nothing computed in the pipeline
    # (new flows: from ports not used yet)
    assert _split(r, range(6000, 6400)) == _split(_router(), range(6000, 6400))
    (request,) = r.maglev.pending()
    assert request.weights == (3, 3)
    r.maglev.install(request, request.compute())
    assert list(svc.table) == maglev.build([BE1_NAME, BE2_NAME], [3, 3], SMALL)
    after = _split(r, range(7000, 7400))
    # 1:3 of 400, then 3:3
    assert before[BE1] < 140 and 160 < after[BE1] < 240, (before, after)


def test_maglev_drain_and_weight_0_skip_the_backend_at_once_before_the_table() -> None:
    for change in ("drain", "weight 0"):
        notified: list[int] = []
        r = _router(notified)
        svc = _svc(r)
        old = list(svc.table)
        if change == "drain":
            r.verdicts.set_admin(_be(r), AdminState.DRAINED)
        else:
            r.verdicts.set_weight(_be(r), 0)
        assert list(svc.table) == old and notified == [1], change
        assert _split(r, range(5000, 5200)) == {BE2: 200}, change
        (request,) = r.maglev.pending()
        assert request.weights == (0, 3), change
        r.maglev.install(request, request.compute())
        assert _split(r, range(6000, 6200)) == {BE2: 200}, change


def test_maglev_enable_is_up_once_its_table_is_installed() -> None:
    notified: list[int] = []
    r = _router(notified)
    r.verdicts.set_admin(_be(r), AdminState.DRAINED)
    (drained,) = r.maglev.pending()
    r.maglev.install(drained, drained.compute())
    event = r.verdicts.set_admin(_be(r), AdminState.ENABLED)
    assert event.now == "up once its Maglev table is in place"
    assert not _be(r).up and _split(r, range(5000, 5300)) == {BE2: 300}
    (back,) = r.maglev.pending()
    r.maglev.install(back, back.compute())
    assert _be(r).up and logged(r)[-1] == f"service web: backend {BE1_NAME} is up"
    # the same table as a node never drained, and the same choices
    never = _router()
    assert list(_svc(r).table) == list(_svc(never).table)
    assert all(_syn_to(r, p, 2.0) == _syn_to(never, p, 2.0) for p in range(6000, 6300))


# -- health and admin state apart ------------------------------------------------------------


def test_drained_then_down_then_up_stays_drained_until_enabled() -> None:
    for scheduler in ("wrr", "maglev"):
        r = _router(scheduler=scheduler)  # tables at once: no on_ring
        be1 = _be(r)
        r.verdicts.set_admin(be1, AdminState.DRAINED)
        _run_checks(r, 0.0, 2.0, answering=(BE2,))  # BE1 fails (fall = 1)
        assert not be1.healthy and be1.admin is AdminState.DRAINED, scheduler
        assert logged(r)[-1] == f"service web: backend {BE1_NAME} is down", scheduler
        _run_checks(r, 2.0, 6.0, answering=(BE1, BE2), step=2.0)  # rise = 2
        assert be1.healthy and not be1.up, scheduler
        assert logged(r)[-1] == (
            f"service web: backend {BE1_NAME} is up; drained by the admin: no new connections"
        ), scheduler
        assert _split(r, range(7000, 7100), 6.5) == {BE2: 100}, scheduler
        event = r.verdicts.set_admin(be1, AdminState.ENABLED)
        pending = "up" if scheduler == "wrr" else "up once its Maglev table is in place"
        assert event.now == pending and be1.up, scheduler  # (the table: computed at once)
        assert BE1 in _split(r, range(8000, 8100), 7.0), scheduler


def test_a_disabled_backend_is_not_scheduled_whatever_its_health_and_enable_follows_it() -> None:
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=1, fall=1)
    r = _router(scheduler="wrr", health=health)
    be1 = _be(r)
    r.verdicts.set_admin(be1, AdminState.DISABLED)
    _run_checks(r, 0.0, 2.0, answering=(BE2,))
    _run_checks(r, 2.0, 4.0, answering=(BE1, BE2), step=2.0)
    assert be1.healthy and not be1.up
    assert _split(r, range(7000, 7100), 3.0) == {BE2: 100}
    # enabled while its checks fail: down until they pass
    _run_checks(r, 4.0, 6.0, answering=(BE2,))
    event = r.verdicts.set_admin(be1, AdminState.ENABLED)
    assert event.now == "down: its checks fail" and not be1.up
    assert str(event) == f"backend web {BE1_NAME}: enabled by the admin; down: its checks fail"
    _run_checks(r, 6.0, 8.0, answering=(BE1, BE2), step=2.0)
    assert be1.up and logged(r)[-1] == f"service web: backend {BE1_NAME} is up"


def test_the_checks_go_on_for_a_drained_backend_and_count_as_before() -> None:
    r = _router(scheduler="wrr")
    r.verdicts.set_admin(_be(r), AdminState.DRAINED)
    _run_checks(r, 0.0, 6.0, answering=(BE1, BE2), step=2.0)
    assert _be(r).checks["ok"] == 3 and r.nat is not None
    assert r.nat.counters["backends-down"] == 0 and r.nat.counters["backends-up"] == 0


# -- one place: kept across services built again, forgotten with the backend ------------------


def test_runtime_state_survives_services_built_again_from_the_same_specs() -> None:
    specs = (service(), service6())
    first = Services(specs)
    web = first.all[0]
    be1 = web.backends[0]
    be1.override.admin = AdminState.DRAINED
    be1.override.weight = 5
    web.settle(be1)
    again = Services(specs, first.overrides)  # a reload of an unchanged file
    b = again.all[0].backends[0]
    assert (b.admin, b.weight, b.up, b.spec.weight) == (AdminState.DRAINED, 5, False, 1)
    assert again.all[1].backends[0].admin is AdminState.ENABLED
    # a reload whose file no longer has BE1: its record is gone, and a later
    # file with it again starts it enabled, at the config's weight
    without = service(backends=web.spec.backends[1:])
    Services((without, service6()), first.overrides)
    back = Services(specs, first.overrides).all[0].backends[0]
    assert (back.admin, back.weight, back.up) == (AdminState.ENABLED, 1, True)


def test_a_service_built_alone_has_a_store_of_its_own() -> None:
    one, two = Service(service()), Service(service())
    one.backends[0].override.admin = AdminState.DISABLED
    assert two.backends[0].admin is AdminState.ENABLED


# -- finding backends: errors name what there is -------------------------------------------


def test_select_finds_by_name_and_address_and_names_what_exists() -> None:
    services = Services((service(), service6(name="web"), service(name="dns", port=53)))
    (b,) = services.select("web", *backends.parse_address(BE1))
    assert b.name == BE1_NAME
    with pytest.raises(LookupError, match=r"no service 'nope'; the services: dns, web$"):
        services.select("nope", 4, 1, None)
    with pytest.raises(
        LookupError,
        match=r"service 'web' has no backend 198.18.20.99; its backends: 198.18.20.11:80, "
        r"198.18.20.12:80, \[2001:2:0:20::11\]:80, \[2001:2:0:20::12\]:80",
    ):
        services.select("web", *backends.parse_address("198.18.20.99"))
    with pytest.raises(LookupError, match=r"no backend 198.18.20.11:8080;"):
        services.select("web", *backends.parse_address(f"{BE1}:8080"))


def test_a_change_applies_to_every_service_of_the_name_with_a_backend_there() -> None:
    r = lb_router(service(), service(name="web", port=443))
    got = backends.apply(r, backends.parse({"service": "web", "address": BE1, "action": "drain"}))
    assert [(c["service"], c["backend"], c["admin"]) for c in got["changed"]] == [
        ("web", BE1_NAME, "drained"),
        ("web", BE1_NAME, "drained"),
    ]
    assert r.nat is not None
    assert all(not s.backends[0].up for s in r.nat.services.all)


# -- what status and /metrics show -------------------------------------------------------------


def test_status_and_metrics_show_the_admin_state_health_and_weight() -> None:
    r = lb_router()
    r.verdicts.set_admin(_be(r), AdminState.DRAINED)
    r.verdicts.set_weight(_be(r, BE2_NAME), 7)
    doc = json.loads(json.dumps(views.router(r.state())))
    rows = {b["backend"]: b for b in doc["nat"]["services"][0]["backends"]}
    assert (rows[BE1_NAME]["admin"], rows[BE1_NAME]["up"], rows[BE1_NAME]["healthy"]) == (
        "drained",
        False,
        True,
    )
    assert (rows[BE2_NAME]["weight"], rows[BE2_NAME]["config_weight"]) == (7, 3)
    state: dict[str, Any] = {"interfaces": [], "icmp_sent": [], "icmp_rate_limited": []}
    state |= {"icmp_not_sent": {}, "tcp_resets_sent": 0, "neighbours": [], "nat": doc["nat"]}
    state |= {"internal_errors": 0, "uptime_seconds": 1}
    text = metrics.render(state).decode()
    be1 = f'backend="{BE1_NAME}",service="web"'
    assert f'hopgate_backend_admin_state{{{be1},state="drained"}} 1.0' in text
    assert f'hopgate_backend_admin_state{{{be1},state="enabled"}} 0.0' in text
    assert f"hopgate_backend_up{{{be1}}} 0.0" in text
    assert f"hopgate_backend_healthy{{{be1}}} 1.0" in text
    assert f'hopgate_backend_weight{{backend="{BE2_NAME}",service="web"}} 7.0' in text


def test_events_are_typed_and_their_text_is_the_log_line() -> None:
    assert str(BackendAdmin("web", BE1_NAME, "drained", 1)) == (
        f"backend web {BE1_NAME}: drained by the admin"
    )
    held = BackendChanged("web", BE1_NAME, True, held="weight 0")
    assert str(held) == f"service web: backend {BE1_NAME} is up; weight 0: no new connections"
