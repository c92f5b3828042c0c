"""hopgate run as an operator meets it: clear refusals, a clean stop that gives the
interfaces back, and its state readable from outside (status, /metrics)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hopgate.control.admin import AdminError, fetch, fetch_status
from hopgate.lab.netns import Lab, Namespace
from hopgate.lab.topologies import RouterLab

CONFIG = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]
{mtu}
[admin]
socket = "{socket}"
"""


@pytest.fixture
def pair() -> Iterator[tuple[Lab, Namespace]]:
    with Lab() as lab:
        gw = lab.namespace("gw")
        peer = lab.namespace("peer")
        lab.link(gw, "gw-c", peer, "eth0")
        yield lab, gw


def write_config(lab: Lab, mtu: str = "") -> str:
    path = lab.dir / "gw.toml"
    path.write_text(CONFIG.format(mtu=mtu, socket=lab.dir / "admin.sock"))
    return str(path)


def run_hopgate(
    gw: Namespace, config: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return gw.run(
        sys.executable, "-m", "hopgate", "run", "-c", config, check=False, timeout=timeout
    )


def sysctl(ns: Namespace, key: str) -> str:
    return ns.run("sysctl", "-n", key).stdout.strip()


def test_refuses_an_interface_the_kernel_holds_addresses_on(pair: tuple[Lab, Namespace]) -> None:
    lab, gw = pair
    gw.address("gw-c", "198.18.1.1/24", "2001:2:0:1::1/64")
    done = run_hopgate(gw, write_config(lab))
    assert done.returncode == 1
    assert "gw-c: the kernel holds 198.18.1.1/24, 2001:2:0:1::1/64 on it" in done.stderr
    assert "ip address flush dev gw-c" in done.stderr
    # and it changed nothing on the way out
    assert sysctl(gw, "net.ipv6.conf.gw-c.disable_ipv6") == "0"


def test_refuses_an_mtu_above_the_links(pair: tuple[Lab, Namespace]) -> None:
    lab, gw = pair
    done = run_hopgate(gw, write_config(lab, mtu="mtu = 9000"))
    assert done.returncode == 1
    assert "gw-c: the configured MTU 9000 is above the link's MTU 1500" in done.stderr


def test_refuses_a_missing_interface(pair: tuple[Lab, Namespace]) -> None:
    lab, gw = pair
    path = lab.dir / "gw.toml"
    path.write_text(CONFIG.format(mtu="", socket=lab.dir / "a.sock").replace("gw-c", "gw-z"))
    done = run_hopgate(gw, str(path))
    assert done.returncode == 1
    assert "gw-z: no such interface in this network namespace" in done.stderr


def test_sigterm_stops_cleanly_and_gives_the_interface_back(pair: tuple[Lab, Namespace]) -> None:
    lab, gw = pair
    before = {
        k: sysctl(gw, k)
        for k in ("net.ipv6.conf.gw-c.disable_ipv6", "net.ipv4.conf.gw-c.arp_ignore")
    }
    proc = gw.spawn("hopgate", sys.executable, "-m", "hopgate", "run", "-c", write_config(lab))
    socket_path = str(lab.dir / "admin.sock")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            fetch(socket_path)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    assert sysctl(gw, "net.ipv6.conf.gw-c.disable_ipv6") == "1"
    assert sysctl(gw, "net.ipv4.conf.gw-c.arp_ignore") == "8"

    # a second daemon may not take the same admin socket
    second = run_hopgate(gw, write_config(lab))
    assert second.returncode == 1 and "another hopgate answers on" in second.stderr
    fetch(socket_path)  # and the refused one left the first daemon's socket alone

    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(10) == 0, proc.output()
    assert "received SIGTERM, stopping" in proc.output()
    after = {k: sysctl(gw, k) for k in before}
    assert after == before
    assert not (lab.dir / "admin.sock").exists()


@pytest.fixture(scope="module")
def lab() -> Iterator[RouterLab]:
    with RouterLab("hopgate", servers=False) as rl:
        yield rl


def test_status_command_shows_the_running_daemon(lab: RouterLab) -> None:
    lab.client.run("ping", "-c", "1", "-W", "2", "198.18.3.10")
    lab.client.run("ping", "-c", "1", "-W", "1", "198.18.200.1", check=False)
    cmd = [sys.executable, "-m", "hopgate", "status", "-s", lab.admin_socket]
    text = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={"COLUMNS": "160"}
    ).stdout
    for expected in (
        "Interfaces",
        "gw-c",
        "gw-u",
        "Drops by reason",
        "no-route",
        "ICMP sent",
        "destination unreachable: net",
        "Neighbours",
        "Routes",
        "198.18.3.0/24",
    ):
        assert expected in text, (expected, text)  # fmt: skip
    state = json.loads(
        subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True).stdout
    )
    assert state["drops"]["no-route"] >= 1
    assert {i["name"] for i in state["interfaces"]} == {"gw-c", "gw-u"}


def test_metrics_in_prometheus_text(lab: RouterLab) -> None:
    lab.client.run("ping", "-c", "1", "-W", "1", "198.18.200.1", check=False)  # net unreachable
    text = fetch(lab.admin_socket, "/metrics").decode()
    assert 'hopgate_rx_packets_total{interface="gw-c"}' in text
    assert "# TYPE hopgate_drops_total counter" in text
    assert 'hopgate_drops_total{interface="gw-c",reason="no-route"}' in text
    assert 'hopgate_icmp_sent_total{code="0",family="ipv4",type="3"}' in text
    assert "hopgate_uptime_seconds" in text


def test_status_without_a_daemon_says_so() -> None:
    cmd = [sys.executable, "-m", "hopgate", "status", "-s", "/run/hopgate/no-such.sock"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "no hopgate is running with admin socket /run/hopgate/no-such.sock" in done.stderr


def _with(lab: Lab, extra: str) -> str:
    path = lab.dir / "gw.toml"
    path.write_text(CONFIG.format(mtu="", socket=lab.dir / "admin.sock") + extra)
    return str(path)


def _wait_for_admin(lab: Lab) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        try:
            return fetch_status(str(lab.dir / "admin.sock"))
        except AdminError:  # not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def jumbo() -> Iterator[tuple[Lab, Namespace]]:
    """As ``pair``, with an MTU of 9000: native XDP on a veth takes frames of a
    page at most, so hopgate's fast path cannot attach there."""
    with Lab() as lab:
        gw = lab.namespace("gw")
        peer = lab.namespace("peer")
        lab.link(gw, "gw-c", peer, "eth0", mtu=9000)
        yield lab, gw


def test_xdp_mode_refuses_to_start_without_its_fast_path(jumbo: tuple[Lab, Namespace]) -> None:
    lab, gw = jumbo
    done = run_hopgate(gw, _with(lab, '[dataplane]\nmode = "xdp"\n'))
    assert done.returncode == 1, done.stderr
    assert "the XDP fast path cannot start: gw-c: " in done.stderr, done.stderr
    assert "its MTU is too large for native XDP" in done.stderr, done.stderr
    assert sysctl(gw, "net.ipv6.conf.gw-c.disable_ipv6") == "0"  # given back
    assert "prog/xdp" not in gw.run("ip", "-d", "link", "show", "gw-c").stdout


def test_auto_mode_runs_on_af_packet_and_says_why(jumbo: tuple[Lab, Namespace]) -> None:
    lab, gw = jumbo
    proc = gw.spawn(
        "hopgate", sys.executable, "-m", "hopgate", "run", "-c",
        _with(lab, '[dataplane]\nmode = "auto"\n'),
    )  # fmt: skip
    try:
        status = _wait_for_admin(lab)
        assert status["dataplane"] == {"mode": "afpacket"}, status["dataplane"]
        out = proc.output()
        assert "data plane: AF_PACKET, the XDP fast path cannot start: gw-c: " in out, out
    finally:
        proc.stop()


def test_without_a_handover_the_fast_path_goes_with_the_daemon_however_it_ends(
    pair: tuple[Lab, Namespace],
) -> None:
    """``handover = 0``: attached through BPF links, a stop detaches the
    program, and so does a kill (nothing is left redirecting frames with tables
    nobody keeps)."""
    lab, gw = pair
    config = _with(lab, '[dataplane]\nmode = "xdp"\nhandover = 0\n')
    for how in (signal.SIGTERM, signal.SIGKILL):
        proc = gw.spawn("hopgate", sys.executable, "-m", "hopgate", "run", "-c", config)
        status = _wait_for_admin(lab)
        assert status["dataplane"]["mode"] == "xdp", status["dataplane"]
        assert "prog/xdp" in gw.run("ip", "-d", "link", "show", "gw-c").stdout
        assert proc.popen is not None
        proc.popen.send_signal(how)
        proc.popen.wait(10)
        shown = gw.run("ip", "-d", "link", "show", "gw-c").stdout
        assert "prog/xdp" not in shown, f"hopgate's program stayed after {how.name}:\n{shown}"
        (lab.dir / "admin.sock").unlink(missing_ok=True)


def test_a_fast_path_left_for_a_handover_is_detached_by_a_hopgate_without_one(
    pair: tuple[Lab, Namespace],
) -> None:
    """With a handover (the default), the program stays attached after a stop,
    for the next hopgate; one that runs without the fast path detaches it."""
    lab, gw = pair
    proc = gw.spawn(
        "hopgate", sys.executable, "-m", "hopgate", "run", "-c",
        _with(lab, '[dataplane]\nmode = "xdp"\n'),
    )  # fmt: skip
    _wait_for_admin(lab)
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(10)
    shown = gw.run("ip", "-d", "link", "show", "gw-c").stdout
    assert "prog/xdp" in shown, f"hopgate left no program for the next one:\n{shown}"
    (lab.dir / "admin.sock").unlink(missing_ok=True)
    again = gw.spawn("hopgate", sys.executable, "-m", "hopgate", "run", "-c", _with(lab, ""))
    try:
        _wait_for_admin(lab)
        shown = gw.run("ip", "-d", "link", "show", "gw-c").stdout
        assert "prog/xdp" not in shown, f"an AF_PACKET hopgate left the fast path on:\n{shown}"
        assert "detaching the fast path the hopgate before left" in again.output()
    finally:
        again.stop()
