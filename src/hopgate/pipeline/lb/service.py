"""L4 services and their schedulers, for the full-NAT load balancer
(docs/behaviour.md, "Load balancer").

A service is a VIP, a port and a protocol; a pool of local addresses (LIPs)
its connections leave from; and backends, with a weight, a health state and an
admin state (``hopgate backend``: enabled, drained, disabled; the operator's
weight and admin state are kept in ``runtime.Overrides``).  The scheduler picks
a backend for each new connection: round robin, smooth weighted round robin,
weighted least connections, or Maglev (the same choice on every node that has
the same backends).  Only backends that are up are chosen: healthy, enabled and
of a weight above 0; what happens to a failed (or disabled) backend's
connections is the service's choice: they are kept (the default) or closed.

A Maglev table is control-plane work, done off the packet path (Katran's split:
the control plane computes the ring, the data path only indexes it).  When a
backend's checks fail, it is down at once: until the table without it is
installed, a flow whose slot names a backend that is down takes the next slot
(slot + 1, wrapping) whose backend is up, so the flows of backends that are up
stay where they are, and nodes that see the same flip choose alike.  A backend
whose checks pass again is up, and chosen, once the table that includes it is
installed; the same holds for a backend the operator drains, disables, enables or
weighs again.  ``MaglevControl`` is the seam: it computes tables at once (tests) or
leaves them to the control plane (the daemon's worker process).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hopgate.packet import addr as A
from hopgate.pipeline.conntrack import Conn
from hopgate.pipeline.lb import maglev
from hopgate.pipeline.lb.runtime import BackendKey, Override, Overrides
from hopgate.pipeline.model import (
    AdminState,
    BackendDown,
    BackendSpec,
    EchoPolicy,
    HealthKind,
    HealthSpec,
    Scheduler,
    ServiceSpec,
)
from hopgate.pipeline.state import BackendState, ServiceState

# The specs and their policies are defined with the other specs (model.py), and
# importable from here (and from the package).
__all__ = [
    "AdminState",
    "Backend",
    "BackendDown",
    "BackendSpec",
    "EchoPolicy",
    "HealthKind",
    "HealthSpec",
    "MaglevControl",
    "RingRequest",
    "Scheduler",
    "Service",
    "ServiceSpec",
    "Services",
    "flow_key",
]


class Backend:
    __slots__ = (
        "address",
        "checks",
        "conns",
        "failures",
        "family",
        "healthy",
        "index",
        "key",
        "name",
        "override",
        "port",
        "service",
        "spec",
        "successes",
        "total",
        "up",
    )

    def __init__(
        self,
        service: Service,
        index: int,
        spec: BackendSpec,
        overrides: Overrides,
        before: Backend | None = None,
    ) -> None:
        """``before``: the same backend in the services a reload replaces: its
        checks' verdict and counts go on."""
        self.service = service
        self.index = index
        self.spec = spec
        self.family = service.family
        self.address = spec.address
        self.port = spec.port
        self.key: BackendKey = (
            service.family,
            service.protocol,
            service.vip,
            service.port,
            spec.address,
            spec.port,
        )
        # the operator's admin state and weight (runtime.py), found by its identity
        self.override: Override = overrides.of(self.key)
        self.name = endpoint(self.family, spec.address, spec.port)
        # The checks' verdict (rise and fall), and whether new connections may be
        # given to it (``eligible``), except that a Maglev backend becoming
        # eligible is up only once its service's table includes it.
        self.healthy = True
        self.up = self.eligible  # healthy until its checks say otherwise
        self.successes = 0
        self.failures = 0
        self.checks = {"ok": 0, "failed": 0}
        self.conns: set[Conn] = set()  # its live connections
        self.total = 0  # connections it was given
        if before is not None:
            self.take_health(before)
            self.up = self.eligible

    def take_health(self, before: Backend) -> bool:
        """Take the checks' verdict and counts of ``before``; True if the verdict
        differs from this backend's."""
        changed = self.healthy != before.healthy
        self.healthy = before.healthy
        self.successes = before.successes
        self.failures = before.failures
        self.checks = dict(before.checks)
        return changed

    @property
    def weight(self) -> int:
        """Its weight: the operator's if one was set, the config's otherwise."""
        weight = self.override.weight
        return self.spec.weight if weight is None else weight

    @property
    def admin(self) -> AdminState:
        return self.override.admin

    @property
    def eligible(self) -> bool:
        """Whether its health, its admin state and its weight let it take new
        connections."""
        return self.healthy and self.override.admin is AdminState.ENABLED and self.weight > 0

    def describe(self) -> BackendState:
        return BackendState(
            name=self.name,
            weight=self.weight,
            up=self.up,
            active=len(self.conns),
            total=self.total,
            checks_ok=self.checks["ok"],
            checks_failed=self.checks["failed"],
            healthy=self.healthy,
            admin=self.admin,
            config_weight=self.spec.weight,
        )


# Where a Maglev table built with a service comes from: computed at once, or
# found ready (a reload: the table of a service unchanged, or one computed off
# the packet loop).
RingSource = Callable[["RingRequest"], maglev.Ring]


class Service:
    def __init__(
        self,
        spec: ServiceSpec,
        overrides: Overrides | None = None,
        before: Service | None = None,
        ring_for: RingSource | None = None,
    ) -> None:
        """``overrides``: where its backends' runtime settings are kept (a store
        of their own if None).  ``before``: the service of the same VIP, port
        and protocol that a reload replaces (its backends' health goes on);
        ``ring_for``: where its first Maglev table comes from (computed here
        if None)."""
        self.spec = spec
        self.name = spec.name
        self.family = spec.family
        self.protocol = spec.protocol
        self.vip = spec.vip
        self.port = spec.port
        self.lips = spec.local_addresses
        store = Overrides() if overrides is None else overrides
        old = {b.key: b for b in before.backends} if before is not None else {}
        ident = (spec.family, spec.protocol, spec.vip, spec.port)
        self.backends: list[Backend] = [
            Backend(self, i, b, store, old.get((*ident, b.address, b.port)))
            for i, b in enumerate(spec.backends)
        ]
        self._rr = 0
        self._current = [0] * len(self.backends)  # smooth weighted round robin
        self._lip = 0
        self.uses_maglev = self.spec.scheduler == "maglev"
        # Maglev: the installed table, and which changes (health, admin, weight)
        # it reflects.
        self.generation = 0  # counts the changes
        self._installed = -1  # the generation of the installed table
        self._table: Sequence[int] = ()
        self._members: frozenset[int] = frozenset()
        self.ring: maglev.Ring | None = None  # the installed table, and what it was built of
        self.ring_of: tuple[tuple[str, ...], tuple[int, ...], int] | None = None
        if self.uses_maglev:
            # Built here: at start the wait harms no packet; at a reload the
            # table comes ready (``ring_for``).
            request = self.ring_request()
            self.install(request, ring_for(request) if ring_for else request.compute())

    # -- health, admin state, weight ----------------------------------------------------

    def settle(self, backend: Backend) -> bool:
        """Its health, admin state or weight changed: bring ``up`` in line with
        ``eligible``.  Down at once: no new connection goes to it from now on.
        Up at once, except under Maglev: once a table that includes it is
        installed (``install``).  True if it came up now."""
        self.generation += 1
        if not backend.eligible:
            backend.up = False
            return False
        if backend.up or self.uses_maglev:
            return False
        backend.up = True
        return True

    def ring_request(self) -> RingRequest:
        """The Maglev table the backends' states call for, to be computed."""
        return RingRequest(
            self,
            self.generation,
            tuple(b.name for b in self.backends),
            tuple(b.weight if b.eligible else 0 for b in self.backends),
            self.spec.maglev_table_size,
            tuple(b.eligible for b in self.backends),
        )

    def install(self, request: RingRequest, ring: maglev.Ring) -> list[Backend]:
        """Put a computed table in place (one assignment) unless a newer one already
        is.  Returns the backends it brings up: eligible when it was requested
        (so the table is the one for them, with their slots), and still eligible."""
        if request.generation <= self._installed:
            return []
        self._installed = request.generation
        self._table = ring.table
        self._members = ring.members
        self.ring = ring
        self.ring_of = request.built_of
        came = []
        for b in self.backends:
            if not b.up and b.eligible and request.eligible[b.index]:
                b.up = True
                came.append(b)
        return came

    @property
    def table(self) -> Sequence[int]:
        """The installed Maglev table (empty for other schedulers)."""
        return self._table

    def up(self) -> list[Backend]:
        return [b for b in self.backends if b.up]

    def pick(self, flow_key: bytes) -> Backend | None:
        """The backend for a new connection, or None when none is up."""
        scheduler = self.spec.scheduler
        if scheduler == "maglev":
            table = self._table
            size = len(table)
            if not size:
                return None
            slot = maglev.flow_hash(flow_key) % size
            backend = self.backends[table[slot]]
            if backend.up:
                return backend
            # Down since the table was built: the next slot whose backend is up.
            if not any(self.backends[i].up for i in self._members):
                return None
            while not backend.up:
                slot = slot + 1 if slot + 1 < size else 0
                backend = self.backends[table[slot]]
            return backend
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

    def describe(self) -> ServiceState:
        return ServiceState(
            name=self.name,
            family=self.family,
            vip=self.vip,
            port=self.port,
            protocol=self.protocol,
            scheduler=self.spec.scheduler,
            local_addresses=tuple(self.lips),
            health=self.spec.health.kind,
            backends=tuple(b.describe() for b in self.backends),
        )


@dataclass(frozen=True, slots=True)
class RingRequest:
    """A Maglev table to compute: a snapshot of a service's backends.  The names,
    weights (0 for a backend that may not take new connections) and size are
    plain values that can cross to a thread or a process; ``service`` stays
    behind, for ``install``."""

    service: Service
    generation: int
    names: tuple[str, ...]
    weights: tuple[int, ...]
    size: int
    eligible: tuple[bool, ...]  # each backend's ``eligible`` when requested

    def compute(self) -> maglev.Ring:
        return maglev.ring(self.names, self.weights, self.size)

    @property
    def built_of(self) -> tuple[tuple[str, ...], tuple[int, ...], int]:
        """What decides the table: two requests alike in this get the same one."""
        return self.names, self.weights, self.size


class MaglevControl:
    """Where the pipeline hands Maglev tables to the control plane.

    ``changed(service)`` is called when a service's backends change (a health
    verdict, an admin state, a weight).
    Built without ``notify``, it computes the new table at once (what tests
    use: the caller waits as long as that takes).  With ``notify``, it only
    marks the service and calls ``notify()``; whoever owns the control plane
    then takes ``pending()`` (in the pipeline's thread), computes each request
    wherever it likes, and gives each result to ``install`` (in the pipeline's
    thread again).  ``announce`` is told of every backend an install brings up.
    """

    def __init__(
        self, announce: Callable[[Backend], None], notify: Callable[[], None] | None = None
    ) -> None:
        self._announce = announce
        self._notify = notify
        self._dirty: dict[Service, None] = {}  # an ordered set

    def changed(self, service: Service) -> None:
        if not service.uses_maglev:
            return
        if self._notify is None:
            request = service.ring_request()
            self.install(request, request.compute())
            return
        self._dirty[service] = None
        self._notify()

    def pending(self) -> list[RingRequest]:
        """The tables to compute: one per service changed since the last call,
        each for its backends as they are now."""
        requests = [s.ring_request() for s in self._dirty]
        self._dirty.clear()
        return requests

    def install(self, request: RingRequest, ring: maglev.Ring) -> None:
        for backend in request.service.install(request, ring):
            self._announce(backend)


def endpoint(family: int, address: int, port: int) -> str:
    """``address:port`` (``[address]:port`` for IPv6): a backend's name."""
    text = A.ip_str(family, address)
    return f"[{text}]:{port}" if family == A.V6 else f"{text}:{port}"


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
    """Every service, found by (family, protocol, VIP, port), or by name with a
    backend's address (``select``)."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        overrides: Overrides | None = None,
        before: Services | None = None,
        ring_for: RingSource | None = None,
    ) -> None:
        """``overrides``: the operator's runtime settings, kept from services built
        before (a restart, a reload); those of backends no longer in ``specs``
        are forgotten.  ``before``: the services a reload replaces (a service of
        the same VIP, port and protocol goes on with its backends' health);
        ``ring_for``: where the first Maglev tables come from."""
        self.overrides = Overrides() if overrides is None else overrides
        self.all = [
            Service(
                s,
                self.overrides,
                before.find(s.family, s.protocol, s.vip, s.port) if before else None,
                ring_for,
            )
            for s in specs
        ]
        self.overrides.keep({b.key for s in self.all for b in s.backends})
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

    def select(self, name: str, family: int, address: int, port: int | None) -> list[Backend]:
        """The backends at ``address`` (and ``port``, if given) of every service
        named ``name`` (a service for IPv4 and one for IPv6, say, may share a
        name).  Raises LookupError naming what there is when there is none."""
        named = [s for s in self.all if s.name == name]
        if not named:
            names = ", ".join(sorted({s.name for s in self.all}))
            raise LookupError(f"no service {name!r}; the services: {names}")
        found = [
            b
            for s in named
            for b in s.backends
            if b.family == family and b.address == address and port in (None, b.port)
        ]
        if not found:
            wanted = A.ip_str(family, address) if port is None else endpoint(family, address, port)
            names = ", ".join(b.name for s in named for b in s.backends)
            raise LookupError(f"service {name!r} has no backend {wanted}; its backends: {names}")
        return found
