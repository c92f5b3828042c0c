"""The lab configs as the f-string templates wrote them before issue 10 (frozen
copies): ``test_lab_configs.py`` checks that the configs the labs now build
from objects read the same."""

from __future__ import annotations

from hopgate.lab.ecmplab import ECMP_ADDR, NODES
from hopgate.lab.lblab import (
    CHECK_FALL,
    CHECK_INTERVAL_MS,
    CHECK_RISE,
    LB_ADDR,
    MAGLEV_PORT,
    UDP_PORT,
)
from hopgate.lab.topologies import ADDR, HTTP_PORT, NAT_ADDR, UPLINK_MTU

LAB_ICMP = """\
[icmp]
ratelimit_interval_ms = 0
"""


def hopgate_config(admin_socket: str, uplink_mtu: int = UPLINK_MTU, icmp: str = LAB_ICMP) -> str:
    a = ADDR
    return f"""\
# hopgate in the RouterLab: client side gw-c, upstream gw-u towards r1.
[[interface]]
name = "gw-c"
addresses = ["{a.gw_c4}/24", "{a.gw_c6}/64"]

[[interface]]
name = "gw-u"
addresses = ["{a.gw_u4}/24", "{a.gw_u6}/64"]
mtu = {uplink_mtu}

[[route]]
prefix = "198.18.3.0/24"
via = ["{a.r1_d4}"]

[[route]]
prefix = "2001:2:0:3::/64"
via = ["{a.r1_d6}"]

[admin]
socket = "{admin_socket}"

{icmp}"""


def nat_config(admin_socket: str, extra: str = "") -> str:
    a = NAT_ADDR
    return f"""\
# hopgate as a NAT: the inside hosts behind gw-c, translated to gw-u's addresses.
[[interface]]
name = "gw-c"
addresses = ["{a.gw_c4}/24", "{a.gw_c6}/64"]

[[interface]]
name = "gw-u"
addresses = ["{a.gw_u4}/24", "{a.gw_u6}/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["{a.r1_d4}"]

[[route]]
prefix = "::/0"
via = ["{a.r1_d6}"]

[[nat.snat]]
inside = ["198.18.1.0/24", "2001:2:0:1::/64"]
interface = "gw-u"

[[nat.dnat]]
protocol = "tcp"
published = "{a.gw_u4}:{a.published_port}"
inside = "{a.inside1_4}:80"

[[nat.dnat]]
protocol = "tcp"
published = "[{a.gw_u6}]:{a.published_port}"
inside = "[{a.inside1_6}]:80"

[admin]
socket = "{admin_socket}"

{LAB_ICMP}
{extra}"""


def lb_config(admin_socket: str, extra: str = "") -> str:
    a = LB_ADDR
    lips4 = ", ".join(f'"{x}"' for x in a.lips4)
    lips6 = ", ".join(f'"{x}"' for x in a.lips6)
    b4, b6 = a.backends4, a.backends6
    return f"""\
# hopgate as a full-NAT load balancer: uplinks gw-a (the default route) and gw-b,
# backends on gw-s.
[[interface]]
name = "gw-a"
addresses = ["{a.gw_a4}/24", "{a.gw_a6}/64"]

[[interface]]
name = "gw-b"
addresses = ["{a.gw_b4}/24", "{a.gw_b6}/64"]

[[interface]]
name = "gw-s"
addresses = ["{a.gw_s4}/24", "{a.gw_s6}/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["{a.ra_g4}"]

[[route]]
prefix = "::/0"
via = ["{a.ra_g6}"]

[[service]]
name = "web"
vip = "{a.vip4}"
port = {HTTP_PORT}
protocol = "tcp"
scheduler = "wrr"
local_addresses = [{lips4}]
backend = [{{ address = "{b4[0]}", weight = 1 }}, {{ address = "{b4[1]}", weight = 3 }}]
[service.health]
kind = "http"
interval_ms = {CHECK_INTERVAL_MS}
timeout_ms = {CHECK_INTERVAL_MS - 50}
rise = {CHECK_RISE}
fall = {CHECK_FALL}

[[service]]
name = "web6"
vip = "{a.vip6}"
port = {HTTP_PORT}
protocol = "tcp"
local_addresses = [{lips6}]
backend = [{{ address = "{b6[0]}", weight = 1 }}, {{ address = "{b6[1]}", weight = 3 }}]
health = {{ kind = "http", interval_ms = {CHECK_INTERVAL_MS}, timeout_ms = 250 }}

[[service]]
name = "echo"
vip = "{a.vip4}"
port = {UDP_PORT}
protocol = "udp"
local_addresses = [{lips4}]
backend = [{{ address = "{b4[0]}" }}, {{ address = "{b4[1]}" }}]
health = {{ kind = "icmp", interval_ms = {CHECK_INTERVAL_MS}, timeout_ms = 250 }}

[[service]]
name = "echo6"
vip = "{a.vip6}"
port = {UDP_PORT}
protocol = "udp"
local_addresses = [{lips6}]
backend = [{{ address = "{b6[0]}" }}, {{ address = "{b6[1]}" }}]
health = {{ kind = "icmp", interval_ms = {CHECK_INTERVAL_MS}, timeout_ms = 250 }}

[[service]]
name = "maglev"
vip = "{a.maglev_vip4}"
port = {MAGLEV_PORT}
protocol = "tcp"
scheduler = "maglev"
local_addresses = [{lips4}]
backend = [{", ".join(f'{{ address = "{b}" }}' for b in b4)}]
[service.health]
kind = "tcp"
interval_ms = {CHECK_INTERVAL_MS}
timeout_ms = {CHECK_INTERVAL_MS - 50}
rise = {CHECK_RISE}
fall = {CHECK_FALL}

[admin]
socket = "{admin_socket}"

{LAB_ICMP}
{extra}"""


def node_config(i: int, admin_socket: str, relay: bool) -> str:
    a = ECMP_ADDR
    relay_section = '[relay]\ninterfaces = ["gw-f"]\n' if relay else ""
    backends4 = ", ".join(f'{{ address = "{b}" }}' for b in a.backends4)
    backends6 = ", ".join(f'{{ address = "{b}" }}' for b in a.backends6)
    return f"""\
# hopgate node {i + 1} of {len(NODES)}: front gw-f toward the ECMP router, back gw-b.
[[interface]]
name = "gw-f"
addresses = ["{a.nodes4[i]}/24", "{a.nodes6[i]}/64"]

[[interface]]
name = "gw-b"
addresses = ["{a.back_nodes4[i]}/24", "{a.back_nodes6[i]}/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["{a.ecmp_d4}"]

[[route]]
prefix = "::/0"
via = ["{a.ecmp_d6}"]

[[service]]
name = "web"
vip = "{a.shared4}"
port = {HTTP_PORT}
protocol = "tcp"
scheduler = "maglev"
local_addresses = ["{a.lips4[i]}"]
backend = [{backends4}]

[[service]]
name = "web6"
vip = "{a.shared6}"
port = {HTTP_PORT}
protocol = "tcp"
scheduler = "maglev"
local_addresses = ["{a.lips6[i]}"]
backend = [{backends6}]

{relay_section}
[admin]
socket = "{admin_socket}"

{LAB_ICMP}"""
