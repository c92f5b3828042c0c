"""The collector watched: each collection counted and timed, shown in /metrics."""

from __future__ import annotations

import gc
import logging

import pytest

from hopgate.control import metrics
from hopgate.io import gcwatch
from hopgate.io.gcwatch import GcWatch


def test_collections_are_counted_timed_and_the_slow_ones_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = GcWatch()
    watch.start()
    try:
        monkeypatch.setattr(gcwatch, "SLOW", 0.0)  # every one is slow
        with caplog.at_level(logging.WARNING, logger="hopgate.io.gcwatch"):
            gc.collect(2)
    finally:
        watch.stop()
    state = watch.snapshot()
    assert state["collections"][2] >= 1
    assert state["longest_ms"] > 0 and state["seconds"][2] > 0
    assert "generation 2 collection held the loop" in caplog.text
    gc.collect(2)
    assert watch.snapshot()["collections"][2] == state["collections"][2], "stopped: not counted"


def test_the_collector_in_metrics() -> None:
    watch = GcWatch()
    watch.start()
    try:
        gc.collect(1)
    finally:
        watch.stop()
    state = {
        "kind": "relay",  # the smallest snapshot metrics renders: the relay's
        "interfaces": [],
        "uptime_seconds": 1.0,
    }
    text = metrics.render(state).decode()
    assert "hopgate_gc" not in text
    from hopgate.control.metrics import _gc

    names = {m.name for m in _gc(watch.snapshot())}
    assert names == {"hopgate_gc_collections", "hopgate_gc_seconds", "hopgate_gc_longest_seconds"}
