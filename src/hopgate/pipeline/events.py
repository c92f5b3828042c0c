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
    """A load-balanced backend went down, or came up (for a Maglev service: once
    the table that includes it is installed, when new connections can reach it)."""

    service: str  # the service's name
    backend: str  # "address:port" ("[address]:port" for IPv6)
    up: bool
    # Connections closed with it (``on_backend_down = "close"``); None when
    # they were kept, or it came up.
    closed: int | None = None

    def __str__(self) -> str:
        state = "up" if self.up else "down"
        closed = "" if self.closed is None else f"; {self.closed} connections closed"
        return f"service {self.service}: backend {self.backend} is {state}{closed}"


Event = BackendChanged  # the union of every event, as more kinds come
