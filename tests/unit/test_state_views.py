"""Typed operator state: the pipeline's records, formatted by ``control/views.py``,
make the same JSON document the admin API served before they were typed, and
every counter the pipeline keeps reaches ``/metrics``."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from hopgate import daemon
from hopgate.control import metrics, views
from hopgate.io.afpacket import IoCounters
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.counters import NotSent
from hopgate.pipeline.router import Router
from tests.unit.state_scenarios import SCENARIOS

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src" / "hopgate"
DOCS = HERE.parents[1] / "docs"
# What router.state() and counters.snapshot() returned for each scenario when
# router.state() still built the JSON itself (tests/unit/state_scenarios.py).
GOLDEN: dict[str, Any] = json.loads((HERE / "data" / "status_json.json").read_text())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_json_document_is_the_one_served_before(name: str) -> None:
    r = SCENARIOS[name]()
    got = json.loads(json.dumps(views.router(r.state())))
    assert got == GOLDEN[name]["state"]
    # The order of keys and of list items too (``hopgate status --json`` readers).
    assert json.dumps(got) == json.dumps(GOLDEN[name]["state"])
    assert json.loads(json.dumps(r.counters.snapshot())) == GOLDEN[name]["counters"]


def test_the_pipeline_state_is_raw_values() -> None:
    s = SCENARIOS["lb"]().state()
    assert isinstance(s.interfaces[0].mac, bytes) and isinstance(s.neighbours[0].address, int)
    assert s.nat is not None and isinstance(s.nat.services[0].vip, int)
    with pytest.raises(AttributeError):
        s.timers = 0  # type: ignore[misc]


def nat_counter_names() -> set[str]:
    """Every NAT event the pipeline counts, read from the code that counts it."""
    names: set[str] = set()
    for path in SRC.joinpath("pipeline").rglob("*.py"):
        for key in re.findall(r"counters\[([^\]]*)\]", path.read_text()):
            names.update(re.findall(r'"([a-z0-9-]+)"', key))
    assert "connections-created" in names and "connections-expired" in names
    return names


class _Loop:
    internal_errors = 0

    def link_status(self, port: int) -> dict[str, Any]:
        return {"state": "up", "link_downs": 0, "link_ups": 0, "recreated": 0}

    def host_status(self, port: int) -> dict[str, Any] | None:
        return None


class _Socket:
    def update_stats(self) -> IoCounters:
        return IoCounters(**{f.name: 1 for f in fields(IoCounters)})


def everything_counted() -> Router:
    """A load balancer with every counter it keeps made non-zero."""
    r = SCENARIOS["lb"]()
    c = r.counters
    for reason in DropReason:
        c.drops[(0, reason)] += 1
    for rule in NotSent:
        c.icmp_not_sent[rule] += 1
    c.icmp_sent[(4, 11, 0)] += 1
    c.icmp_sent[(6, 3, 0)] += 1
    c.icmp_rate_limited[(4, 3, 1, "global")] += 1
    assert r.nat is not None
    for name in nat_counter_names():
        r.nat.counters[name] += 1
    return r


def test_every_counter_appears_in_the_metrics() -> None:
    r = everything_counted()
    sockets: Any = [_Socket() for _ in r.ports]
    state = daemon.snapshot(r, _Loop(), sockets, 0.0, "test.toml")  # type: ignore[arg-type]
    text = metrics.render(json.loads(json.dumps(state))).decode()
    port = r.ports[0].name
    for reason in DropReason:
        assert f'hopgate_drops_total{{interface="{port}",reason="{reason.value}"}} 1.0' in text
    for rule in NotSent:
        assert f'hopgate_icmp_not_sent_total{{rule="{rule.value}"}} 1.0' in text
    for name in nat_counter_names():
        assert f'hopgate_nat_events_total{{event="{name}"}} ' in text
    for f in fields(IoCounters):
        assert f'hopgate_socket_events_total{{event="{f.name}",interface="{port}"}} 1.0' in text
    assert 'hopgate_icmp_sent_total{code="0",family="ipv4",type="11"} 1.0' in text
    assert 'hopgate_icmp_sent_total{code="0",family="ipv6",type="3"} 1.0' in text
    assert (
        'hopgate_icmp_rate_limited_total{code="1",family="ipv4",limit="global",type="3"} 1.0'
        in text
    )
    for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "forwarded"):
        assert f'hopgate_{key}_total{{interface="{port}"}}' in text
    for key in ("tcp_resets_sent_total", "nat_connections ", "nat_mappings ", "backend_up{"):
        assert f"hopgate_{key}" in text


def test_every_nat_counter_is_named_in_the_behaviour_doc() -> None:
    text = (DOCS / "behaviour.md").read_text()
    missing = {n for n in nat_counter_names() if f"`{n}`" not in text}
    assert not missing, f"NAT counters not in docs/behaviour.md: {sorted(missing)}"
