"""Prometheus exposition of a status snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hopgate.pipeline.model import AdminState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ADMIN_STATES = tuple(s.value for s in AdminState)  # every one, 0 but the backend's


class _SnapshotCollector(Collector):
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        if s.get("kind") == "relay":
            yield from relay_metrics(s["interfaces"])
            yield GaugeMetricFamily(
                "hopgate_uptime_seconds", "Seconds since start", value=s["uptime_seconds"]
            )
            return
        per_port = {
            "rx_packets": "Frames received",
            "rx_bytes": "Bytes received",
            "tx_packets": "Frames sent",
            "tx_bytes": "Bytes sent",
            "forwarded": "Packets forwarded, by ingress interface",
        }
        for key, doc in per_port.items():
            fam = CounterMetricFamily(f"hopgate_{key}", doc, labels=["interface"])
            for p in s["interfaces"]:
                fam.add_metric([p["name"]], p[key])
            yield fam
        drops = CounterMetricFamily(
            "hopgate_drops",
            "Frames dropped, by interface and reason",
            labels=["interface", "reason"],
        )
        for p in s["interfaces"]:
            for reason, n in p["drops"].items():
                drops.add_metric([p["name"], reason], n)
        yield drops
        io = CounterMetricFamily(
            "hopgate_socket_events", "Events at the packet sockets", labels=["interface", "event"]
        )
        for p in s["interfaces"]:
            for event, n in p.get("io", {}).items():
                io.add_metric([p["name"], event], n)
        yield io
        yield from _links(s["interfaces"])
        yield from _host_ports(s["interfaces"])
        yield from _fastpath(s)
        sent = CounterMetricFamily(
            "hopgate_icmp_sent", "ICMP messages sent", labels=["family", "type", "code"]
        )
        for e in s["icmp_sent"]:
            sent.add_metric([f"ipv{e['family']}", str(e["type"]), str(e["code"])], e["count"])
        yield sent
        limited = CounterMetricFamily(
            "hopgate_icmp_rate_limited",
            "ICMP errors suppressed by a rate limit",
            labels=["family", "type", "code", "limit"],
        )
        for e in s["icmp_rate_limited"]:
            limited.add_metric(
                [f"ipv{e['family']}", str(e["type"]), str(e["code"]), e["limit"]], e["count"]
            )
        yield limited
        not_sent = CounterMetricFamily(
            "hopgate_icmp_not_sent",
            "ICMP errors not sent by rule (RFC 1812, RFC 4443)",
            labels=["rule"],
        )
        for rule, n in s["icmp_not_sent"].items():
            not_sent.add_metric([rule], n)
        yield not_sent
        yield CounterMetricFamily(
            "hopgate_tcp_resets_sent", "TCP resets sent", value=s["tcp_resets_sent"]
        )
        neigh = GaugeMetricFamily(
            "hopgate_neighbours",
            "Neighbour entries by family and state",
            labels=["family", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for entry in s["neighbours"]:
            slot = (f"ipv{entry['family']}", str(entry["state"]))
            counts[slot] = counts.get(slot, 0) + 1
        for (family, state), n in sorted(counts.items()):
            neigh.add_metric([family, state], n)
        yield neigh
        nat = s.get("nat")
        if nat:
            yield GaugeMetricFamily(
                "hopgate_nat_connections", "Tracked connections", value=nat["connections"]
            )
            yield GaugeMetricFamily(
                "hopgate_nat_connections_limit",
                "Most tracked connections",
                value=nat["max_connections"],
            )
            yield GaugeMetricFamily(
                "hopgate_nat_connections_unassured",
                "Tracked connections early drop may evict",
                value=nat.get("unassured", 0),
            )
            yield GaugeMetricFamily(
                "hopgate_nat_mappings", "Source mappings", value=nat["mappings"]
            )
            events = CounterMetricFamily("hopgate_nat_events", "NAT events", labels=["event"])
            for event, n in sorted(nat["counters"].items()):
                events.add_metric([event], n)
            yield events
            yield from _services(nat["services"])
        if s.get("relay"):
            yield from relay_metrics(s["relay"]["interfaces"])
            if s["relay"].get("second_chance"):
                yield from second_chance_metrics(s["relay"]["second_chance"])
        if s.get("bgp"):
            yield from _bgp(s["bgp"])
        if s.get("gc"):
            yield from _gc(s["gc"])
        yield CounterMetricFamily(
            "hopgate_internal_errors",
            "Frames that met a bug (each also dropped)",
            value=s["internal_errors"],
        )
        yield GaugeMetricFamily(
            "hopgate_uptime_seconds", "Seconds since start", value=s["uptime_seconds"]
        )


def second_chance_metrics(c: dict[str, int]) -> Iterator[Metric]:
    """Second chance (``[relay]``): TCP segments of connections another node holds."""
    yield CounterMetricFamily(
        "hopgate_second_chance_segments_sent",
        "TCP segments of no connection here sent to the peers (not scheduled)",
        value=c["segments_sent"],
    )
    yield CounterMetricFamily(
        "hopgate_second_chance_copies_sent", "Their copies, one per peer", value=c["copies_sent"]
    )
    yield CounterMetricFamily(
        "hopgate_second_chance_copies_received",
        "Peers' copies received",
        value=c["copies_received"],
    )
    yield CounterMetricFamily(
        "hopgate_second_chance_copies_forwarded",
        "Peers' copies of a connection held here, forwarded as its packets",
        value=c["copies_forwarded"],
    )
    yield CounterMetricFamily(
        "hopgate_second_chance_copies_missed",
        "Peers' copies of no connection here, dropped",
        value=c["copies_missed"],
    )


def relay_metrics(interfaces: list[dict[str, Any]]) -> Iterator[Metric]:
    seen = CounterMetricFamily(
        "hopgate_relay_seen", "PMTU messages (frag needed, PTB) seen", labels=["interface"]
    )
    relayed = CounterMetricFamily(
        "hopgate_relay_relayed", "PMTU messages relayed to peers", labels=["interface"]
    )
    dropped = CounterMetricFamily(
        "hopgate_relay_dropped",
        "PMTU messages not relayed, by reason",
        labels=["interface", "reason"],
    )
    missed = CounterMetricFamily(
        "hopgate_relay_missed",
        "Frames the kernel dropped at the capture socket (the relay fell behind)",
        labels=["interface"],
    )
    for i in interfaces:
        if "missed" in i:
            missed.add_metric([i["interface"]], i["missed"])
        seen.add_metric([i["interface"]], i["seen"])
        relayed.add_metric([i["interface"]], i["relayed"])
        for reason, n in i["dropped"].items():
            dropped.add_metric([i["interface"], reason], n)
    yield from (seen, relayed, dropped, missed)


def _fastpath(state: dict[str, Any]) -> Iterator[Metric]:
    """The XDP fast path's frames by ingress interface and verdict (forwarded
    there, or passed up to the pipeline, whose counters then count them too)."""
    dataplane = state.get("dataplane") or {}
    yield GaugeMetricFamily(
        "hopgate_fastpath_enabled",
        "1 if the XDP fast path runs in front of the pipeline",
        value=1 if dataplane.get("mode") == "xdp" else 0,
    )
    if dataplane.get("mode") != "xdp":
        return
    frames = CounterMetricFamily(
        "hopgate_fastpath_frames",
        "Frames the XDP fast path forwarded or passed up to the pipeline",
        labels=["interface", "verdict"],
    )
    for p in state["interfaces"]:
        for verdict, n in sorted((p.get("fastpath") or {}).items()):
            frames.add_metric([p["name"], verdict], n)
    yield frames
    yield CounterMetricFamily(
        "hopgate_fastpath_sync_errors",
        "Table updates of the fast path that failed (its frames went to the pipeline)",
        value=dataplane["sync_errors"],
    )


def _host_ports(interfaces: list[dict[str, Any]]) -> Iterator[Metric]:
    """The host ports (io/hostport.py), on the interfaces that have one."""
    frames = CounterMetricFamily(
        "hopgate_host_frames",
        "Frames passed up to the host port, and taken from it to send, by interface",
        labels=["interface", "direction"],
    )
    up = GaugeMetricFamily(
        "hopgate_host_port_up",
        "1 if the host port is there with its carrier on (its interface's link is up)",
        labels=["interface"],
    )
    io = CounterMetricFamily(
        "hopgate_host_port_events",
        "Events at the host port's device",
        labels=["interface", "event"],
    )
    for p in interfaces:
        if "to_host" in p:
            frames.add_metric([p["name"], "to_host"], p["to_host"])
            frames.add_metric([p["name"], "from_host"], p["from_host"])
        host = p.get("host")
        if host:
            up.add_metric([p["name"]], 1 if host["carrier"] and not host["gone"] else 0)
            for event, n in host["io"].items():
                io.add_metric([p["name"], event], n)
    yield from (frames, up, io)


def _links(interfaces: list[dict[str, Any]]) -> Iterator[Metric]:
    """Link state and events (io/links.py), where the snapshot has them."""
    up = GaugeMetricFamily(
        "hopgate_link_up", "1 if the interface's link is up and forwarded to", labels=["interface"]
    )
    events = CounterMetricFamily(
        "hopgate_link_events",
        "Link events: down, up, re-created under the same name",
        labels=["interface", "event"],
    )
    for p in interfaces:
        link = p.get("link")
        if not link:
            continue
        up.add_metric([p["name"]], 1 if link["state"] == "up" else 0)
        for event, key in (("down", "link_downs"), ("up", "link_ups"), ("recreated", "recreated")):
            events.add_metric([p["name"], event], link[key])
    yield from (up, events)


def _services(services: list[dict[str, Any]]) -> Iterator[Metric]:
    labels = ["service", "backend"]
    up = GaugeMetricFamily(
        "hopgate_backend_up", "1 if the backend takes new connections", labels=labels
    )
    healthy = GaugeMetricFamily(
        "hopgate_backend_healthy", "1 if the backend passes its health checks", labels=labels
    )
    admin = GaugeMetricFamily(
        "hopgate_backend_admin_state",
        "1 for the backend's admin state (hopgate backend: enabled, drained, disabled)",
        labels=[*labels, "state"],
    )
    weight = GaugeMetricFamily(
        "hopgate_backend_weight", "The backend's weight (the operator's if set)", labels=labels
    )
    active = GaugeMetricFamily(
        "hopgate_backend_active_connections", "Connections open to the backend", labels=labels
    )
    total = CounterMetricFamily(
        "hopgate_backend_connections", "Connections sent to the backend", labels=labels
    )
    checks = CounterMetricFamily(
        "hopgate_backend_checks", "Health checks by result", labels=[*labels, "result"]
    )
    for svc in services:
        for b in svc["backends"]:
            key = [svc["name"], b["backend"]]
            up.add_metric(key, 1 if b["up"] else 0)
            healthy.add_metric(key, 1 if b["healthy"] else 0)
            for state in ADMIN_STATES:
                admin.add_metric([*key, state], 1 if b["admin"] == state else 0)
            weight.add_metric(key, b["weight"])
            active.add_metric(key, b["active"])
            total.add_metric(key, b["total"])
            checks.add_metric([*key, "ok"], b["checks_ok"])
            checks.add_metric([*key, "failed"], b["checks_failed"])
    yield from (up, healthy, admin, weight, active, total, checks)


def _gc(state: dict[str, Any]) -> Iterator[Metric]:
    """Python's collector: each collection holds the loop while it runs."""
    runs = CounterMetricFamily(
        "hopgate_gc_collections", "Garbage collections, by generation", labels=["generation"]
    )
    took = CounterMetricFamily(
        "hopgate_gc_seconds", "Time in garbage collections, by generation", labels=["generation"]
    )
    for generation, (n, seconds) in enumerate(
        zip(state["collections"], state["seconds"], strict=True)
    ):
        runs.add_metric([str(generation)], n)
        took.add_metric([str(generation)], seconds)
    yield from (runs, took)
    yield GaugeMetricFamily(
        "hopgate_gc_longest_seconds",
        "The longest garbage collection so far",
        value=state["longest_ms"] / 1000,
    )


def _bgp(bgp: dict[str, Any]) -> Iterator[Metric]:
    session = GaugeMetricFamily(
        "hopgate_bgp_session_up", "1 if the BGP session is established", labels=["neighbor"]
    )
    exported = GaugeMetricFamily(
        "hopgate_bgp_prefixes_exported", "Prefixes announced on the session", labels=["neighbor"]
    )
    for x in bgp["sessions"]:
        session.add_metric([x["neighbor"]], 1 if x["established"] else 0)
        exported.add_metric([x["neighbor"]], x["exported"])
    yield from (session, exported)
    announced = GaugeMetricFamily(
        "hopgate_bgp_announced", "1 if the prefix is announced", labels=["prefix"]
    )
    for v in bgp["vips"]:
        announced.add_metric([v["prefix"]], 1 if v["announced"] else 0)
    yield announced
    yield GaugeMetricFamily(
        "hopgate_bgp_prefixes_announced",
        "Prefixes hopgate has BIRD announce",
        value=len(bgp["announced"]),
    )
    yield GaugeMetricFamily(
        "hopgate_bgp_drained", "1 while the node is drained", value=1 if bgp["drained"] else 0
    )
    yield GaugeMetricFamily(
        "hopgate_bgp_speaker_up", "1 while BIRD runs", value=1 if bgp["running"] else 0
    )
    yield CounterMetricFamily(
        "hopgate_bgp_speaker_restarts", "Times BIRD was started again", value=bgp["restarts"]
    )


def render(state: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(state))
    return generate_latest(registry)
