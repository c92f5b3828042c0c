"""The lab of the ECMP path MTU problem: nodes sharing an address behind a Linux
router that spreads flows over them, and a smaller MTU on the clients' path.

    client ── (r1-c) r1 (r1-e) ── (ecmp-u) ecmp (ecmp-d) ── front ── n1, n2, n3
                 MTU 1400                                            (back ── be1, be2)

r1's link toward the client has an MTU of 1400 (a tunnel on the client's path):
it sends fragmentation needed / Packet Too Big for the nodes' full-size
segments.  ``ecmp`` routes the shared address over the three nodes with
``fib_multipath_hash_policy`` 1 (source and destination addresses and ports):
TCP flows spread, but an ICMP error, whose only ports are none, is hashed on its
outer addresses (r1 and the shared address), so every error lands on one node.

``kind="servers"``: the nodes are Linux servers with the shared (anycast)
address on their loopback, each serving HTTP, each able to run ``hopgate relay``.
``kind="hopgate"``: the nodes are hopgate load balancers sharing a VIP (Maglev),
with their own local addresses on a back LAN of two HTTP backends, and a
``[relay]`` on their front interface; ``dataplane`` is theirs: ``"afpacket"``
(the Python pipeline alone) or ``"xdp"`` (behind the XDP fast path, with a
pass-through program on the bridges' ends of their veths, ``pass_node_peers``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from hopgate.control.admin import fetch_status
from hopgate.lab.configs import Table, dumps
from hopgate.lab.netns import Namespace, Process, Topology
from hopgate.lab.topologies import (
    HTTP_PORT,
    KERNEL_ROUTER,
    LAB_ICMP_SETTINGS,
    admin,
    dataplane_section,
    interface,
    route,
    start_hopgate,
    wait_for_listen,
)

NODES = ("n1", "n2", "n3")
BACKENDS = ("be1", "be2")
PATH_MTU = 1400
FILE = "2M.bin"
FILE_SIZE = 2 * 1024 * 1024


@dataclass(frozen=True)
class EcmpAddresses:
    client4: str = "198.18.50.10"
    client6: str = "2001:2:0:50::10"
    r1_c4: str = "198.18.50.1"
    r1_c6: str = "2001:2:0:50::1"
    r1_e4: str = "198.18.51.1"
    r1_e6: str = "2001:2:0:51::1"
    ecmp_u4: str = "198.18.51.2"
    ecmp_u6: str = "2001:2:0:51::2"
    ecmp_d4: str = "198.18.52.1"
    ecmp_d6: str = "2001:2:0:52::1"
    nodes4: tuple[str, ...] = ("198.18.52.11", "198.18.52.12", "198.18.52.13")
    nodes6: tuple[str, ...] = ("2001:2:0:52::11", "2001:2:0:52::12", "2001:2:0:52::13")
    shared4: str = "198.18.60.1"  # the anycast address, or the VIP
    shared6: str = "2001:2:0:60::1"
    # kind="hopgate": the back LAN
    back_nodes4: tuple[str, ...] = ("198.18.53.1", "198.18.53.2", "198.18.53.3")
    back_nodes6: tuple[str, ...] = ("2001:2:0:53::1", "2001:2:0:53::2", "2001:2:0:53::3")
    lips4: tuple[str, ...] = ("198.18.53.101", "198.18.53.102", "198.18.53.103")
    lips6: tuple[str, ...] = ("2001:2:0:53::101", "2001:2:0:53::102", "2001:2:0:53::103")
    backends4: tuple[str, ...] = ("198.18.53.21", "198.18.53.22")
    backends6: tuple[str, ...] = ("2001:2:0:53::21", "2001:2:0:53::22")


ECMP_ADDR = EcmpAddresses()
ECMP_ROUTER = {
    **KERNEL_ROUTER,
    # Hash on addresses and ports: what spreads TCP over the nodes, and what
    # sends every ICMP error about them to one node.
    "net.ipv4.fib_multipath_hash_policy": 1,
    "net.ipv6.fib_multipath_hash_policy": 1,
}


def node_config(
    i: int,
    admin_socket: str,
    relay: bool,
    *,
    peers: bool = False,
    second_chance: bool | None = None,
    dataplane: str = "afpacket",
) -> str:
    """hopgate on ECMP node ``i`` (from 0), with or without its ``[relay]``;
    ``peers``: the other nodes named as its peers (unicast, and second chance
    unless ``second_chance`` says otherwise); ``dataplane``: its ``[dataplane]``
    mode (none written for ``"afpacket"``, the default)."""
    return dumps(
        node_doc(
            i, admin_socket, relay, peers=peers, second_chance=second_chance, dataplane=dataplane
        ),
        f"hopgate node {i + 1} of {len(NODES)}: front gw-f toward the ECMP router, back gw-b.",
    )


def node_doc(
    i: int,
    admin_socket: str,
    relay: bool,
    *,
    peers: bool = False,
    second_chance: bool | None = None,
    dataplane: str = "afpacket",
) -> Table:
    """node_config's tables."""
    a = ECMP_ADDR

    def web(name: str, vip: str, lip: str, backends: tuple[str, ...]) -> Table:
        return {
            "name": name,
            "vip": vip,
            "port": HTTP_PORT,
            "protocol": "tcp",
            "scheduler": "maglev",
            "local_addresses": [lip],
            "backend": [{"address": b} for b in backends],
        }

    doc: Table = {
        "interface": [
            interface("gw-f", f"{a.nodes4[i]}/24", f"{a.nodes6[i]}/64"),
            interface("gw-b", f"{a.back_nodes4[i]}/24", f"{a.back_nodes6[i]}/64"),
        ],
        "route": [route("0.0.0.0/0", a.ecmp_d4), route("::/0", a.ecmp_d6)],
        "service": [
            web("web", a.shared4, a.lips4[i], a.backends4),
            web("web6", a.shared6, a.lips6[i], a.backends6),
        ],
        "admin": admin(admin_socket),
        **LAB_ICMP_SETTINGS,
        **dataplane_section(dataplane),
    }
    if relay:
        doc["relay"] = {"interfaces": ["gw-f"]}
        if peers:
            doc["relay"]["peers"] = [p for j, p in enumerate(a.nodes4) if j != i]
        if second_chance is not None:
            doc["relay"]["second_chance"] = second_chance
    return doc


class EcmpLab(Topology):
    def __init__(
        self, kind: str = "servers", name: str | None = None, *, dataplane: str = "afpacket"
    ) -> None:
        if kind not in ("servers", "hopgate"):
            raise ValueError(f"kind is servers or hopgate, not {kind!r}")
        if dataplane not in ("afpacket", "xdp"):
            raise ValueError(f"dataplane is afpacket or xdp, not {dataplane!r}")
        if kind == "servers" and dataplane != "afpacket":
            raise ValueError("the servers run no hopgate data plane: dataplane is for kind=hopgate")
        self.kind = kind
        # The hopgate nodes' data plane (kind="hopgate").
        self.dataplane = dataplane
        # The nodes' [relay] as start_hopgates writes it (kind="hopgate"): the
        # other nodes as peers (second chance with them), second_chance as given.
        self.peers = False
        self.second_chance: bool | None = None
        self.relays: dict[str, Process] = {}
        self.hopgates: dict[str, Process] = {}
        self._create(name, self._build)

    def socket_of(self, node: str) -> str:
        return str(self.lab.dir / f"{node}.sock")

    def status(self, node: str) -> dict[str, Any]:
        return fetch_status(self.socket_of(node))

    def _build(self) -> None:
        a = ECMP_ADDR
        lab = self.lab
        client, r1, ecmp, front = (lab.namespace(r) for r in ("client", "r1", "ecmp", "front"))
        nodes = [lab.namespace(n) for n in NODES]
        lab.link(client, "eth0", r1, "r1-c", mtu=1500, b_mtu=PATH_MTU)
        lab.link(r1, "r1-e", ecmp, "ecmp-u")
        lab.link(ecmp, "ecmp-d", front, "p0")
        front_if = "gw-f" if self.kind == "hopgate" else "eth0"
        for i, node in enumerate(nodes, 1):
            lab.link(node, front_if, front, f"p{i}")
        lab.bridge(front, "br0", [f"p{i}" for i in range(len(nodes) + 1)])

        client.address("eth0", f"{a.client4}/24", f"{a.client6}/64")
        client.route("default", a.r1_c4)
        client.route("default", a.r1_c6)
        r1.set_sysctls(KERNEL_ROUTER)
        r1.address("r1-c", f"{a.r1_c4}/24", f"{a.r1_c6}/64")
        r1.address("r1-e", f"{a.r1_e4}/24", f"{a.r1_e6}/64")
        r1.route("default", a.ecmp_u4)
        r1.route("default", a.ecmp_u6)
        ecmp.set_sysctls(ECMP_ROUTER)
        ecmp.address("ecmp-u", f"{a.ecmp_u4}/24", f"{a.ecmp_u6}/64")
        ecmp.address("ecmp-d", f"{a.ecmp_d4}/24", f"{a.ecmp_d6}/64")
        ecmp.route("198.18.50.0/24", a.r1_e4)
        ecmp.route("2001:2:0:50::/64", a.r1_e6)
        self._route_shared(ecmp)

        if self.kind == "servers":
            self._servers(nodes)
        else:
            self._hopgates(nodes)
        lab.note(topology="ecmp", mode=self.mode)

    @property
    def mode(self) -> str:
        """What the nodes are, for the lab's record: ``servers``, or
        ``hopgate (afpacket)`` / ``hopgate (xdp)``."""
        return self.kind if self.kind == "servers" else f"{self.kind} ({self.dataplane})"

    def gateway(self, node: str | None = None) -> str:
        """The node under test (all of them: None), as failure messages name
        it, with its data plane: ``hopgate on n2 (xdp)``."""
        where = f"on {node}" if node is not None else f"on {', '.join(NODES)}"
        if self.kind == "servers":
            return f"the server{'s' if node is None else ''} {where.removeprefix('on ')}"
        return f"hopgate {where} ({self.dataplane})"

    def _route_shared(self, ecmp: Namespace) -> None:
        """The shared address routed over the three nodes: static routes here."""
        a = ECMP_ADDR
        for family, shared, hops in ((4, a.shared4, a.nodes4), (6, a.shared6, a.nodes6)):
            argv = ["ip", f"-{family}", "route", "add", shared]
            for hop in hops:
                argv += ["nexthop", "via", hop, "dev", "ecmp-d"]
            ecmp.run(*argv)

    def route_shared_via(self, *nodes: str) -> None:
        """Route the shared address over ``nodes`` only (the ECMP router's next
        hops changed: a node drained, stopped or added), in place of the route
        there is; the router rehashes every flow over what is left."""
        a = ECMP_ADDR
        ecmp = self.ns("ecmp")
        for family, shared, hops in ((4, a.shared4, a.nodes4), (6, a.shared6, a.nodes6)):
            ecmp.run("ip", f"-{family}", "route", "del", shared, check=False)
            argv = ["ip", f"-{family}", "route", "add", shared]
            for node in nodes:
                argv += ["nexthop", "via", hops[NODES.index(node)], "dev", "ecmp-d"]
            ecmp.run(*argv)

    def _servers(self, nodes: list[Namespace]) -> None:
        a = ECMP_ADDR
        for node, v4, v6 in zip(nodes, a.nodes4, a.nodes6, strict=True):
            node.address("eth0", f"{v4}/24", f"{v6}/64")
            node.address("lo", f"{a.shared4}/32", f"{a.shared6}/128")
            node.route("default", a.ecmp_d4)
            node.route("default", a.ecmp_d6)
            # Linux's default: no probing; a flow whose errors go elsewhere stalls.
            node.set_sysctls({"net.ipv4.tcp_mtu_probing": 0})
            self._serve(node)

    def _hopgates(self, nodes: list[Namespace]) -> None:
        a = ECMP_ADDR
        lab = self.lab
        back = lab.namespace("back")
        backends = [lab.namespace(b) for b in BACKENDS]
        for i, node in enumerate(nodes, 1):
            lab.link(node, "gw-b", back, f"n{i}")
        for i, be in enumerate(backends, 1):
            lab.link(be, "eth0", back, f"b{i}")
        ports = [f"n{i}" for i in range(1, len(nodes) + 1)]
        ports += [f"b{i}" for i in range(1, len(backends) + 1)]
        lab.bridge(back, "br0", ports)
        for be, v4, v6 in zip(backends, a.backends4, a.backends6, strict=True):
            be.address("eth0", f"{v4}/24", f"{v6}/64")
            be.set_sysctls({"net.ipv4.tcp_mtu_probing": 0})
            self._serve(be)
        self.pass_node_peers()
        self.start_hopgates(relay=True)

    def pass_node_peers(self) -> None:
        """With the XDP data plane, a pass-through XDP program on the bridges'
        ends of the nodes' veths (front ``p1``..``p3``, back ``n1``..``n3``): a
        veth takes what the nodes' programs redirect to it only if its peer has
        one (``Lab.pass_xdp``); without, the redirected frames are dropped and
        downloads stall.  Nothing for AF_PACKET."""
        if self.dataplane != "xdp":
            return
        ports = range(1, len(NODES) + 1)
        self.lab.pass_xdp(self.ns("front"), *(f"p{i}" for i in ports))
        self.lab.pass_xdp(self.ns("back"), *(f"n{i}" for i in ports))

    def start_hopgates(self, *, relay: bool) -> None:
        """(Re)start hopgate on every node, with or without its ``[relay]``
        (with ``peers`` and ``second_chance`` as the lab's: ``node_config``)."""
        for name in list(self.hopgates):
            self.hopgates.pop(name).stop()
        for i, node in enumerate(NODES):
            config = self.lab.dir / f"{node}.toml"
            text = node_config(
                i,
                self.socket_of(node),
                relay,
                peers=self.peers,
                second_chance=self.second_chance,
                dataplane=self.dataplane,
            )
            config.write_text(text)
            self.hopgates[node] = start_hopgate(self.ns(node), config, self.socket_of(node))

    def _serve(self, ns: Namespace) -> None:
        www = self.lab.dir / f"www-{ns.role}"
        www.mkdir()
        with open(www / FILE, "wb") as f:
            f.write(bytes(range(256)) * (FILE_SIZE // 256))
        ns.spawn(
            f"http-{ns.role}", sys.executable, "-m", "http.server", str(HTTP_PORT),
            "--bind", "::", "--directory", str(www),
        )  # fmt: skip
        wait_for_listen(ns, HTTP_PORT)

    def start_relay(self, node: str, *extra: str) -> Process:
        """``hopgate relay --iface eth0`` (and ``extra``) on a server (kind="servers"),
        in place of the one running there."""
        self.stop_relay(node)
        argv = [sys.executable, "-m", "hopgate", "relay", "--iface", "eth0"]
        argv += ["--socket", self.socket_of(node), *extra]
        proc = self.ns(node).spawn(f"relay-{node}", *argv)
        self.relays[node] = proc
        _wait_for_socket(self, node, proc)
        return proc

    def start_relays(self, *extra: str) -> None:
        for node in NODES:
            self.start_relay(node, *extra)

    def stop_relay(self, node: str) -> None:
        proc = self.relays.pop(node, None)
        if proc is not None:
            proc.stop()

    def stop_relays(self) -> None:
        for node in NODES:
            self.stop_relay(node)

    def flush_path_mtus(self) -> None:
        """Forget what every node's kernel learned of path MTUs."""
        roles = BACKENDS if self.kind == "hopgate" else NODES
        for role in roles:
            for family in (4, 6):
                self.ns(role).run("ip", f"-{family}", "route", "flush", "cache")


def _wait_for_socket(lab: EcmpLab, node: str, proc: Process, timeout: float = 10.0) -> None:
    import time

    from hopgate.control.admin import AdminError
    from hopgate.lab.netns import LabError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LabError(f"relay on {node} exited at start:\n{proc.output()}")
        try:
            lab.status(node)
            return
        except AdminError:
            time.sleep(0.05)
    raise LabError(f"relay on {node} did not answer within {timeout}s:\n{proc.output()}")
