"""What a change of a backend's health verdict, or of what the operator made of
it at run time, does (docs/behaviour.md, "Load balancer" and "Runtime backend
control"): the service takes it in or out of scheduling (``Service.settle``),
its connections are closed if the service says so, a new Maglev table is asked
for (computed by the control plane, lbcontrol.py, or at once), and the change is
recorded as an event.

Health and admin state are apart: a drained or disabled backend whose checks
pass stays out; ``enable`` gives it back to what its checks say.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from hopgate.pipeline.events import BackendAdmin, BackendChanged, Event
from hopgate.pipeline.lb.service import AdminState, Backend, BackendDown, MaglevControl


class Connections(Protocol):
    """The connection table's owner (the router's ``Nat``), as seen from here."""

    counters: Counter[str]

    def close_backend(self, backend: Backend) -> int:
        """Forget ``backend``'s connections; how many there were."""


class BackendVerdicts:
    def __init__(
        self,
        events: deque[Event],
        connections: Connections | None,
        on_ring: Callable[[], None] | None = None,
    ) -> None:
        """``events``: where changes are recorded; ``on_ring``: as ``MaglevControl``'s
        ``notify`` (None: tables are computed at once)."""
        self._events = events
        self._connections = connections
        self.maglev = MaglevControl(self._up, on_ring)

    def changed(self, backend: Backend, now: float) -> None:
        """The checks changed their verdict on ``backend`` (``backend.healthy``)."""
        service = backend.service
        came_up = service.settle(backend)
        if backend.healthy:
            if came_up:
                self._up(backend)
            elif not backend.eligible:  # kept out: no table will announce it
                self._announce(
                    BackendChanged(service.name, backend.name, True, held=_held(backend))
                )
            # else Maglev: up, and announced, once its table is installed
        else:
            closed = self._close(backend)
            self._announce(BackendChanged(service.name, backend.name, False, closed))
        # Maglev: a new table, computed at once or by the control plane (on_ring);
        # a backend coming back is up when it is installed.
        self.maglev.changed(service)

    # -- the operator's changes (hopgate backend) -----------------------------------

    def set_admin(self, backend: Backend, state: AdminState) -> BackendAdmin:
        """Drain, disable or enable ``backend``.  Drained or disabled, it takes no
        new connection from now on; a disabled one's open connections are
        closed if its service closes a failed backend's.  Enabled, it is
        scheduled as its health and weight say."""
        backend.override.admin = state
        closed = self._close(backend) if state is AdminState.DISABLED else None
        backend.service.settle(backend)
        event = BackendAdmin(
            backend.service.name,
            backend.name,
            state.value,  # as the event says it: "drained by the admin"
            backend.weight,
            closed=closed,
            kept=len(backend.conns),
            now=_standing(backend) if state is AdminState.ENABLED else "",
        )
        return self._admin(backend, event)

    def set_weight(self, backend: Backend, weight: int) -> BackendAdmin:
        """Give ``backend`` a new weight (0: no new connections, as IPVS) for the
        new connections from now on; its open ones go on."""
        was = backend.weight
        backend.override.weight = weight
        backend.service.settle(backend)
        event = BackendAdmin(
            backend.service.name, backend.name, "weight", weight, was=was, now=_standing(backend)
        )
        return self._admin(backend, event)

    def _admin(self, backend: Backend, event: BackendAdmin) -> BackendAdmin:
        """Record the operator's change, then ask for the Maglev table it calls for
        (a backend it brings up under Maglev is announced once that is in place)."""
        self._events.append(event)
        self.maglev.changed(backend.service)
        return event

    # -- shared ---------------------------------------------------------------------

    def _close(self, backend: Backend) -> int | None:
        """Close its connections if its service says so (``on_backend_down =
        "close"``): how many; None when they are kept."""
        if backend.service.spec.on_backend_down != BackendDown.CLOSE or not self._connections:
            return None
        return self._connections.close_backend(backend)

    def _up(self, backend: Backend) -> None:
        self._announce(BackendChanged(backend.service.name, backend.name, True))

    def _announce(self, event: BackendChanged) -> None:
        if self._connections is not None:
            self._connections.counters["backends-up" if event.up else "backends-down"] += 1
        self._events.append(event)


def _held(backend: Backend) -> str:
    """What keeps a healthy backend from new connections."""
    if backend.admin is not AdminState.ENABLED:
        return f"{backend.admin} by the admin"
    return "weight 0"


def _standing(backend: Backend) -> str:
    """Where a backend stands for new connections, after an operator's change."""
    if backend.up:
        return "up"
    if not backend.healthy:
        return "down: its checks fail"
    if not backend.eligible:
        return f"{_held(backend)}: no new connections"
    return "up once its Maglev table is in place"
