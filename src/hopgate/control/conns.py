"""``hopgate conns``: the tracked connections, filtered, as plain data."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from hopgate.packet import addr as A
from hopgate.packet import ethernet
from hopgate.pipeline.conntrack import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Conn
from hopgate.pipeline.lb import Backend
from hopgate.pipeline.nat import Nat

PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}
NAMES = {v: k for k, v in PROTOCOLS.items()}
DEFAULT_LIMIT = 1000


def _endpoint(version: int, address: int, port: int, proto: int) -> str:
    text = A.ip_str(version, address)
    if proto in (PROTO_TCP, PROTO_UDP):
        return f"[{text}]:{port}" if version == A.V6 else f"{text}:{port}"
    if proto in (PROTO_ICMP, PROTO_ICMPV6) and port:
        return f"{text} id {port}"
    return text


def _hop(hop: tuple[int, bytes] | None, port_names: Sequence[str]) -> str | None:
    if hop is None:
        return None
    port, mac = hop
    name = port_names[port] if 0 <= port < len(port_names) else str(port)
    return f"{name} {ethernet.format_mac(mac)}"


def describe(conn: Conn, now: float, port_names: Sequence[str] = ()) -> dict[str, Any]:
    fam, proto, src, sport, dst, dport = conn.key_orig
    t = conn.to
    r = conn.key_reply
    state = conn.state.name.lower().replace("_", "-") if proto == PROTO_TCP else None
    row: dict[str, Any] = {
        "family": fam,
        "protocol": NAMES.get(proto, str(proto)),
        "state": state,
        "assured": conn.assured,
        "original": [_endpoint(fam, src, sport, proto), _endpoint(fam, dst, dport, proto)],
        "translated": [
            _endpoint(fam, t.src, t.sport, proto),
            _endpoint(fam, t.dst, t.dport, proto),
        ],
        "reply": [_endpoint(fam, r[2], r[3], proto), _endpoint(fam, r[4], r[5], proto)],
        "expires_in": round(max(0.0, conn.expires - now), 1),
        "packets": list(conn.packets),
        "bytes": list(conn.bytes),
        "service": None,
        "backend": None,
        "hops": None,
    }
    backend = conn.backend
    if isinstance(backend, Backend):
        row["service"] = backend.service.name
        row["backend"] = backend.name
        # where each side's packets go back to: source in, source out
        if conn.hops is not None:
            row["hops"] = [_hop(h, port_names) for h in conn.hops]
    return row


def listing(nat: Nat | None, now: float, query: dict[str, str]) -> dict[str, Any]:
    """Connections matching ``query`` (family, protocol, address, port, state, limit).
    Raises ValueError for a filter that does not parse."""
    if nat is None:
        return {"total": 0, "shown": 0, "connections": [], "nat": False}
    family = int(query["family"]) if query.get("family") else None
    if family not in (None, 4, 6):
        raise ValueError("family is 4 or 6")
    proto = None
    if query.get("protocol"):
        name = query["protocol"].lower()
        if name not in PROTOCOLS and not name.isdigit():
            raise ValueError(f"protocol: one of {', '.join(PROTOCOLS)} or a number")
        proto = PROTOCOLS.get(name) or int(name)
    address = int(ipaddress.ip_address(query["address"])) if query.get("address") else None
    port = int(query["port"]) if query.get("port") else None
    state = query.get("state") or None
    limit = int(query.get("limit") or DEFAULT_LIMIT)
    rows: list[dict[str, Any]] = []
    total = 0
    for conn in nat.connections():
        fam, p, src, sport, dst, dport = conn.key_orig
        t = conn.to
        if family is not None and fam != family:
            continue
        if proto is not None and p != proto:
            continue
        if address is not None and address not in (src, dst, t.src, t.dst):
            continue
        if port is not None and port not in (sport, dport, t.sport, t.dport):
            continue
        row = describe(conn, now, nat.port_names)
        if state is not None and row["state"] != state:
            continue
        total += 1
        if len(rows) < limit:
            rows.append(row)
    return {"total": total, "shown": len(rows), "connections": rows, "nat": True}
