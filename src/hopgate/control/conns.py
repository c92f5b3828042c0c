"""``hopgate conns``: the tracked connections, filtered, as plain data."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

from hopgate.io.mailbox import Steps
from hopgate.packet import addr as A
from hopgate.packet import ethernet
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.pipeline.conntrack import Conn, TcpState
from hopgate.pipeline.lb import Backend

if TYPE_CHECKING:
    from hopgate.pipeline.nat import Nat

PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}
NAMES = {v: k for k, v in PROTOCOLS.items()}
_STATE_NAMES = {s: s.name.lower().replace("_", "-") for s in TcpState}
STATES = tuple(_STATE_NAMES.values())
DEFAULT_LIMIT = 1000  # connections a listing shows unless told (0: all)
STEP = 64  # connections a slice of a listing or a delete examines (~1 ms of formatting)
KEEPALIVE = 16  # a delete sends a byte every this many slices

Clock = Callable[[], float]


def _state(conn: Conn) -> str | None:
    return _STATE_NAMES[conn.state] if conn.proto == PROTO_TCP else None


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


def describe(
    conn: Conn, now: float, port_names: Sequence[str] = (), offloaded: Collection[Conn] = ()
) -> dict[str, Any]:
    """One connection as the listing shows it; ``offloaded``: the connections
    the XDP fast path holds (their counts include what it forwarded)."""
    fam, proto, src, sport, dst, dport = conn.key_orig
    t = conn.to
    r = conn.key_reply
    state = _state(conn)
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
        "fastpath": conn in offloaded,
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


@dataclass(frozen=True)
class Filters:
    """What ``hopgate conns`` (and ``--delete``) selects; None matches anything."""

    family: int | None = None
    proto: int | None = None
    address: tuple[int, int] | None = None  # (family, address)
    port: int | None = None
    state: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in astuple(self))

    def match(self, conn: Conn) -> bool:
        fam, p, src, sport, dst, dport = conn.key_orig
        if self.family is not None and fam != self.family:
            return False
        if self.proto is not None and p != self.proto:
            return False
        t = conn.to
        if self.address is not None:
            version, address = self.address
            if fam != version or address not in (src, dst, t.src, t.dst):
                return False
        if self.port is not None and self.port not in (sport, dport, t.sport, t.dport):
            return False
        return self.state is None or _state(conn) == self.state


def _number(query: dict[str, str], key: str, low: int, high: int) -> int | None:
    text = query.get(key)
    if not text:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{key}: a number from {low} to {high}, not {text!r}")
    return int(text)


def parse(query: dict[str, str]) -> tuple[Filters, int]:
    """The filters and the limit of a query (family, protocol, address, port,
    state, limit; limit 0 means no limit).  Raises ValueError, naming the key,
    for one that does not parse."""
    unknown = sorted(set(query) - {"family", "protocol", "address", "port", "state", "limit"})
    if unknown:
        raise ValueError(f"unknown filter {', '.join(unknown)}")
    family = _number(query, "family", 4, 6)
    if family not in (None, 4, 6):
        raise ValueError("family: 4 or 6")
    proto = None
    if query.get("protocol"):
        name = query["protocol"].lower()
        if name in PROTOCOLS:
            proto = PROTOCOLS[name]
        elif name.isdigit() and int(name) <= 255:
            proto = int(name)
        else:
            raise ValueError(f"protocol: one of {', '.join(PROTOCOLS)} or a number up to 255")
    address = None
    if query.get("address"):
        try:
            ip = ipaddress.ip_address(query["address"])
        except ValueError:
            raise ValueError(f"address: {query['address']!r} is not an IP address") from None
        address = (ip.version, int(ip))
    port = _number(query, "port", 0, 65535)
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise ValueError(f"state: one of {', '.join(STATES)}")
    limit = _number(query, "limit", 0, 2**63)
    filters = Filters(family, proto, address, port, state)
    return filters, DEFAULT_LIMIT if limit is None else limit


def list_steps(nat: Nat | None, clock: Clock, filters: Filters, limit: int) -> Steps:
    """The listing as JSON, a slice at a time (run by the loop as a ``Job``): the
    connections there are when it starts, ``STEP`` of them examined a slice,
    only those matching (the first ``limit``, 0 for all) formatted, one a line;
    then how many matched (``total``) and were shown."""
    if nat is None:
        yield b'{"nat": false, "connections": [], "total": 0, "shown": 0}\n'
        return
    conns = nat.connections()
    yield b'{"nat": true, "connections": ['
    names = nat.port_names
    total = shown = 0
    for at in range(0, len(conns), STEP):
        now = clock()
        rows = []
        for conn in conns[at : at + STEP]:
            if not filters.match(conn):
                continue
            total += 1
            if limit and shown >= limit:
                continue
            rows.append(json.dumps(describe(conn, now, names, nat.table.offloaded)))
            shown += 1
        if rows:
            lead = "\n" if shown == len(rows) else ",\n"
            yield (lead + ",\n".join(rows)).encode()
        else:
            yield b""
    yield f'\n], "total": {total}, "shown": {shown}}}\n'.encode()


def delete_steps(nat: Nat | None, filters: Filters) -> Steps:
    """Remove the matching connections (all with no filter) there are when it
    starts, ``STEP`` a slice, their mappings released; then ``{"deleted": n}``.
    Whitespace now and then keeps the client's socket from timing out."""
    if nat is None:
        yield b'{"nat": false, "deleted": 0}\n'
        return
    conns = nat.connections()
    yield b'{"nat": true,'
    table = nat.table
    deleted = 0
    for n, at in enumerate(range(0, len(conns), STEP), 1):
        for conn in conns[at : at + STEP]:
            if filters.match(conn):
                before = len(table)
                table.remove(conn)  # nothing if it expired since the delete began
                deleted += before - len(table)
        yield b" " if n % KEEPALIVE == 0 else b""
    yield f' "deleted": {deleted}}}\n'.encode()


def job(action: str, nat: Nat | None, clock: Clock, query: dict[str, str]) -> Steps:
    """The steps of ``action`` (list, delete, flush) over the connections.  The
    query is checked here, in the caller's thread (ValueError); the steps run in
    the loop's.  ``delete`` needs a filter: ``flush`` is for all."""
    filters, limit = parse(query)
    if action == "list":
        return list_steps(nat, clock, filters, limit)
    if "limit" in query:
        raise ValueError("limit: only for listing")
    if action == "delete":
        if not filters.any():
            raise ValueError("no filter: give one, or flush to delete every connection")
        return delete_steps(nat, filters)
    if action == "flush":
        if filters.any():
            raise ValueError("flush takes no filter (delete with filters)")
        return delete_steps(nat, Filters())
    raise ValueError(f"unknown action {action!r}")
