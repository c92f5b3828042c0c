"""The host port (io/hostport.py) on a running hopgate: gw-c given host
addresses, the client (a neighbour on that link) pings them and fetches a page
from a listener bound to them in hopgate's namespace, the host opens a
connection to the client, while the client's traffic is forwarded through
hopgate as before; the host port follows gw-c's link, and goes when hopgate
stops.  On both data planes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hopgate.lab import tools
from hopgate.lab.configs import Table
from hopgate.lab.topologies import ADDR, RouterLab, edit_config, wait_for_listen

A = ADDR
HOST4 = "198.18.1.111"  # on gw-c's subnet
HOST6 = "2001:2:0:1::111"
TAP = "h-gw-c"  # the default name of gw-c's host port
PORT4, PORT6 = 8080, 8081  # the listeners on the host addresses
CLIENT_PORT = 8090  # a listener on the client, which the host connects to
COUNT = 5


def _with_host_addresses(doc: Table) -> None:
    gw_c = doc["interface"][0]
    assert gw_c["name"] == "gw-c"
    gw_c["host_addresses"] = [f"{HOST4}/24", f"{HOST6}/64"]


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def lab(request: pytest.FixtureRequest) -> Iterator[RouterLab]:
    """The RouterLab, its hopgate started again with host addresses on gw-c,
    and listeners on them (and on the client)."""
    with RouterLab("hopgate", servers=False, dataplane=request.param) as lab:
        assert lab.hopgate is not None
        lab.hopgate.stop()
        edit_config(lab.config_path, _with_host_addresses)
        lab.start_hopgate()
        www = lab.lab.dir / "www-host"
        www.mkdir()
        (www / "index.html").write_text("hello from the host\n")
        for name, address, port in (("http-host4", HOST4, PORT4), ("http-host6", HOST6, PORT6)):
            lab.gw.spawn(
                name,
                sys.executable, "-m", "http.server", str(port),
                "--bind", address, "--directory", str(www),
            )  # fmt: skip
            wait_for_listen(lab.gw, port)
        lab.client.spawn(
            "http-client",
            sys.executable, "-m", "http.server", str(CLIENT_PORT),
            "--bind", A.client4, "--directory", str(www),
        )  # fmt: skip
        wait_for_listen(lab.client, CLIENT_PORT)
        yield lab


def _who(lab: RouterLab) -> str:
    return f"{lab.gateway} ({lab.gw.name})"


def _gw_c(lab: RouterLab) -> dict[str, Any]:
    found: list[dict[str, Any]] = [i for i in lab.status()["interfaces"] if i["name"] == "gw-c"]
    return found[0]


def _tap(lab: RouterLab) -> dict[str, Any]:
    shown = lab.gw.run("ip", "-j", "address", "show", "dev", TAP, check=False)
    assert shown.returncode == 0, f"{_who(lab)}: no {TAP}: {shown.stderr.strip()}"
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found[0]


def _echo_replies(lab: RouterLab) -> int:
    """Echo replies hopgate itself sent (both families)."""
    sent = lab.status()["icmp_sent"]
    return sum(e["count"] for e in sent if (e["family"], e["type"]) in ((4, 0), (6, 129)))


def _ping(lab: RouterLab, dst: str) -> None:
    """COUNT echo requests from the client, all answered (tried again: a hop that
    is not hopgate may lose one)."""
    for _ in range(3):
        p = tools.ping(lab.client, dst, count=COUNT, interval=0.1, wait=2.0)
        if p.received == COUNT:
            return
    raise AssertionError(f"{_who(lab)}: pings from the client to {dst} lost:\n{p.run.output}")


def _fetch(lab: RouterLab, url: str, where: str = "client") -> None:
    ns = lab.client if where == "client" else lab.gw
    for _ in range(3):
        got = tools.curl(ns, url, timeout=10.0)
        if got.ok:
            return
    raise AssertionError(
        f"{_who(lab)}: the {where} could not fetch {url}:\n{got.run.stdout}{got.run.stderr}"
    )


def _carrier(lab: RouterLab) -> bool:
    return "NO-CARRIER" not in _tap(lab)["flags"]


def _wait_carrier(lab: RouterLab, on: bool, what: str) -> None:
    deadline = time.monotonic() + 20.0
    assert lab.hopgate is not None
    while _carrier(lab) != on:
        assert lab.hopgate.alive(), f"{_who(lab)} died:\n{lab.hopgate.output()}"
        if time.monotonic() > deadline:
            pytest.fail(f"{_who(lab)} {what}: {TAP} shows {_tap(lab)}")
        time.sleep(0.1)


def test_the_host_port_is_made_as_the_config_says(lab: RouterLab) -> None:
    tap = _tap(lab)
    gw_c = lab.gw.mac("gw-c")
    assert tap["address"] == gw_c, f"{_who(lab)}: {TAP} has {tap['address']}, gw-c {gw_c}"
    assert tap["mtu"] == 1500 and "UP" in tap["flags"], f"{_who(lab)}: {tap}"
    addresses = {f"{a['local']}/{a['prefixlen']}" for a in tap["addr_info"]}
    # hopgate's own link-local is gw-c's EUI-64 one: the host port makes none.
    assert addresses == {f"{HOST4}/24", f"{HOST6}/64"}, f"{_who(lab)}: {TAP} has {addresses}"
    status = _gw_c(lab)
    assert status["host"]["name"] == TAP and status["host"]["carrier"], status


def test_a_neighbour_reaches_the_host_while_hopgate_forwards(lab: RouterLab) -> None:
    before = _gw_c(lab)
    replies = _echo_replies(lab)
    for dst in (HOST4, HOST6):
        _ping(lab, dst)
    # The kernel answered, not hopgate: the requests went up, the replies came down.
    assert _echo_replies(lab) == replies, f"{_who(lab)} answered pings to the host itself"
    _fetch(lab, f"http://{HOST4}:{PORT4}/")
    _fetch(lab, f"http://[{HOST6}]:{PORT6}/")
    _fetch(lab, f"http://{A.client4}:{CLIENT_PORT}/", where="host")  # the host connects out
    # and through hopgate, as before
    for dst in (A.server4, A.server6):
        _ping(lab, dst)
    after = _gw_c(lab)
    up = after["to_host"] - before["to_host"]
    down = after["from_host"] - before["from_host"]
    assert up >= 2 * COUNT and down >= 2 * COUNT, f"{_who(lab)}: to host {up}, from host {down}"
    assert after["host"]["io"]["tx_errors"] == 0, after["host"]


def test_the_host_port_follows_the_link(lab: RouterLab) -> None:
    _wait_carrier(lab, True, "at start")
    lab.gw.run("ip", "link", "set", "gw-c", "down")
    try:
        _wait_carrier(lab, False, "with gw-c down")
    finally:
        lab.gw.run("ip", "link", "set", "gw-c", "up")
    _wait_carrier(lab, True, "with gw-c up again")
    _ping(lab, HOST4)


def test_the_host_port_goes_with_hopgate(lab: RouterLab) -> None:
    assert lab.hopgate is not None
    lab.hopgate.stop()
    assert not lab.hopgate.alive(), f"{_who(lab)} did not stop"
    shown = lab.gw.run("ip", "link", "show", TAP, check=False)
    assert shown.returncode != 0, f"{_who(lab)} left {TAP} behind:\n{shown.stdout}"
