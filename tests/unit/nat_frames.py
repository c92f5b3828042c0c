"""A NAT router for tests: inside 198.18.1.0/24 and 2001:2:0:1::/64 behind gw-c,
translated to gw-u's addresses, with a published TCP port on each family."""

from __future__ import annotations

import ipaddress
from typing import Any

from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from hopgate.pipeline.model import DnatSpec, NatSpec, SnatSpec
from hopgate.pipeline.router import Router
from tests.unit.frames import (
    CLIENT_MAC,
    GW_C_MAC,
    GW_U_MAC,
    UPSTREAM4,
    UPSTREAM6,
    UPSTREAM_MAC,
    C,
    U,
    learn_neighbours,
    spec,
)

A4, B4 = "198.18.1.10", "198.18.1.11"
A6, B6 = "2001:2:0:1::10", "2001:2:0:1::11"
B_MAC = "02:00:00:00:01:0b"
OUT4, OUT6 = "198.18.2.1", "2001:2:0:2::1"  # gw-u: the outside address
SERVER4, SERVER6 = "198.18.3.10", "2001:2:0:3::10"


def nat_spec(**overrides: Any) -> NatSpec:
    fields: dict[str, Any] = {
        "snat": (
            SnatSpec(
                (ipaddress.ip_network("198.18.1.0/24"), ipaddress.ip_network("2001:2:0:1::/64")),
                "gw-u",
            ),
        ),
        "dnat": (
            DnatSpec("tcp", ipaddress.ip_address(OUT4), ipaddress.ip_address(A4), 8080, 80),
            DnatSpec("tcp", ipaddress.ip_address(OUT6), ipaddress.ip_address(A6), 8080, 80),
        ),
        "seed": 1,
    }
    fields.update(overrides)
    return NatSpec(**fields)


def nat_router(**nat: Any) -> Router:
    """Neighbours known, as after a first exchange."""
    r = Router(spec(nat=nat_spec(**nat)), now=0.0)
    learn_neighbours(
        r,
        (
            (U, UPSTREAM4, UPSTREAM_MAC),
            (C, A4, CLIENT_MAC),
            (C, B4, B_MAC),
            (U, UPSTREAM6, UPSTREAM_MAC),
            (C, A6, CLIENT_MAC),
            (C, B6, B_MAC),
        ),
    )
    return r


def inside(payload: Packet, host_mac: str = CLIENT_MAC) -> bytearray:
    return bytearray(bytes(Ether(src=host_mac, dst=GW_C_MAC) / payload))


def outside(payload: Packet) -> bytearray:
    return bytearray(bytes(Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / payload))


_QUOTES = {"IPerror", "TCPerror", "UDPerror", "ICMPerror", "IPerror6"}


def checksums_ok(pkt: Packet) -> bool:
    """Whether every checksum of a packet, up to any quoted packet it carries,
    is what scapy computes for it (a UDP checksum of zero means none).  What a
    TCP or UDP segment carries is data, whatever scapy decodes it as (UDP port
    4754 is GRE-in-UDP to scapy, whose GRE checksum is not the packet's)."""
    fresh = pkt.__class__(bytes(pkt))
    layer: Packet = fresh
    while isinstance(layer, Packet) and layer.name != "NoPayload":
        if type(layer).__name__ in _QUOTES:
            break
        for field in ("chksum", "cksum"):
            if field in layer.fields and not (isinstance(layer, UDP) and layer.fields[field] == 0):
                delattr(layer, field)  # through scapy, which then drops its cached bytes
        if isinstance(layer, TCP | UDP):
            break
        layer = layer.payload
    return bytes(fresh) == bytes(pkt)
