"""100,000 random and malformed frames at each of hopgate's interfaces: it keeps
running and forwarding, and counts what it dropped by reason."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from hopgate.lab import tools
from hopgate.lab.topologies import ADDR, HTTP_PORT, RouterLab

A = ADDR
FRAMES = 100_000


def _flood(
    lab: RouterLab, role: str, iface: str, peer_mac: str, seed: int, src: list[str], dst: list[str]
) -> dict[str, int]:
    args = [sys.executable, "-m", "hopgate.lab.flood", "--iface", iface, "--dst-mac", peer_mac]
    args += ["--count", str(FRAMES), "--seed", str(seed), "--rate", "20000"]
    for a in src:
        args += ["--src6" if ":" in a else "--src4", a]
    for a in dst:
        args += ["--dst6" if ":" in a else "--dst4", a]
    done = lab.ns(role).run(*args, timeout=120)
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("dataplane", ["afpacket", "xdp"])
def test_flood_of_malformed_frames_at_both_interfaces(dataplane: str) -> None:
    """On each data plane: behind the XDP fast path the frames meet the
    program first, which forwards what routes plainly and passes the rest up."""
    with RouterLab("hopgate", dataplane=dataplane) as lab:
        gw = lab.gateway
        before = lab.status()
        gw_c_mac = lab.gw.mac("gw-c")
        gw_u_mac = lab.gw.mac("gw-u")
        pinger = lab.client.spawn(
            "ping-during-flood", "ping", "-n", "-c", "40", "-i", "0.25", A.server4
        )

        client_side = _flood(
            lab, "client", "eth0", gw_c_mac, seed=11,
            src=["198.18.1.200", "198.18.1.201", "198.18.77.1",
                 "2001:2:0:1::200", "2001:2:0:77::1"],
            dst=[A.gw_c4, A.gw_u4, A.server4, A.unrouted4, A.absent4, "198.18.1.255",
                 A.gw_c6, A.server6, A.unrouted6, "ff02::1"],
        )  # fmt: skip
        upstream_side = _flood(
            lab, "r1", "r1-d", gw_u_mac, seed=22,
            src=["198.18.2.200", "198.18.3.200", "2001:2:0:2::200", "2001:2:0:3::200"],
            dst=[A.gw_u4, A.gw_c4, A.client4, A.unrouted4, A.gw_u6, A.client6, A.unrouted6],
        )  # fmt: skip
        assert client_side["sent"] > 0.95 * FRAMES and upstream_side["sent"] > 0.95 * FRAMES, gw

        deadline = time.monotonic() + 30
        while pinger.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", pinger.output())
        assert m, (gw, pinger.output())
        # Forwarding went on during the flood.
        assert int(m.group(2)) >= 36, (gw, pinger.output())

        assert lab.hopgate is not None and lab.hopgate.alive(), (
            gw,
            lab.hopgate.output() if lab.hopgate else "",
        )
        after = lab.status()
        assert after["internal_errors"] == 0, (gw, lab.hopgate.output())
        ports_before = {p["name"]: p for p in before["interfaces"]}
        for name, flood in (("gw-c", client_side), ("gw-u", upstream_side)):
            p = next(i for i in after["interfaces"] if i["name"] == name)
            was = ports_before[name]
            seen = p["rx_packets"] - was["rx_packets"] + p["io"]["rx_socket_drops"]
            if "fastpath" in p:  # what the program forwarded never reached the pipeline
                seen += p["fastpath"]["forwarded"] - was["fastpath"]["forwarded"]
            # Every frame sent was seen by hopgate or counted as dropped at its socket,
            # but those the receiving kernel itself discards (a VLAN tag cut short).
            assert seen >= flood["sent"] - flood["vlan_truncated"], (gw, name, flood, p)
            assert sum(p["drops"].values()) > 0.5 * flood["sent"], (gw, p["drops"])
        reasons = after["drops"]
        for expected in (
            "frame-malformed", "unknown-ethertype", "ipv4-bad-checksum", "ipv4-bad-version",
            "ipv4-bad-total-length", "ipv6-bad-payload-length", "martian-source", "l2-not-for-us",
        ):  # fmt: skip
            assert reasons.get(expected, 0) > 0, (gw, expected, reasons)

        # and the router still routes
        assert tools.ping(lab.client, A.server6, count=3).received == 3
        assert tools.traceroute(lab.client, A.server4, "udp").path == [A.gw_c4, A.r1_d4, A.server4]
        assert tools.curl(lab.client, f"http://{A.server4}:{HTTP_PORT}/10M.bin").ok
