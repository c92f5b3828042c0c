"""Benchmarks share the machine's two CPUs with whatever else runs: they wait
for tests to finish before measuring, take turns with other benchmarks (a
lock: two benchmarks never wait on each other), and measure again what others
disturbed (``measure_quietly``)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

R = TypeVar("R")
LOCK = Path("/run/hopgate/bench.lock")  # held by the benchmark measuring
TRIES = 30


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _kin(pid: int) -> bool:
    """Whether ``pid`` is this process, one of its ancestors or descendants."""
    me = os.getpid()
    ancestors = set()
    p = me
    while p > 1:
        ancestors.add(p)
        p = _ppid(p)
    if pid in ancestors:
        return True
    p = pid
    while p > 1:
        if p == me:
            return True
        p = _ppid(p)
    return False


def busy_elsewhere() -> list[str]:
    """Tests running besides this benchmark: they share the CPUs.  (Other
    benchmarks take turns with it: ``measure_quietly``.)"""
    out = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if not _kin(int(line.split()[0]))]


def wait_for_quiet() -> None:
    """Wait while tests run."""
    busy = busy_elsewhere()
    if busy:
        print("bench: waiting for these to finish:\n  " + "\n  ".join(busy), flush=True)
    while busy:
        time.sleep(5)
        busy = busy_elsewhere()


@contextmanager
def _turn() -> Iterator[None]:
    """This benchmark's turn to measure: other benchmarks wait for it to end."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure_quietly(run: Callable[[], R], foreign: Callable[[R], float], limit: float) -> R:
    """``run()`` in this benchmark's turn, once no test runs; again if tests
    started meanwhile or other processes took ``limit`` of a CPU or more (by
    ``foreign`` of its result), at most ``TRIES`` times."""
    for attempt in range(TRIES):
        if attempt:
            time.sleep(10)
        with _turn():
            wait_for_quiet()
            r = run()
        tests = busy_elsewhere()
        if foreign(r) < limit and not tests:
            return r
        why = "tests started" if tests else f"other processes took {foreign(r):.1%} of a CPU"
        print(f"bench: {why} during the run; measuring it again", flush=True)
    sys.exit("bench: the machine stayed busy; measure when it is quiet")
