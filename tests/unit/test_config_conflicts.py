"""check-config rejects configs that would silently mean something else (issue 9):
an address in two roles (hopgate's own, a next hop, a backend, a VIP, a LIP, a
NAT pool or published address), overlapping subnets on two interfaces, an SNAT
rule translating traffic back out the interface it came from.  Every message
names its key path and what it conflicts with; the configs the project ships
(README, examples, labs, bench) stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.forwarding import FNAT_SERVICE
from click.testing import CliRunner

from hopgate.cli import main
from hopgate.control.config import ConfigError, parse
from hopgate.lab.ecmplab import NODES, node_config
from hopgate.lab.lblab import lb_config
from hopgate.lab.topologies import hopgate_config, nat_config

ROOT = Path(__file__).resolve().parents[2]

# gw-c inside (198.18.1.0/24), gw-u outside (198.18.2.0/24, router 198.18.2.2),
# gw-s the backends' LAN (198.18.20.0/24).
BASE = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]

[[interface]]
name = "gw-u"
addresses = ["198.18.2.1/24", "2001:2:0:2::1/64"]

[[interface]]
name = "gw-s"
addresses = ["198.18.20.1/24"]

[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.2.2"]

[[route]]
prefix = "::/0"
via = ["2001:2:0:2::2"]
"""


def service(
    vip: str = "198.18.100.1",
    lips: str = '"198.18.20.100"',
    backends: str = '{ address = "198.18.20.11" }',
    port: int = 80,
) -> str:
    return (
        f'\n[[service]]\nvip = "{vip}"\nport = {port}\nprotocol = "tcp"\n'
        f"local_addresses = [{lips}]\nbackend = [{backends}]\n"
    )


def snat(inside: str = '"198.18.1.0/24"', interface: str = "gw-u", pool: str = "") -> str:
    return f'\n[[nat.snat]]\ninside = [{inside}]\ninterface = "{interface}"\npool = [{pool}]\n'


def dnat(published: str = "198.18.2.1:8080", inside: str = "198.18.1.10:80") -> str:
    return f'\n[[nat.dnat]]\nprotocol = "tcp"\npublished = "{published}"\ninside = "{inside}"\n'


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(text, "t.toml")
    return [str(i) for i in e.value.issues]


def test_the_base_with_a_service_and_nat_is_valid() -> None:
    parse(BASE + service() + snat() + dnat())


# -- an address hopgate answers for that is a next hop: it would claim its gateway --

GATEWAY = ": hopgate would answer ARP/ND for its own gateway"


def test_a_lip_equal_to_the_next_hop() -> None:
    # what a user saw: hopgate answered ARP for its own default gateway
    assert issues(BASE + service(lips='"198.18.2.2"')) == [
        "service[0].local_addresses[0]: 198.18.2.2 is a next hop (route[0].via[0])" + GATEWAY
    ]


def test_a_pool_address_equal_to_the_next_hop() -> None:
    assert issues(BASE + snat(pool='"198.18.2.2"')) == [
        "nat.snat[0].pool[0]: 198.18.2.2 is a next hop (route[0].via[0])" + GATEWAY
    ]


def test_a_vip_equal_to_the_next_hop() -> None:
    assert issues(
        BASE
        + service(
            vip="2001:2:0:2::2", lips='"2001:2:0:2::100"', backends='{ address = "2001:2:0:1::11" }'
        )
    ) == ["service[0].vip: 2001:2:0:2::2 is a next hop (route[1].via[0])" + GATEWAY]


def test_a_published_address_equal_to_the_next_hop() -> None:
    assert issues(BASE + dnat(published="198.18.2.2:8080")) == [
        "nat.dnat[0].published: 198.18.2.2 is a next hop (route[0].via[0])" + GATEWAY
    ]


# -- an address hopgate answers for that is a backend ------------------------------

BACKEND = ": hopgate would take the backend's address for its own"


def test_a_lip_equal_to_a_backend() -> None:
    text = BASE + service(lips='"198.18.20.11"')
    assert issues(text) == [
        "service[0].local_addresses[0]: 198.18.20.11 is a backend (service[0].backend[0])" + BACKEND
    ]


def test_a_vip_equal_to_another_services_backend() -> None:
    text = (
        BASE
        + service()
        + service(
            vip="198.18.20.11", lips='"198.18.20.101"', backends='{ address = "198.18.20.12" }'
        )
    )
    assert issues(text) == [
        "service[1].vip: 198.18.20.11 is a backend (service[0].backend[0])" + BACKEND
    ]


def test_a_pool_or_published_address_equal_to_a_backend() -> None:
    text = (
        BASE
        + service(backends='{ address = "198.18.2.50" }, { address = "198.18.2.51" }')
        + snat(pool='"198.18.2.50"')
        + dnat(published="198.18.2.51:8080")
    )
    assert issues(text) == [
        "nat.snat[0].pool[0]: 198.18.2.50 is a backend (service[0].backend[0])" + BACKEND,
        "nat.dnat[0].published: 198.18.2.51 is a backend (service[0].backend[1])" + BACKEND,
    ]


def test_a_backend_equal_to_hopgates_own_address() -> None:
    text = BASE + service(backends='{ address = "198.18.20.11" }, { address = "198.18.20.1" }')
    assert issues(text) == [
        "service[0].backend[1].address: 198.18.20.1 is gw-s's own address;"
        " a backend is another host"
    ]


def test_a_next_hop_equal_to_hopgates_own_address() -> None:
    text = BASE.replace('via = ["198.18.2.2"]', 'via = ["198.18.2.2", "198.18.2.1"]')
    assert issues(text) == ["route[0].via[1]: 198.18.2.1 is hopgate's own address"]


# -- VIPs and LIPs are addresses of their own --------------------------------------


def test_a_vip_equal_to_a_pool_or_a_published_address() -> None:
    text = (
        BASE
        + service(vip="198.18.2.50")
        + service(vip="198.18.2.60", lips='"198.18.20.101"')
        + snat(pool='"198.18.2.50"')
        + dnat(published="198.18.2.60:8080")
    )
    # a DNAT rule on a VIP would never apply: traffic to a VIP goes to its services
    assert issues(text) == [
        "service[0].vip: 198.18.2.50 is a NAT pool address (nat.snat[0].pool[0]); a VIP is its own",
        "service[1].vip: 198.18.2.60 is published by nat.dnat[0]; a VIP is its own",
    ]


def test_a_vip_equal_to_hopgates_own_address_is_still_refused() -> None:
    assert issues(BASE + service(vip="198.18.2.1")) == [
        "service[0].vip: 198.18.2.1 is gw-u's own address; a VIP is its own"
    ]


def test_a_lip_equal_to_hopgates_own_address() -> None:
    assert issues(BASE + service(lips='"198.18.20.100", "198.18.20.1"')) == [
        "service[0].local_addresses[1]: 198.18.20.1 is gw-s's own address; a LIP is its own"
        " (health checks go from the interface's)"
    ]


def test_a_lip_equal_to_another_services_vip() -> None:
    text = BASE + service(vip="198.18.20.200") + service(vip="198.18.100.2", lips='"198.18.20.200"')
    assert issues(text) == [
        "service[1].local_addresses[0]: 198.18.20.200 is the VIP of service[0]; a LIP is its own"
    ]


def test_a_lip_equal_to_a_pool_or_a_published_address() -> None:
    # their ports are chosen apart: an LB connection could take a NAT mapping's
    # port or a published one
    text = (
        BASE
        + service(lips='"198.18.2.50", "198.18.2.60"')
        + snat(pool='"198.18.2.50"')
        + dnat(published="198.18.2.60:8080")
    )
    assert issues(text) == [
        "service[0].local_addresses[0]: 198.18.2.50 is a NAT pool address"
        " (nat.snat[0].pool[0]); a LIP is its own",
        "service[0].local_addresses[1]: 198.18.2.60 is published by nat.dnat[0]; a LIP is its own",
    ]


def test_the_same_address_twice_in_one_list() -> None:
    text = (
        BASE
        + service(
            lips='"198.18.20.100", "198.18.20.100"',
            backends='{ address = "198.18.20.11" }, { address = "198.18.20.11", port = 80 }',
        )
        + snat(pool='"198.18.2.50", "198.18.2.50"')
    )
    assert issues(text) == [
        "nat.snat[0].pool[1]: 198.18.2.50 is already pool[0]",
        "service[0].local_addresses[1]: 198.18.20.100 is already local_addresses[0]",
        "service[0].backend[1]: 198.18.20.11:80 is already backend[0]",
    ]


def test_a_dnat_inside_address_that_is_hopgates_own() -> None:
    text = (
        BASE
        + service()
        + dnat(inside="198.18.1.1:80")
        + dnat(published="198.18.2.1:8081", inside="198.18.100.1:80")
    )
    assert issues(text) == [
        "nat.dnat[0].inside: 198.18.1.1 is gw-c's own address;"
        " the inside address is another host's",
        "nat.dnat[1].inside: 198.18.100.1 is the VIP of service[0];"
        " the inside address is another host's",
    ]


def test_a_relay_peer_that_is_a_lip() -> None:
    text = BASE + service() + '\n[relay]\ninterfaces = ["gw-s"]\npeers = ["198.18.20.100"]\n'
    assert issues(text) == [
        "relay.peers[0]: 198.18.20.100 is a LIP (service[0].local_addresses[0]);"
        " peers are the other nodes"
    ]


# -- subnets and SNAT --------------------------------------------------------------


def test_overlapping_subnets_on_two_interfaces() -> None:
    wider = BASE.replace('addresses = ["198.18.20.1/24"]', 'addresses = ["198.18.0.1/16"]')
    assert issues(wider) == [
        "interface[2].addresses[0]: subnet 198.18.0.0/16 overlaps gw-c's 198.18.1.0/24"
    ]
    narrower = BASE.replace('"2001:2:0:2::1/64"', '"2001:2:0:2::1/64", "2001:2:0:1:8000::1/65"')
    assert issues(narrower) == [
        "interface[1].addresses[2]: subnet 2001:2:0:1:8000::/65 overlaps gw-c's 2001:2:0:1::/64"
    ]


def test_overlapping_subnets_on_one_interface_are_allowed() -> None:
    # as Linux: a second address with a wider prefix on the same link
    parse(BASE.replace('"198.18.20.1/24"', '"198.18.20.1/24", "198.18.20.2/23"'))


def test_snat_out_of_the_interface_the_inside_prefix_is_on() -> None:
    text = BASE + snat(inside='"198.18.2.0/24", "198.18.2.128/25", "198.18.0.0/16"')
    tail = ": its traffic would be translated back out the interface it came from"
    where = " (nat.snat[0].interface)"
    assert issues(text) == [
        "nat.snat[0].inside[0]: 198.18.2.0/24 is gw-u's subnet 198.18.2.0/24" + tail + where,
        "nat.snat[0].inside[1]: 198.18.2.128/25 overlaps gw-u's subnet 198.18.2.0/24"
        + tail
        + where,
        "nat.snat[0].inside[2]: 198.18.0.0/16 overlaps gw-u's subnet 198.18.2.0/24" + tail + where,
    ]


def test_snat_of_a_prefix_routed_out_of_the_same_interface() -> None:
    # 10.0.0.0/8 is only reached by the default route, out of gw-u itself
    text = BASE + snat(inside='"10.0.0.0/8"')
    assert issues(text) == [
        "nat.snat[0].inside[0]: 10.0.0.0/8 is routed out of gw-u (route[0]): its traffic"
        " would be translated back out the interface it came from (nat.snat[0].interface)"
    ]
    # with a route for it behind gw-c it is inside, as meant; also for a part of it
    routed = '\n[[route]]\nprefix = "10.0.0.0/8"\nvia = ["198.18.1.2"]\n'
    parse(BASE + routed + snat(inside='"10.0.0.0/8"'))
    part = '\n[[route]]\nprefix = "10.1.0.0/16"\nvia = ["198.18.1.2"]\n'
    parse(BASE + part + snat(inside='"10.0.0.0/8"'))


# -- what stays valid ----------------------------------------------------------------


def test_sharing_that_is_meant_stays_valid() -> None:
    parse(
        BASE
        # masquerade named explicitly, and a pool address also published
        + snat(pool='"198.18.2.1"')
        + snat(inside='"2001:2:0:1::/64"', pool='"2001:2:0:2::50"')
        + dnat()  # the interface's own address published (the README's example)
        + dnat(published="[2001:2:0:2::50]:8080", inside="[2001:2:0:1::10]:80")
        # one VIP for several ports; services sharing LIPs and backends
        + service()
        + service(port=443, lips='"198.18.20.100", "198.18.20.101"')
    )


def test_every_conflict_is_listed_not_only_the_first() -> None:
    text = (
        BASE.replace('addresses = ["198.18.20.1/24"]', 'addresses = ["198.18.0.1/16"]')
        + service(lips='"198.18.2.2"', backends='{ address = "198.18.1.1" }')
        + snat(inside='"198.18.2.0/24"', pool='"198.18.2.2"')
    )
    assert issues(text) == [
        "interface[2].addresses[0]: subnet 198.18.0.0/16 overlaps gw-c's 198.18.1.0/24",
        "nat.snat[0].pool[0]: 198.18.2.2 is a next hop (route[0].via[0])" + GATEWAY,
        "nat.snat[0].inside[0]: 198.18.2.0/24 is gw-u's subnet 198.18.2.0/24: its traffic"
        " would be translated back out the interface it came from (nat.snat[0].interface)",
        "service[0].local_addresses[0]: 198.18.2.2 is a next hop (route[0].via[0])" + GATEWAY,
        "service[0].backend[0].address: 198.18.1.1 is gw-c's own address;"
        " a backend is another host",
    ]


def test_check_config_prints_every_conflict(tmp_path: Path) -> None:
    p = tmp_path / "lb.toml"
    p.write_text(BASE + service(lips='"198.18.2.2"') + snat(inside='"198.18.2.0/24"'))
    result = CliRunner().invoke(main, ["check-config", str(p)])
    assert result.exit_code == 1
    assert f"{p}: 2 errors" in result.output
    assert "  service[0].local_addresses[0]: 198.18.2.2 is a next hop" in result.output
    assert "  nat.snat[0].inside[0]: 198.18.2.0/24 is gw-u's subnet" in result.output


# -- the configs the project ships ----------------------------------------------------


def test_the_lab_and_bench_configs_are_valid() -> None:
    parse(hopgate_config("/tmp/x.sock"), "router lab")
    parse(nat_config("/tmp/x.sock"), "NAT lab")
    parse(nat_config("/tmp/x.sock", FNAT_SERVICE), "bench FNAT")
    parse(lb_config("/tmp/x.sock"), "LB lab")
    for i in range(len(NODES)):
        for relay in (False, True):
            parse(node_config(i, "/tmp/x.sock", relay), f"ECMP node {i}")


def test_the_examples_and_the_readme_are_valid() -> None:
    for toml in (ROOT / "examples").glob("*.toml"):
        parse(toml.read_text(), str(toml))
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    assert len(blocks) >= 3
    for block in blocks:
        parse(block, "README.md")
