"""A reference router for pipeline tests, and helpers to build and read frames with
scapy: an independent encoder and decoder, so the tests do not check hopgate's
packet code with itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from scapy.layers.l2 import Ether

from hopgate.pipeline.actions import Action, Drop, DropReason, Transmit
from hopgate.pipeline.model import NextHopSpec, PortSpec, RouterSpec, RouteSpec
from hopgate.pipeline.neighbours import Heard
from hopgate.pipeline.router import Router

GW_C_MAC = "02:00:00:00:01:01"
GW_U_MAC = "02:00:00:00:02:01"
CLIENT_MAC = "02:00:00:00:01:0a"
UPSTREAM_MAC = "02:00:00:00:02:02"

CLIENT4 = "198.18.1.10"
GW_C4 = "198.18.1.1"
GW_U4 = "198.18.2.1"
UPSTREAM4 = "198.18.2.2"
SERVER4 = "198.18.3.10"

CLIENT6 = "2001:2:0:1::10"
GW_C6 = "2001:2:0:1::1"
GW_U6 = "2001:2:0:2::1"
UPSTREAM6 = "2001:2:0:2::2"
SERVER6 = "2001:2:0:3::10"

C, U = 0, 1  # port indexes


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def spec(**overrides: Any) -> RouterSpec:
    ports = (
        PortSpec(
            "gw-c",
            mac(GW_C_MAC),
            1500,
            (ipaddress.ip_interface("198.18.1.1/24"), ipaddress.ip_interface("2001:2:0:1::1/64")),
        ),
        PortSpec(
            "gw-u",
            mac(GW_U_MAC),
            1400,
            (ipaddress.ip_interface("198.18.2.1/24"), ipaddress.ip_interface("2001:2:0:2::1/64")),
            link_mtu=1500,
        ),
    )
    routes = (
        RouteSpec(
            ipaddress.ip_network("0.0.0.0/0"), (NextHopSpec(ipaddress.ip_address(UPSTREAM4)),)
        ),
        RouteSpec(ipaddress.ip_network("::/0"), (NextHopSpec(ipaddress.ip_address(UPSTREAM6)),)),
    )
    fields: dict[str, Any] = {"ports": ports, "routes": routes}
    fields.update(overrides)
    return RouterSpec(**fields)


def router(**overrides: Any) -> Router:
    return Router(spec(**overrides), now=0.0)


def from_client(payload: Any, dst_mac: str = GW_C_MAC) -> bytearray:
    return bytearray(bytes(Ether(src=CLIENT_MAC, dst=dst_mac) / payload))


def from_upstream(payload: Any) -> bytearray:
    return bytearray(bytes(Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / payload))


def one(frames: list[Ether]) -> Ether:
    """The only frame of ``frames``."""
    assert len(frames) == 1, frames
    return frames[0]


def sent(actions: list[Action], port: int | None = None) -> list[Ether]:
    """The frames transmitted (on ``port`` if given), decoded by scapy."""
    return [
        Ether(bytes(a.frame))
        for a in actions
        if isinstance(a, Transmit) and (port is None or a.port == port)
    ]


def drops(actions: list[Action]) -> list[DropReason]:
    return [a.reason for a in actions if isinstance(a, Drop)]


# How a test teaches the router a neighbour: as an answer to its solicitation,
# making the entry if there is none.
ANSWER = Heard(solicited=True, create=True)


def learn_neighbours(r: Router, hosts: Iterable[tuple[int, str, str]]) -> None:
    """Teach the router (port, address, MAC) neighbours, as after a first exchange."""
    out: list[Action] = []
    for port, host, hw in hosts:
        address = ipaddress.ip_address(host)
        table = r.arp.table if address.version == 4 else r.nd.table
        table.learn(port, int(address), mac(hw), ANSWER, 0.0, out)


def resolved_router(**overrides: Any) -> Router:
    """A router that already knows the upstream neighbour's MAC (both families)
    and the client's, as after a first exchange."""
    r = router(**overrides)
    learn_neighbours(
        r,
        (
            (U, UPSTREAM4, UPSTREAM_MAC),
            (U, UPSTREAM6, UPSTREAM_MAC),
            (C, CLIENT4, CLIENT_MAC),
            (C, CLIENT6, CLIENT_MAC),
        ),
    )
    return r
