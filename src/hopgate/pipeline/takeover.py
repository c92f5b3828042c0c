"""A reload's hand-over (docs/operations.md, "Reload"): what the router built
from the new configuration takes from the one it replaces.

Built beforehand in another thread (``Router(before=...)``), the new router
already has the old one's counters, its services' backends their health and the
operator's settings, its Maglev tables (the old ones where the backends are the
same), and timers kept apart.  ``take_over`` runs in the loop, between two
batches of frames, and costs no more than the configuration is long: nothing in
it grows with the connections.

- The timers become one heap, so the connections' expiry goes on.
- NAT's and the load balancer's connections stay where they are: the new engine
  takes the table itself, with its mappings, local ports and fragments
  (``Nat.take_state``).  Whether each connection still stands under the new
  configuration is the sweep's (``sweep``), a slice at a time after the swap:
  those whose rule, service or backend is gone are removed (until their
  slice, a few milliseconds at most, they go on as before), and a load-balanced
  one is moved to its backend's new record.
- The resolved neighbours are adopted (a reload does not ask for every MAC
  again); the old tables are emptied, so that their armed timers do nothing.
- The old health checker is stopped; the new one checks from now on.
- The links that are down, and the events not yet logged, pass over.

What is not taken: the ICMP rate limiter's buckets (they refill within a
second), datagrams being reassembled for hopgate itself (their senders
retransmit), neighbours still being resolved (their next packet asks again), the
relay's per-source buckets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field

from hopgate.pipeline.conntrack import DST, Conn
from hopgate.pipeline.lb.runtime import BackendKey
from hopgate.pipeline.lb.service import Backend
from hopgate.pipeline.nat import Nat
from hopgate.pipeline.nat.persist import translation_stands
from hopgate.pipeline.router import Router

PER_SLICE = 100  # connections a slice of the sweep checks (some 0.1 ms)


@dataclass
class TakenOver:
    """What the new router took over: connections kept, and those ended by
    reason (once the sweep is done); neighbours adopted."""

    kept: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    neighbours: int = 0


def take_over(new: Router, old: Router, now: float) -> TakenOver:
    """Give ``new`` what ``old`` has (in the loop, before ``new``'s first packet).
    The connections are ``new``'s from here, unchecked: run ``sweep`` next."""
    out = TakenOver()
    new.timers.join()
    new.down_ports |= old.down_ports
    new.events.extend(old.events)
    old.events.clear()
    for mine, theirs in zip(new.families, old.families, strict=True):
        for e in theirs.neighbours.entries():
            if e.port not in new.down_ports and mine.neighbours.adopt(e, now):
                out.neighbours += 1
        theirs.neighbours.clear()
    old.reassembler.clear()
    if old.health is not None:
        old.health.stop()
    if old.nat is not None:
        if new.nat is None:
            # Nothing translates any more: every connection ends now.
            conns = old.nat.table.connections()
            for conn in conns:
                old.nat.table.remove(conn)
            out.ended["NAT and services gone"] += len(conns)
        else:
            new.nat.take_state(old.nat)
            _backends(new, old)
    return out


def _backends(new: Router, old: Router) -> None:
    """Each backend's count of connections given, and a verdict that changed
    since ``new``'s services were built from ``old``'s."""
    assert new.nat is not None and old.nat is not None
    before = old.nat.services
    for service in new.nat.services.all:
        was = before.find(service.family, service.protocol, service.vip, service.port)
        if was is None:
            continue
        old_backends = {b.key: b for b in was.backends}
        changed = False
        for b in service.backends:
            ob = old_backends.get(b.key)
            if ob is None:
                continue
            b.total = ob.total
            if b.take_health(ob):
                service.settle(b)
                changed = True
        if changed:
            new.maglev.changed(service)


def sweep(nat: Nat, out: TakenOver, per_slice: int = PER_SLICE) -> Generator[bytes, None, None]:
    """Check each connection the new engine took against its configuration, a
    slice a step (a job the loop runs between its batches of frames): keep it,
    moved to its backend's new record, or remove it, counted by reason in
    ``out``.  Yields nothing of its own (``b""`` per slice)."""
    table = nat.table
    conns = table.connections()
    backends = {b.key: b for s in nat.services.all for b in s.backends}
    for i in range(0, len(conns), per_slice):
        for conn in conns[i : i + per_slice]:
            if not table.holds(conn):
                continue  # gone since the list was taken
            why = _stands(nat, conn, backends)
            if why is None:
                out.kept += 1
            else:
                out.ended[why] += 1
                table.remove(conn)
        yield b""


def _stands(nat: Nat, conn: Conn, backends: dict[BackendKey, Backend]) -> str | None:
    """None if the configuration still makes ``conn`` (a load-balanced one is
    moved to its backend's new record); else why not."""
    was = conn.backend
    if was is None:
        if translation_stands(nat, conn.key_orig, conn.key_reply, conn.mapping, conn.echo):
            return None
        return "rule gone"
    now = backends.get(was.key)  # the same VIP, port, protocol and backend
    if now is None:
        return "service or backend gone"
    if conn.key_reply[DST] not in now.service.lips:
        return "local address gone"
    if now is not was:
        was.conns.discard(conn)
        conn.backend = now
        now.conns.add(conn)
    return None
