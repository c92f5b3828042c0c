"""What a change in a backend's health verdict does (docs/behaviour.md, "Load
balancer"): the service admits or withdraws it, its connections are closed if
the service says so, a new Maglev table is asked for (computed by the control
plane, lbcontrol.py, or at once), and the change is recorded as an event.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from hopgate.pipeline.events import BackendChanged, Event
from hopgate.pipeline.lb.service import Backend, BackendDown, MaglevControl


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
        if backend.healthy:
            if service.admit(backend):
                self._up(backend)
        else:
            service.withdraw(backend)
            closed = None
            if service.spec.on_backend_down == BackendDown.CLOSE and self._connections:
                closed = self._connections.close_backend(backend)
            self._announce(BackendChanged(service.name, backend.name, False, closed))
        # Maglev: a new table, computed at once or by the control plane (on_ring);
        # a backend coming back is up when it is installed.
        self.maglev.changed(service)

    def _up(self, backend: Backend) -> None:
        self._announce(BackendChanged(backend.service.name, backend.name, True))

    def _announce(self, event: BackendChanged) -> None:
        if self._connections is not None:
            self._connections.counters["backends-up" if event.up else "backends-down"] += 1
        self._events.append(event)
