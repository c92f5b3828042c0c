"""Benchmarks share the machine's two CPUs with whatever else runs: they wait
for tests and other benchmarks to finish before measuring."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


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
    """Tests and other benchmarks running besides this one: they share the CPUs."""
    out = subprocess.run(
        ["pgrep", "-af", r"pytest|bench\."], capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if not _kin(int(line.split()[0]))]


def wait_for_quiet() -> None:
    """Wait while tests or other benchmarks run."""
    busy = busy_elsewhere()
    if busy:
        print("bench: waiting for these to finish:\n  " + "\n  ".join(busy), flush=True)
    while busy:
        time.sleep(5)
        busy = busy_elsewhere()
