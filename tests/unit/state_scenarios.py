"""Routers in a known state (NAT, LB, relay) for the typed-state tests: the JSON
the admin API served for them before the state was typed is kept in
``data/status_json.json``."""

from __future__ import annotations

from collections.abc import Callable

from scapy.layers.inet import IP, UDP

from hopgate.pipeline.router import Router
from tests.unit.frames import C
from tests.unit.lb_frames import B, lb_router, via_b
from tests.unit.nat_frames import A4, SERVER4, inside, nat_router
from tests.unit.test_cluster_relay import frag_needed_about, node
from tests.unit.test_lb import syn


def nat() -> Router:
    r = nat_router()
    r.process(inside(IP(src=A4, dst=SERVER4) / UDP(sport=40000, dport=53)), C, 1.0)
    return r


def lb() -> Router:
    r = lb_router()
    r.process(via_b(syn()), B, 1.0)
    r.process(via_b(syn(sport=40001)), B, 1.1)
    return r


def relay() -> Router:
    r = node(("198.18.12.7", "198.18.12.8"))
    r.process(via_b(frag_needed_about(45000)), B, 1.0)
    return r


SCENARIOS: dict[str, Callable[[], Router]] = {"nat": nat, "lb": lb, "relay": relay}
