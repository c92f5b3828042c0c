"""The routers the unit tests build by hand (frames.py, nat_frames.py,
lb_frames.py) are the routers a config file describing the same topology
builds: ``config.parse`` then ``router_spec`` gives an equal ``RouterSpec``.
So the pipeline tests test what an operator runs, and a default that drifts
between the config and the pipeline shows here."""

from __future__ import annotations

import dataclasses

from hopgate.control import config
from hopgate.pipeline.model import PortSpec, RelaySpec, RouterSpec
from tests.unit.frames import GW_C_MAC, GW_U_MAC, mac, spec
from tests.unit.lb_frames import GW_A_MAC, GW_B_MAC, GW_S_MAC, lb_router, service, service6
from tests.unit.nat_frames import nat_spec

LINK_MTU = 1500  # what the kernel says of every test link

ROUTER_TOML = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]

[[interface]]
name = "gw-u"
addresses = ["198.18.2.1/24", "2001:2:0:2::1/64"]
mtu = 1400

[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.2.2"]

[[route]]
prefix = "::/0"
via = ["2001:2:0:2::2"]
"""

NAT_TOML = """
[nat]
[[nat.snat]]
inside = ["198.18.1.0/24", "2001:2:0:1::/64"]
interface = "gw-u"

[[nat.dnat]]
protocol = "tcp"
published = "198.18.2.1:8080"
inside = "198.18.1.10:80"

[[nat.dnat]]
protocol = "tcp"
published = "[2001:2:0:2::1]:8080"
inside = "[2001:2:0:1::10]:80"
"""

LB_TOML = """
[[interface]]
name = "gw-a"
addresses = ["198.18.11.1/24", "2001:2:0:11::1/64"]

[[interface]]
name = "gw-b"
addresses = ["198.18.12.1/24", "2001:2:0:12::1/64"]

[[interface]]
name = "gw-s"
addresses = ["198.18.20.1/24", "2001:2:0:20::1/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.11.2"]

[[route]]
prefix = "::/0"
via = ["2001:2:0:11::2"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
local_addresses = ["198.18.20.100", "198.18.20.101"]
backend = [{ address = "198.18.20.11", weight = 1 }, { address = "198.18.20.12", weight = 3 }]
health = { kind = "none" }

[[service]]
name = "web6"
vip = "2001:2:0:100::1"
port = 80
protocol = "tcp"
local_addresses = ["2001:2:0:20::100"]
backend = [{ address = "2001:2:0:20::11" }, { address = "2001:2:0:20::12" }]
health = { kind = "none" }

[relay]
interfaces = ["gw-b"]
"""


def built(text: str, macs: dict[str, str]) -> RouterSpec:
    return config.parse(text).router_spec({n: (mac(m), LINK_MTU) for n, m in macs.items()})


def by_hand(s: RouterSpec) -> RouterSpec:
    """A hand-built spec as the config states it: the link MTU the kernel
    reports (a test leaves it out where it is the port's MTU)."""

    def port(p: PortSpec) -> PortSpec:
        return dataclasses.replace(p, link_mtu=p.link_mtu or p.mtu)

    return dataclasses.replace(s, ports=tuple(port(p) for p in s.ports))


def test_the_reference_router() -> None:
    assert built(ROUTER_TOML, {"gw-c": GW_C_MAC, "gw-u": GW_U_MAC}) == by_hand(spec())


def test_the_nat_router() -> None:
    got = built(ROUTER_TOML + NAT_TOML, {"gw-c": GW_C_MAC, "gw-u": GW_U_MAC})
    # The port choice's seed is not a setting: the tests fix theirs.
    assert got.nat is not None
    got = dataclasses.replace(got, nat=dataclasses.replace(got.nat, seed=1))
    assert got == by_hand(spec(nat=nat_spec()))


def test_the_load_balancer_with_a_relay() -> None:
    got = built(LB_TOML, {"gw-a": GW_A_MAC, "gw-b": GW_B_MAC, "gw-s": GW_S_MAC})
    r = lb_router(service(), service6(), relay=RelaySpec(("gw-b",)))
    assert got == by_hand(r.spec)
