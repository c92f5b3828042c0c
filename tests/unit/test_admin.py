"""The admin server: one socket per daemon, and a failed start leaves the other's alone."""

from __future__ import annotations

import socket
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from hopgate.control.admin import AdminError, AdminServer, fetch_status


def _snapshot() -> Future[Any]:
    done: Future[Any] = Future()
    done.set_result({"kind": "test"})
    return done


def _server(path: Path, metrics: tuple[str, int] | None = None) -> AdminServer:
    return AdminServer(str(path), _snapshot, metrics)


def test_a_second_server_on_the_same_socket_is_refused_and_leaves_the_first_serving(
    tmp_path: Path,
) -> None:
    path = tmp_path / "admin.sock"
    first = _server(path)
    first.start()
    try:
        second = _server(path)
        with pytest.raises(AdminError, match="another hopgate answers on"):
            second.start()
        second.stop()  # as the daemons do in their finally
        assert fetch_status(str(path))["kind"] == "test"
    finally:
        first.stop()
    assert not path.exists()


def test_a_metrics_port_in_use_fails_the_start_and_leaves_no_socket(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = _server(tmp_path / "admin.sock", taken.getsockname())
        with pytest.raises(OSError):
            server.start()
        server.stop()  # returns at once: nothing was left serving
        assert not (tmp_path / "admin.sock").exists()
    finally:
        taken.close()
