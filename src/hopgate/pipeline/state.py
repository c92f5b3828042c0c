"""Operator state as the pipeline sees it: frozen records of raw values.

Addresses are ints (with their family), MACs bytes, enums stay enums: nothing is
formatted here.  ``hopgate.control.views`` turns these records into the admin API's
JSON document; ``hopgate status`` and ``/metrics`` read that document."""

from __future__ import annotations

from dataclasses import dataclass

from hopgate.pipeline.model import AdminState, HealthKind, IPAddress, Scheduler
from hopgate.pipeline.neighbours import State


@dataclass(frozen=True, slots=True)
class InterfaceState:
    name: str
    mac: bytes
    mtu: int
    v4: tuple[tuple[int, int], ...]  # (address, prefix length)
    v6: tuple[tuple[int, int], ...]
    link_local: int  # an IPv6 address, prefix length 64


@dataclass(frozen=True, slots=True)
class NextHopState:
    interface: str
    gateway: int | None  # None for a connected route


@dataclass(frozen=True, slots=True)
class RouteState:
    family: int
    prefix: int
    prefixlen: int
    connected: bool
    nexthops: tuple[NextHopState, ...]


@dataclass(frozen=True, slots=True)
class NeighbourState:
    family: int
    interface: str
    address: int
    mac: bytes | None  # None until resolved
    state: State
    queued: int


@dataclass(frozen=True, slots=True)
class BackendState:
    name: str
    weight: int
    up: bool
    active: int
    total: int
    checks_ok: int
    checks_failed: int
    healthy: bool  # the checks' verdict (``up``: whether it takes new connections)
    admin: AdminState  # what the operator made of it (hopgate backend)
    config_weight: int  # ``weight`` is the operator's when one was set


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    family: int
    vip: int
    port: int
    protocol: int  # PROTO_TCP or PROTO_UDP
    scheduler: Scheduler
    local_addresses: tuple[int, ...]
    health: HealthKind
    backends: tuple[BackendState, ...]


@dataclass(frozen=True, slots=True)
class NatState:
    connections: int
    max_connections: int
    unassured: int
    mappings: int
    fragment_flows: int
    services: tuple[ServiceState, ...]
    counters: tuple[tuple[str, int], ...]  # NAT events, in the order first counted


@dataclass(frozen=True, slots=True)
class RelayInterfaceState:
    interface: str
    seen: int
    relayed: int
    dropped: tuple[tuple[str, int], ...]  # (RelayDrop value, count)


@dataclass(frozen=True, slots=True)
class SecondChanceState:
    """Second chance's counts (pipeline/lb/cluster.py)."""

    segments_sent: int
    copies_sent: int
    copies_received: int
    copies_forwarded: int
    copies_missed: int


@dataclass(frozen=True, slots=True)
class RelayState:
    peers: tuple[IPAddress, ...]  # none: broadcast
    sent_to_peers: int
    interfaces: tuple[RelayInterfaceState, ...]
    second_chance: SecondChanceState | None = None  # None: off


@dataclass(frozen=True, slots=True)
class RouterState:
    interfaces: tuple[InterfaceState, ...]
    routes: tuple[RouteState, ...]
    neighbours: tuple[NeighbourState, ...]
    reassembly_datagrams: int
    reassembly_bytes: int
    icmp_rate_limit_destinations: int
    timers: int
    nat: NatState | None
    relay: RelayState | None
