"""Reassembly of fragmented packets addressed to the router itself.

Bounded in datagrams and bytes (Linux's ipfrag_high_thresh), with a timeout per
datagram (ipfrag_time).  Overlapping fragments invalidate the whole datagram
(RFC 5722; what Linux does for IPv4 as well since FragmentSmack).  A datagram
that times out after its first fragment arrived is reported to the caller, which
answers it with Time Exceeded, fragment reassembly time exceeded.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple, Protocol

from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.model import ReassemblySettings
from hopgate.pipeline.timers import Timers

MAX_DATAGRAM = 65535


class Head(NamedTuple):
    """The first fragment as it arrived: its headers are the reassembled packet's."""

    frame: bytearray
    l3: int
    in_port: int
    in_mac: bytes


class Complete(NamedTuple):
    head: Head
    payload: bytes


class Expired(Protocol):
    """A datagram timed out after its first fragment (``head``) came in."""

    def __call__(self, head: Head, now: float, out: list[Action], /) -> None: ...


class _Datagram:
    __slots__ = ("deadline", "head", "pieces", "size", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.head: Head | None = None
        self.pieces: list[tuple[int, bytes]] = []
        self.size = 0
        self.total: int | None = None


class Reassembler:
    def __init__(self, settings: ReassemblySettings, timers: Timers, expired: Expired) -> None:
        self.settings = settings
        self._timers = timers
        self._expired = expired
        self._datagrams: dict[Hashable, _Datagram] = {}
        self._bytes = 0

    def offer(
        self,
        key: Hashable,
        offset: int,
        more: bool,
        data: bytes,
        head: Head | None,
        now: float,
    ) -> Complete | DropReason | None:
        """Add one fragment.  ``head`` is given for the first fragment (offset 0).

        Returns the whole payload when complete, a drop reason when the fragment
        (or its datagram) is refused, None while the datagram is incomplete.
        """
        end = offset + len(data)
        if end > MAX_DATAGRAM or (more and len(data) % 8) or (more and not data):
            self._discard(key)
            return DropReason.REASSEMBLY_INVALID
        dg = self._datagrams.get(key)
        if dg is None:
            s = self.settings
            if len(self._datagrams) >= s.max_datagrams or self._bytes + len(data) > s.max_bytes:
                return DropReason.REASSEMBLY_TABLE_FULL
            dg = _Datagram(now + s.timeout)
            self._datagrams[key] = dg
            self._arm(key, dg)
        elif self._bytes + len(data) > self.settings.max_bytes:
            self._discard(key)
            return DropReason.REASSEMBLY_TABLE_FULL
        for start, piece in dg.pieces:
            if offset < start + len(piece) and start < end:
                if start == offset and piece == data:
                    return None  # an exact duplicate is harmless
                self._discard(key)
                return DropReason.REASSEMBLY_INVALID
        if not more:
            if dg.total is not None and dg.total != end:
                self._discard(key)
                return DropReason.REASSEMBLY_INVALID
            dg.total = end
        if dg.total is not None and end > dg.total:
            self._discard(key)
            return DropReason.REASSEMBLY_INVALID
        if head is not None:
            dg.head = head
        dg.pieces.append((offset, data))
        dg.size += len(data)
        self._bytes += len(data)
        if dg.total is None or dg.size != dg.total or dg.head is None:
            return None
        self._discard(key)
        dg.pieces.sort()
        return Complete(dg.head, b"".join(p for _, p in dg.pieces))

    def _discard(self, key: Hashable) -> _Datagram | None:
        dg = self._datagrams.pop(key, None)
        if dg is not None:
            self._bytes -= dg.size
        return dg

    def _arm(self, key: Hashable, dg: _Datagram) -> None:
        def expire(now: float, out: list[Action]) -> None:
            if self._datagrams.get(key) is not dg:
                return
            self._discard(key)
            if dg.head is not None:
                self._expired(dg.head, now, out)

        self._timers.call_at(dg.deadline, expire)

    def clear(self) -> None:
        """Forget every datagram (a reload replaced this reassembler): their
        armed timers find them gone and do nothing."""
        self._datagrams.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._datagrams)

    @property
    def bytes_held(self) -> int:
        return self._bytes
