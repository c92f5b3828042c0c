"""Runtime backend control judged by the real tools (issue 12, item 2): during a
download through the web service, ``hopgate backend web ADDR drain`` lets the
download complete while no new connection goes to ADDR; ``weight`` changes the
split of new connections; ``enable`` brings it back.

The download is paced by ``hopgate.lab.clients download`` (2 MB/s, a small
receive buffer): curl's ``--limit-rate`` averages over seconds and often lets a
10 MB download through the lab end in about a second (measured with curl 7.88:
1.3 s at "1M" in two runs of three), before the drain."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from hopgate.control.admin import fetch
from hopgate.lab.lblab import LB_ADDR, LbLab
from hopgate.lab.netns import Process
from hopgate.lab.topologies import BIG_FILE, HTTP_PORT
from tests.lab.test_lb_lab import http_answers

A = LB_ADDR
BE1, BE2 = A.backends4[0], A.backends4[1]  # web's backends, weights 1 and 3
RATE = 2 * 1024 * 1024  # bytes a second: the 10 MB download takes about 5 s
DOWNLOAD_PORT = 24680  # the download's client port, to find its connection


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def lab(request: pytest.FixtureRequest) -> Iterator[LbLab]:
    """hopgate as the load balancer, on each data plane."""
    with LbLab(dataplane=request.param) as built:
        yield built


@pytest.fixture
def lb(lab: LbLab) -> Iterator[LbLab]:
    """The lab, its web backends enabled at the config's weights again after the
    test, whatever it left them as."""
    yield lab
    for address, weight in ((BE1, "1"), (BE2, "3")):
        _hopgate(lab, "backend", "web", address, "enable")
        _hopgate(lab, "backend", "web", address, "weight", weight)


def _hopgate(lab: LbLab, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hopgate", *args]
    if args[0] in ("backend", "conns", "status"):
        cmd[4:4] = ["-s", lab.admin_socket]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def _backend(lab: LbLab, *args: str) -> str:
    r = _hopgate(lab, "backend", "web", *args)
    assert r.returncode == 0, (lab.gateway, args, r.stdout, r.stderr)
    return r.stdout


def _split(lab: LbLab, count: int) -> Counter[str]:
    """Which backend answered each of ``count`` new connections to web."""
    return Counter(answer for _, answer in http_answers(lab, A.vip4, HTTP_PORT, count))


def _who(address: str) -> str:
    return f"hello from be{A.backends4.index(address) + 1}"


def _download(lab: LbLab) -> Process:
    """The 10 MB file through the web service at ``RATE``; it prints the status,
    the size and the seconds it took."""
    return lab.ns("client").spawn(
        "slow-download",
        sys.executable, "-m", "hopgate.lab.clients", "download",
        A.vip4, str(HTTP_PORT), f"/{BIG_FILE}",
        "--rate", str(RATE), "--local-port", str(DOWNLOAD_PORT),
    )  # fmt: skip


def _download_backend(lab: LbLab) -> str:
    """The address of the backend the download's connection was given."""
    deadline = time.monotonic() + 10
    while True:
        r = _hopgate(lab, "conns", "--json", "--port", str(DOWNLOAD_PORT))
        conns = json.loads(r.stdout)["connections"] if r.returncode == 0 else []
        if conns:
            return str(conns[0]["backend"]).rsplit(":", 1)[0]
        assert time.monotonic() < deadline, (lab.gateway, "no download connection", r.stderr)
        time.sleep(0.1)


def _wait_for_log(lab: LbLab, line: str, timeout: float = 3.0) -> None:
    assert lab.hopgate is not None
    deadline = time.monotonic() + timeout
    while line not in lab.hopgate.output():
        assert time.monotonic() < deadline, (lab.gateway, line, lab.hopgate.output()[-2000:])
        time.sleep(0.05)


def test_a_drained_backend_finishes_its_download_and_gets_no_new_connection(lb: LbLab) -> None:
    gw = lb.gateway
    download = _download(lb)
    try:
        drained = _download_backend(lb)
        other = BE2 if drained == BE1 else BE1
        time.sleep(1.0)  # well into the download
        out = _backend(lb, drained, "drain")
        said = f"backend web {drained}:80: drained by the admin; 1 open connections go on"
        assert out == f"{said}\n", (gw, out)
        assert download.alive(), (gw, "the download ended before the drain", download.output())
        _wait_for_log(lb, f"backend web {drained}:80: drained by the admin")
        row = lb.backends("web")[f"{drained}:80"]
        assert (row["admin"], row["up"], row["healthy"]) == ("drained", False, True), (gw, row)
        assert row["active"] >= 1, (gw, "the download's connection is gone", row)
        metrics = fetch(lb.admin_socket, "/metrics").decode()
        labels = f'backend="{drained}:80",service="web",state="drained"'
        admin = [m for m in metrics.splitlines() if m.startswith("hopgate_backend_admin")]
        assert f"hopgate_backend_admin_state{{{labels}}} 1.0" in admin, (gw, admin)
        table = _hopgate(lb, "status").stdout
        assert "drained" in table, (gw, table)

        # new connections while the download goes on: none to the drained backend
        split = _split(lb, 40)
        assert split == {_who(other): 40}, (gw, f"{drained} drained", split)
        assert download.alive(), (gw, "the download ended early", download.output())
    finally:
        deadline = time.monotonic() + 30
        while download.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        download.stop()
    code, size, took = download.output().split()
    assert (code, int(size)) == ("200", 10 * 1024 * 1024), (gw, download.output())
    assert float(took) > 4.0, (gw, "the download was not paced", took)

    # enable: back in the split (weights 1 and 3 on the smooth wrr: exactly 1 in 4 to be1)
    out = _backend(lb, drained, "enable")
    assert out == f"backend web {drained}:80: enabled by the admin; up\n", (gw, out)
    split = _split(lb, 40)
    assert split == {_who(BE1): 10, _who(BE2): 30}, (gw, "after enable", split)
    assert lb.backends("web")[f"{drained}:80"]["admin"] == "enabled", gw


def test_weight_changes_the_split_of_new_connections(lb: LbLab) -> None:
    gw = lb.gateway
    out = _backend(lb, BE1, "weight", "3")
    assert out == f"backend web {BE1}:80: weight 3 (was 1) set by the admin; up\n", (gw, out)
    split = _split(lb, 40)
    assert split == {_who(BE1): 20, _who(BE2): 20}, (gw, "weights 3 and 3", split)
    row = lb.backends("web")[f"{BE1}:80"]
    assert (row["weight"], row["config_weight"]) == (3, 1), (gw, row)
    _backend(lb, BE2, "weight", "0")
    assert _split(lb, 20) == {_who(BE1): 20}, (gw, "be2 of weight 0")
    _backend(lb, BE1, "weight", "1")
    _backend(lb, BE2, "weight", "3")
    assert _split(lb, 40) == {_who(BE1): 10, _who(BE2): 30}, (gw, "weights 1 and 3 again")


def test_an_unknown_service_or_backend_fails_naming_what_there_is(lb: LbLab) -> None:
    gw = lb.gateway
    r = _hopgate(lb, "backend", "www", BE1, "drain")
    assert r.returncode == 1, (gw, r.stdout, r.stderr)
    assert "no service 'www'; the services: echo, echo6, maglev, web, web6" in r.stderr, (gw, r)
    r = _hopgate(lb, "backend", "web", "198.18.20.99", "drain")
    assert r.returncode == 1, (gw, r.stdout, r.stderr)
    assert f"its backends: {BE1}:80, {BE2}:80" in r.stderr, (gw, r.stderr)
    assert all(b["admin"] == "enabled" for b in lb.backends("web").values()), gw
