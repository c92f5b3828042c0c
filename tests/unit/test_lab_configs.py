"""The labs' configs are built from objects (lab/configs.py): what they write reads
back as written, and as the f-string templates they replaced wrote it
(old_lab_configs.py), with every extra TOML the tests and the benchmark pass."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from bench.forwarding import FNAT_SERVICE
from hypothesis import given
from hypothesis import strategies as st

from hopgate.control.config import parse
from hopgate.lab.configs import dumps, merge
from hopgate.lab.ecmplab import NODES, node_config
from hopgate.lab.lblab import lb_config
from hopgate.lab.topologies import hopgate_config, nat_config
from tests.unit import old_lab_configs as old

SOCKET = "/run/hopgate/lab-x/hopgate.sock"

# The extra TOML the lab tests and bench/forwarding.py give NatLab and LbLab.
NAT_EXTRAS = [
    "",
    "[nat]\nmax_connections = 262144\n\n[nat.timeouts]\nudp = 600\n",
    "[nat.timeouts]\nudp = 3\nudp_stream = 3\n",
    "[nat]\nmax_connections = 4\n",
    "[nat]\nmax_connections = 100\n\n[nat.timeouts]\ntcp_time_wait = 2\n",
    "[nat]\nmax_connections = 20000\n\n[nat.timeouts]\ntcp_unacknowledged = 5\n",
    FNAT_SERVICE,
]
LB_EXTRAS = ["", "[nat]\nmax_connections = 20000\n"]


def same(new: str, before: str) -> None:
    assert tomllib.loads(new) == tomllib.loads(before)
    assert parse(new, "built") == parse(before, "template")


@pytest.mark.parametrize("icmp", [old.LAB_ICMP, ""])
@pytest.mark.parametrize("mtu", [1400, 1500])
def test_the_router_lab_config_is_the_template_s(icmp: str, mtu: int) -> None:
    same(hopgate_config(SOCKET, mtu, icmp), old.hopgate_config(SOCKET, mtu, icmp))


@pytest.mark.parametrize("extra", NAT_EXTRAS)
def test_the_nat_lab_config_is_the_template_s(extra: str) -> None:
    same(nat_config(SOCKET, extra), old.nat_config(SOCKET, extra))


@pytest.mark.parametrize("extra", LB_EXTRAS)
def test_the_lb_lab_config_is_the_template_s(extra: str) -> None:
    same(lb_config(SOCKET, extra), old.lb_config(SOCKET, extra))


@pytest.mark.parametrize("relay", [False, True])
@pytest.mark.parametrize("i", range(len(NODES)))
def test_the_ecmp_node_configs_are_the_template_s(i: int, relay: bool) -> None:
    same(node_config(i, SOCKET, relay), old.node_config(i, SOCKET, relay))


def test_the_configs_say_what_they_are() -> None:
    assert nat_config(SOCKET).startswith("# hopgate as a NAT: the inside hosts behind gw-c")
    assert lb_config(SOCKET).splitlines()[1] == "# backends on gw-s."


def test_extra_toml_is_merged_and_a_key_given_twice_is_refused() -> None:
    base = {"nat": {"snat": [{"interface": "a"}]}, "icmp": {"ratelimit_burst": 6}}
    got = merge(base, '[nat]\nmax_connections = 4\n[[nat.snat]]\ninterface = "b"\n')
    assert got == {
        "nat": {"snat": [{"interface": "a"}, {"interface": "b"}], "max_connections": 4},
        "icmp": {"ratelimit_burst": 6},
    }
    assert base["nat"] == {"snat": [{"interface": "a"}]}  # not changed
    with pytest.raises(ValueError, match=r"icmp\.ratelimit_burst is given twice"):
        merge(base, "[icmp]\nratelimit_burst = 7\n")
    with pytest.raises(ValueError, match="nat is given twice"):
        merge(base, "nat = 1\n")


def test_what_the_writer_cannot_write_is_refused() -> None:
    with pytest.raises(TypeError, match=r"a\.b: cannot write a set"):
        dumps({"a": {"b": {1}}})
    with pytest.raises(TypeError, match="a: a list mixing tables and values"):
        dumps({"a": [1, {"b": 2}]})


# -- the writer round-trips through tomllib ---------------------------------------------

_keys = st.one_of(
    st.sampled_from(["name", "mtu", "via", "nat", "snat", "x-y", "a_b", "1"]),
    st.text(min_size=1, max_size=8),
)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


def _tables(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    if depth == 0:
        return st.dictionaries(_keys, _values, max_size=4)
    inner = _tables(depth - 1)
    return st.dictionaries(
        _keys,
        st.one_of(_values, inner, st.lists(inner, min_size=1, max_size=3)),
        max_size=4,
    )


@given(_tables(2))
def test_what_the_writer_writes_reads_back_the_same(doc: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(doc, "a comment\non two lines")) == doc


def test_floats_that_toml_spells_in_words() -> None:
    got = tomllib.loads(dumps({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert got["a"] == math.inf and got["b"] == -math.inf and math.isnan(got["c"])
