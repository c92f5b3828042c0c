"""NAT's and the load balancer's connections carried across a restart (issue 12):
written as JSON lines, read back into a new table, so that NAT, DNAT and FNAT
connections go on as if hopgate had not stopped.

Sans-I/O: ``lines`` yields the state as bytes, a slice of connections at a
time (the daemon runs it in the loop as a job and writes what it yields from
another thread, so a checkpoint never stalls forwarding); ``restore`` takes
the lines back.  The file itself is the daemon's (control/statefile.py).

The first line is a header: the format's version, what the operator changed
of the backends (``hopgate backend``: read first, ``overrides``, for the new
router's services to be built with it), when it was written (the
wall clock, so that the time hopgate was down counts against each
connection's deadline), and whether its TCP trackers are exact (written at a
stop) or may lag behind the endpoints (a checkpoint: the connections are then
tracked liberally, as Linux tracks one picked up in mid-stream, so that
segments beyond the windows last seen are not dropped).  Each further line is
one connection: both tuples, its TCP state and tracker, whether it is assured,
its age and what is left of its timeout, its counters, and what it holds: NAT's
source mapping, the load balancer's backend (by service name and backend
address), and each side's port (by name) and neighbour MAC, for source in,
source out.

A connection is restored only if the configuration still has what made it: the
SNAT rule whose pool its outside address is in, the DNAT rule, the service and
backend, the local address.  What it no longer has is counted by reason, and
the connection is left out: its next packet is judged as new.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from hopgate.pipeline import tcptrack
from hopgate.pipeline.conntrack import DPORT, DST, SPORT, SRC, Conn, TcpState, Translation, Tuple
from hopgate.pipeline.lb.fnat import Hop
from hopgate.pipeline.lb.runtime import Overrides
from hopgate.pipeline.lb.service import Backend
from hopgate.pipeline.model import AdminState
from hopgate.pipeline.nat.engine import Nat

VERSION = 1
# Connections a slice of ``lines`` turns into text: some 0.5 ms of the loop's
# time (10 µs a connection; a slice runs whole, between two batches of
# frames).  At 500 (5 ms a slice), a checkpoint of 10,000 connections held a
# stream of 20,000 datagrams a second back by 50 to 70 ms (bench/reload.py).
PER_SLICE = 50


@dataclass
class Restored:
    """What ``restore`` did: connections restored, and those left out, by reason."""

    restored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    written: float | None = None  # when the state was written (wall clock)

    def summary(self) -> str:
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"{self.restored} restored" + (f"; left out: {left}" if left else "")


def header(wall: float, exact: bool, overrides: Overrides | None = None) -> bytes:
    """``exact``: the trackers are the connections' as their last packets left
    them (written when the loop had stopped, none held by the fast path); a
    checkpoint's may lag behind.  ``overrides``: what the operator changed of
    the backends (``hopgate backend``), which a restart keeps too."""
    head: dict[str, Any] = {"hopgate_state": VERSION, "written": wall, "exact": exact}
    changed = overrides.changed() if overrides is not None else []
    if changed:
        head["backends"] = [
            {"key": list(key), "admin": o.admin.value, "weight": o.weight} for key, o in changed
        ]
    return json.dumps(head).encode() + b"\n"


def overrides(first: bytes | str | None) -> Overrides:
    """The operator's backend settings in a state file's first line (an empty
    store if there are none, or the line is not a state file's header): given
    to the new router, so that its services are built with them."""
    store = Overrides()
    try:
        head = json.loads(first) if first else None
    except ValueError:
        return store
    if not isinstance(head, dict) or head.get("hopgate_state") != VERSION:
        return store
    for b in head.get("backends") or ():
        try:
            key = tuple(int(v) for v in b["key"])
            if len(key) != 6:
                continue
            record = store.of(key)
            record.admin = AdminState(b["admin"])
            record.weight = None if b["weight"] is None else int(b["weight"])
        except (KeyError, TypeError, ValueError):
            continue
    return store


def record(conn: Conn, now: float, port_names: list[str]) -> dict[str, Any]:
    """One connection as plain data."""
    mapping = conn.mapping
    backend = conn.backend
    hops = conn.hops
    return {
        "orig": list(conn.key_orig),
        "reply": list(conn.key_reply),
        "echo": conn.echo,
        "state": conn.state.name,
        "tcp": list(conn.tcp) if conn.tcp is not None else None,
        "assured": conn.assured,
        "seen_reply": conn.seen_reply,
        "age": round(now - conn.created, 3),
        "left": round(conn.expires - now, 3),
        "packets": [conn.packets_orig, conn.packets_reply],
        "bytes": [conn.bytes_orig, conn.bytes_reply],
        "mapping": [list(mapping.inside), list(mapping.outside)] if mapping else None,
        "backend": (
            {"service": backend.service.name, "address": backend.address, "port": backend.port}
            if backend is not None
            else None
        ),
        "hops": (
            [None if h is None else [port_names[h.port], h.mac.hex()] for h in hops]
            if hops is not None
            else None
        ),
    }


def lines(
    nat: Nat, now: float, wall: float, per_slice: int = PER_SLICE, *, exact: bool = False
) -> Generator[bytes, None, None]:
    """The state of ``nat``'s connections at ``now`` (``wall`` on the wall
    clock): the header, then ``per_slice`` connections' lines a step.
    ``exact``: see ``header``."""
    yield header(wall, exact, nat.services.overrides)
    conns = nat.table.connections()
    names = nat.port_names
    table = nat.table
    for i in range(0, len(conns), per_slice):
        chunk = [
            json.dumps(record(c, now, names), separators=(",", ":"))
            for c in conns[i : i + per_slice]
            if table.holds(c)  # gone since the list was taken
        ]
        yield ("\n".join(chunk) + "\n").encode() if chunk else b""


def restore(nat: Nat, text: Iterable[bytes | str], now: float, wall: float) -> Restored:
    """Put the connections of ``text`` (what ``lines`` wrote) into ``nat``'s
    table, their deadlines less the time since they were written; returns what
    was restored and what was left out, and why.  Raises ValueError if ``text``
    is not hopgate's state."""
    out = Restored()
    it = iter(text)
    first = next(it, None)
    if first is None:
        return out
    try:
        head = json.loads(first)
    except ValueError as e:
        raise ValueError(f"not a hopgate state file: {e}") from None
    if not isinstance(head, dict) or head.get("hopgate_state") != VERSION:
        raise ValueError(f"not a hopgate state file of version {VERSION}: {str(first)[:80]}")
    written = float(head["written"])
    out.written = written
    down = max(0.0, wall - written)
    exact = head.get("exact") is True
    for line in it:
        if not line.strip():
            continue
        try:
            why = _restore_one(nat, json.loads(line), now, down, exact)
        except (ValueError, KeyError, TypeError, IndexError):
            why = "unreadable"
        if why is None:
            out.restored += 1
        else:
            out.skipped[why] += 1
    return out


def _tuple(value: list[int]) -> Tuple:
    fam, proto, src, sport, dst, dport = (int(v) for v in value)
    if fam not in (4, 6) or not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(value)
    return (fam, proto, src, sport, dst, dport)


def _restore_one(nat: Nat, r: dict[str, Any], now: float, down: float, exact: bool) -> str | None:
    """Restore one record; None, or why it was left out."""
    key, reply = _tuple(r["orig"]), _tuple(r["reply"])
    left = float(r["left"]) - down
    if left <= 0:
        return "expired"
    table = nat.table
    if table.taken(key) or table.taken(reply):
        return "already known"
    backend = None
    if r["backend"] is not None:
        backend = _backend(nat, r["backend"], key, reply)
        if backend is None:
            return "service or backend gone"
    elif not translation_stands(nat, key, reply, r["mapping"], bool(r["echo"])):
        return "rule gone"
    if table.make_room(key[0], key[SRC]) is not None:
        return "table full"
    mapping = None
    if r["mapping"] is not None:
        inside, outside = (tuple(int(v) for v in m) for m in r["mapping"])
        mapping = nat.mappings.adopt(inside, outside)  # type: ignore[arg-type]
        if mapping is None:
            return "mapping taken"
    to = Translation(reply[DST], reply[DPORT], reply[SRC], reply[SPORT])
    conn = Conn(key, to, now - float(r["age"]), echo=bool(r["echo"]))
    conn.state = TcpState[r["state"]]
    if conn.tcp is not None and r["tcp"] is not None:
        tracker = array("I", (int(v) & 0xFFFFFFFF for v in r["tcp"]))
        if len(tracker) != tcptrack.FIELDS:
            raise ValueError("tracker")
        if not exact:
            # The endpoints may have sent more since: windows the tracker has
            # not seen must not drop their segments (as Linux picks up a
            # connection in mid-stream).
            tcptrack.be_liberal(tracker)
        conn.tcp = tracker
    conn.seen_reply = bool(r["seen_reply"])
    conn.packets_orig, conn.packets_reply = (int(n) for n in r["packets"])
    conn.bytes_orig, conn.bytes_reply = (int(n) for n in r["bytes"])
    if mapping is not None:
        mapping.refs += 1
        conn.mapping = mapping
    if backend is not None:
        conn.backend = backend
        conn.hops = [_hop(nat, h) for h in r["hops"] or (None, None)]
        backend.conns.add(conn)
        backend.total += 1
    table.restore(conn, now + left, assured=bool(r["assured"]))
    return None


def _hop(nat: Nat, h: list[str] | None) -> Hop | None:
    """A side's (port, MAC), if its port is still one of hopgate's (else the
    side's next packet tells it again)."""
    if h is None:
        return None
    name, mac = h
    if name not in nat.port_names:
        return None
    return Hop(nat.port_names.index(name), bytes.fromhex(mac))


def _backend(nat: Nat, b: dict[str, Any], key: Tuple, reply: Tuple) -> Backend | None:
    """The backend a load-balanced connection was given, if its service still
    has it, on the same VIP, port and local address."""
    for svc in nat.services.all:
        if svc.name != b["service"]:
            continue
        if (svc.family, svc.protocol, svc.vip) != (key[0], key[1], key[DST]):
            return None
        if reply[DST] not in svc.lips:
            return None
        for be in svc.backends:
            if be.address == int(b["address"]) and be.port == int(b["port"]):
                return be
    return None


def translation_stands(nat: Nat, key: Tuple, reply: Tuple, mapping: object, echo: bool) -> bool:
    """Whether the configuration still makes ``key``'s packets into the
    reverse of ``reply``: its source by an SNAT rule (its outside address in
    the pool of the rule for its inside address), its destination by a DNAT rule
    or another inside host's mapping (hairpinning).  ``mapping``: its source
    mapping, or None (as a record or as the object: only whether it has one
    counts).  A reload's sweep asks it too (pipeline/takeover.py)."""
    fam, proto, src, sport, dst, dport = key
    new_src, new_dst, new_dport = reply[DST], reply[SRC], reply[SPORT]
    if (new_src, reply[DPORT]) != (src, sport):
        rule = nat.inside_rule(fam, src)
        if rule is None or new_src not in rule.pool:
            return False
        if mapping is None and reply[DPORT] != sport:
            return False  # only a mapping moves the port
    elif mapping is not None:
        return False
    if (new_dst, new_dport) != (dst, dport):
        if nat.dnat_target(fam, proto, dst, dport, echo) == (new_dst, new_dport):
            return True
        hairpin = nat.mappings.by_outside.get((fam, proto, dst, dport))
        return hairpin is not None and hairpin.inside[2:] == (new_dst, new_dport)
    return True
