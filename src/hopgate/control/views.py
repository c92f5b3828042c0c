"""The pipeline's state records (``hopgate.pipeline.state``) as the admin API's JSON.

This is the one place addresses, MACs and enums are formatted for operators:
``/status`` serves what :func:`router` returns (merged with the counters by
``hopgate.daemon.snapshot``); ``hopgate status`` (``control/status.py``) and
``/metrics`` (``control/metrics.py``) read that document."""

from __future__ import annotations

from typing import Any

from hopgate.packet import addr as A
from hopgate.packet import ethernet
from hopgate.packet.proto import PROTO_TCP
from hopgate.pipeline.state import (
    BackendState,
    InterfaceState,
    NatState,
    NeighbourState,
    RelayState,
    RouterState,
    RouteState,
    SecondChanceState,
    ServiceState,
)

JSON = dict[str, Any]


def interface(s: InterfaceState) -> JSON:
    return {
        "name": s.name,
        "mac": ethernet.format_mac(s.mac),
        "mtu": s.mtu,
        "addresses": [f"{A.v4_str(a)}/{n}" for a, n in s.v4]
        + [f"{A.v6_str(a)}/{n}" for a, n in s.v6]
        + [f"{A.v6_str(s.link_local)}/64"],
    }


def route(s: RouteState) -> JSON:
    return {
        "prefix": f"{A.ip_str(s.family, s.prefix)}/{s.prefixlen}",
        "connected": s.connected,
        "nexthops": [
            {
                "interface": h.interface,
                "via": A.ip_str(s.family, h.gateway) if h.gateway is not None else None,
            }
            for h in s.nexthops
        ],
    }


def neighbour(s: NeighbourState) -> JSON:
    return {
        "family": s.family,
        "interface": s.interface,
        "address": A.ip_str(s.family, s.address),
        "mac": ethernet.format_mac(s.mac) if s.mac is not None else None,
        "state": s.state.name.lower(),
        "queued": s.queued,
    }


def service(s: ServiceState) -> JSON:
    return {
        "name": s.name,
        "vip": A.ip_str(s.family, s.vip),
        "port": s.port,
        "protocol": "tcp" if s.protocol == PROTO_TCP else "udp",
        "scheduler": str(s.scheduler),
        "local_addresses": [A.ip_str(s.family, a) for a in s.local_addresses],
        "health": str(s.health),
        "backends": [backend(b) for b in s.backends],
    }


def backend(s: BackendState) -> JSON:
    """One backend, in ``/status`` and in the answer to ``hopgate backend``."""
    return {
        "backend": s.name,
        "weight": s.weight,
        "up": s.up,  # takes new connections
        "active": s.active,
        "total": s.total,
        "checks_ok": s.checks_ok,
        "checks_failed": s.checks_failed,
        "healthy": s.healthy,
        "admin": str(s.admin),
        "config_weight": s.config_weight,
    }


def nat(s: NatState) -> JSON:
    return {
        "connections": s.connections,
        "max_connections": s.max_connections,
        "unassured": s.unassured,
        "mappings": s.mappings,
        "fragment_flows": s.fragment_flows,
        "services": [service(x) for x in s.services],
        "counters": dict(s.counters),
    }


def relay(s: RelayState) -> JSON:
    return {
        "mode": "unicast" if s.peers else "broadcast",
        "peers": [str(p) for p in s.peers],
        "sent_to_peers": s.sent_to_peers,
        "interfaces": [
            {
                "interface": i.interface,
                "seen": i.seen,
                "relayed": i.relayed,
                "dropped": {str(reason): n for reason, n in i.dropped},
            }
            for i in s.interfaces
        ],
        "second_chance": second_chance(s.second_chance) if s.second_chance else None,
    }


def second_chance(s: SecondChanceState) -> JSON:
    return {
        "segments_sent": s.segments_sent,
        "copies_sent": s.copies_sent,
        "copies_received": s.copies_received,
        "copies_forwarded": s.copies_forwarded,
        "copies_missed": s.copies_missed,
    }


def router(s: RouterState) -> JSON:
    """The router's part of ``/status`` (the counters are merged in by the daemon)."""
    return {
        "interfaces": [interface(i) for i in s.interfaces],
        "routes": [route(r) for r in s.routes],
        "neighbours": [neighbour(n) for n in s.neighbours],
        "reassembly": {"datagrams": s.reassembly_datagrams, "bytes": s.reassembly_bytes},
        "icmp_rate_limit_destinations": s.icmp_rate_limit_destinations,
        "timers": s.timers,
        "nat": nat(s.nat) if s.nat is not None else None,
        "relay": relay(s.relay) if s.relay is not None else None,
    }
