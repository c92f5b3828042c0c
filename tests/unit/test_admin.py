"""The admin server: one socket per daemon, and a failed start leaves the other's alone."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from hopgate.control.admin import (
    AdminError,
    AdminServer,
    delete_conns,
    fetch,
    fetch_conns,
    fetch_status,
    stream_conns,
)
from hopgate.io.mailbox import Mailbox
from tests.unit.test_conns import FakeNat, _job, _reference, _table


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


# -- what each listener serves, and /conns through a loop -----------------------------------


class _Loop:
    """A loop thread that only runs the mailbox, as the daemon's does between batches."""

    def __init__(self) -> None:
        self.box = Mailbox()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            select.select([self.box.wake_fd], [], [], 0.01)
            self.box.drain()
            self.box.run_calls()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.box.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, tuple[str, int], FakeNat]]:
    """An admin server over a fake NAT of 1000 connections, its socket and its
    metrics address."""
    loop = _Loop()
    nat = FakeNat(_table(1000))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_at = probe.getsockname()
    server = AdminServer(
        str(tmp_path / "admin.sock"),
        lambda: loop.box.call(lambda: {"kind": "relay", "interfaces": [], "uptime_seconds": 1.0}),
        metrics_at,
        lambda action, query: loop.box.start(_job(action, nat, query)),
    )
    server.start()
    try:
        yield server.socket_path, metrics_at, nat
    finally:
        server.stop()
        loop.close()


def _tcp(address: tuple[str, int], method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_metrics_port_serves_metrics_and_nothing_else(
    served: tuple[str, tuple[str, int], FakeNat],
) -> None:
    _, metrics_at, nat = served
    status, body = _tcp(metrics_at, "GET", "/metrics")
    assert status == 200 and b"hopgate_uptime_seconds" in body
    for method, path in [
        ("GET", "/status"),
        ("GET", "/conns"),
        ("GET", "/conns?limit=0"),
        ("POST", "/conns/flush"),
        ("POST", "/conns/delete?port=53"),
        ("GET", "/conns/flush"),
        ("DELETE", "/conns"),
    ]:
        status, body = _tcp(metrics_at, method, path)
        # 501: a method the server does not implement at all
        assert status in (404, 501), (method, path, status, body)
        assert b"connections" not in body
    assert len(nat.table) == 1000


@pytest.mark.slow
def test_the_socket_lists_and_deletes_in_slices(
    served: tuple[str, tuple[str, int], FakeNat],
) -> None:
    path, _, nat = served
    everything = fetch_conns(path, {"limit": "0"})
    assert everything["total"] == everything["shown"] == 1000
    assert everything["connections"] == _reference(nat, {})
    raw = b"".join(stream_conns(path, {"protocol": "tcp", "limit": "0"}))
    assert json.loads(raw)["connections"] == _reference(nat, {"protocol": "tcp"})
    assert fetch_conns(path, {})["shown"] == 1000  # the default limit (1000) is not cut short
    with pytest.raises(AdminError, match="400 port: a number"):
        fetch_conns(path, {"port": "http"})
    with pytest.raises(AdminError, match="405 /conns/flush takes a POST"):
        fetch(path, "/conns/flush")
    with pytest.raises(AdminError, match="400 no filter"):
        fetch(path, "/conns/delete", "POST")
    tcp = len(_reference(nat, {"protocol": "tcp"}))
    assert delete_conns(path, {"protocol": "tcp"}) == tcp
    assert len(nat.table) == 1000 - tcp
    assert delete_conns(path) == 1000 - tcp
    assert len(nat.table) == 0 and fetch_conns(path, {})["total"] == 0
