"""The load balancer's lab: a client that reaches hopgate through two uplink
routers, A and B, and backends behind it on one LAN.

    client ── (c-a) ── (ra-c) rA (ra-g) ── (gw-a) ┐
      │                                             hopgate (gw-s) ── lan ── be1, be2, be3
      └──── (c-b) ── (rb-c) rB (rb-g) ── (gw-b) ┘

hopgate's default route is via A; the client's route to the VIPs is via B.
rA and rB both know the way to the client, so a reply that hopgate sent by its
default route would reach it through A: the client filters that (strict
reverse-path check, as the firewalls the replies meet in real networks do), so
anything that does not come back the way it went is lost, as in the problem this
solves.  rB's link to the client has an MTU of 1400 (a tunnel on the client's
path): a backend's full-size segments need path MTU discovery to get through.
The backends have no route beyond their LAN: full NAT makes every packet they
see come from a local address (LIP) on it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from hopgate.control.admin import fetch_status
from hopgate.lab.configs import Table, dumps, merge
from hopgate.lab.netns import Process, Topology
from hopgate.lab.topologies import (
    HTTP_PORT,
    KERNEL_ROUTER,
    LAB_ICMP_SETTINGS,
    admin,
    dataplane_section,
    interface,
    route,
    serve_http,
    start_hopgate,
)

CLIENT_PATH_MTU = 1400  # rB's link toward the client
MAGLEV_PORT = 8080  # the maglev service's port on the backends, served on its own
UDP_PORT = 5353


@dataclass(frozen=True)
class LbAddresses:
    client4: str = "198.18.30.10"  # on the client's loopback, reached via A or B
    client6: str = "2001:2:0:30::10"
    client_a4: str = "198.18.41.10"
    client_a6: str = "2001:2:0:41::10"
    ra_c4: str = "198.18.41.1"
    ra_c6: str = "2001:2:0:41::1"
    client_b4: str = "198.18.42.10"
    client_b6: str = "2001:2:0:42::10"
    rb_c4: str = "198.18.42.1"
    rb_c6: str = "2001:2:0:42::1"
    gw_a4: str = "198.18.11.1"
    gw_a6: str = "2001:2:0:11::1"
    ra_g4: str = "198.18.11.2"
    ra_g6: str = "2001:2:0:11::2"
    gw_b4: str = "198.18.12.1"
    gw_b6: str = "2001:2:0:12::1"
    rb_g4: str = "198.18.12.2"
    rb_g6: str = "2001:2:0:12::2"
    gw_s4: str = "198.18.20.1"
    gw_s6: str = "2001:2:0:20::1"
    lips4: tuple[str, ...] = ("198.18.20.100", "198.18.20.101")
    lips6: tuple[str, ...] = ("2001:2:0:20::100",)
    backends4: tuple[str, ...] = ("198.18.20.11", "198.18.20.12", "198.18.20.13")
    backends6: tuple[str, ...] = ("2001:2:0:20::11", "2001:2:0:20::12", "2001:2:0:20::13")
    vip4: str = "198.18.100.1"  # web (weights 1 and 3) and a UDP service
    vip6: str = "2001:2:0:100::1"
    maglev_vip4: str = "198.18.100.2"  # maglev over all three backends


LB_ADDR = LbAddresses()
BACKENDS = ("be1", "be2", "be3")

# The health checks run fast so that tests see a backend leave within seconds.
CHECK_INTERVAL_MS = 300
CHECK_FALL = 3
CHECK_RISE = 2


def lb_config(admin_socket: str, extra: str = "") -> str:
    """hopgate as the LbLab's load balancer; ``extra`` is TOML merged in."""
    a = LB_ADDR
    b4, b6 = a.backends4, a.backends6
    checks = {"interval_ms": CHECK_INTERVAL_MS, "timeout_ms": CHECK_INTERVAL_MS - 50}
    quick = {"interval_ms": CHECK_INTERVAL_MS, "timeout_ms": 250}
    rise_fall = {"rise": CHECK_RISE, "fall": CHECK_FALL}

    def service(name: str, vip: str, port: int, protocol: str, lips: tuple[str, ...]) -> Table:
        return {
            "name": name,
            "vip": vip,
            "port": port,
            "protocol": protocol,
            "local_addresses": list(lips),
        }

    def weighted(*pairs: tuple[str, int]) -> list[Table]:
        return [{"address": b, "weight": w} for b, w in pairs]

    doc: Table = {
        "interface": [
            interface("gw-a", f"{a.gw_a4}/24", f"{a.gw_a6}/64"),
            interface("gw-b", f"{a.gw_b4}/24", f"{a.gw_b6}/64"),
            interface("gw-s", f"{a.gw_s4}/24", f"{a.gw_s6}/64"),
        ],
        "route": [route("0.0.0.0/0", a.ra_g4), route("::/0", a.ra_g6)],
        "service": [
            {
                **service("web", a.vip4, HTTP_PORT, "tcp", a.lips4),
                "scheduler": "wrr",
                "backend": weighted((b4[0], 1), (b4[1], 3)),
                "health": {"kind": "http", **checks, **rise_fall},
            },
            {
                **service("web6", a.vip6, HTTP_PORT, "tcp", a.lips6),
                "backend": weighted((b6[0], 1), (b6[1], 3)),
                "health": {"kind": "http", **quick},
            },
            {
                **service("echo", a.vip4, UDP_PORT, "udp", a.lips4),
                "backend": [{"address": b} for b in b4[:2]],
                "health": {"kind": "icmp", **quick},
            },
            {
                **service("echo6", a.vip6, UDP_PORT, "udp", a.lips6),
                "backend": [{"address": b} for b in b6[:2]],
                "health": {"kind": "icmp", **quick},
            },
            {
                **service("maglev", a.maglev_vip4, MAGLEV_PORT, "tcp", a.lips4),
                "scheduler": "maglev",
                "backend": [{"address": b} for b in b4],
                "health": {"kind": "tcp", **checks, **rise_fall},
            },
        ],
        "admin": admin(admin_socket),
        **LAB_ICMP_SETTINGS,
    }
    return dumps(
        merge(doc, extra),
        "hopgate as a full-NAT load balancer: uplinks gw-a (the default route) and gw-b,\n"
        "backends on gw-s.",
    )


# The client drops what arrives on an interface its route would not send back by
# (the nftables form of a strict reverse-path filter), for IPv4 and IPv6.
CLIENT_RPFILTER = """\
table inet rpf {
  chain pre {
    type filter hook prerouting priority raw; policy accept;
    fib saddr . iif oif missing counter drop
  }
}
"""


class LbLab(Topology):
    """The load balancer between a two-uplink client and three backends."""

    def __init__(
        self, name: str | None = None, *, extra_config: str = "", dataplane: str = "afpacket"
    ) -> None:
        """``dataplane``: hopgate's ``[dataplane] mode`` ("afpacket" or "xdp":
        then the peers of gw's interfaces pass what it redirects to them)."""
        if dataplane not in ("afpacket", "xdp"):
            raise ValueError(f"dataplane must be afpacket or xdp, not {dataplane!r}")
        self.hopgate: Process | None = None
        self.maglev_servers: dict[str, Process] = {}
        self.extra_config = extra_config  # TOML appended to the config
        self.dataplane = dataplane
        self._create(name, self._build)

    @property
    def gateway(self) -> str:
        """The gateway under test, as failure messages name it."""
        return f"hopgate ({self.dataplane})"

    def status(self) -> dict[str, Any]:
        return fetch_status(self.admin_socket)

    def _build(self) -> None:
        a = LB_ADDR
        lab = self.lab
        self.admin_socket = str(lab.dir / "hopgate.sock")
        self.config_path = lab.dir / "lb.toml"
        client, ra, rb, gw, lan = (lab.namespace(r) for r in ("client", "ra", "rb", "gw", "lan"))
        backends = [lab.namespace(b) for b in BACKENDS]
        lab.link(client, "c-a", ra, "ra-c")
        lab.link(client, "c-b", rb, "rb-c", mtu=1500, b_mtu=CLIENT_PATH_MTU)
        lab.link(ra, "ra-g", gw, "gw-a")
        lab.link(rb, "rb-g", gw, "gw-b")
        lab.link(gw, "gw-s", lan, "p0")
        for i, be in enumerate(backends, 1):
            lab.link(be, "eth0", lan, f"p{i}")
        lab.bridge(lan, "br0", ["p0", *(f"p{i}" for i in range(1, len(backends) + 1))])

        # The client's own address is on neither link (as a server's on its
        # loopback, reached by either router).
        client.address("lo", f"{a.client4}/32", f"{a.client6}/128")
        client.address("c-a", f"{a.client_a4}/24", f"{a.client_a6}/64")
        client.address("c-b", f"{a.client_b4}/24", f"{a.client_b6}/64")
        for prefix, via, src in (
            ("198.18.100.0/24", a.rb_c4, a.client4),
            ("2001:2:0:100::/64", a.rb_c6, a.client6),
        ):
            client.run("ip", "route", "add", prefix, "via", via, "src", src)
        client.run("nft", "-f", "-", input=CLIENT_RPFILTER)

        for r, c_if, g_if, c4, c6, g4, g6, client_via4, client_via6, gw4, gw6 in (
            (ra, "ra-c", "ra-g", a.ra_c4, a.ra_c6, a.ra_g4, a.ra_g6,
             a.client_a4, a.client_a6, a.gw_a4, a.gw_a6),
            (rb, "rb-c", "rb-g", a.rb_c4, a.rb_c6, a.rb_g4, a.rb_g6,
             a.client_b4, a.client_b6, a.gw_b4, a.gw_b6),
        ):  # fmt: skip
            r.set_sysctls(KERNEL_ROUTER)
            r.address(c_if, f"{c4}/24", f"{c6}/64")
            r.address(g_if, f"{g4}/24", f"{g6}/64")
            r.route(f"{a.client4}/32", client_via4)
            r.route(f"{a.client6}/128", client_via6)
            r.route("198.18.100.0/24", gw4)
            r.route("2001:2:0:100::/64", gw6)

        for be, v4, v6 in zip(backends, a.backends4, a.backends6, strict=True):
            be.address("eth0", f"{v4}/24", f"{v6}/64")
            serve_http(lab, be, f"www-{be.role}", process=f"http-{be.role}")
            self.start_maglev_server(be.role)
            be.spawn(
                f"udp-{be.role}", sys.executable, "-m", "hopgate.lab.udpecho", str(UDP_PORT),
                be.role,
            )  # fmt: skip

        if self.dataplane == "xdp":
            lab.pass_xdp(ra, "ra-g")
            lab.pass_xdp(rb, "rb-g")
            lab.pass_xdp(lan, "p0")
        extra = dumps(merge(dataplane_section(self.dataplane), self.extra_config))
        self.config_path.write_text(lb_config(self.admin_socket, extra))
        self.hopgate = start_hopgate(gw, self.config_path, self.admin_socket)
        lab.note(topology="lb", mode="hopgate", admin_socket=self.admin_socket)

    def start_maglev_server(self, backend: str) -> Process:
        """(Re)start the HTTP server of ``backend`` on the maglev service's port."""
        be = self.ns(backend)
        proc = serve_http(
            self.lab, be, f"www-{backend}", big=False, process=f"http8080-{backend}",
            port=MAGLEV_PORT,
        )  # fmt: skip
        self.maglev_servers[backend] = proc
        return proc

    def stop_maglev_server(self, backend: str) -> None:
        self.maglev_servers.pop(backend).stop()

    def backends(self, service: str) -> dict[str, dict[str, Any]]:
        """The named service's backends as ``hopgate status`` reports them, by name."""
        for svc in self.status()["nat"]["services"]:
            if svc["name"] == service:
                return {b["backend"]: b for b in svc["backends"]}
        raise KeyError(service)
