"""A hopgate killed with SIGKILL cannot give its interfaces back; the next one
does (issue 12): it takes what the first recorded under /run/hopgate before
changing anything as the originals, not the settings the first left, and a
clean stop puts those back: every sysctl of its interfaces, their offloads and
their links as they were before hopgate first ran."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopgate.io import netprep
from hopgate.lab.netns import Lab, Namespace, Process
from hopgate.lab.topologies import hopgate_config, start_hopgate

GATEWAY = "hopgate (afpacket)"
INTERFACES = ("gw-c", "gw-u")
_OWN_SYSCTL = re.compile(r"^net\.ipv[46]\.(conf|neigh)\.(gw-c|gw-u)\.")


@pytest.fixture
def gw() -> Iterator[tuple[Lab, Namespace]]:
    """gw with hopgate's two interfaces as in the RouterLab, each set apart from
    the kernel's defaults where hopgate changes it, so that giving back the
    defaults instead would show."""
    with Lab() as lab:
        gw = lab.namespace("gw")
        client = lab.namespace("client")
        r1 = lab.namespace("r1")
        lab.link(client, "eth0", gw, "gw-c", offloads_off=False)
        lab.link(gw, "gw-u", r1, "r1-d", offloads_off=False)
        gw.set_sysctls(
            {
                "net.ipv4.conf.gw-c.rp_filter": 2,
                "net.ipv4.conf.gw-c.forwarding": 1,
                "net.ipv4.conf.gw-u.arp_ignore": 1,
            }
        )
        gw.run("ethtool", "-K", "gw-c", "gro", "on")
        gw.run("ethtool", "-K", "gw-u", "gro", "on", "rx-gro-list", "on")
        gw.run("ip", "link", "set", "gw-u", "down")
        inode = gw.run("stat", "-L", "-c", "%i", "/proc/self/ns/net").stdout.strip()
        try:
            yield lab, gw
        finally:
            # What a failed run may have left of this namespace's records.
            for name in INTERFACES:
                (netprep.RECORD_DIR / f"{inode}-{name}.json").unlink(missing_ok=True)


def settings(gw: Namespace) -> dict[str, str]:
    """Every sysctl of gw's interfaces, their offloads (ethtool -k) and link flags."""
    found: dict[str, str] = {}
    for line in gw.run("sysctl", "-a", check=False).stdout.splitlines():
        key, _, value = line.partition(" = ")
        if _OWN_SYSCTL.match(key):
            found[key] = value
    for name in INTERFACES:
        for line in gw.run("ethtool", "-k", name).stdout.splitlines()[1:]:
            feature, _, value = line.strip().partition(": ")
            found[f"ethtool {name} {feature}"] = value
        link = gw.run("ip", "-o", "link", "show", name).stdout
        found[f"link {name}"] = "up" if re.search(r"[<,]UP[,>]", link) else "down"
    return found


def records(gw: Namespace) -> list[Path]:
    inode = gw.run("stat", "-L", "-c", "%i", "/proc/self/ns/net").stdout.strip()
    return sorted(netprep.RECORD_DIR.glob(f"{inode}-*.json"))


def start(lab: Lab, gw: Namespace) -> Process:
    config = lab.dir / "gateway.toml"
    socket = str(lab.dir / "hopgate.sock")
    config.write_text(hopgate_config(socket))
    return start_hopgate(gw, config, socket)


def test_a_killed_hopgate_leaves_the_originals_to_the_next(gw: tuple[Lab, Namespace]) -> None:
    lab, ns = gw
    before = settings(ns)
    assert before["net.ipv4.conf.gw-c.rp_filter"] == "2"
    assert before["ethtool gw-c generic-receive-offload"] == "on"
    assert before["link gw-u"] == "down"
    assert records(ns) == []

    first = start(lab, ns)
    taken = settings(ns)
    for name in INTERFACES:
        for key, value in (
            (f"net.ipv6.conf.{name}.disable_ipv6", "1"),
            (f"net.ipv4.conf.{name}.arp_ignore", "8"),
            (f"net.ipv4.conf.{name}.forwarding", "0"),
            (f"net.ipv4.conf.{name}.rp_filter", "1"),
            (f"ethtool {name} generic-receive-offload", "off"),
            (f"link {name}", "up"),
        ):
            assert taken[key] == value, f"{GATEWAY} running: {key} is {taken[key]}, not {value}"
    recorded = records(ns)
    assert [p.name.split("-", 1)[1] for p in recorded] == ["gw-c.json", "gw-u.json"], (
        f"{GATEWAY} running: its records are {recorded}"
    )

    assert first.popen is not None
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    (lab.dir / "hopgate.sock").unlink(missing_ok=True)
    killed = settings(ns)
    assert killed == taken, f"{GATEWAY} killed: its interfaces changed without it"
    assert records(ns) == recorded, f"{GATEWAY} killed: its records went"

    second = start(lab, ns)
    out = second.output()
    for name in INTERFACES:
        assert f"{name}: hopgate (pid {first.pid}) did not give it back" in out, (
            f"{GATEWAY} restarted: nothing said of {name}'s record:\n{out}"
        )
    assert second.popen is not None
    second.popen.send_signal(signal.SIGTERM)
    assert second.popen.wait(10) == 0, second.output()

    after = settings(ns)
    keys = sorted(before.keys() | after.keys())
    changed = {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}
    assert not changed, (
        f"{GATEWAY} killed, started again and stopped cleanly did not give back"
        f" (before it first ran, after): {changed}\n{second.output()}"
    )
    assert records(ns) == [], f"{GATEWAY} stopped cleanly: its records stayed"


def test_a_closed_lab_leaves_no_record_of_a_killed_hopgate() -> None:
    """A lab whose hopgate was killed removes the records it left, with its
    namespaces (their inodes are another namespace's next)."""
    with Lab() as lab:
        gw = lab.namespace("gw")
        lab.link(lab.namespace("client"), "eth0", gw, "gw-c")
        lab.link(gw, "gw-u", lab.namespace("r1"), "r1-d")
        proc = start(lab, gw)
        left = records(gw)
        os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left and records(gw) == left, f"{GATEWAY} killed: no records to leave"
    assert all(not p.exists() for p in left), f"{GATEWAY}'s lab closed: records stayed {left}"
