"""Full NAT for load-balanced services (docs/behaviour.md, "Load balancer").

A new flow to a VIP that a service takes goes to the backend its scheduler
picks (``Fnat.plan``), from a local address (LIP) and a local port of its own
(``Fnat.commit``), chosen so that the backend's replies are unique.  Each side
of such a connection remembers the (port, neighbour MAC) its first packet came
from (``Hop``): packets and ICMP errors bound for that side go back there, with
no route lookup (source in, source out).  A backend that fails takes no new
connection; its connections are kept, or closed (``close_backend``), and a SYN
on one of them is scheduled afresh (``backend_failed``).

It shares NAT's connection table (the router's ``Nat`` is the facade for both).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import NamedTuple

from hopgate.packet import flows
from hopgate.packet.proto import PROTO_TCP
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import Conn, ConnTable, Translation, Tuple
from hopgate.pipeline.lb.service import Backend, Services, flow_key
from hopgate.pipeline.plans import NewService

PORT_TRIES = 64  # random picks of a local port (and NAT's outside port) before giving up


class Hop(NamedTuple):
    """Where one side of a load-balanced connection is: its first packet's."""

    port: int  # the port it came in on
    mac: bytes  # the neighbour it came from


class Fnat:
    def __init__(
        self, services: Services, table: ConnTable, rng: random.Random, counters: Counter[str]
    ) -> None:
        self.services = services
        self._table = table
        self._rng = rng  # NAT's: one random stream for every port choice
        self._counters = counters
        # The backend side of TCP connections forgotten before their time (a
        # SYN rescheduling a tuple in TIME_WAIT, early drop, a closed backend),
        # until their deadline: the backend may still hold that tuple in
        # TIME_WAIT, and a new connection from the same local port would meet
        # its PAWS check (an ACK for a SYN) instead of a handshake.
        self._resting: dict[Tuple, float] = {}
        self._rest_order: deque[tuple[Tuple, float]] = deque()

    def plan(
        self, version: int, kind: int, flow: flows.Flow, key: Tuple
    ) -> NewService | DropReason | None:
        """A new flow to a VIP: to a backend if a service takes it; None leaves
        it to the VIP itself (ping answered, port unreachable, reset)."""
        _, proto, src, sport, vip, dport = key
        if kind == flows.PORTS:
            service = self.services.find(version, proto, vip, dport)
        elif kind == flows.QUERY:
            service = self.services.echo_service(version, vip)
        else:
            service = None
        if service is None:
            return None
        backend = service.pick(flow_key(version, proto, src, sport, vip, dport))
        if backend is None:
            return DropReason.LB_NO_BACKEND
        rport = backend.port if kind == flows.PORTS else 0
        to = Translation(src, sport, backend.address, rport)
        return NewService(flow, backend.address, key, to, service, backend)

    def commit(self, plan: NewService, now: float) -> Conn | DropReason:
        """A full-NAT connection: from a local address (LIP) and a port of its
        own on it, chosen so that the backend's replies are unique.  (The table
        has room: the caller made it.)"""
        service, backend, key, to = plan.service, plan.backend, plan.key, plan.to
        fam, proto = key[0], key[1]
        echo = plan.flow.kind == flows.QUERY
        table = self._table
        for _ in range(len(service.lips)):
            lip = service.next_lip()
            self._wake(now)
            resting = self._resting
            for _ in range(PORT_TRIES):
                lport = self._rng.randint(1024, 65535)
                back = (fam, proto, to.dst, to.dport, lip, lport)
                if table.taken(back) or resting.get(back, now) > now:
                    continue
                conn = Conn(key, Translation(lip, lport, to.dst, to.dport), now, echo=echo)
                conn.backend = backend
                conn.hops = [None, None]
                backend.conns.add(conn)
                backend.total += 1
                table.insert(conn, now)
                self._counters["connections-created"] += 1
                return conn
        return DropReason.NAT_PORTS_EXHAUSTED

    def forgotten(self, conn: Conn) -> None:
        """A load-balanced connection left the table: if it is TCP, its backend
        side's tuple rests until the connection's deadline (see ``_resting``;
        nothing, if it expired).  Bounded: the oldest rest ends first when there
        are as many as the table holds connections."""
        key = conn.key_reply
        if key[1] != PROTO_TCP:
            return
        self._resting[key] = conn.expires
        self._rest_order.append((key, conn.expires))
        if len(self._rest_order) > self._table.max_connections:
            old, until = self._rest_order.popleft()
            if self._resting.get(old) == until:
                del self._resting[old]

    def _wake(self, now: float) -> None:
        """End the rests that are over (in the order they began: one begun
        later may end earlier and wait a little longer to be taken off)."""
        order, resting = self._rest_order, self._resting
        while order and order[0][1] <= now:
            key, until = order.popleft()
            if resting.get(key) == until:
                del resting[key]

    def close_backend(self, backend: Backend) -> int:
        """Forget a failed or disabled backend's connections (``on_backend_down =
        "close"``): their next packets are scheduled afresh, and the backend that
        gets them resets them.  Returns how many were closed."""
        conns = list(backend.conns)
        for conn in conns:
            self._table.remove(conn)
        return len(conns)


def backend_failed(conn: Conn) -> bool:
    """Whether ``conn`` is load-balanced to a backend that is down, or that takes
    no new connections (drained, disabled, weight 0): a SYN on its tuple is a
    new connection, scheduled afresh (as IPVS's conn_reuse_mode, and its
    expire_nodest_conn for a weight of 0)."""
    backend = conn.backend
    return backend is not None and not backend.up


def released(conn: Conn) -> None:
    """``conn`` left the table: its backend no longer counts it."""
    backend = conn.backend
    if backend is not None:
        backend.conns.discard(conn)
