"""Longest-prefix match with equal-cost multipath, and the flow hash that picks a path."""

from __future__ import annotations

from typing import NamedTuple
from zlib import crc32

from hopgate.packet import addr as A


class NextHop(NamedTuple):
    port: int
    gateway: int  # 0: the destination is on the link (a connected route)


class Route(NamedTuple):
    version: int
    prefix: int
    prefixlen: int
    nexthops: tuple[NextHop, ...]
    connected: bool

    def describe(self) -> str:
        return f"{A.ip_str(self.version, self.prefix)}/{self.prefixlen}"


class RouteTable:
    """One family's routes.  Lookup tries each prefix length in use, longest first:
    a handful of dict probes for a typical table, whatever its size."""

    def __init__(self, version: int) -> None:
        self.version = version
        self._width = 32 if version == A.V4 else 128
        self._by_len: dict[int, dict[int, Route]] = {}
        self._probe: list[tuple[int, dict[int, Route]]] = []

    def add(self, route: Route) -> None:
        if route.version != self.version:
            raise ValueError("route of the wrong family")
        table = self._by_len.setdefault(route.prefixlen, {})
        table[route.prefix] = route
        self._probe = [
            (A.mask(self.version, plen), self._by_len[plen])
            for plen in sorted(self._by_len, reverse=True)
        ]

    def lookup(self, dst: int) -> Route | None:
        for m, table in self._probe:
            route = table.get(dst & m)
            if route is not None:
                return route
        return None

    def lookup_exact(self, prefix: int, prefixlen: int) -> Route | None:
        table = self._by_len.get(prefixlen)
        return table.get(prefix) if table is not None else None

    def routes(self) -> list[Route]:
        return [r for plen in sorted(self._by_len) for r in self._by_len[plen].values()]

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_len.values())


# One byte for each protocol number, made once.
_PROTO = [bytes((n,)) for n in range(256)]


def flow_hash(proto: int, src: int, sport: int, dst: int, dport: int, width: int) -> int:
    """A symmetric hash of a 5-tuple: both directions of a flow, and ICMP errors
    hashed on the packet they quote, take the same path (as Linux's multipath
    hash).  zlib's CRC-32 of the flow's two ends, each its address (``width``
    bytes) and port big-endian, the lower end first, then the protocol: written
    so that the XDP fast path (xdp/fastpath.c, ``flow_hash``) computes the same."""
    a = ((src << 16) | sport).to_bytes(width + 2, "big")
    b = ((dst << 16) | dport).to_bytes(width + 2, "big")
    return crc32(a + b + _PROTO[proto]) if a <= b else crc32(b + a + _PROTO[proto])
