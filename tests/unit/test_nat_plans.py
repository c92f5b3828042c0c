"""What NAT decides before the router's checks is one typed plan per case
(pipeline/plans.py), and a load-balanced connection's hops are ``Hop`` records."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror

from hopgate.pipeline.conntrack import Side
from hopgate.pipeline.context import Packet
from hopgate.pipeline.family import ON
from hopgate.pipeline.lb import Hop
from hopgate.pipeline.nat import Nat
from hopgate.pipeline.plans import ErrorAbout, NewFlow, NewService
from hopgate.pipeline.router import Router
from tests.unit import lb_frames as L
from tests.unit import nat_frames as N
from tests.unit.frames import C


def _inbound(r: Router, frame: bytearray) -> object:
    nat = r.nat
    assert isinstance(nat, Nat)
    pkt = Packet(frame, C, 14, r.inet4, 0.0, [])
    assert r.inet4.admit(pkt) is ON
    return nat.inbound(pkt)


def test_a_new_dnat_flow_is_a_new_flow_plan_to_the_inside_server() -> None:
    r = N.nat_router()
    syn = N.outside(IP(src=N.SERVER4, dst=N.OUT4) / TCP(sport=33000, dport=8080, flags="S"))
    plan = _inbound(r, syn)
    assert isinstance(plan, NewFlow), plan
    assert plan.dst == L._ip(N.A4) and plan.to is not None and plan.to.dport == 80


def test_an_error_about_a_translated_flow_is_an_error_plan_on_its_side() -> None:
    r = N.nat_router()
    syn = IP(src=N.A4, dst=N.SERVER4) / TCP(sport=40000, dport=80, flags="S")
    r.process(N.inside(syn), C, 0.0)
    quote = IPerror(src=N.OUT4, dst=N.SERVER4) / TCPerror(sport=40000, dport=80, flags="S")
    error = N.outside(IP(src=N.SERVER4, dst=N.OUT4) / ICMP(type=3, code=3) / quote)
    plan = _inbound(r, error)
    assert isinstance(plan, ErrorAbout), plan
    assert isinstance(plan.side, Side) and plan.dst == L._ip(N.A4)


def test_a_new_flow_to_a_vip_is_a_service_plan_and_its_hops_are_hop_records() -> None:
    r = L.lb_router()
    syn = L.via_b(IP(src=L.CLIENT4, dst=L.VIP4) / TCP(sport=40000, dport=80, flags="S"))
    plan = _inbound(r, bytearray(syn))
    assert isinstance(plan, NewService), plan
    assert plan.backend.service is plan.service and plan.dst == plan.backend.address
    r.process(syn, L.B, 0.0)
    assert r.nat is not None
    (conn,) = r.nat.connections()
    assert conn.hops == [Hop(L.B, bytes.fromhex(L.RB_MAC.replace(":", ""))), None]
    assert conn.backend in plan.service.backends
