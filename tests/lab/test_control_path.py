"""The control path on real sockets (issue 9 item 4): the kernel runs hopgate's
classic BPF programs, and frames to hopgate's own addresses arrive on the
control socket, forwarded traffic on the data socket, none on both."""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from typing import Any

import pytest

from hopgate.lab import tools
from hopgate.lab.frames import tcp4
from hopgate.lab.lblab import LB_ADDR, LbLab
from hopgate.lab.topologies import ADDR, HTTP_PORT, RouterLab

A = ADDR
COUNT = 10


def _io(lab: RouterLab, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [i for i in lab.status()["interfaces"] if i["name"] == name]
    return dict(found[0]["io"])


def _ping(lab: RouterLab, dst: str) -> None:
    """COUNT echo requests through gw-c, answered (retried: a hop that is not
    hopgate may lose one)."""
    for _ in range(3):
        p = tools.ping(lab.client, dst, count=COUNT, interval=0.05, wait=1.0)
        if p.received == COUNT:
            return
    raise AssertionError(f"pings to {dst} through hopgate ({lab.gw.name}) lost:\n{p.run.output}")


def test_frames_to_hopgate_take_the_control_socket_the_rest_the_data_socket(
    hopgate_lab: RouterLab,
) -> None:
    lab = hopgate_lab
    _ping(lab, A.server4)  # neighbours resolved on both sides
    for dst in (A.gw_c4, A.gw_u4, A.gw_c6):
        before = _io(lab, "gw-c")
        _ping(lab, dst)
        after = _io(lab, "gw-c")
        control = after["rx_control"] - before["rx_control"]
        data = after["rx_data"] - before["rx_data"]
        # COUNT requests at least (more if one was retried), and little else
        # (an ARP/ND exchange at most) on the data socket.
        assert control >= COUNT and data <= 2, (
            f"hopgate ({lab.gw.name}), ping to {dst}: control {control}, data {data}"
        )
    before = _io(lab, "gw-c")
    fast_before = lab.status()["dataplane"].get("forwarded", 0)
    _ping(lab, A.server4)
    after = _io(lab, "gw-c")
    control = after["rx_control"] - before["rx_control"]
    data = after["rx_data"] - before["rx_data"]
    # With the XDP fast path in front, the pings through never reach a socket.
    fast = lab.status()["dataplane"].get("forwarded", 0) - fast_before
    assert data + fast >= COUNT and control <= 4, (
        f"{lab.gateway} ({lab.gw.name}), ping through it: control {control}, data {data},"
        f" fast path {fast}"
    )


# -- a SYN flood at one VIP does not starve another service's health checks ----------

SYNS = 100_000
# One-armed: the flood comes in on the backends' interface, where the answers to
# the health checks come in too.  At 8000 a second this machine's hopgate keeps
# up with the SYNs and their SYN-ACKs with or without a control path; at 30000
# it cannot, and without the control path the unflooded service's backends go
# down (measured), with it they stay up.
SYN_RATE = 30_000
SPOOFED = "198.18.64.0/20"
FLOOD_MAC = bytes.fromhex("02005eaa0001")  # no host has it: the SYN-ACKs go nowhere


def _syn_frames(dst_mac: bytes, vip: str, port: int) -> list[bytes]:
    rng = random.Random(9)
    net = ipaddress.IPv4Network(SPOOFED)
    base, size = int(net.network_address), net.num_addresses
    d = int(ipaddress.IPv4Address(vip))
    frames = []
    for _ in range(SYNS):
        s = base + 1 + rng.randrange(size - 2)
        sport, seq = rng.randrange(1024, 65536), rng.getrandbits(32)
        frames.append(tcp4(dst_mac, FLOOD_MAC, s, d, sport, port, 0x02, seq))
    return frames


@pytest.mark.parametrize("dataplane", ["afpacket", "xdp"])
def test_a_syn_flood_at_one_vip_leaves_the_other_services_backends_up(dataplane: str) -> None:
    with LbLab(dataplane=dataplane) as lab:
        gw = f"{lab.gateway} in {lab.ns('gw').name}"
        others = ("maglev", "echo")  # tcp and icmp checks, of backends the flood reaches
        deadline = time.monotonic() + 20
        while not all(b["up"] for s in others for b in lab.backends(s).values()):
            assert time.monotonic() < deadline, f"{gw}: backends not up at start"
            time.sleep(0.2)
        frames = _syn_frames(
            bytes.fromhex(lab.ns("gw").mac("gw-s").replace(":", "")), LB_ADDR.vip4, HTTP_PORT
        )
        before = {s: lab.backends(s) for s in others}
        result: dict[str, tuple[int, float]] = {}
        # From the backends' LAN, by its bridge's port toward hopgate.
        flood = threading.Thread(
            target=lambda: result.update(
                sent=tools.inject(lab.ns("lan"), "p0", frames, rate=SYN_RATE, timeout=120)
            )
        )
        flood.start()
        seen_down: list[str] = []
        while flood.is_alive():
            for s in others:
                seen_down += [f"{s}/{n}" for n, b in lab.backends(s).items() if not b["up"]]
            time.sleep(0.25)
        flood.join()
        time.sleep(1.0)  # the checks in flight when it ended
        for s in others:
            seen_down += [f"{s}/{n}" for n, b in lab.backends(s).items() if not b["up"]]
        sent, seconds = result["sent"]
        assert sent > 0.95 * SYNS, result
        io = next(i for i in lab.status()["interfaces"] if i["name"] == "gw-s")["io"]
        # The flood did overwhelm hopgate: the kernel dropped frames at its socket.
        assert io["rx_socket_drops"] > 0.05 * SYNS, f"{gw}: not flooded: {io}"
        failed = {
            f"{s}/{n}": b["checks_failed"] - before[s][n]["checks_failed"]
            for s in others
            for n, b in lab.backends(s).items()
        }
        assert not seen_down, (
            f"{gw}: backends of unflooded services went down during {sent} SYNs in "
            f"{seconds:.1f}s: {sorted(set(seen_down))}; failed checks {failed}; io {io}"
        )
        assert io["rx_control"] > 0 and io["rx_control_socket_drops"] == 0, f"{gw}: {io}"
