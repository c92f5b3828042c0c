"""The lab shapes hopgate is judged in.

``RouterLab``: client — gw — r1 — server, dual stack.  ``gw`` is hopgate, or,
as the reference, a Linux kernel router configured the same way.  The link
between gw and r1 has an MTU of 1400 (in hopgate's config; on the link itself
for the kernel), so path MTU discovery has something to discover.

    client (eth0) ── (gw-c) gw (gw-u) ── (r1-d) r1 (r1-s) ── (eth0) server
    198.18.1.0/24            198.18.2.0/24            198.18.3.0/24
    2001:2:0:1::/64          2001:2:0:2::/64          2001:2:0:3::/64
"""

from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopgate.control.admin import AdminError, fetch_status
from hopgate.lab.configs import Table, dumps, merge
from hopgate.lab.netns import Lab, LabError, Namespace, Process, Topology

# Linux's ICMP rate limits, turned off in reference routers so that what the
# tools see is not thinned by the kernel's buckets.
KERNEL_ICMP_UNLIMITED = {
    "net.ipv4.icmp_ratelimit": 0,
    "net.ipv4.icmp_msgs_per_sec": 1000000,
    "net.ipv4.icmp_msgs_burst": 1000000,
    "net.ipv6.icmp.ratelimit": 0,
}
KERNEL_ROUTER = {
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
    **KERNEL_ICMP_UNLIMITED,
}

UPLINK_MTU = 1400
HTTP_PORT = 80
BIG_FILE = "10M.bin"


@dataclass(frozen=True)
class Addresses:
    client4: str = "198.18.1.10"
    client6: str = "2001:2:0:1::10"
    gw_c4: str = "198.18.1.1"
    gw_c6: str = "2001:2:0:1::1"
    gw_u4: str = "198.18.2.1"
    gw_u6: str = "2001:2:0:2::1"
    r1_d4: str = "198.18.2.2"
    r1_d6: str = "2001:2:0:2::2"
    r1_s4: str = "198.18.3.1"
    r1_s6: str = "2001:2:0:3::1"
    server4: str = "198.18.3.10"
    server6: str = "2001:2:0:3::10"
    # On gw's connected upstream subnet (not the client's), where no host answers.
    absent4: str = "198.18.2.99"
    absent6: str = "2001:2:0:2::99"
    # Outside every route of gw: gw has no default route in this lab.
    unrouted4: str = "198.18.200.1"
    unrouted6: str = "2001:2:0:200::1"


ADDR = Addresses()


# As the kernel routers of the lab: no per-destination ICMP limit.  Linux's
# default (a burst of 6, then 1 a second per destination) would blank out a hop
# when traceroutes run back to back, for hopgate and a kernel router alike.
LAB_ICMP_SETTINGS: Table = {"icmp": {"ratelimit_interval_ms": 0}}
LAB_ICMP = dumps(LAB_ICMP_SETTINGS)


def interface(name: str, *addresses: str, mtu: int | None = None) -> Table:
    """An ``[[interface]]``."""
    table: Table = {"name": name, "addresses": list(addresses)}
    if mtu is not None:
        table["mtu"] = mtu
    return table


def route(prefix: str, *via: str) -> Table:
    """A ``[[route]]``."""
    return {"prefix": prefix, "via": list(via)}


def dataplane_section(mode: str) -> Table:
    """``[dataplane]`` for ``mode``; none for AF_PACKET, the default (so that a
    tree from before the section, run by ``bench/forwarding.py --before``, takes
    the config too)."""
    return {} if mode == "afpacket" else {"dataplane": {"mode": mode}}


def admin(socket: str) -> Table:
    """The ``[admin]`` table."""
    return {"socket": socket}


def hopgate_config(admin_socket: str, uplink_mtu: int = UPLINK_MTU, icmp: str = LAB_ICMP) -> str:
    """hopgate as gw of the RouterLab; ``icmp`` is TOML merged in (the lab's
    ``[icmp]`` by default)."""
    a = ADDR
    doc: Table = {
        "interface": [
            interface("gw-c", f"{a.gw_c4}/24", f"{a.gw_c6}/64"),
            interface("gw-u", f"{a.gw_u4}/24", f"{a.gw_u6}/64", mtu=uplink_mtu),
        ],
        "route": [
            route("198.18.3.0/24", a.r1_d4),
            route("2001:2:0:3::/64", a.r1_d6),
        ],
        "admin": admin(admin_socket),
    }
    return dumps(
        merge(doc, icmp),
        "hopgate in the RouterLab: client side gw-c, upstream gw-u towards r1.",
    )


class RouterLab(Topology):
    """client — gw — r1 — server, with gw either hopgate (``mode="hopgate"``) or
    the Linux kernel (``mode="kernel"``).  ``dataplane``: hopgate's
    ``[dataplane] mode`` ("afpacket" or "xdp"; with "xdp" the peers of gw's
    interfaces get an XDP program that passes everything, as veths need to
    take what hopgate's fast path redirects to them)."""

    def __init__(
        self,
        mode: str = "hopgate",
        name: str | None = None,
        *,
        servers: bool = True,
        icmp_config: str = LAB_ICMP,
        dataplane: str = "afpacket",
    ) -> None:
        if mode not in ("hopgate", "kernel"):
            raise ValueError(f"mode must be hopgate or kernel, not {mode!r}")
        if dataplane not in ("afpacket", "xdp"):
            raise ValueError(f"dataplane must be afpacket or xdp, not {dataplane!r}")
        self.mode = mode
        self.dataplane = dataplane
        self.icmp_config = icmp_config
        self.hopgate: Process | None = None
        self._create(name, lambda: self._build(servers))

    @property
    def gateway(self) -> str:
        """The gateway under test, as failure messages name it."""
        if self.mode == "kernel":
            return "the Linux kernel"
        return f"hopgate ({self.dataplane})"

    @property
    def client(self) -> Namespace:
        return self.ns("client")

    @property
    def gw(self) -> Namespace:
        return self.ns("gw")

    @property
    def r1(self) -> Namespace:
        return self.ns("r1")

    @property
    def server(self) -> Namespace:
        return self.ns("server")

    def _build(self, servers: bool) -> None:
        a = ADDR
        lab = self.lab
        self.admin_socket = str(lab.dir / "hopgate.sock")
        self.config_path = lab.dir / "gateway.toml"
        client, gw, r1, server = (lab.namespace(r) for r in ("client", "gw", "r1", "server"))
        lab.link(client, "eth0", gw, "gw-c")
        # The kernel reference gets the 1400 MTU on the link itself; hopgate from its config.
        gw_u_mtu = UPLINK_MTU if self.mode == "kernel" else 1500
        lab.link(gw, "gw-u", r1, "r1-d", mtu=gw_u_mtu, b_mtu=UPLINK_MTU)
        lab.link(r1, "r1-s", server, "eth0")

        client.address("eth0", f"{a.client4}/24", f"{a.client6}/64")
        client.route("default", a.gw_c4)
        client.route("default", a.gw_c6)
        r1.set_sysctls(KERNEL_ROUTER)
        r1.address("r1-d", f"{a.r1_d4}/24", f"{a.r1_d6}/64")
        r1.address("r1-s", f"{a.r1_s4}/24", f"{a.r1_s6}/64")
        r1.route("198.18.1.0/24", a.gw_u4)
        r1.route("2001:2:0:1::/64", a.gw_u6)
        self._pass_on_peers(client, "eth0")
        self._pass_on_peers(r1, "r1-d")
        server.address("eth0", f"{a.server4}/24", f"{a.server6}/64")
        server.route("default", a.r1_s4)
        server.route("default", a.r1_s6)

        if self.mode == "kernel":
            gw.set_sysctls(KERNEL_ROUTER)
            gw.address("gw-c", f"{a.gw_c4}/24", f"{a.gw_c6}/64")
            gw.address("gw-u", f"{a.gw_u4}/24", f"{a.gw_u6}/64")
            gw.route("198.18.3.0/24", a.r1_d4)
            gw.route("2001:2:0:3::/64", a.r1_d6)
        else:
            extra = dumps(merge(dataplane_section(self.dataplane), self.icmp_config))
            self.config_path.write_text(hopgate_config(self.admin_socket, icmp=extra))
            self.start_hopgate()
        if servers:
            self._start_servers()
        lab.note(topology="router", mode=self.mode, admin_socket=self.admin_socket)

    def start_hopgate(self) -> Process:
        self.hopgate = start_hopgate(self.gw, self.config_path, self.admin_socket)
        return self.hopgate

    def status(self) -> dict[str, Any]:
        return fetch_status(self.admin_socket)

    def recreate_uplink(self) -> None:
        """Delete the gw-u — r1-d veth (both ends go) and make it again as
        ``_build`` did: same names, r1's addresses and its route back to the
        client.  gw's end is a new interface (new index, the kernel's defaults)."""
        a = ADDR
        self.gw.run("ip", "link", "del", "gw-u")
        gw_u_mtu = UPLINK_MTU if self.mode == "kernel" else 1500
        self.lab.link(self.gw, "gw-u", self.r1, "r1-d", mtu=gw_u_mtu, b_mtu=UPLINK_MTU)
        self.r1.address("r1-d", f"{a.r1_d4}/24", f"{a.r1_d6}/64")
        self.r1.route("198.18.1.0/24", a.gw_u4)
        self.r1.route("2001:2:0:1::/64", a.gw_u6)
        self._pass_on_peers(self.r1, "r1-d")
        if self.mode == "kernel":
            self.gw.address("gw-u", f"{a.gw_u4}/24", f"{a.gw_u6}/64")
            self.gw.route("198.18.3.0/24", a.r1_d4)
            self.gw.route("2001:2:0:3::/64", a.r1_d6)

    def _pass_on_peers(self, ns: Namespace, *ifnames: str) -> None:
        if self.mode == "hopgate" and self.dataplane == "xdp":
            self.lab.pass_xdp(ns, *ifnames)

    def _start_servers(self) -> None:
        serve_http(self.lab, self.server, "www")
        self.server.spawn("iperf3", "iperf3", "-s")
        wait_for_listen(self.server, 5201)


def wait_for_listen(ns: Namespace, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run("ss", "-Hltn", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise LabError(f"{ns.name}: nothing listens on port {port} after {timeout}s")


# -- NAT ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatAddresses:
    inside1_4: str = "198.18.1.10"
    inside2_4: str = "198.18.1.11"
    inside1_6: str = "2001:2:0:1::10"
    inside2_6: str = "2001:2:0:1::11"
    gw_c4: str = "198.18.1.1"
    gw_c6: str = "2001:2:0:1::1"
    gw_u4: str = "198.18.2.1"  # the NAT's outside address
    gw_u6: str = "2001:2:0:2::1"
    r1_d4: str = "198.18.2.2"
    r1_d6: str = "2001:2:0:2::2"
    r1_s4: str = "198.18.3.1"
    r1_s6: str = "2001:2:0:3::1"
    server4: str = "198.18.3.10"
    server6: str = "2001:2:0:3::10"
    published_port: int = 8080  # on gw_u4 / gw_u6, to inside1 port 80


NAT_ADDR = NatAddresses()
OUTSIDE_MTU = 1400  # r1's link to the server


def nat_config(admin_socket: str, extra: str = "") -> str:
    """hopgate as the NatLab's NAT; ``extra`` is TOML merged in."""
    a = NAT_ADDR
    doc: Table = {
        "interface": [
            interface("gw-c", f"{a.gw_c4}/24", f"{a.gw_c6}/64"),
            interface("gw-u", f"{a.gw_u4}/24", f"{a.gw_u6}/64"),
        ],
        "route": [route("0.0.0.0/0", a.r1_d4), route("::/0", a.r1_d6)],
        "nat": {
            "snat": [{"inside": ["198.18.1.0/24", "2001:2:0:1::/64"], "interface": "gw-u"}],
            "dnat": [
                {
                    "protocol": "tcp",
                    "published": f"{a.gw_u4}:{a.published_port}",
                    "inside": f"{a.inside1_4}:80",
                },
                {
                    "protocol": "tcp",
                    "published": f"[{a.gw_u6}]:{a.published_port}",
                    "inside": f"[{a.inside1_6}]:80",
                },
            ],
        },
        "admin": admin(admin_socket),
        **LAB_ICMP_SETTINGS,
    }
    return dumps(
        merge(doc, extra),
        "hopgate as a NAT: the inside hosts behind gw-c, translated to gw-u's addresses.",
    )


def nftables_nat() -> str:
    """The same NAT in nftables, for the kernel reference."""
    a = NAT_ADDR
    rules = []
    for family, ip, addr, inside, prefix in (
        ("ip", "ip", a.gw_u4, f"{a.inside1_4}:80", "198.18.1.0/24"),
        ("ip6", "ip6", a.gw_u6, f"[{a.inside1_6}]:80", "2001:2:0:1::/64"),
    ):
        rules.append(f"""\
table {family} hgnat {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "gw-u" {ip} daddr {addr} tcp dport {a.published_port} dnat to {inside}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "gw-u" {ip} saddr {prefix} masquerade
  }}
}}
""")
    return "".join(rules)


class NatLab(Topology):
    """inside1, inside2 (on a bridge) — gw — r1 — server, with gw either hopgate
    as a NAT or the Linux kernel with nftables masquerade (``mode="kernel"``).
    r1 knows no route to the inside: only translated traffic gets back.  r1's
    link to the server has an MTU of 1400."""

    def __init__(
        self,
        mode: str = "hopgate",
        name: str | None = None,
        *,
        extra_config: str = "",
        servers: bool = True,
        dataplane: str = "afpacket",
    ) -> None:
        """``dataplane``: hopgate's ``[dataplane] mode``, as RouterLab's."""
        if mode not in ("hopgate", "kernel"):
            raise ValueError(f"mode must be hopgate or kernel, not {mode!r}")
        if dataplane not in ("afpacket", "xdp"):
            raise ValueError(f"dataplane must be afpacket or xdp, not {dataplane!r}")
        self.mode = mode
        self.dataplane = dataplane
        self.hopgate: Process | None = None
        self._create(name, lambda: self._build(extra_config, servers))

    @property
    def gateway(self) -> str:
        """The gateway under test, as failure messages name it."""
        if self.mode == "kernel":
            return "the Linux kernel (nftables)"
        return f"hopgate ({self.dataplane})"

    def _build(self, extra_config: str, servers: bool) -> None:
        a = NAT_ADDR
        lab = self.lab
        self.admin_socket = str(lab.dir / "hopgate.sock")
        self.config_path = lab.dir / "gateway.toml"
        in1, in2, lan, gw, r1, server = (
            lab.namespace(r) for r in ("inside1", "inside2", "lan", "gw", "r1", "server")
        )
        lab.link(in1, "eth0", lan, "p1")
        lab.link(in2, "eth0", lan, "p2")
        lab.link(gw, "gw-c", lan, "p0")
        lab.bridge(lan, "br0", ["p0", "p1", "p2"])
        lab.link(gw, "gw-u", r1, "r1-d")
        lab.link(r1, "r1-s", server, "eth0", mtu=OUTSIDE_MTU)
        for ns, v4, v6 in ((in1, a.inside1_4, a.inside1_6), (in2, a.inside2_4, a.inside2_6)):
            ns.address("eth0", f"{v4}/24", f"{v6}/64")
            ns.route("default", a.gw_c4)
            ns.route("default", a.gw_c6)
        r1.set_sysctls(KERNEL_ROUTER)
        r1.address("r1-d", f"{a.r1_d4}/24", f"{a.r1_d6}/64")
        r1.address("r1-s", f"{a.r1_s4}/24", f"{a.r1_s6}/64")
        server.address("eth0", f"{a.server4}/24", f"{a.server6}/64")
        server.route("default", a.r1_s4)
        server.route("default", a.r1_s6)
        if self.mode == "kernel":
            gw.set_sysctls(KERNEL_ROUTER)
            gw.address("gw-c", f"{a.gw_c4}/24", f"{a.gw_c6}/64")
            gw.address("gw-u", f"{a.gw_u4}/24", f"{a.gw_u6}/64")
            gw.route("default", a.r1_d4)
            gw.route("default", a.r1_d6)
            gw.run("nft", "-f", "-", input=nftables_nat())
        else:
            if self.dataplane == "xdp":
                lab.pass_xdp(lan, "p0")
                lab.pass_xdp(r1, "r1-d")
            extra = dumps(merge(dataplane_section(self.dataplane), extra_config))
            self.config_path.write_text(nat_config(self.admin_socket, extra))
            self.hopgate = start_hopgate(gw, self.config_path, self.admin_socket)
        if servers:
            serve_http(lab, server, "www-server", process="http-server")
            serve_http(lab, in1, "www-inside", big=False, process="http-inside")
            server.spawn("iperf3", "iperf3", "-s")
            wait_for_listen(server, 5201)
        lab.note(topology="nat", mode=self.mode, admin_socket=self.admin_socket)

    def status(self) -> dict[str, Any]:
        return fetch_status(self.admin_socket)


def edit_config(path: Path, edit: Callable[[Table], object]) -> str:
    """Rewrite the hopgate config at ``path`` (a lab's ``config_path``) as
    ``edit`` changes its document in place, for a reload to read; returns the
    text it had, for ``write_config`` to put back."""
    old = path.read_text()
    doc = tomllib.loads(old)
    edit(doc)
    write_config(path, dumps(doc))
    return old


def write_config(path: Path, text: str) -> None:
    """Replace the config at ``path`` whole (a temporary file renamed), so that a
    reload never reads half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def start_hopgate(
    gw: Namespace,
    config: Path,
    admin_socket: str,
    timeout: float = 20.0,
    process: str = "hopgate",
) -> Process:
    proc = gw.spawn(process, sys.executable, "-m", "hopgate", "run", "-c", str(config))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LabError(f"hopgate exited at start:\n{proc.output()}")
        try:
            fetch_status(admin_socket)
            return proc
        except AdminError:
            time.sleep(0.05)
    raise LabError(f"hopgate did not answer on {admin_socket} within {timeout}s:\n{proc.output()}")


def serve_http(
    lab: Lab,
    ns: Namespace,
    name: str,
    *,
    big: bool = True,
    process: str = "http",
    port: int = HTTP_PORT,
) -> Process:
    """An HTTP server on ``port`` of ``ns``, serving lab.dir/``name`` (10 MB file
    if ``big``) and an index.html that names the namespace."""
    www = lab.dir / name
    www.mkdir(exist_ok=True)
    if big:
        with open(www / BIG_FILE, "wb") as f:
            f.write(bytes(range(256)) * (10 * 1024 * 1024 // 256))
    (www / "index.html").write_text(f"hello from {ns.role}\n")
    proc = ns.spawn(
        process,
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "::",
        "--directory",
        str(www),
    )
    wait_for_listen(ns, port)
    return proc
