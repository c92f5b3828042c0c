"""The lab's processes: one that has ended is not waited for, even while no
one has reaped it (``hopgate lab down`` after ``hopgate lab up``, whose
processes pid 1 inherits and may never reap)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hopgate.lab.netns import Process, _proc_start_time


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_ended_process_not_yet_reaped_is_not_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = _proc_start_time(child.pid)
        assert started is not None
        # As `hopgate lab down` sees it: by pid and start time, not as its parent.
        proc = Process("sleeper", "none", None, child.pid, started)
        assert proc.alive()
        child.terminate()
        deadline = time.monotonic() + 5
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z", "not a zombie: its parent (this test) has not reaped it"
        assert not proc.alive()
        signals: list[tuple[int, int]] = []
        monkeypatch.setattr(os, "killpg", lambda pid, sig: signals.append((pid, sig)))
        proc.stop()
        assert signals == [], "stop signalled (and waited for) a process that had ended"
    finally:
        child.kill()
        child.wait()
