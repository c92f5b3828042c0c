"""Python's garbage collector, watched: a full collection holds the GIL, and so
the loop, for as long as it takes (tens of milliseconds with a table of many
connections).  Each one is timed and counted for ``hopgate status``; one that
held the loop longer than ``SLOW`` is logged."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

SLOW = 0.010  # seconds: a collection this long is logged


class GcWatch:
    def __init__(self) -> None:
        self.collections = [0, 0, 0]  # by generation
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0  # seconds, any generation
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = int(info.get("generation", 2))
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)
        if took > SLOW:
            log.warning(
                "gc: a generation %d collection held the loop %.1f ms (in thread %s; %d collected)",
                generation,
                took * 1000,
                threading.current_thread().name,
                info.get("collected", 0),
            )

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def snapshot(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "seconds": [round(s, 6) for s in self.seconds],
            "longest_ms": round(self.longest * 1000, 3),
        }
