"""Deadlines for the pipeline, driven by the caller's clock (never read here)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from hopgate.pipeline.actions import Action

TimerCallback = Callable[[float, list[Action]], None]


class Timers:
    """A heap of deadlines.  Cancelled work is not removed: callbacks check whether
    they are still current, which keeps arming a timer O(log n) and cancelling free."""

    def __init__(self, joins: Timers | None = None) -> None:
        """``joins``: the timers of the router a reload replaces, built in
        another thread than the one that runs them.  What is armed here waits
        apart until ``join``, run in that thread, moves it there; from then on
        both are one heap."""
        self._heap: list[tuple[float, int, TimerCallback]] = []
        self._seq = itertools.count()
        self._joins = joins

    def join(self) -> None:
        """Become one with the timers given as ``joins`` (see ``__init__``)."""
        other = self._joins
        if other is None:
            return
        for deadline, _, callback in self._heap:
            other.call_at(deadline, callback)
        self._heap, self._seq, self._joins = other._heap, other._seq, None

    def call_at(self, deadline: float, callback: TimerCallback) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), callback))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: float, out: list[Action]) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, callback = heapq.heappop(heap)
            callback(now, out)

    def __len__(self) -> int:
        return len(self._heap)
