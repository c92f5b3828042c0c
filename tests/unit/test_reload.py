"""A reload (issue 12; control/reload.py, pipeline/takeover.py): a router built
from the new configuration beside the running one takes over its connections,
neighbours, counters and backends' state, and from then on forwards as the old
one did for every connection the new configuration still makes; the operator is
told what changed in the file's own terms, and what only a restart can change is
refused with its key path."""

from __future__ import annotations

import dataclasses
import ipaddress
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from hopgate.control.config import parse
from hopgate.control.reload import describe, restart_only, ring_source
from hopgate.pipeline.actions import Transmit
from hopgate.pipeline.lb import RingRequest, maglev
from hopgate.pipeline.model import AdminState, Scheduler
from hopgate.pipeline.router import Router
from hopgate.pipeline.takeover import TakenOver, sweep, take_over
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import BpfObject
from hopgate.xdp.tables import LAYOUTS
from tests.unit import lb_frames as L
from tests.unit import nat_frames as N
from tests.unit.frames import C, U
from tests.unit.test_persist import _conns, _nat_traffic, _tcp
from tests.unit.test_xdp_nat import _snat_stream


def _sent(r: Router, frame: bytes, port: int, now: float) -> list[tuple[int, bytes]]:
    return [
        (a.port, bytes(a.frame))
        for a in r.process(bytearray(frame), port, now)
        if isinstance(a, Transmit)
    ]


def _reloaded(old: Router, now: float, **changes: object) -> Router:
    """``old``'s spec with ``changes``, built as a reload builds it."""
    return Router(dataclasses.replace(old.spec, **changes), now=now, before=old)  # type: ignore[arg-type]


def _swapped(new: Router, old: Router, now: float) -> TakenOver:
    """``take_over``, then the sweep, as the reload runs them (3 to a slice)."""
    done = take_over(new, old, now)
    if new.nat is not None:
        assert all(s == b"" for s in sweep(new.nat, done, per_slice=3))
    return done


# -- the connections ------------------------------------------------------------


def test_connections_the_new_configuration_still_makes_go_on_as_before() -> None:
    old, twin = N.nat_router(), N.nat_router()
    tport, _ = _nat_traffic(old)
    _nat_traffic(twin)  # the same traffic through a router never reloaded
    # The published port 8080 is gone from the new file; SNAT stays.
    new = _reloaded(old, 1.0, nat=N.nat_spec(dnat=()))
    done = _swapped(new, old, 1.0)
    assert done.kept == 2 and dict(done.ended) == {"rule gone": 1}
    a, srv, out = N.A4, N.SERVER4, N.OUT4
    for frame, port in (
        (bytes(N.inside(_tcp(a, srv, 40000, 80, "PA", 101, 501) / b"GET")), C),
        (bytes(N.outside(_tcp(srv, out, 80, tport, "A", 501, 104))), U),
    ):
        got = _sent(new, frame, port, 1.5)
        assert got and got == _sent(twin, frame, port, 1.5), (
            "hopgate after a reload forwarded a kept connection otherwise than before it"
        )
    # The neighbours came along: no ARP asked before the segment left.
    assert all(Ether(f).type == 0x0800 for _, f in got)
    # The published port's connection went with its rule: its next segment is
    # no longer sent inside (the address is the router's own: it resets it).
    gone = bytes(N.outside(_tcp("198.18.3.20", out, 50000, 8080, "A", 8, 906)))
    answered = _sent(new, gone, U, 1.6)
    assert answered and all(port == U and "R" in Ether(f)[TCP].flags for port, f in answered)
    # Counters go on from where they were.
    assert new.counters is old.counters
    assert new.nat is not None and old.nat is not None
    assert new.nat.counters["connections-created"] >= old.nat.counters["connections-created"] > 0


def test_a_balanced_connection_keeps_its_backend_across_a_weight_change() -> None:
    old = L.lb_router(L.service())
    ask = _tcp(L.CLIENT4, L.VIP4, 33333, 80, "S", 1, 0)
    assert _sent(old, bytes(L.via_b(ask)), L.B, 0.0)
    (conn,) = _conns(old).values()
    weighted = L.service(
        backends=tuple(dataclasses.replace(b, weight=5) for b in L.service().backends)
    )
    new = _reloaded(old, 1.0, services=(weighted,))
    done = _swapped(new, old, 1.0)
    assert done.kept == 1 and not done.ended
    (kept,) = _conns(new).values()
    assert kept is conn  # the same connection, its backend, LIP and local port
    # ... now of the new service's record of its backend
    assert new.nat is not None and kept.backend in new.nat.services.all[0].backends
    assert kept in kept.backend.conns
    assert kept.backend.total == 1 and kept.backend.weight == 5


def test_without_nat_in_the_new_file_every_connection_ends() -> None:
    old = N.nat_router()
    _nat_traffic(old)
    new = _reloaded(old, 1.0, nat=None)
    done = _swapped(new, old, 1.0)
    assert done.kept == 0 and dict(done.ended) == {"NAT and services gone": 3}


# -- the backends ---------------------------------------------------------------


def test_health_and_the_operators_settings_go_on() -> None:
    old = L.lb_router(L.service())
    assert old.nat is not None
    first, second = old.nat.services.all[0].backends
    first.healthy = False
    old.verdicts.changed(first, 0.5)
    old.verdicts.set_admin(second, AdminState.DRAINED)
    new = _reloaded(old, 1.0)
    assert new.nat is not None
    b1, b2 = new.nat.services.all[0].backends
    assert (b1.healthy, b1.up) == (False, False)
    assert b2.admin is AdminState.DRAINED and not b2.up
    # A verdict that changes while the new router is built is taken at the swap.
    first.healthy = True
    old.verdicts.changed(first, 1.2)
    _swapped(new, old, 1.3)
    assert (b1.healthy, b1.up) == (True, True)


def test_a_maglev_table_is_computed_again_only_when_its_backends_change() -> None:
    svc = L.service(scheduler=Scheduler.MAGLEV, maglev_table_size=251)
    old = L.lb_router(svc)
    computed: list[RingRequest] = []

    def compute(request: RingRequest) -> maglev.Ring:
        computed.append(request)
        return request.compute()

    same = Router(old.spec, now=1.0, before=old, ring_for=ring_source(old, compute))
    assert computed == []
    assert same.nat is not None and old.nat is not None
    assert same.nat.services.all[0].table == old.nat.services.all[0].table
    heavier = dataclasses.replace(
        svc, backends=(dataclasses.replace(svc.backends[0], weight=7), *svc.backends[1:])
    )
    spec = dataclasses.replace(old.spec, services=(heavier,))
    Router(spec, now=1.0, before=old, ring_for=ring_source(old, compute))
    assert [r.weights[0] for r in computed] == [7]


# -- what the operator is told ---------------------------------------------------

BASE = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24"]
[[interface]]
name = "gw-u"
addresses = ["198.18.2.1/24"]
[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.2.254"]
[[route]]
prefix = "198.18.9.0/24"
via = ["198.18.1.254"]
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
local_addresses = ["198.18.1.100"]
[[service.backend]]
address = "198.18.1.11"
[[service.backend]]
address = "198.18.1.12"
"""


def _edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_the_changes_are_told_in_the_files_terms() -> None:
    old = parse(BASE)
    new = parse(
        _edit(
            BASE,
            ('[[route]]\nprefix = "198.18.9.0/24"\nvia = ["198.18.1.254"]\n', ""),
            ('address = "198.18.1.12"', 'address = "198.18.1.12"\nweight = 3'),
        )
        + '[[service]]\nname = "dns"\nvip = "198.18.100.1"\nport = 53\nprotocol = "udp"\n'
        'local_addresses = ["198.18.1.100"]\n[[service.backend]]\naddress = "198.18.1.11"\n'
    )
    lines = describe(old, new)
    assert "route[198.18.9.0/24] removed" in lines
    assert "service[dns udp 198.18.100.1 port 53] added" in lines
    assert "service[web tcp 198.18.100.1 port 80].backend[198.18.1.12].weight: 1 -> 3" in lines
    assert len(lines) == 3, lines
    assert describe(old, parse(BASE)) == []


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (('name = "gw-u"', 'name = "gw-x"'), "interface"),
        (("[[route]]", '[dataplane]\nmode = "xdp"\n[[route]]'), "dataplane"),
        (("[[route]]", '[admin]\nsocket = "/run/x.sock"\n[[route]]'), "admin"),
        (("[[route]]", "[state]\ncheckpoint_interval = 1.0\n[[route]]"), "state"),
    ],
)
def test_what_only_a_restart_changes_is_refused_with_its_key_path(
    edit: tuple[str, str], path: str
) -> None:
    issues = restart_only(parse(BASE), parse(_edit(BASE, edit)))
    assert [i.path for i in issues] == [path]
    assert "restart" in str(issues[0])


# -- the neighbours ---------------------------------------------------------------


def test_resolved_neighbours_are_taken_and_resolving_ones_are_not() -> None:
    old = N.nat_router()
    # One still being resolved: a packet to an address nobody answered yet.
    lost = ipaddress.ip_address("198.18.2.77")
    asked = _sent(old, bytes(N.inside(IP(src=N.A4, dst=str(lost)) / UDP(dport=9))), C, 0.0)
    assert asked and Ether(asked[0][1]).haslayer(ARP)
    before = {(e.port, e.addr) for e in old.arp.table.entries() if e.mac is not None}
    v6 = len(old.nd.table)
    new = _reloaded(old, 1.0)
    done = _swapped(new, old, 1.0)
    after = {(e.port, e.addr) for e in new.arp.table.entries()}
    assert after == before and done.neighbours == len(before) + v6
    assert (U, int(lost)) not in after
    # The old tables are empty: their armed timers (a retry for the lost one)
    # do nothing, though they fire in the new router's heap.
    assert len(old.arp.table) == len(old.nd.table) == 0
    retries = [Ether(bytes(a.frame)) for a in new.poll(30.0) if isinstance(a, Transmit)]
    assert not [f for f in retries if f.haslayer(ARP) and f[ARP].pdst == str(lost)]


# -- the fast path's tables -------------------------------------------------------


def _keys(obj: BpfObject, name: str) -> set[bytes]:
    return {bytes(k) for k in obj.keys(name, LAYOUTS[name][0])}


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_the_fast_paths_tables_become_the_new_routers(obj: BpfObject) -> None:
    old = N.nat_router()
    _nat_traffic(old)
    _snat_stream(False, old, sport=41000)  # one the program takes
    tables = T.Tables(obj)
    tables.fill(old, dict.fromkeys(range(len(old.ports)), 1))
    assert old.nat is not None
    tables.sync_connections(old.nat.table)
    assert len(_keys(obj, "flows")) == 2
    routes, special = _keys(obj, "routes4"), _keys(obj, "special4")
    guards = _keys(obj, "guard4")
    # A route fewer, no published port, and an address more on the uplink.
    up = old.spec.ports[U]
    more = dataclasses.replace(
        up, addresses=(*up.addresses, ipaddress.ip_interface("198.18.2.9/24"))
    )
    ports = tuple(more if i == U else p for i, p in enumerate(old.spec.ports))
    new = _reloaded(old, 1.0, routes=old.spec.routes[1:], nat=N.nat_spec(dnat=()), ports=ports)
    _swapped(new, old, 1.0)
    assert new.nat is not None and new.nat.table.connections()
    tables.refill(new)
    assert len(_keys(obj, "routes4")) == len(routes) - 1
    assert len(_keys(obj, "special4")) == len(special) + 1
    assert _keys(obj, "guard4") < guards  # the DNAT rule's inside address
    assert _keys(obj, "neigh4")  # the neighbours, as the new router has them
    # The connection table goes on, and with it the flows the program holds.
    assert new.nat.table is old.nat.table and len(_keys(obj, "flows")) == 2
    assert tables.sync_connections(new.nat.table) == []
    assert len(_keys(obj, "flows")) == 2
    # And back: the address goes from the program's tables with the file's.
    back = _reloaded(new, 2.0, ports=old.spec.ports)
    _swapped(back, new, 2.0)
    tables.refill(back)
    assert _keys(obj, "special4") == special
