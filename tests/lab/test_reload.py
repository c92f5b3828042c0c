"""Configuration reload judged by the real tools: ``hopgate reload`` (the admin
socket's ``POST /reload``) and SIGHUP make the running daemon read its config
file again and apply the difference, keeping the connections whose rule,
service and backend are still there; a file that does not validate changes
nothing.

The long downloads are paced by ``hopgate.lab.clients download`` (a small
receive buffer, read at a steady rate), not by curl's ``--limit-rate``, which
often lets 10 MB through the lab in about a second (tests/lab/test_lb_runtime.py):
the reload must land while the download is running.  curl and ping judge the
rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hopgate.control.admin import AdminRefusedError, fetch
from hopgate.lab import tools
from hopgate.lab.configs import Table
from hopgate.lab.lblab import CHECK_INTERVAL_MS, LB_ADDR, MAGLEV_PORT, LbLab
from hopgate.lab.netns import Namespace, Process
from hopgate.lab.topologies import (
    BIG_FILE,
    HTTP_PORT,
    NAT_ADDR,
    NatLab,
    edit_config,
    write_config,
)
from tests.lab.test_lb_lab import http_answers

pytestmark = pytest.mark.lab

A = LB_ADDR
N = NAT_ADDR
BE1, BE2, BE3 = A.backends4  # web's backends are BE1 (weight 1) and BE2 (weight 3)
SIZE = 10 * 1024 * 1024
# A route in the LB lab's config that no traffic of the tests takes, for a reload to remove.
SPARE_ROUTE = "198.18.9.0/24"
SPARE = f'[[route]]\nprefix = "{SPARE_ROUTE}"\nvia = ["{A.rb_g4}"]\n'
# The service a reload adds: another port of web's VIP, to be3's second HTTP server.
NEW_SERVICE = "web8080"
DOWNLOAD_PORTS = iter(range(24700, 24800))  # each download its own client port

Lab = LbLab | NatLab


# -- helpers ----------------------------------------------------------------------------


def _hopgate(lab: Lab, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``hopgate ARGS`` against the lab's daemon (its admin socket)."""
    cmd = [sys.executable, "-m", "hopgate", args[0], "-s", lab.admin_socket, *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _said(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}; stdout: {r.stdout!r}; stderr: {r.stderr!r}"


def _reload_json(lab: Lab) -> dict[str, Any]:
    """``hopgate reload --json``, which must succeed: its reply."""
    r = _hopgate(lab, "reload", "--json")
    assert r.returncode == 0, f"{lab.gateway}: hopgate reload --json failed: {_said(r)}"
    try:
        reply: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"{lab.gateway}: hopgate reload --json printed no JSON: {_said(r)}")
    assert isinstance(reply.get("changes"), list), f"{lab.gateway}: {reply}"
    assert isinstance(reply.get("connections", {}).get("kept"), int), f"{lab.gateway}: {reply}"
    assert isinstance(reply["connections"].get("ended"), dict), f"{lab.gateway}: {reply}"
    assert isinstance(reply.get("stall_ms"), int | float), f"{lab.gateway}: {reply}"
    assert reply["stall_ms"] >= 0, f"{lab.gateway}: {reply}"
    return reply


def _named(changes: list[str], *words: str) -> bool:
    """Whether one of a reload's changes names all of ``words``."""
    return any(all(w in change for w in words) for change in changes)


def _ended(reply: dict[str, Any]) -> int:
    return sum(reply["connections"]["ended"].values())


def _download(ns: Namespace, host: str, port: int, rate: int) -> Process:
    """The 10 MB file from ``host``:``port`` at ``rate`` bytes a second; it
    prints the status, the body's bytes and the seconds it took."""
    local = next(DOWNLOAD_PORTS)
    return ns.spawn(
        f"download-{local}",
        sys.executable, "-m", "hopgate.lab.clients", "download", host, str(port), f"/{BIG_FILE}",
        "--rate", str(rate), "--local-port", str(local), "--timeout", "5",
    )  # fmt: skip


def _finished(proc: Process, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stop()
    return proc.output().strip()


def _complete(output: str) -> bool:
    """Whether a download's output says it got the whole file."""
    return output.split()[:2] == ["200", str(SIZE)]


def _page(ns: Namespace, url: str) -> subprocess.CompletedProcess[str]:
    """curl's fetch of a small page (its body in stdout)."""
    return ns.run("curl", "-g", "-s", "-S", "--max-time", "3", url, check=False, timeout=15)


def _routes(status: dict[str, Any]) -> list[str]:
    return [r["prefix"] for r in status["routes"]]


def _services(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in status["nat"]["services"]}


def _configured(status: dict[str, Any]) -> Any:
    """What of ``hopgate status --json`` a reload may change: interfaces,
    routes, services and backends (no counters)."""
    services = []
    for s in status["nat"]["services"]:
        backends = [
            (b["backend"], b["weight"], b["config_weight"], b["admin"]) for b in s["backends"]
        ]
        services.append(
            (s["name"], s["vip"], s["port"], s["protocol"], s["scheduler"], s["local_addresses"],
             s["health"], backends)
        )  # fmt: skip
    interfaces = [(i["name"], i["mtu"], i["addresses"]) for i in status["interfaces"]]
    return interfaces, status["routes"], services


def _backend_of(doc: Table, service: str, address: str) -> Table:
    """The ``[[service.backend]]`` of ``address`` in ``service`` of a config document."""
    (svc,) = [s for s in doc["service"] if s.get("name") == service]
    (be,) = [b for b in svc["backend"] if b["address"] == address]
    found: Table = be
    return found


def _weights(**weights: int) -> Callable[[Table], None]:
    """An edit setting web's backends' weights in the file (BE1=..., BE2=...)."""

    def edit(doc: Table) -> None:
        for name, weight in weights.items():
            _backend_of(doc, "web", {"BE1": BE1, "BE2": BE2}[name])["weight"] = weight

    return edit


def _wait_for(what: str, lab: Lab, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{lab.gateway}: {what} within {timeout:g} s"
        time.sleep(0.1)


# -- the load balancer ------------------------------------------------------------------


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def lb_lab(request: pytest.FixtureRequest) -> Iterator[LbLab]:
    """hopgate as the load balancer, on each data plane, with a spare route."""
    with LbLab(extra_config=SPARE, dataplane=request.param) as built:
        yield built


@pytest.fixture
def lb(lb_lab: LbLab) -> Iterator[LbLab]:
    """The lab, its config file (and what the daemon runs) as it was built again
    after the test, and its web backends enabled."""
    original = lb_lab.config_path.read_text()
    yield lb_lab
    assert lb_lab.hopgate is not None, lb_lab.gateway
    if not lb_lab.hopgate.alive():
        return
    write_config(lb_lab.config_path, original)
    r = _hopgate(lb_lab, "reload")
    _hopgate(lb_lab, "backend", "web", BE1, "enable")
    assert r.returncode == 0, f"{lb_lab.gateway}: the reload back to the lab's config: {_said(r)}"


def _grow(doc: Table) -> None:
    """A second service on web's VIP, web's BE1 weighed 2, the spare route gone."""
    doc["service"].append(
        {
            "name": NEW_SERVICE,
            "vip": A.vip4,
            "port": MAGLEV_PORT,
            "protocol": "tcp",
            "local_addresses": list(A.lips4),
            "backend": [{"address": BE3}],
            "health": {"kind": "tcp", "interval_ms": CHECK_INTERVAL_MS, "timeout_ms": 250},
        }
    )
    _backend_of(doc, "web", BE1)["weight"] = 2
    doc["route"] = [r for r in doc["route"] if r["prefix"] != SPARE_ROUTE]


def test_a_reload_adds_a_service_weighs_a_backend_removes_a_route_and_keeps_a_download(
    lb: LbLab,
) -> None:
    gw = lb.gateway
    assert SPARE_ROUTE in _routes(lb.status()), f"{gw}: the lab's spare route is missing"
    download = _download(lb.ns("client"), A.vip4, HTTP_PORT, 1024 * 1024)  # 10 s
    try:
        time.sleep(3.0)
        assert download.alive(), f"{gw}: the download ended before the reload: {download.output()}"
        edit_config(lb.config_path, _grow)
        reply = _reload_json(lb)
        assert download.alive(), f"{gw}: the download ended at the reload: {download.output()}"
        for what, words in (
            (f"service {NEW_SERVICE} added", (NEW_SERVICE, "added")),
            (f"web's {BE1} weighed 2", (BE1, "weight", "1 -> 2")),
            (f"route {SPARE_ROUTE} removed", (SPARE_ROUTE, "removed")),
        ):
            assert _named(reply["changes"], *words), f"{gw}: no change says {what}: {reply}"
        assert reply["connections"]["kept"] >= 1, f"{gw}: the download's connection: {reply}"
        assert _ended(reply) == 0, f"{gw}: connections ended, none should have: {reply}"

        # the new service answers; status shows it, the weight, the route gone
        url = f"http://{A.vip4}:{MAGLEV_PORT}/index.html"
        pages = []

        def answered() -> bool:
            pages.append(_page(lb.ns("client"), url))
            return pages[-1].stdout == "hello from be3\n"

        _wait_for(f"{NEW_SERVICE} answered curl {url} with be3's page", lb, answered)
        status = lb.status()
        services = _services(status)
        assert NEW_SERVICE in services, f"{gw}: status has no {NEW_SERVICE}: {list(services)}"
        new = services[NEW_SERVICE]
        assert (new["vip"], new["port"], [b["backend"] for b in new["backends"]]) == (
            A.vip4, MAGLEV_PORT, [f"{BE3}:{MAGLEV_PORT}"],
        ), f"{gw}: {new}"  # fmt: skip
        row = {b["backend"]: b for b in services["web"]["backends"]}[f"{BE1}:80"]
        assert (row["weight"], row["config_weight"]) == (2, 2), f"{gw}: web's {BE1}: {row}"
        assert SPARE_ROUTE not in _routes(status), f"{gw}: the route stayed: {_routes(status)}"
        assert "0.0.0.0/0" in _routes(status), f"{gw}: {_routes(status)}"
    finally:
        got = _finished(download)
    assert _complete(got), f"{gw}: the download through web broke across the reload: {got!r}"


def _break(doc: Table) -> None:
    """An unknown key, and a service on port 70000."""
    doc["icmp"]["bogus"] = 1
    doc["service"].append(
        {
            "name": "broken",
            "vip": A.vip4,
            "port": 70000,
            "protocol": "tcp",
            "local_addresses": list(A.lips4),
            "backend": [{"address": BE3}],
        }
    )


def _check_config(lab: Lab) -> subprocess.CompletedProcess[str]:
    """``hopgate check-config`` of the lab's config file."""
    cmd = [sys.executable, "-m", "hopgate", "check-config", str(lab.config_path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def _issues(lab: Lab) -> list[str]:
    """The problems ``hopgate check-config`` finds in the lab's config file, one
    per line, each with its key path."""
    r = _check_config(lab)
    assert r.returncode == 1, f"{lab.gateway}: check-config took the broken file: {_said(r)}"
    return [line.strip() for line in r.stderr.splitlines()[1:] if line.strip()]


def test_a_broken_file_changes_nothing_and_says_why(lb: LbLab) -> None:
    gw = lb.gateway
    before = _configured(lb.status())
    clean = edit_config(lb.config_path, _break)
    issues = _issues(lb)
    assert any(i.startswith("icmp.bogus: ") for i in issues), f"{gw}: check-config: {issues}"
    assert any(re.match(r"service\[\d+\]\.port: ", i) for i in issues), f"{gw}: {issues}"
    download = _download(lb.ns("client"), A.vip4, HTTP_PORT, 2 * 1024 * 1024)  # 5 s
    try:
        time.sleep(1.0)
        assert download.alive(), f"{gw}: the download ended before the reload: {download.output()}"
        r = _hopgate(lb, "reload")
        assert r.returncode == 1, f"{gw}: hopgate reload of a broken file: {_said(r)}"
        for issue in issues:
            assert issue in r.stdout + r.stderr, f"{gw}: reload did not say {issue!r}: {_said(r)}"
        # the admin API: 400, with the same errors
        with pytest.raises(AdminRefusedError) as refused:
            fetch(lb.admin_socket, "/reload", "POST")
        assert refused.value.status == 400, f"{gw}: POST /reload: {refused.value}"
        for issue in issues:
            assert issue in refused.value.reason, f"{gw}: POST /reload: {refused.value.reason!r}"

        # the interfaces cannot change by a reload: a file check-config takes, refused
        write_config(lb.config_path, clean)
        edit_config(lb.config_path, lambda doc: doc["interface"].reverse())
        r = _check_config(lb)
        assert r.returncode == 0, f"{gw}: check-config, interfaces reordered: {_said(r)}"
        r = _hopgate(lb, "reload")
        assert r.returncode == 1, f"{gw}: a reload reordering the interfaces: {_said(r)}"
        assert "interface" in r.stdout + r.stderr, f"{gw}: {_said(r)}"

        assert lb.hopgate is not None and lb.hopgate.alive(), f"{gw} died of a broken reload"
        assert _configured(lb.status()) == before, f"{gw}: a refused reload changed something"
        fresh = _page(lb.ns("client"), f"http://{A.vip4}:{HTTP_PORT}/index.html")
        assert fresh.stdout.startswith("hello from be"), f"{gw}: a fresh curl: {fresh}"
        echo = tools.ping(lb.ns("client"), A.vip4)
        assert echo.received == echo.transmitted > 0, f"{gw}: ping the VIP: {echo.run.stdout}"
    finally:
        got = _finished(download)
    assert _complete(got), f"{gw}: the download broke across a refused reload: {got!r}"


def test_sighup_reloads(lb: LbLab) -> None:
    """SIGHUP does what ``hopgate reload`` does: here a weight and an interface's MTU."""
    gw = lb.gateway
    assert lb.hopgate is not None, gw
    logged = len(lb.hopgate.output())

    def edit(doc: Table) -> None:
        _weights(BE1=2)(doc)
        (gw_a,) = [i for i in doc["interface"] if i["name"] == "gw-a"]
        gw_a["mtu"] = 1400

    edit_config(lb.config_path, edit)
    os.kill(lb.hopgate.pid, signal.SIGHUP)

    def reloaded() -> bool:
        status = lb.status()
        row = {b["backend"]: b for b in _services(status)["web"]["backends"]}[f"{BE1}:80"]
        mtu = {i["name"]: i["mtu"] for i in status["interfaces"]}["gw-a"]
        return (row["weight"], row["config_weight"], mtu) == (2, 2, 1400)

    _wait_for("SIGHUP's reload showed in status (web's be1 of weight 2, gw-a's MTU 1400)",
              lb, reloaded)  # fmt: skip
    assert lb.hopgate.alive(), f"{gw} died of SIGHUP"
    # The log has the changes once the reload is over (after the swap that
    # status shows, the connections are checked): a moment later.
    deadline = time.monotonic() + 10
    while True:
        log = [x for x in lb.hopgate.output()[logged:].splitlines() if "reload" in x]
        if _named(log, BE1, "weight", "1 -> 2") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _named(log, BE1, "weight", "1 -> 2"), f"{gw} logged no reload of {BE1}'s weight: {log}"
    page = _page(lb.ns("client"), f"http://{A.vip4}:{HTTP_PORT}/index.html")
    assert page.stdout.startswith("hello from be"), f"{gw}: curl after SIGHUP: {page}"


def test_what_the_operator_set_wins_over_the_file(lb: LbLab) -> None:
    """``hopgate backend ... drain`` and ``weight`` outlast a reload of the file;
    what the operator did not set follows the file."""
    gw = lb.gateway
    for args in (("drain",), ("weight", "3")):
        r = _hopgate(lb, "backend", "web", BE1 if args == ("drain",) else BE2, *args)
        assert r.returncode == 0, f"{gw}: hopgate backend {args}: {_said(r)}"

    r = _hopgate(lb, "reload")
    assert r.returncode == 0, f"{gw}: reload of the unchanged file: {_said(r)}"
    assert "nothing changed" in r.stdout.splitlines(), f"{gw}: unchanged file: {_said(r)}"
    rows = lb.backends("web")
    assert rows[f"{BE1}:80"]["admin"] == "drained", f"{gw}: the drain was undone: {rows}"
    assert rows[f"{BE2}:80"]["weight"] == 3, f"{gw}: {rows}"

    edit_config(lb.config_path, _weights(BE1=2, BE2=5))
    r = _hopgate(lb, "reload")
    assert r.returncode == 0, f"{gw}: reload with new weights: {_said(r)}"
    lines = r.stdout.splitlines()
    assert _named(lines, BE1, "weight", "1 -> 2"), f"{gw}: {BE1}'s weight not said: {_said(r)}"
    assert any(re.fullmatch(r"connections: \d+ kept, \d+ ended.*", x) for x in lines), (
        f"{gw}: no 'connections: N kept, M ended' line: {_said(r)}"
    )
    rows = lb.backends("web")
    be1, be2 = rows[f"{BE1}:80"], rows[f"{BE2}:80"]
    assert (be1["admin"], be1["config_weight"]) == ("drained", 2), f"{gw}: {BE1}: {be1}"
    assert (be2["weight"], be2["config_weight"]) == (3, 5), f"{gw}: the operator's weight: {be2}"
    answers = {answer for _, answer in http_answers(lb, A.vip4, HTTP_PORT, 8)}
    assert answers == {"hello from be2"}, f"{gw}: new connections with {BE1} drained: {answers}"


# -- NAT --------------------------------------------------------------------------------


@pytest.mark.parametrize("dataplane", ["afpacket", "xdp"])
def test_nat_downloads_go_on_across_a_reload_and_a_removed_dnat_rule_ends_its_connection(
    dataplane: str,
) -> None:
    with NatLab("hopgate", dataplane=dataplane) as lab:
        gw = lab.gateway
        (lab.lab.dir / "www-inside" / BIG_FILE).write_bytes(bytes(range(256)) * (SIZE // 256))
        published = f"{N.gw_u4}:{N.published_port}"
        # out: 5 s, across the first reload; into: 10 s, running at the second
        out = _download(lab.ns("inside2"), N.server4, HTTP_PORT, 2 * 1024 * 1024)
        into = _download(lab.ns("server"), N.gw_u4, N.published_port, 1024 * 1024)
        try:
            time.sleep(1.0)
            for name, proc in (("through the NAT", out), ("to the published port", into)):
                assert proc.alive(), f"{gw}: the download {name} ended early: {proc.output()}"

            # an unrelated setting: both downloads go on
            edit_config(lab.config_path, lambda doc: doc["nat"].update(timeouts={"udp": 45}))
            reply = _reload_json(lab)
            assert reply["changes"], f"{gw}: [nat.timeouts] udp changed, no change said: {reply}"
            assert reply["connections"]["kept"] >= 2, f"{gw}: the two downloads: {reply}"
            assert _ended(reply) == 0, f"{gw}: connections ended by an unrelated change: {reply}"
            assert into.alive(), f"{gw}: the download to {published} ended: {into.output()}"

            # the IPv4 published port removed: its connection ends, new ones fail
            def unpublish(doc: Table) -> None:
                doc["nat"]["dnat"] = [d for d in doc["nat"]["dnat"] if d["published"] != published]

            edit_config(lab.config_path, unpublish)
            reply = _reload_json(lab)
            assert _named(reply["changes"], published, "removed"), (
                f"{gw}: the DNAT rule of {published} removed, not said: {reply}"
            )
            assert _ended(reply) == 1, f"{gw}: the download to {published} should end: {reply}"
            assert reply["connections"]["kept"] >= 1, f"{gw}: the download out: {reply}"
            url = f"http://{published}/index.html"
            r = _page(lab.ns("server"), url)
            assert r.returncode != 0, f"{gw}: {url} answered with its DNAT rule removed: {r}"
            url6 = f"http://[{N.gw_u6}]:{N.published_port}/index.html"
            r = _page(lab.ns("server"), url6)
            assert r.stdout == "hello from inside1\n", f"{gw}: the IPv6 DNAT rule, kept: {r}"
        finally:
            got_out, got_in = _finished(out), _finished(into, timeout=15.0)
        assert _complete(got_out), f"{gw}: the download through the NAT broke: {got_out!r}"
        assert not _complete(got_in), (
            f"{gw}: the download to {published} completed after its DNAT rule was removed"
        )
