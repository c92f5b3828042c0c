"""Link events on a running hopgate (issue 9 item 5): its upstream link set down
and up again, its carrier lost and back, then the link deleted and re-created,
during a ping from the client to the server.  The daemon keeps running, the
ping resumes, the events are counted."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hopgate.control.admin import AdminError
from hopgate.lab import tools
from hopgate.lab.netns import Process
from hopgate.lab.topologies import ADDR, RouterLab

A = ADDR
UPLINK = "gw-u"
_REPLY = re.compile(r"icmp_seq=(\d+) ttl=")


@pytest.fixture(params=["afpacket", "xdp"])
def lab(request: pytest.FixtureRequest) -> Iterator[RouterLab]:
    with RouterLab("hopgate", servers=False, dataplane=request.param) as lab:
        yield lab


def _uplink(lab: RouterLab) -> dict[str, Any]:
    try:
        status = lab.status()
    except AdminError as e:
        out = lab.hopgate.output()[-3000:] if lab.hopgate is not None else ""
        pytest.fail(f"{lab.gateway} ({lab.gw.name}) does not answer: {e}\n{out}")
    found: list[dict[str, Any]] = [i for i in status["interfaces"] if i["name"] == UPLINK]
    return found[0]


def _alive(lab: RouterLab) -> None:
    assert lab.hopgate is not None
    assert lab.hopgate.alive(), f"hopgate ({lab.gw.name}) died:\n{lab.hopgate.output()}"


def _ping_until_answered(lab: RouterLab, what: str, tries: int = 20) -> None:
    """The path through hopgate works again: some ping answered (one lost to a
    neighbour being resolved, or to the other hops, is no failure)."""
    for _ in range(tries):
        p = tools.ping(lab.client, A.server4, count=3, wait=1.0)
        if p.received:
            return
        _alive(lab)
    pytest.fail(f"{what}: no ping through hopgate ({lab.gw.name}) answered:\n{p.run.output}")


def _wait_for(lab: RouterLab, what: str, done: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        iface = _uplink(lab)
        if done(iface["link"]):
            return iface
        if time.monotonic() > deadline:
            pytest.fail(f"hopgate ({lab.gw.name}) {what}: {UPLINK} shows {iface['link']}")
        time.sleep(0.1)


def _answered(ping: Process) -> list[int]:
    return [int(m.group(1)) for m in _REPLY.finditer(ping.output())]


def _reply_after(lab: RouterLab, ping: Process, seq: int, what: str) -> int:
    """The first sequence number above ``seq`` the background ping got a reply to."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        later = [n for n in _answered(ping) if n > seq]
        if later:
            return min(later)
        _alive(lab)
        time.sleep(0.2)
    pytest.fail(
        f"{what}: the client's ping through hopgate ({lab.gw.name}) did not resume:\n"
        f"{ping.output()[-2000:]}"
    )


def test_link_down_up_and_recreate_during_a_ping(lab: RouterLab) -> None:
    _ping_until_answered(lab, "at start")
    ping = lab.client.spawn("ping", "ping", "-4", "-n", "-i", "0.2", "-w", "120", A.server4)
    try:
        # down for 3 s, then up
        _reply_after(lab, ping, 0, "at start")
        time.sleep(0.5)
        before_down = max(_answered(ping))
        lab.gw.run("ip", "link", "set", UPLINK, "down")
        down = _wait_for(lab, "after link down", lambda link: link["state"] == "admin-down")
        assert down["link"]["link_downs"] == 1, down
        p = tools.ping(lab.client, A.server4, count=2, wait=1.0)
        assert p.received == 0, f"hopgate ({lab.gw.name}) forwarded to a down link:\n{p.run.output}"
        time.sleep(3.0)
        lab.gw.run("ip", "link", "set", UPLINK, "up")
        _wait_for(lab, "after link up", lambda link: link["state"] == "up")
        resumed = _reply_after(lab, ping, before_down, "after link up")
        # Nothing went through while the link was down.
        assert resumed > before_down + 5, ping.output()[-2000:]

        # the carrier lost (r1's end set down) and back
        before_carrier = max(_answered(ping))
        lab.r1.run("ip", "link", "set", "r1-d", "down")
        _wait_for(lab, "after losing the carrier", lambda link: link["state"] == "no-carrier")
        lab.r1.run("ip", "link", "set", "r1-d", "up")
        # r1's kernel dropped its route back to the client with its link: again.
        lab.r1.run("ip", "route", "replace", "198.18.1.0/24", "via", A.gw_u4)
        _wait_for(lab, "after the carrier came back", lambda link: link["state"] == "up")
        _reply_after(lab, ping, before_carrier, "after the carrier came back")

        # deleted, then re-created with the same names and addresses
        before = _uplink(lab)
        before_recreate = max(_answered(ping))
        lab.recreate_uplink()
        up = _wait_for(
            lab,
            "after re-creating the link",
            lambda link: link["recreated"] == 1 and link["state"] == "up",
        )
        assert up["link"]["ifindex"] != before["link"]["ifindex"], up
        _reply_after(lab, ping, before_recreate, "after re-creating the link")
        _alive(lab)
        # re-taken as at start: GRO off, the kernel's IPv6 off
        features = lab.gw.run("ethtool", "-k", UPLINK).stdout
        assert "generic-receive-offload: off" in features, features
        sysctl = lab.gw.run("sysctl", "-n", f"net.ipv6.conf.{UPLINK}.disable_ipv6").stdout
        assert sysctl.strip() == "1", f"hopgate ({lab.gw.name}) did not re-take {UPLINK}"
        if lab.dataplane == "xdp":
            _fast_path_on_the_new_link(lab)
    finally:
        ping.stop()
    final = _uplink(lab)
    link = final["link"]
    assert link["link_downs"] == 3 and link["link_ups"] == 3 and link["recreated"] == 1, final
    status = lab.status()
    (gw_c,) = [i for i in status["interfaces"] if i["name"] == "gw-c"]
    # counted where the packets came in
    assert gw_c["drops"].get("link-down", 0) >= 2, gw_c["drops"]
    out = lab.hopgate.output() if lab.hopgate else ""
    assert f"{UPLINK}: link down" in out and "forwarding resumed" in out, out


def _fast_path_on_the_new_link(lab: RouterLab) -> None:
    """The re-created link has hopgate's program again, and traffic both ways
    across it is the fast path's."""
    shown = lab.gw.run("ip", "-d", "link", "show", UPLINK).stdout
    assert "prog/xdp" in shown, f"{lab.gateway} left the re-created {UPLINK} bare:\n{shown}"
    before = lab.status()["dataplane"]
    p = tools.ping(lab.client, A.server4, count=5, interval=0.2)
    after = lab.status()["dataplane"]
    assert p.received >= 4, f"{lab.gateway}:\n{p.run.output}"
    assert after["forwarded"] - before["forwarded"] >= 2 * p.received, (lab.gateway, before, after)
