"""A load-balancer router for tests: uplinks A (the default route) and B, a server
LAN, and a TCP service on a VIP with two backends (weights 1 and 3)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from hopgate.packet.proto import PROTO_TCP
from hopgate.pipeline.actions import Action, Transmit
from hopgate.pipeline.lb import BackendSpec, HealthKind, HealthSpec, ServiceSpec
from hopgate.pipeline.lb.runtime import Overrides
from hopgate.pipeline.model import NextHopSpec, PortSpec, RelaySpec, RouterSpec, RouteSpec
from hopgate.pipeline.router import Router
from tests.unit.frames import learn_neighbours, mac

GW_A_MAC, GW_B_MAC, GW_S_MAC = "02:00:00:00:0a:01", "02:00:00:00:0b:01", "02:00:00:00:05:01"
RA_MAC, RB_MAC = "02:00:00:00:0a:02", "02:00:00:00:0b:02"
BE1_MAC, BE2_MAC = "02:00:00:00:05:0b", "02:00:00:00:05:0c"
A, B, S = 0, 1, 2  # ports

RA4, RB4 = "198.18.11.2", "198.18.12.2"
RA6, RB6 = "2001:2:0:11::2", "2001:2:0:12::2"
GW_S4, GW_S6 = "198.18.20.1", "2001:2:0:20::1"
BE1, BE2 = "198.18.20.11", "198.18.20.12"
BE1_6, BE2_6 = "2001:2:0:20::11", "2001:2:0:20::12"
LIPS4 = ("198.18.20.100", "198.18.20.101")
LIPS6 = ("2001:2:0:20::100",)
VIP4, VIP6 = "198.18.100.1", "2001:2:0:100::1"
CLIENT4, CLIENT6 = "198.18.31.10", "2001:2:0:31::10"


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def service(**overrides: Any) -> ServiceSpec:
    fields: dict[str, Any] = {
        "name": "web",
        "family": 4,
        "protocol": PROTO_TCP,
        "vip": _ip(VIP4),
        "port": 80,
        "backends": (BackendSpec(_ip(BE1), 80, 1), BackendSpec(_ip(BE2), 80, 3)),
        "local_addresses": tuple(_ip(x) for x in LIPS4),
        "scheduler": "wrr",
        "health": HealthSpec(kind=HealthKind.NONE),
    }
    fields.update(overrides)
    return ServiceSpec(**fields)


def service6(**overrides: Any) -> ServiceSpec:
    fields: dict[str, Any] = {
        "name": "web6",
        "family": 6,
        "vip": _ip(VIP6),
        "backends": (BackendSpec(_ip(BE1_6), 80, 1), BackendSpec(_ip(BE2_6), 80, 1)),
        "local_addresses": tuple(_ip(x) for x in LIPS6),
    }
    fields.update(overrides)
    return service(**fields)


def lb_router(
    *services: ServiceSpec,
    resolved: bool = True,
    relay: RelaySpec | None = None,
    on_ring: Callable[[], None] | None = None,
    overrides: Overrides | None = None,
) -> Router:
    """``on_ring``: as Router's (None: Maglev tables are computed at once);
    ``overrides``: as Router's."""
    ports = (
        PortSpec(
            "gw-a",
            mac(GW_A_MAC),
            1500,
            (ipaddress.ip_interface("198.18.11.1/24"), ipaddress.ip_interface("2001:2:0:11::1/64")),
        ),
        PortSpec(
            "gw-b",
            mac(GW_B_MAC),
            1500,
            (ipaddress.ip_interface("198.18.12.1/24"), ipaddress.ip_interface("2001:2:0:12::1/64")),
        ),
        PortSpec(
            "gw-s",
            mac(GW_S_MAC),
            1500,
            (ipaddress.ip_interface("198.18.20.1/24"), ipaddress.ip_interface("2001:2:0:20::1/64")),
        ),
    )
    routes = (
        RouteSpec(ipaddress.ip_network("0.0.0.0/0"), (NextHopSpec(ipaddress.ip_address(RA4)),)),
        RouteSpec(ipaddress.ip_network("::/0"), (NextHopSpec(ipaddress.ip_address(RA6)),)),
    )
    spec = RouterSpec(ports, routes, services=services or (service(),), relay=relay)
    r = Router(spec, now=0.0, on_ring=on_ring, overrides=overrides)
    if resolved:
        learn_neighbours(
            r,
            (
                (A, RA4, RA_MAC),
                (B, RB4, RB_MAC),
                (S, BE1, BE1_MAC),
                (S, BE2, BE2_MAC),
                (A, RA6, RA_MAC),
                (B, RB6, RB_MAC),
                (S, BE1_6, BE1_MAC),
                (S, BE2_6, BE2_MAC),
            ),
        )
    return r


def via_b(payload: Packet) -> bytearray:
    """From the client, as router B hands it over."""
    return bytearray(bytes(Ether(src=RB_MAC, dst=GW_B_MAC) / payload))


def from_backend(payload: Packet, backend_mac: str = BE2_MAC) -> bytearray:
    return bytearray(bytes(Ether(src=backend_mac, dst=GW_S_MAC) / payload))


def probes(actions: list[Action]) -> list[Ether]:
    return [Ether(bytes(a.frame)) for a in actions if isinstance(a, Transmit) and a.port == S]


def logged(r: Router) -> list[str]:
    """The events as the daemon logs them."""
    return [str(e) for e in r.events]


def answer_syns(
    r: Router, out: list[Action], now: float, *, from_be: tuple[str, ...] = (BE1, BE2)
) -> list[Action]:
    """Answer every SYN probe from the given backends with a SYN-ACK."""
    answers: list[Action] = []
    for p in probes(out):
        if p.haslayer(TCP) and p[TCP].flags == "S" and p[IP].dst in from_be:
            synack = IP(src=p[IP].dst, dst=p[IP].src) / TCP(
                sport=p[TCP].dport, dport=p[TCP].sport, flags="SA", seq=7, ack=p[TCP].seq + 1
            )
            answers += r.process(
                from_backend(synack, BE2_MAC if p[IP].dst == BE2 else "02:00:00:00:05:0b"), S, now
            )
    return answers
