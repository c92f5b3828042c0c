"""The state file's writing (control/statefile.py, io/files.py): whole or not
at all, and the checkpoints' thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopgate.control import statefile


def test_the_default_path_is_beside_the_admin_socket() -> None:
    assert statefile.default_path("/run/hopgate/labs/x/gw.sock") == "/run/hopgate/labs/x/gw.state"


def test_a_write_that_fails_leaves_the_old_file_and_no_other(tmp_path: Path) -> None:
    path = tmp_path / "hopgate.state"
    assert statefile.write(str(path), [b"old\n"]) == 4

    def broken() -> Iterator[bytes]:
        yield b"half"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        statefile.write(str(path), broken())
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hopgate.state"]
    assert path.stat().st_mode & 0o777 == 0o600


def _wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_a_checkpoint_is_written_when_asked_and_a_failure_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    made = []

    def produce() -> list[bytes]:
        made.append(1)
        if len(made) == 2:
            raise RuntimeError("the loop gave up")
        return [f"checkpoint {len(made)}\n".encode()]

    c = statefile.Checkpoints(str(path), 0.0, produce)  # no interval: only when asked
    c.start()
    try:
        c.now()
        _wait_for(lambda: c.written == 1)
        assert path.read_text() == "checkpoint 1\n"
        c.now()
        _wait_for(lambda: c.failed == 1)
        assert path.read_text() == "checkpoint 1\n"  # the failed one left the last whole
        c.now()
        _wait_for(lambda: c.written == 2)
        assert path.read_text() == "checkpoint 3\n"
    finally:
        c.stop()


def test_checkpoints_come_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    c = statefile.Checkpoints(str(path), 0.05, lambda: [b"x\n"])
    c.start()
    try:
        _wait_for(lambda: c.written >= 3)
        assert c.written >= 3
    finally:
        c.stop()
