"""IP addresses as integers, and the special ranges the router must recognise.

The per-packet path keeps addresses as plain ints: they hash fast, mask for
longest-prefix match, and need no object per packet.  ``ipaddress`` is used
only to read config and to print.
"""

from __future__ import annotations

import ipaddress

V4 = 4
V6 = 6

V4_LIMITED_BROADCAST = 0xFFFFFFFF
V6_ALL_NODES = int(ipaddress.IPv6Address("ff02::1"))
V6_ALL_ROUTERS = int(ipaddress.IPv6Address("ff02::2"))
V6_SOLICITED_NODE_PREFIX = int(ipaddress.IPv6Address("ff02::1:ff00:0"))
_V6_LINK_LOCAL_PREFIX = 0xFE80 << 112
_V6_LOOPBACK = 1


def v4_is_martian_source(a: int) -> bool:
    """Sources that are not one host (RFC 1812 5.3.7; Linux's martian source check)."""
    top = a >> 24
    # this network, loopback; multicast, class E and limited broadcast
    return top in {0, 127} or top >= 224


def v4_is_martian_destination(a: int) -> bool:
    return a >> 24 in {0, 127}


def v4_is_multicast(a: int) -> bool:
    return a >> 28 == 0xE


def v6_is_multicast(a: int) -> bool:
    return a >> 120 == 0xFF


def v6_is_link_local(a: int) -> bool:
    return a >> 118 == 0xFE80 >> 6


def v6_is_unspecified(a: int) -> bool:
    return a == 0


def v6_is_loopback(a: int) -> bool:
    return a == _V6_LOOPBACK


def v6_is_martian_source(a: int) -> bool:
    """Sources that name no single host: ::, ::1, multicast (RFC 4291 2.5.2, 2.7)."""
    return a <= _V6_LOOPBACK or a >> 120 == 0xFF


def v6_solicited_node(a: int) -> int:
    """The solicited-node multicast group of an address (RFC 4291 2.7.1)."""
    return V6_SOLICITED_NODE_PREFIX | (a & 0xFFFFFF)


def v6_link_local_from_mac(mac: bytes) -> int:
    """fe80::/64 with the modified EUI-64 interface identifier of ``mac`` (RFC 4291 App. A)."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return _V6_LINK_LOCAL_PREFIX | int.from_bytes(eui, "big")


def v4_str(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def v6_str(a: int) -> str:
    return str(ipaddress.IPv6Address(a))


def ip_str(version: int, a: int) -> str:
    return v4_str(a) if version == V4 else v6_str(a)


def mask(version: int, prefixlen: int) -> int:
    width = 32 if version == V4 else 128
    return ((1 << prefixlen) - 1) << (width - prefixlen)
