"""The packet layer's vocabulary: protocol numbers, flow kinds, flow keys.

The numbers are judged by the kernel's own names (Python's ``socket.IPPROTO_*``)
and scapy's table of IPv6 next headers, not by a second copy of them.
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet6 import ipv6nh

from hopgate.packet import flows, ipv6, proto

NAMES = [name for name in dir(proto) if name.startswith("PROTO_")]


@pytest.mark.parametrize("name", NAMES)
def test_protocol_numbers_are_the_kernels(name: str) -> None:
    number = getattr(proto, name)
    kernel = getattr(socket, "IPPROTO_" + name.removeprefix("PROTO_"), None)
    if kernel is not None:
        assert number == kernel
    else:  # IPPROTO_MH is not in Python's socket module
        assert number in ipv6nh and "Mobility" in ipv6nh[number]


def test_each_protocol_number_is_defined_once() -> None:
    numbers = [getattr(proto, name) for name in NAMES]
    assert len(set(numbers)) == len(numbers)
    assert proto.PORT_PROTOCOLS == (socket.IPPROTO_TCP, socket.IPPROTO_UDP)


def test_ipv6_next_header_names_are_the_protocol_numbers() -> None:
    assert (
        ipv6.NH_HOP_BY_HOP,
        ipv6.NH_TCP,
        ipv6.NH_UDP,
        ipv6.NH_ROUTING,
        ipv6.NH_FRAGMENT,
        ipv6.NH_ESP,
        ipv6.NH_AH,
        ipv6.NH_ICMPV6,
        ipv6.NH_NONE,
        ipv6.NH_DEST_OPTS,
        ipv6.NH_MOBILITY,
    ) == (0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135)


def test_flow_kinds_keep_their_values() -> None:
    assert [(k.name, k.value) for k in flows.FlowKind] == [
        ("PORTS", 1),
        ("QUERY", 2),
        ("ERROR", 3),
        ("OTHER", 4),
        ("LATER_FRAGMENT", 5),
        ("UNREADABLE", 6),
    ]
    for kind in flows.FlowKind:
        assert getattr(flows, kind.name) is kind


def test_a_classified_flow_carries_its_kind() -> None:
    # An IPv4 header (protocol UDP) and a UDP header's ports.
    packet = bytes.fromhex("4500001c00000000401100000a0000010a000002") + bytes.fromhex(
        "d43100350008"
    )
    flow = flows.v4(packet, 0, len(packet))
    assert flow == (flows.PORTS, proto.PROTO_UDP, 0xD431, 53, 20, len(packet))
    assert flow.kind is flows.FlowKind.PORTS
