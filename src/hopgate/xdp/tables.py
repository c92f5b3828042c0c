"""The fast path's tables (fastpath.c), their one Python definition, and how the
router's state fills them.

Addresses are in network byte order, as the program reads them from the
packet.  What the fast path must not decide gets no entry, or an entry that
sends the packet to the pipeline: a route with several next hops (the fast path
does not hash yet) is installed with port ``PASS_PORT``, so that a shorter
prefix cannot take its packets.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Mapping
from pathlib import Path

from hopgate.pipeline.neighbours import State
from hopgate.pipeline.router import Router
from hopgate.xdp.libbpf import BpfObject, CValue

OBJECT = Path(__file__).with_name("fastpath.o")
PROGRAM = "hopgate_fastpath"
MAX_PORTS = 64
PASS_PORT = 0xFFFFFFFF  # no port: the packet goes to the pipeline


class Port(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("mtu", ctypes.c_uint16), ("mac", ctypes.c_uint8 * 6)]


class RouteKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class Route(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("gateway", ctypes.c_uint32)]


class NeighKey(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


Addr16 = ctypes.c_uint8 * 16


class Route6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", Addr16)]


class Route6(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("gateway", Addr16)]


class Neigh6Key(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint32), ("addr", Addr16)]


class Addr6(ctypes.Structure):
    _fields_ = [("a", Addr16)]


class Neigh(ctypes.Structure):
    _fields_ = [("mac", ctypes.c_uint8 * 6), ("pad", ctypes.c_uint16)]


# Each table's (key, value) as fastpath.c declares them.
LAYOUTS: dict[str, tuple[type[CValue], type[CValue]]] = {
    "ports": (ctypes.c_uint32, Port),
    "port_of": (ctypes.c_uint32, ctypes.c_uint32),
    "routes4": (RouteKey, Route),
    "neigh4": (NeighKey, Neigh),
    "special4": (ctypes.c_uint32, ctypes.c_uint8),
    "routes6": (Route6Key, Route6),
    "neigh6": (Neigh6Key, Neigh),
    "special6": (Addr6, ctypes.c_uint8),
    "tx": (ctypes.c_uint32, ctypes.c_uint32),
}


def _be(addr: int) -> int:
    """An IPv4 address as the program sees it in memory."""
    return socket.htonl(addr)


def _a16(addr: int) -> ctypes.Array[ctypes.c_uint8]:
    return Addr16(*addr.to_bytes(16, "big"))


def _mac(mac: bytes) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * 6)(*mac)


class UnsupportedError(ValueError):
    """The router does what this fast path cannot mirror yet."""


def fill(obj: BpfObject, router: Router, ifindex: Mapping[int, int]) -> None:
    """Mirror ``router``'s ports, routes, reachable neighbours and special
    addresses (both families) into ``obj``'s tables; ``ifindex``: each port's
    interface."""
    if router.nat is not None:
        # Every forwarded packet may be NAT's: not mirrored yet (issue 11).
        raise UnsupportedError("NAT and the load balancer are not in the fast path yet")
    for p in router.ports:
        index = ctypes.c_uint32(p.index)
        obj.update("ports", index, Port(ifindex[p.index], p.mtu, _mac(p.mac)))
        obj.update("port_of", ctypes.c_uint32(ifindex[p.index]), ctypes.c_uint32(p.index + 1))
        obj.update("tx", index, ctypes.c_uint32(ifindex[p.index]))
    # Per family: its route and neighbour tables' names and how an address is
    # laid out in their keys.
    families = (
        (router.inet4, "routes4", RouteKey, Route, "neigh4", NeighKey, _be),
        (router.inet6, "routes6", Route6Key, Route6, "neigh6", Neigh6Key, _a16),
    )
    for fam, routes, route_key, route, neighs, neigh_key, addr in families:
        for r in fam.routes.routes():
            hops = r.nexthops
            port, gw = (hops[0].port, hops[0].gateway) if len(hops) == 1 else (PASS_PORT, 0)
            obj.update(routes, route_key(r.prefixlen, addr(r.prefix)), route(port, addr(gw)))
        for e in fam.neighbours.entries():
            if e.state == State.REACHABLE and e.mac is not None:
                obj.update(neighs, neigh_key(e.port, addr(e.addr)), Neigh(_mac(e.mac), 0))
    local = router.local
    for a in {*local.v4, *local.v4_broadcast, *local.v4_not_source}:
        obj.update("special4", ctypes.c_uint32(_be(a)), ctypes.c_uint8(1))
    # Link-local addresses, hopgate's included, the program passes up by their prefix.
    for a in local.v6:
        obj.update("special6", Addr6(_a16(a)), ctypes.c_uint8(1))
