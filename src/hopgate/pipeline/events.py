"""What happened in the pipeline that an operator should read.

The pipeline records events on ``Router.events`` as values; the daemon's loop
logs each one (its ``str`` is the log line, which lab tests and operators
grep for, so its wording is part of the behaviour).  Nothing in the pipeline
waits for them to be read: the queue keeps the last 1000.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendChanged:
    """A load-balanced backend's checks took it down, or brought it up (for a
    Maglev service: once the table that includes it is installed, when new
    connections can reach it; at once when something else keeps them from it)."""

    service: str  # the service's name
    backend: str  # "address:port" ("[address]:port" for IPv6)
    up: bool
    # Connections closed with it (``on_backend_down = "close"``); None when
    # they were kept, or it came up.
    closed: int | None = None
    # Up, but kept from new connections by this ("drained by the admin",
    # "weight 0"); None when it takes them.
    held: str | None = None

    def __str__(self) -> str:
        state = "up" if self.up else "down"
        closed = "" if self.closed is None else f"; {self.closed} connections closed"
        held = "" if self.held is None else f"; {self.held}: no new connections"
        return f"service {self.service}: backend {self.backend} is {state}{closed}{held}"


@dataclass(frozen=True, slots=True)
class BackendAdmin:
    """The operator changed a backend at run time (``hopgate backend``): its admin
    state (``action`` "drained", "disabled", "enabled") or its weight
    ("weight")."""

    service: str
    backend: str
    action: str
    weight: int  # its weight now
    was: int | None = None  # its weight before, for "weight"
    # What became of its open connections: closed (a count), or kept (None).
    closed: int | None = None
    kept: int = 0  # open connections left to go on
    now: str = ""  # where it stands after, when not plain ("down: its checks fail", ...)

    def __str__(self) -> str:
        if self.action == "weight":
            what = f"weight {self.weight} (was {self.was}) set by the admin"
        else:
            what = f"{self.action} by the admin"
        if self.closed is not None:
            what += f"; {self.closed} connections closed"
        elif self.kept and self.action != "enabled":
            what += f"; {self.kept} open connections go on"
        if self.now:
            what += f"; {self.now}"
        return f"backend {self.service} {self.backend}: {what}"


Event = BackendChanged | BackendAdmin  # the union of every event
