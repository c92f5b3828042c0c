"""The one place where actions are produced, so that every one is counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action, Drop, DropReason, Replay, ToHost, Transmit
from hopgate.pipeline.counters import Counters

if TYPE_CHECKING:
    from hopgate.pipeline.conntrack import Conn

# A NamedTuple's own constructor is a Python function; building the tuple
# directly skips that call, once for every packet sent.
_new = tuple.__new__


class Emitter:
    __slots__ = ("counters",)

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def transmit(self, port: int, frame: Buffer, out: list[Action]) -> None:
        c = self.counters
        c.tx_packets[port] += 1
        c.tx_bytes[port] += len(frame)
        out.append(_new(Transmit, (port, frame)))

    def to_host(self, port: int, frame: Buffer, out: list[Action]) -> None:
        """``frame``, as it came in on ``port``, goes up to that port's host."""
        self.counters.to_host[port] += 1
        out.append(_new(ToHost, (port, frame)))

    def replay(
        self, port: int, frame: bytearray | memoryview, conn: Conn, out: list[Action]
    ) -> None:
        """``frame``, as it came in on ``port``, goes to the fast path, which holds
        ``conn``, its connection (``ConnTable.held``; counted there)."""
        out.append(Replay(port, frame, conn))

    def drop(self, port: int, reason: DropReason, out: list[Action]) -> None:
        self.counters.drops[(port, reason)] += 1
        out.append(_new(Drop, (port, reason)))
