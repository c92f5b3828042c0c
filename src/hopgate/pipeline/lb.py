"""L4 services for the full-NAT load balancer (ICMP-BEHAVIOUR section 4).

A service is a VIP, a port and a protocol; a pool of local addresses (LIPs)
its connections leave from; and backends, with a weight and a health state.
The scheduler picks a backend for each new connection: round robin, smooth
weighted round robin, weighted least connections, or Maglev (the same choice on
every node that has the same backends).  Only backends that are up are chosen;
what happens to a failed backend's connections is the service's choice: they
are kept (the default) or closed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hopgate.packet import addr as A
from hopgate.pipeline import maglev
from hopgate.pipeline.conntrack import PROTO_TCP, Conn


@dataclass(frozen=True)
class HealthSpec:
    kind: str = "tcp"  # "tcp", "icmp", "http", or "none"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2  # successes in a row to come up
    fall: int = 3  # failures in a row to go down
    http_path: str = "/"
    http_status: tuple[int, int] = (200, 399)  # a status in this range is healthy


@dataclass(frozen=True)
class BackendSpec:
    address: int
    port: int
    weight: int = 1


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    family: int
    protocol: int  # PROTO_TCP or PROTO_UDP
    vip: int
    port: int
    backends: tuple[BackendSpec, ...]
    local_addresses: tuple[int, ...]
    scheduler: str = "wrr"
    echo: str = "answer"  # "answer": the VIP answers pings; "forward": a backend does
    on_backend_down: str = "keep"  # "keep" its connections, or "close" them
    maglev_table_size: int = maglev.DEFAULT_TABLE_SIZE
    health: HealthSpec = field(default_factory=HealthSpec)


class Backend:
    __slots__ = (
        "address",
        "checks",
        "conns",
        "failures",
        "family",
        "index",
        "name",
        "port",
        "service",
        "successes",
        "total",
        "up",
        "weight",
    )

    def __init__(self, service: Service, index: int, spec: BackendSpec) -> None:
        self.service = service
        self.index = index
        self.family = service.family
        self.address = spec.address
        self.port = spec.port
        self.weight = spec.weight
        text = A.ip_str(self.family, spec.address)
        self.name = f"[{text}]:{spec.port}" if self.family == A.V6 else f"{text}:{spec.port}"
        self.up = True  # until its checks say otherwise
        self.successes = 0
        self.failures = 0
        self.checks = {"ok": 0, "failed": 0}
        self.conns: set[Conn] = set()  # its live connections
        self.total = 0  # connections it was given


class Service:
    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.family = spec.family
        self.protocol = spec.protocol
        self.vip = spec.vip
        self.port = spec.port
        self.lips = spec.local_addresses
        self.backends = [Backend(self, i, b) for i, b in enumerate(spec.backends)]
        self._rr = 0
        self._current = [0] * len(self.backends)  # smooth weighted round robin
        self._lip = 0
        self._table: list[int] = []
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute what depends on which backends are up (the Maglev table)."""
        if self.spec.scheduler == "maglev":
            self._table = maglev.build(
                [b.name for b in self.backends],
                [b.weight if b.up else 0 for b in self.backends],
                self.spec.maglev_table_size,
            )

    def up(self) -> list[Backend]:
        return [b for b in self.backends if b.up and b.weight > 0]

    def pick(self, flow_key: bytes) -> Backend | None:
        """The backend for a new connection, or None when none is up."""
        scheduler = self.spec.scheduler
        if scheduler == "maglev":
            if not self._table:
                return None
            return self.backends[self._table[maglev.flow_hash(flow_key) % len(self._table)]]
        live = self.up()
        if not live:
            return None
        if scheduler == "rr":
            self._rr = (self._rr + 1) % len(live)
            return live[self._rr]
        if scheduler == "lc":
            return min(live, key=lambda b: (len(b.conns) + 1) / b.weight)
        # Smooth weighted round robin (as nginx): even spread, no bursts.
        total = 0
        best = None
        for b in live:
            self._current[b.index] += b.weight
            total += b.weight
            if best is None or self._current[b.index] > self._current[best.index]:
                best = b
        assert best is not None
        self._current[best.index] -= total
        return best

    def next_lip(self) -> int:
        self._lip = (self._lip + 1) % len(self.lips)
        return self.lips[self._lip]

    def describe(self) -> dict[str, Any]:
        vip = A.ip_str(self.family, self.vip)
        return {
            "name": self.name,
            "vip": vip,
            "port": self.port,
            "protocol": "tcp" if self.protocol == PROTO_TCP else "udp",
            "scheduler": self.spec.scheduler,
            "local_addresses": [A.ip_str(self.family, a) for a in self.lips],
            "health": self.spec.health.kind,
            "backends": [
                {
                    "backend": b.name,
                    "weight": b.weight,
                    "up": b.up,
                    "active": len(b.conns),
                    "total": b.total,
                    "checks_ok": b.checks["ok"],
                    "checks_failed": b.checks["failed"],
                }
                for b in self.backends
            ],
        }


def flow_key(family: int, proto: int, src: int, sport: int, dst: int, dport: int) -> bytes:
    """A flow's bytes for Maglev: the same on every node."""
    width = 4 if family == A.V4 else 16
    return (
        struct.pack("!BB", family, proto)
        + src.to_bytes(width, "big")
        + sport.to_bytes(2, "big")
        + dst.to_bytes(width, "big")
        + dport.to_bytes(2, "big")
    )


class Services:
    """Every service, found by (family, protocol, VIP, port)."""

    def __init__(self, specs: Sequence[ServiceSpec]) -> None:
        self.all = [Service(s) for s in specs]
        self._by_key = {(s.family, s.protocol, s.vip, s.port): s for s in self.all}
        self.vips: dict[int, set[int]] = {A.V4: set(), A.V6: set()}
        self.lips: dict[int, set[int]] = {A.V4: set(), A.V6: set()}
        self._echo: dict[tuple[int, int], Service] = {}
        for s in self.all:
            self.vips[s.family].add(s.vip)
            self.lips[s.family].update(s.lips)
            if s.spec.echo == "forward":
                self._echo.setdefault((s.family, s.vip), s)

    def find(self, family: int, proto: int, vip: int, port: int) -> Service | None:
        return self._by_key.get((family, proto, vip, port))

    def echo_service(self, family: int, vip: int) -> Service | None:
        """The service whose backends answer pings to ``vip``, if one forwards them."""
        return self._echo.get((family, vip))
