"""The newcomer's commands: hopgate demo, and hopgate lab up / list / down."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

from pyroute2 import netns

from hopgate.lab.netns import destroy

HOPGATE = [sys.executable, "-m", "hopgate"]


def test_demo_runs_every_check_and_cleans_up() -> None:
    done = subprocess.run(
        [*HOPGATE, "demo"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "19 of 19 checks passed." in done.stdout
    assert "Frag needed and DF set (mtu = 1400)" in done.stdout
    assert "Tearing the lab down" in done.stdout
    # Other tests may run labs at the same time: look for this demo's own.
    m = re.search(r"lab (hg[0-9a-f]{6}): namespaces", done.stdout)
    assert m, done.stdout[:2000]
    assert not [n for n in netns.listnetns() if n.startswith(m.group(1))]


def test_lab_up_list_down() -> None:
    name = f"hgt{secrets.token_hex(3)}"
    try:
        up = subprocess.run(
            [*HOPGATE, "lab", "up", "--name", name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert up.returncode == 0, up.stderr
        assert f"hopgate lab down {name}" in up.stdout
        listed = subprocess.run(
            [*HOPGATE, "lab", "list"], capture_output=True, text=True, check=True
        ).stdout
        assert (
            f"{name}: router (hopgate), 4/4 namespaces, processes: hopgate, http, iperf3" in listed
        )
        ping = subprocess.run(
            ["ip", "netns", "exec", f"{name}-client", "ping", "-c", "1", "-W", "2", "198.18.3.10"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout
        down = subprocess.run(
            [*HOPGATE, "lab", "down", name], capture_output=True, text=True, check=False
        )
        assert down.returncode == 0 and f"lab {name} removed" in down.stdout
        assert not [n for n in netns.listnetns() if n.startswith(name)]
        again = subprocess.run(
            [*HOPGATE, "lab", "down", name], capture_output=True, text=True, check=False
        )
        assert again.returncode == 1 and "no lab named" in again.stderr
    finally:
        destroy(name)  # whatever happened above


def test_lab_up_lb_topology() -> None:
    """The load-balancer lab, on the XDP data plane (``--dataplane``)."""
    name = f"hgt{secrets.token_hex(3)}"
    try:
        up = subprocess.run(
            [*HOPGATE, "lab", "up", "--topology", "lb", "--name", name, "--dataplane", "xdp"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "hopgate (xdp) as gw" in up.stdout, up.stdout
        assert f"{name}-client curl http://198.18.100.1/" in up.stdout
        got = subprocess.run(
            ["ip", "netns", "exec", f"{name}-client", "curl", "-s", "http://198.18.100.1/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert got.stdout.startswith("hello from be"), got
        kernel = subprocess.run(
            [*HOPGATE, "lab", "up", "--topology", "lb", "--kernel"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert kernel.returncode == 1 and "no kernel version" in kernel.stderr
        both = subprocess.run(
            [*HOPGATE, "lab", "up", "--topology", "nat", "--kernel", "--dataplane", "xdp"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert both.returncode == 1 and "--dataplane is hopgate's" in both.stderr, both.stderr
    finally:
        destroy(name)
