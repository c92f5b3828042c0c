"""``hopgate backend`` end to end but for the packets: the CLI, the admin socket's
``POST /backend``, the change made in a loop thread on a real router, the log
line written before the answer; and the errors, each naming what there is."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hopgate.cli import main
from hopgate.control import backends
from hopgate.control.admin import AdminRefusedError, AdminServer, change_backend, fetch
from hopgate.pipeline.lb import AdminState
from hopgate.pipeline.router import Router
from tests.unit.lb_frames import BE1, BE1_6, BE2, lb_router, service, service6
from tests.unit.test_admin import _Loop, _tcp

BE1_NAME, BE2_NAME = f"{BE1}:80", f"{BE2}:80"


class Served:
    """A router behind an admin server whose calls run in a loop thread, with
    the log the loop would write."""

    def __init__(self, path: Path) -> None:
        self.loop = _Loop()
        self.router: Router = lb_router(service(on_backend_down="close"), service6())
        self.log: list[str] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.metrics_at = probe.getsockname()
        self.server = AdminServer(
            str(path),
            lambda: self.loop.box.call(lambda: {"kind": "test"}),
            self.metrics_at,
            backends=backends.requests(lambda: self.router, self.loop.box.call, self._log_events),
        )
        self.socket = str(path)

    def _log_events(self) -> None:  # as Loop.log_events
        while self.router.events:
            self.log.append(str(self.router.events.popleft()))

    def backend(self, name: str) -> str:
        """Its admin state (read between calls: the loop thread is idle then)."""
        assert self.router.nat is not None
        (svc, *_) = self.router.nat.services.all
        return next(b.admin for b in svc.backends if b.name == name)


def _serve(path: Path) -> Iterator[Served]:
    s = Served(path)
    s.server.start()
    try:
        yield s
    finally:
        s.server.stop()  # about a second: each server's poll interval
        s.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path / "admin.sock")


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One for the tests that change nothing."""
    yield from _serve(tmp_path_factory.mktemp("admin") / "admin.sock")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["backend", *args])
    return result.exit_code, result.output


def test_drain_weight_enable_over_the_socket_each_logged_before_it_is_answered(
    served: Served,
) -> None:
    got = change_backend(served.socket, {"service": "web", "address": BE1, "action": "drain"})
    (row,) = got["changed"]
    assert (row["service"], row["backend"], row["admin"], row["up"]) == (
        "web",
        BE1_NAME,
        "drained",
        False,
    )
    assert row["healthy"] and row["closed"] is None
    assert served.log == [f"backend web {BE1_NAME}: drained by the admin"] == [row["message"]]
    assert served.backend(BE1_NAME) is AdminState.DRAINED
    query = {"service": "web", "address": f"{BE2}:80", "action": "weight", "weight": "7"}
    (row,) = change_backend(served.socket, query)["changed"]
    assert (row["weight"], row["config_weight"]) == (7, 3)
    assert served.log[-1] == f"backend web {BE2_NAME}: weight 7 (was 3) set by the admin; up"
    change_backend(served.socket, {"service": "web", "address": BE1, "action": "enable"})
    assert served.backend(BE1_NAME) is AdminState.ENABLED
    assert served.log[-1] == f"backend web {BE1_NAME}: enabled by the admin; up"


def test_the_socket_refuses_what_is_not_there_naming_what_is(served: Served) -> None:
    def refused(query: dict[str, str]) -> tuple[int, str]:
        with pytest.raises(AdminRefusedError) as e:
            change_backend(served.socket, query)
        return e.value.status, e.value.reason

    drain = {"address": BE1, "action": "drain"}
    assert refused({"service": "nope", **drain}) == (
        404,
        "no service 'nope'; the services: web, web6",
    )
    assert refused({"service": "web", "address": "198.18.20.99", "action": "drain"}) == (
        404,
        f"service 'web' has no backend 198.18.20.99; its backends: {BE1_NAME}, {BE2_NAME}",
    )
    assert refused({"service": "web", "address": BE1, "action": "halt"}) == (
        400,
        "action: one of drain, disable, enable, weight, not 'halt'",
    )
    assert refused({"service": "web", "address": BE1, "action": "weight", "weight": "1001"}) == (
        400,
        "weight: a number from 0 to 1000, not '1001'",
    )
    assert refused({"service": "web", **drain, "port": "80"})[0] == 400
    with pytest.raises(AdminRefusedError, match="405 /backend takes a POST"):
        fetch(served.socket, "/backend?service=web")
    # the metrics port, which any local user reaches, changes nothing
    status, _ = _tcp(served.metrics_at, "POST", f"/backend?service=web&address={BE1}&action=drain")
    assert status == 404
    assert served.backend(BE1_NAME) is AdminState.ENABLED and served.log == []


def test_the_command(served: Served) -> None:
    code, out = _cli("-s", served.socket, "web", BE1, "drain")
    assert (code, out) == (0, f"backend web {BE1_NAME}: drained by the admin\n")
    code, out = _cli("-s", served.socket, "web6", f"[{BE1_6}]:80", "disable", "--json")
    assert code == 0 and json.loads(out)["changed"][0]["admin"] == "disabled"
    code, out = _cli("-s", served.socket, "web", BE2, "weight", "0")
    assert code == 0 and out.endswith("weight 0: no new connections\n")


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (("nope", BE1, "drain"), 1, "hopgate: no service 'nope'; the services: web, web6\n"),
        (("web", "198.18.20.99", "enable"), 1, "its backends: 198.18.20.11:80, 198.18.20.12:80"),
        (("web", BE1, "weight"), 1, "weight needs a number"),
        (("web", BE1, "drain", "3"), 1, "drain takes no number"),
        (("web", BE1, "weight", "1001"), 2, "1001 is not in the range 0<=x<=1000"),
        (("web", BE1, "pause"), 2, "'pause' is not one of 'drain', 'disable', 'enable'"),
        (("web", "web1", "drain"), 1, "address: 'web1' is not an IP address"),
    ],
)
def test_the_command_fails_naming_what_is_wrong(
    unchanged: Served, args: tuple[str, ...], code: int, said: str
) -> None:
    got, out = _cli("-s", unchanged.socket, *args)
    assert got == code and said in out, out
    assert unchanged.log == []


def test_no_daemon_is_an_error_naming_the_socket(tmp_path: Path) -> None:
    code, out = _cli("-s", str(tmp_path / "none.sock"), "web", BE1, "drain")
    assert code == 1 and "no hopgate is running with admin socket" in out


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (BE1, (4, int.from_bytes(bytes(map(int, BE1.split("."))), "big"), None)),
        (f"{BE1}:8080", (4, int.from_bytes(bytes(map(int, BE1.split("."))), "big"), 8080)),
        ("2001:2::1", (6, 0x2001_0002 << 96 | 1, None)),
        ("[2001:2::1]:80", (6, 0x2001_0002 << 96 | 1, 80)),
        ("[2001:2::1]", (6, 0x2001_0002 << 96 | 1, None)),
    ],
)
def test_addresses_with_or_without_a_port(text: str, parsed: tuple[int, int, int | None]) -> None:
    assert backends.parse_address(text) == parsed


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"address": BE1, "action": "drain"}, "service: missing"),
        ({"service": "web", "address": f"{BE1}:0", "action": "drain"}, "address: the port"),
        ({"service": "web", "address": "[2001:2::1]x", "action": "drain"}, "address: "),
        ({"service": "web", "address": BE1, "action": "weight"}, "weight: a number"),
        ({"service": "web", "address": BE1, "action": "weight", "weight": "-1"}, "weight: "),
        ({"service": "web", "address": BE1, "action": "enable", "weight": "2"}, "only with"),
        ({"service": "web", "address": BE1, "action": "drain", "x": "1"}, "unknown key x"),
    ],
)
def test_a_query_that_does_not_parse_names_its_key(query: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        backends.parse(query)
