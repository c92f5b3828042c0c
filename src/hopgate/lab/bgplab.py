"""The scale-out lab: three hopgate load balancers behind a router that learns
their VIP over BGP and spreads the flows over them (ECMP).

    client ── (r1-c) r1 (r1-e) ── (ecmp-u) ecmp (ecmp-d) ── front ── n1, n2, n3
                 MTU 1400                  BIRD, AS 65000              (back ── be1, be2)

The lab of ecmplab.py, kind "hopgate" (Maglev, each node's own local
addresses, ``[relay]`` on the front), with the static routes to the VIP
replaced by BGP: ``ecmp`` runs BIRD 2 with a session to each node (IPv4 and
IPv6), ``merge paths`` into the kernel, and Linux's L4 hash
(``fib_multipath_hash_policy`` 1), as real routers hash.  Each node runs
hopgate with ``host_addresses`` on its front interface (where its BIRD lives)
and a ``[bgp]`` section (AS 65011, BFD): it announces the VIP while a service
there has a backend up, with its own front address as the next hop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from hopgate.lab.configs import dumps
from hopgate.lab.ecmplab import ECMP_ADDR, NODES, EcmpLab, node_doc
from hopgate.lab.netns import LabError, Namespace, Process
from hopgate.lab.topologies import start_hopgate


@dataclass(frozen=True)
class BgpAddresses:
    hosts4: tuple[str, ...] = ("198.18.52.111", "198.18.52.112", "198.18.52.113")
    hosts6: tuple[str, ...] = ("2001:2:0:52::111", "2001:2:0:52::112", "2001:2:0:52::113")
    router_asn: int = 65000
    node_asn: int = 65011


BGP_ADDR = BgpAddresses()
HOLD_TIME = 9  # seconds; BFD finds a dead node sooner
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
# The nodes' health checks: a backend is found down in about a second.
LAB_HEALTH = {"interval_ms": 300, "timeout_ms": 250, "rise": 2, "fall": 3}


def router_bird_config(bfd: bool) -> str:
    """BIRD on ``ecmp``: a session with each node per family, every path the
    nodes announce merged into one multipath route in the kernel."""
    a, b = ECMP_ADDR, BGP_ADDR
    lines = [
        "log stderr all;",
        f"router id {a.ecmp_d4};",
        "protocol device { scan time 10; }",
        "protocol kernel { ipv4 { import none; export all; }; merge paths on; }",
        "protocol kernel { ipv6 { import none; export all; }; merge paths on; }",
    ]
    if bfd:
        ms = BFD_INTERVAL_MS
        lines.append(
            f'protocol bfd {{ interface "*" {{ min rx interval {ms} ms; '
            f"min tx interval {ms} ms; multiplier {BFD_MULTIPLIER}; }}; }}"
        )
    for i, node in enumerate(NODES):
        for family, local, peer in ((4, a.ecmp_d4, b.hosts4[i]), (6, a.ecmp_d6, b.hosts6[i])):
            lines += [
                f"protocol bgp {node}_v{family} {{",
                f"  local {local} as {b.router_asn};",
                f"  neighbor {peer} as {b.node_asn};",
                f"  hold time {HOLD_TIME}; keepalive time {HOLD_TIME // 3};",
                # After a session fails (a node stopped), take it up again within
                # seconds when the node is back (BIRD's default waits a minute).
                "  connect retry time 2; error wait time 1, 10;",
                *(["  bfd on;"] if bfd else []),
                f"  ipv{family} {{ import all; export none; }};",
                "}",
            ]
    return "\n".join(lines) + "\n"


def bgp_node_config(i: int, admin_socket: str, relay: bool, bfd: bool, dataplane: str) -> str:
    a, b = ECMP_ADDR, BGP_ADDR
    # The other nodes as peers: second chance for the flows ECMP moves between them.
    doc = node_doc(i, admin_socket, relay, peers=True, dataplane=dataplane)
    front = doc["interface"][0]
    front["host_addresses"] = [f"{b.hosts4[i]}/24", f"{b.hosts6[i]}/64"]
    for svc in doc["service"]:
        svc["health"] = dict(LAB_HEALTH)
    doc["bgp"] = {
        "asn": b.node_asn,
        "hold_time": HOLD_TIME,
        "bfd": bfd,
        "bfd_interval_ms": BFD_INTERVAL_MS,
        "bfd_multiplier": BFD_MULTIPLIER,
        "neighbor": [
            {"address": a.ecmp_d4, "asn": b.router_asn},
            {"address": a.ecmp_d6, "asn": b.router_asn},
        ],
    }
    return dumps(
        doc,
        f"hopgate node {i + 1} of {len(NODES)}: front gw-f toward the BGP router (its BIRD on"
        " the host port there), back gw-b.",
    )


class BgpLab(EcmpLab):
    def __init__(
        self, name: str | None = None, *, bfd: bool = True, dataplane: str = "afpacket"
    ) -> None:
        self.bfd = bfd
        self.router_bird: Process | None = None
        super().__init__("hopgate", name, dataplane=dataplane)

    def _build(self) -> None:
        super()._build()
        self.lab.note(topology="bgp")

    def _route_shared(self, ecmp: Namespace) -> None:
        """BIRD on the router, in place of static routes."""
        conf = self.lab.dir / "router-bird.conf"
        conf.write_text(router_bird_config(self.bfd))
        ctl = self.lab.dir / "router-bird.ctl"
        self.router_bird = ecmp.spawn("router-bird", "bird", "-f", "-c", str(conf), "-s", str(ctl))
        deadline = time.monotonic() + 10
        while not ctl.exists():
            if not self.router_bird.alive() or time.monotonic() > deadline:
                raise LabError(f"BIRD did not start on the router:\n{self.router_bird.output()}")
            time.sleep(0.05)

    def config_path(self, node: str) -> str:
        return str(self.lab.dir / f"{node}.toml")

    def start_hopgates(self, *, relay: bool) -> None:
        for name in list(self.hopgates):
            self.hopgates.pop(name).stop()
        for node in NODES:
            self.start_node(node, relay=relay)

    def start_node(self, node: str, *, relay: bool = True) -> Process:
        i = NODES.index(node)
        config = self.lab.dir / f"{node}.toml"
        config.write_text(bgp_node_config(i, self.socket_of(node), relay, self.bfd, self.dataplane))
        proc = start_hopgate(self.ns(node), config, self.socket_of(node), process=f"hopgate-{node}")
        self.hopgates[node] = proc
        return proc

    def stop_node(self, node: str) -> None:
        proc = self.hopgates.pop(node, None)
        if proc is not None:
            proc.stop()

    # -- what the router learned -----------------------------------------------------

    def router_birdc(self, command: str) -> str:
        ctl = self.lab.dir / "router-bird.ctl"
        return self.ns("ecmp").run("birdc", "-s", str(ctl), command).stdout

    def next_hops(self, family: int = 4) -> list[str]:
        """The next hops of the router's kernel route to the VIP (sorted)."""
        a = ECMP_ADDR
        vip = a.shared4 if family == 4 else a.shared6
        out = self.ns("ecmp").run("ip", "-j", f"-{family}", "route", "show", vip).stdout
        routes: list[dict[str, Any]] = json.loads(out or "[]")
        hops: list[str] = []
        for r in routes:
            if "nexthops" in r:
                hops += [h["gateway"] for h in r["nexthops"] if "gateway" in h]
            elif "gateway" in r:
                hops.append(r["gateway"])
        return sorted(hops)

    def wait_for_next_hops(self, want: list[str], family: int = 4, timeout: float = 30.0) -> float:
        """Wait until the router's route to the VIP has exactly ``want``; the
        seconds it took.  Raises LabError with what the router has."""
        start = time.monotonic()
        while True:
            hops = self.next_hops(family)
            if hops == sorted(want):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise LabError(
                    f"the BGP router's route to the VIP (IPv{family}) has next hops {hops},"
                    f" not {sorted(want)}, after {timeout:.0f} s:\n"
                    + self.router_birdc("show protocols")
                )
            time.sleep(0.05)


def all_nodes(family: int = 4) -> list[str]:
    a = ECMP_ADDR
    return list(a.nodes4 if family == 4 else a.nodes6)
