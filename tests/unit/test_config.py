"""The TOML config: the issue's example works, and every mistake is named by key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from hopgate.cli import main
from hopgate.control.config import ConfigError, load, parse

EXAMPLE = """
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

[icmp]                        # named after Linux's sysctls; these are the defaults
ratelimit_interval_ms = 1000  # per destination, as net.ipv4.icmp_ratelimit; 0 turns it off
ratelimit_burst = 6
msgs_per_second = 1000        # global, as net.ipv4.icmp_msgs_per_sec
msgs_burst = 50
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(text, "t.toml")
    return [str(i) for i in e.value.issues]


def test_the_issues_example_parses_into_a_router_spec() -> None:
    cfg = parse(EXAMPLE)
    spec = cfg.router_spec({"gw-c": (b"\x02" * 6, 1500), "gw-u": (b"\x04" * 6, 1500)})
    assert [p.mtu for p in spec.ports] == [1500, 1400]
    assert spec.ports[1].link_mtu == 1500
    assert spec.routes[0].via[0].address == ipaddress.ip_address("198.18.2.2")
    assert spec.icmp.ratelimit_burst == 6 and spec.icmp.msgs_per_second == 1000
    assert spec.neighbour.retrans_time == 1.0


def test_mtu_defaults_to_the_links() -> None:
    cfg = parse('[[interface]]\nname = "a"\naddresses = ["198.18.0.1/24"]\n')
    assert cfg.router_spec({"a": (b"\x02" * 6, 9000)}).ports[0].mtu == 9000


def test_unknown_keys_are_errors_with_their_path() -> None:
    got = issues(EXAMPLE + '\ncolour = "red"\n[icmp2]\n')
    assert got == ["icmp.colour: unknown key", "icmp2: unknown key"]
    got = issues(EXAMPLE.replace("mtu = 1400", "mtu = 1400\nspeed = 10"))
    assert got == ["interface[1].speed: unknown key"]


def test_every_problem_is_listed_with_its_key_path() -> None:
    text = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1", "2001:2:0:1::1/64", "198.18.1.0/24", "fe80::1/64"]
mtu = "big"

[[route]]
prefix = "10.0.0.1/8"
via = ["fe80::1", "not-an-ip"]

[icmp]
ratelimit_burst = 0
"""
    assert issues(text) == [
        "interface[0].addresses[0]: '198.18.1.1' needs a prefix length, as in 198.18.1.1/24",
        "interface[0].addresses[2]: '198.18.1.0/24' is the network address of 198.18.1.0/24",
        "interface[0].addresses[3]: 'fe80::1/64': link-local addresses are derived from"
        " the interface's MAC",
        "interface[0].mtu: Input should be a valid integer (got 'big')",
        "route[0].prefix: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        "route[0].via[0]: 'fe80::1' is link-local: name its interface, as in fe80::1%gw-u",
        "route[0].via[1]: 'not-an-ip' is not an IP address",
        "icmp.ratelimit_burst: Input should be greater than or equal to 1",
    ]


def test_relations_between_sections_are_checked() -> None:
    text = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]
mtu = 1000

[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24"]

[[interface]]
name = "gw-x"
addresses = ["198.18.1.7/24"]

[[route]]
prefix = "198.18.9.0/24"
via = ["198.18.99.9", "198.18.1.1", "2001:2::1", "fe80::1%nope"]

[[route]]
prefix = "198.18.9.0/24"
via = ["198.18.1.2"]
"""
    assert issues(text) == [
        "interface[0].mtu: 1000 is below 1280, the least IPv6 allows, and the interface has"
        " an IPv6 address",
        "interface[1].name: 'gw-c' is already interface[0]",
        "interface[1].addresses[0]: 198.18.1.1 is already on gw-c",
        "interface[2].addresses[0]: subnet 198.18.1.0/24 is already on gw-c",
        "route[0].via[0]: 198.18.99.9 is not on the subnet of any interface"
        " (next hops must be neighbours)",
        "route[0].via[1]: 198.18.1.1 is hopgate's own address",
        "route[0].via[2]: 2001:2::1 is not of the same family as 198.18.9.0/24",
        "route[0].via[3]: fe80::1%nope is not of the same family as 198.18.9.0/24",
        "route[1].prefix: 198.18.9.0/24 is already route[0]",
    ]


def test_link_local_next_hop_names_its_interface() -> None:
    text = EXAMPLE.replace('via = ["2001:2:0:2::2"]', 'via = ["fe80::2%gw-u"]')
    spec = parse(text).router_spec({"gw-c": (b"\x02" * 6, 1500), "gw-u": (b"\x04" * 6, 1500)})
    hop = spec.routes[1].via[0]
    assert hop.interface == "gw-u" and str(hop.address) == "fe80::2"


def test_admin_metrics_listen_is_checked() -> None:
    assert issues(EXAMPLE + '\n[admin]\nmetrics = "localhost"\n') == [
        "admin.metrics: 'localhost' is not address:port, as in 127.0.0.1:9469"
    ]
    assert parse(EXAMPLE + '\n[admin]\nmetrics = "[::1]:9469"\n').admin.metrics == "[::1]:9469"


def test_bad_toml_is_reported_with_its_position() -> None:
    got = issues("[[interface]\nname=")
    assert len(got) == 1 and got[0].startswith("not valid TOML:") and "line 1" in got[0]


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(EXAMPLE)
    result = CliRunner().invoke(main, ["check-config", str(good)])
    assert result.exit_code == 0 and "ok (2 interfaces, 2 routes)" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.replace("mtu = 1400", "mtu = 10"))
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert "bad.toml: 1 error" in result.output
    assert "interface[1].mtu: Input should be greater than or equal to 68" in result.output
    missing = CliRunner().invoke(main, ["check-config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_load_reads_files(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text(EXAMPLE)
    assert load(p).interface[0].name == "gw-c"


def test_the_shipped_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
    cfg = load(example)
    assert [i.name for i in cfg.interface] == ["gw-c", "gw-u"]


def test_every_config_in_the_readme_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    assert len(blocks) >= 2
    for block in blocks:
        parse(block, "README.md")


LB = """
[[interface]]
name = "gw-a"
addresses = ["198.18.11.1/24", "2001:2:0:11::1/64"]

[[interface]]
name = "gw-s"
addresses = ["198.18.20.1/24", "2001:2:0:20::1/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.11.2"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
local_addresses = ["198.18.20.100", "198.18.20.101"]
echo = "forward"
backend = [
  { address = "198.18.20.11", weight = 1 },
  { address = "198.18.20.12", port = 8080, weight = 3 },
]
[service.health]
kind = "http"
interval_ms = 500
timeout_ms = 400
rise = 1
fall = 2
http_path = "/ok"

[[service]]
vip = "2001:2:0:100::1"
port = 53
protocol = "udp"
local_addresses = ["2001:2:0:20::100"]
backend = [{ address = "2001:2:0:20::11" }]
"""


def test_services_parse_into_the_pipelines_specs() -> None:
    spec = parse(LB).router_spec({"gw-a": (b"\x02" * 6, 1500), "gw-s": (b"\x04" * 6, 1500)})
    web, dns = spec.services
    assert (web.name, web.family, web.port, web.scheduler, web.echo) == (
        "web",
        4,
        80,
        "maglev",
        "forward",
    )
    assert [(b.port, b.weight) for b in web.backends] == [(80, 1), (8080, 3)]
    assert web.health.kind == "http" and web.health.interval == 0.5 and web.health.fall == 2
    assert web.health.http_path == "/ok" and web.health.http_status == (200, 399)
    # unnamed services are named by what they serve; UDP is checked by ICMP echo
    assert dns.name == "udp/[2001:2:0:100::1]:53" and dns.family == 6
    assert dns.health.kind == "icmp" and dns.scheduler == "wrr" and dns.echo == "answer"


def test_service_mistakes_are_named_by_key_path() -> None:
    text = (
        LB.replace('vip = "198.18.100.1"', 'vip = "198.18.20.1"')
        .replace('"198.18.20.101"', '"198.18.30.1"')
        .replace('{ address = "198.18.20.11", weight = 1 }', '{ address = "2001:2::1" }')
        .replace("timeout_ms = 400", "timeout_ms = 900")
        .replace('port = 53\nprotocol = "udp"', 'port = 53\nprotocol = "udp"\nhealth.kind = "tcp"')
        + '\n[[service]]\nvip = "2001:2:0:100::1"\nport = 53\nprotocol = "udp"\n'
        'local_addresses = ["2001:2:0:20::100"]\nbackend = [{ address = "2001:2:0:20::11" }]\n'
        'scheduler = "maglev"\nmaglev_table_size = 1000\n'
    )
    assert issues(text) == [
        "service[0].vip: 198.18.20.1 is gw-s's own address; a VIP is its own",
        "service[0].local_addresses[1]: 198.18.30.1 is not on the subnet of any interface"
        " (backends answer it there)",
        "service[0].backend[0].address: 2001:2::1 is not of the family of 198.18.20.1",
        "service[0].health.timeout_ms: must not be longer than interval_ms",
        "service[1].health.kind: a tcp check needs a tcp service; use icmp or none",
        "service[2].port: udp/[2001:2:0:100::1]:53 is already service[1]",
        "service[2].maglev_table_size: 1000 is not prime (65537 is)",
    ]


def test_service_structure_errors_are_named_by_key_path() -> None:
    bad = LB.replace('scheduler = "maglev"', 'scheduler = "random"').replace(
        "weight = 3", "weight = 3, colour = 1"
    )
    got = issues(bad)
    assert any(g.startswith("service[0].scheduler:") for g in got), got
    assert any(g.startswith("service[0].backend[1].colour:") for g in got), got


def test_check_config_counts_services(tmp_path: Path) -> None:
    p = tmp_path / "lb.toml"
    p.write_text(LB)
    result = CliRunner().invoke(main, ["check-config", str(p)])
    assert result.exit_code == 0, result.output
    assert "ok (2 interfaces, 1 route, 2 services with 3 backends)" in result.output


RELAY = """
[relay]
interfaces = ["gw-a"]
peers = ["198.18.11.7", "2001:2:0:11::7"]
src_rate = 5
iface_rate = 50.5
min_mtu = 1200
ports = [80, 443]
"""


def test_relay_section_parses_into_settings() -> None:
    spec = parse(LB + RELAY).router_spec({"gw-a": (b"\x02" * 6, 1500), "gw-s": (b"\x04" * 6, 1500)})
    assert spec.relay is not None
    assert spec.relay.interfaces == ("gw-a",)
    assert [str(p) for p in spec.relay.peers] == ["198.18.11.7", "2001:2:0:11::7"]
    s = spec.relay.settings
    assert (s.src_rate, s.src_burst, s.iface_rate, s.iface_burst) == (5.0, 5.0, 50.5, 50.5)
    assert (s.min_mtu, s.max_mtu, s.ports, s.mark) == (1200, None, frozenset({80, 443}), 63)


def test_check_config_summarises_the_relay(tmp_path: Path) -> None:
    p = tmp_path / "node.toml"
    one_service = LB[: LB.index("[[service]]", LB.index("[[service]]") + 1)]
    p.write_text(one_service + RELAY)
    result = CliRunner().invoke(main, ["check-config", str(p)])
    assert result.exit_code == 0, result.output
    assert "1 service with 2 backends, PMTU relay on gw-a to 2 peers)" in result.output


def test_relay_mistakes_are_named_by_key_path() -> None:
    text = LB + (
        '\n[relay]\ninterfaces = ["gw-x"]\npeers = ["198.18.11.1", "198.18.99.1"]\n'
        "min_mtu = 1400\nmax_mtu = 1300\nmark = 64\n"
    )
    assert issues(text) == ["relay.mark: Input should be less than or equal to 63"]
    assert issues(text.replace("mark = 64\n", "")) == [
        "relay.interfaces[0]: no interface named 'gw-x'",
        "relay.peers[0]: 198.18.11.1 is gw-a's own address",
        "relay.peers[1]: 198.18.99.1 is not on a subnet of the relay's interfaces"
        " (peers are neighbours)",
        "relay.min_mtu: must not be above max_mtu",
    ]


def test_the_data_plane_defaults_to_af_packet_and_names_a_bad_mode() -> None:
    base = '[[interface]]\nname = "a"\naddresses = ["198.18.0.1/24"]\n'
    cfg = parse(base)
    assert (cfg.dataplane.mode, cfg.dataplane.xdp_attach) == ("afpacket", "native")
    cfg = parse(base + '[dataplane]\nmode = "auto"\nxdp_attach = "generic"\n')
    assert (cfg.dataplane.mode, cfg.dataplane.xdp_attach) == ("auto", "generic")
    got = issues(base + '[dataplane]\nmode = "dpdk"\nxdp_attach = "offload"\n')
    assert len(got) == 2 and got[0].startswith("dataplane.mode: ") and "'xdp'" in got[0], got
    assert got[1].startswith("dataplane.xdp_attach: "), got
