"""``hopgate status``: the running daemon's counters and state, as tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

_ICMP_NAMES = {
    (4, 0, 0): "echo reply",
    (4, 3, 0): "destination unreachable: net",
    (4, 3, 1): "destination unreachable: host",
    (4, 3, 2): "destination unreachable: protocol",
    (4, 3, 3): "destination unreachable: port",
    (4, 3, 4): "fragmentation needed",
    (4, 11, 0): "time exceeded: TTL",
    (4, 11, 1): "time exceeded: reassembly",
    (6, 1, 0): "destination unreachable: no route",
    (6, 1, 2): "destination unreachable: beyond scope",
    (6, 1, 3): "destination unreachable: address",
    (6, 1, 4): "destination unreachable: port",
    (6, 2, 0): "packet too big",
    (6, 3, 0): "time exceeded: hop limit",
    (6, 3, 1): "time exceeded: reassembly",
    (6, 4, 0): "parameter problem: header",
    (6, 4, 1): "parameter problem: next header",
    (6, 4, 2): "parameter problem: option",
    (6, 129, 0): "echo reply",
}


def icmp_name(family: int, icmp_type: int, code: int) -> str:
    return _ICMP_NAMES.get((family, icmp_type, code), f"type {icmp_type} code {code}")


def render(state: dict[str, Any], console: Console) -> None:
    up = state["uptime_seconds"]
    console.print(
        f"[bold]hopgate {state['version']}[/bold]  pid {state['pid']}  up {up:.0f}s"
        f"  config {state['config']}"
    )
    dataplane = state.get("dataplane") or {"mode": "afpacket"}
    fast = dataplane["mode"] == "xdp"
    if fast:
        console.print(
            f"data plane: XDP ({dataplane['attach']}) in front of the pipeline;"
            f" the fast path forwarded {dataplane['forwarded']:,} frames and passed"
            f" {dataplane['passed']:,} up"
            + (f", [red]{dataplane['sync_errors']:,} table updates failed[/red]"
               if dataplane["sync_errors"] else "")
        )  # fmt: skip
    else:
        console.print("data plane: AF_PACKET (the pipeline takes every frame)")
    t = Table(title="Interfaces", title_justify="left")
    numbers = ("mtu", "rx", "tx", "forwarded", "fast path", "dropped")
    columns: tuple[str, ...] = ("interface", "mtu", "addresses", "rx", "tx", "forwarded")
    columns += ("fast path", "dropped") if fast else ("dropped",)
    for col in columns:
        t.add_column(col, justify="right" if col in numbers else "left")
    for p in state["interfaces"]:
        link = (p.get("link") or {}).get("state", "up")
        row = [
            p["name"] if link == "up" else f"{p['name']} ({link})",
            str(p["mtu"]),
            "\n".join(p["addresses"]),
            f"{p['rx_packets']:,}",
            f"{p['tx_packets']:,}",
            f"{p['forwarded']:,}",
        ]
        if fast:
            row.append(f"{(p.get('fastpath') or {}).get('forwarded', 0):,}")
        row.append(f"{sum(p['drops'].values()):,}")
        t.add_row(*row)
    console.print(t)
    if fast:
        console.print("rx, tx, forwarded: the pipeline's; fast path: forwarded by XDP, by ingress")
    hosts = [p for p in state["interfaces"] if p.get("host")]
    if hosts:
        console.print(host_table(hosts))

    if state["drops"]:
        t = Table(title="Drops by reason", title_justify="left")
        t.add_column("reason")
        names = [p["name"] for p in state["interfaces"]]
        for n in names:
            t.add_column(n, justify="right")
        t.add_column("total", justify="right")
        for reason, total in sorted(state["drops"].items(), key=lambda kv: -kv[1]):
            per = [f"{p['drops'].get(reason, 0):,}" for p in state["interfaces"]]
            t.add_row(reason, *per, f"{total:,}")
        console.print(t)

    t = Table(title="ICMP sent", title_justify="left")
    t.add_column("family")
    t.add_column("message")
    t.add_column("type/code", justify="right")
    t.add_column("sent", justify="right")
    t.add_column("rate limited", justify="right")
    limited: dict[tuple[int, int, int], int] = {}
    for e in state["icmp_rate_limited"]:
        key = (e["family"], e["type"], e["code"])
        limited[key] = limited.get(key, 0) + e["count"]
    keys = {(e["family"], e["type"], e["code"]) for e in state["icmp_sent"]} | set(limited)
    sent = {(e["family"], e["type"], e["code"]): e["count"] for e in state["icmp_sent"]}
    for key in sorted(keys):
        f, ty, c = key
        t.add_row(
            f"IPv{f}",
            icmp_name(f, ty, c),
            f"{ty}/{c}",
            f"{sent.get(key, 0):,}",
            f"{limited.get(key, 0):,}",
        )
    console.print(t)
    extra = [f"TCP resets sent: {state['tcp_resets_sent']:,}"]
    if state["icmp_not_sent"]:
        rules = ", ".join(f"{k} {v:,}" for k, v in sorted(state["icmp_not_sent"].items()))
        extra.append(f"ICMP errors not sent by rule: {rules}")
    if state["internal_errors"]:
        extra.append(f"[red]internal errors: {state['internal_errors']:,}[/red]")
    console.print("\n".join(extra))

    nat = state.get("nat")
    if nat:
        c = nat["counters"]
        console.print(
            f"[bold]NAT[/bold]: {nat['connections']:,} connections"
            f" (limit {nat['max_connections']:,}), {nat.get('unassured', 0):,} unassured,"
            f" {nat['mappings']:,} mappings; created {c.get('connections-created', 0):,},"
            f" expired {c.get('connections-expired', 0):,},"
            f" early-dropped {c.get('connections-early-dropped', 0):,};"
            f" ICMP errors translated {c.get('icmp-errors-translated', 0):,}"
            "  (hopgate conns lists them)"
        )

    relay = state.get("relay")
    if relay:
        to = f" to {', '.join(relay['peers'])}" if relay["peers"] else ""
        console.print(relay_table(relay["interfaces"], f"PMTU relay ({relay['mode']}{to})"))
        if relay.get("second_chance"):
            console.print(second_chance_line(relay["second_chance"]))

    services = nat["services"] if nat else []
    if services:
        t = Table(title="Services", title_justify="left")
        for col in (
            "service",
            "backend",
            "weight",
            "health",
            "admin",
            "active",
            "total",
            "checks ok/failed",
        ):
            t.add_column(
                col,
                justify="left" if col in ("service", "backend", "health", "admin") else "right",
            )
        for svc in services:
            about = (
                f"{svc['name']}\n{svc['protocol']} {_endpoint(svc['vip'], svc['port'])}"
                f"\n{svc['scheduler']}, {svc['health']} checks"
            )
            for i, b in enumerate(svc["backends"]):
                t.add_row(
                    about if i == 0 else "",
                    b["backend"],
                    _weight(b),
                    _health(b),
                    _ADMIN.get(b["admin"], b["admin"]),
                    f"{b['active']:,}",
                    f"{b['total']:,}",
                    f"{b['checks_ok']:,}/{b['checks_failed']:,}",
                    end_section=i == len(svc["backends"]) - 1,
                )
        console.print(t)

    if state.get("bgp"):
        render_bgp(state["bgp"], console)

    if state["neighbours"]:
        t = Table(title="Neighbours", title_justify="left")
        for col in ("interface", "address", "mac", "state", "queued"):
            t.add_column(col)
        for n in state["neighbours"]:
            t.add_row(n["interface"], n["address"], n["mac"] or "-", n["state"], str(n["queued"]))
        console.print(t)

    t = Table(title="Routes", title_justify="left")
    t.add_column("prefix")
    t.add_column("next hops")
    for r in state["routes"]:
        hops = ", ".join(
            f"via {h['via']} dev {h['interface']}"
            if h["via"]
            else f"dev {h['interface']} (connected)"
            for h in r["nexthops"]
        )
        t.add_row(r["prefix"], hops)
    console.print(t)


def render_bgp(bgp: dict[str, Any], console: Console) -> None:
    """The BGP sessions BIRD holds, and what is announced and why."""
    speaker = "BIRD running" if bgp["running"] else "[red]BIRD not running[/red]"
    drained = ""
    if bgp["drained"]:
        d = bgp["drain"] or {}
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.get("since", 0)))
        drained = f", [yellow]drained[/yellow] since {since}"
        if d.get("ended"):
            drained += " (timeout passed: connections ended)"
        elif d.get("timeout"):
            drained += f" (connections ended after {d['timeout']:g} s)"
    error = f"; [red]{bgp['error']}[/red]" if bgp["error"] else ""
    console.print(
        f"[bold]BGP[/bold]: AS{bgp['asn']}, router ID {bgp['router_id']}; {speaker}"
        f"{drained}; announcing {', '.join(bgp['announced']) or 'nothing'}{error}"
    )
    t = Table(title="BGP sessions", title_justify="left")
    for col in ("neighbor", "AS", "on", "from", "next hop", "state", "since", "exported"):
        t.add_column(col, justify="right" if col == "exported" else "left")
    for x in bgp["sessions"]:
        state = x["state"] if x["established"] else f"[red]{x['state']}[/red]"
        if x["last_error"] and not x["established"]:
            state += f" ({x['last_error']})"
        t.add_row(
            x["neighbor"],
            str(x["asn"]),
            x["interface"],
            x["local"],
            x["next_hop"],
            state,
            x["since"],
            str(x["exported"]),
        )
    console.print(t)
    if bgp["vips"]:
        t = Table(title="VIPs", title_justify="left")
        for col in ("prefix", "announced", "why", "services (backends up)"):
            t.add_column(col)
        for v in bgp["vips"]:
            services = ", ".join(
                f"{x['name']} ({x['backends_up']}/{x['backends']})" for x in v["services"]
            )
            t.add_row(v["prefix"], "yes" if v["announced"] else "[red]no[/red]", v["why"], services)
        console.print(t)


def host_table(interfaces: list[dict[str, Any]]) -> Table:
    """The host ports (io/hostport.py): frames passed up to the host and taken
    from it, and those its device did not take."""
    t = Table(title="Host ports", title_justify="left")
    numbers = ("to host", "from host", "not taken")
    for col in ("interface", "host port", "addresses", *numbers):
        t.add_column(col, justify="right" if col in numbers else "left")
    for p in interfaces:
        h = p["host"]
        state = "gone" if h["gone"] else ("" if h["carrier"] else "no carrier")
        io = h["io"]
        t.add_row(
            p["name"],
            f"{h['name']} ({state})" if state else h["name"],
            "\n".join(h["addresses"]),
            f"{p.get('to_host', 0):,}",
            f"{p.get('from_host', 0):,}",
            f"{io['tx_dropped_busy'] + io['tx_errors']:,}",
        )
    return t


def second_chance_line(c: dict[str, int]) -> str:
    """What second chance did (``[relay]``, pipeline/lb/cluster.py)."""
    return (
        "[bold]Second chance[/bold]: segments of no connection here sent to the peers"
        f" {c['segments_sent']:,} ({c['copies_sent']:,} copies); the peers' copies received"
        f" {c['copies_received']:,}, forwarded {c['copies_forwarded']:,} (held here),"
        f" missed {c['copies_missed']:,}"
    )


def relay_table(interfaces: list[dict[str, Any]], title: str) -> Table:
    """Per interface: PMTU messages seen, relayed, and not relayed by reason."""
    reasons = sorted({r for i in interfaces for r in i["dropped"]})
    missed = any("missed" in i for i in interfaces)
    t = Table(title=title, title_justify="left")
    t.add_column("interface")
    for col in ("seen", "relayed", *reasons, *(["missed (capture full)"] if missed else [])):
        t.add_column(col, justify="right")
    for i in interfaces:
        row = [
            i["interface"],
            f"{i['seen']:,}",
            f"{i['relayed']:,}",
            *(f"{i['dropped'].get(r, 0):,}" for r in reasons),
        ]
        if missed:
            row.append(f"{i.get('missed', 0):,}")
        t.add_row(*row)
    return t


def render_relay(state: dict[str, Any], console: Console) -> None:
    s = state["settings"]
    console.print(
        f"[bold]hopgate relay {state['version']}[/bold]  pid {state['pid']}"
        f"  up {state['uptime_seconds']:.0f}s  {state['mode']}"
        + ("  [yellow]dry run[/yellow]" if state["dry_run"] else "")
    )
    if s["min_mtu"] is None and s["max_mtu"] is None:
        mtu = "any sane (68 up for IPv4, 1280 up for IPv6)"
    else:
        mtu = f"{s['min_mtu'] or 'sane'} to {s['max_mtu'] or 65535}"
    ports = ",".join(map(str, s["ports"])) or "all"
    console.print(
        f"rates: {s['src_rate']:g}/s per source (burst {s['src_burst']:g}),"
        f" {s['iface_rate']:g}/s per interface (burst {s['iface_burst']:g});"
        f" MTU {mtu}; ports {ports}; mark DSCP {s['mark']}"
    )
    if state.get("filter") == "ebpf":
        console.print("filter: eBPF, checks and rate limits in the kernel")
    elif "filter" in state:
        console.print(f"filter: classic, rate limits in the relay ({state['filter_note']})")
    console.print(relay_table(state["interfaces"], "PMTU messages"))
    if state["peers"]:
        t = Table(title="Peers", title_justify="left")
        for col in ("peer", "interface", "mac", "sent", "not sent (unresolved)"):
            t.add_column(col, justify="left" if col in ("peer", "interface", "mac") else "right")
        for p in state["peers"]:
            t.add_row(
                p["address"],
                p["interface"] or "-",
                p["mac"] or "unresolved",
                f"{p['sent']:,}",
                f"{p['unresolved']:,}",
            )
        console.print(t)
    if state["send_errors"]:
        console.print(f"[red]send errors: {state['send_errors']:,}[/red]")


# A backend's admin state (hopgate backend), as the services table shows it.
_ADMIN = {"drained": "[yellow]drained[/yellow]", "disabled": "[red]disabled[/red]"}


def _weight(b: dict[str, Any]) -> str:
    """Its weight, and the config's when the operator set another."""
    if b["weight"] == b["config_weight"]:
        return str(b["weight"])
    return f"{b['weight']} (config {b['config_weight']})"


def _health(b: dict[str, Any]) -> str:
    """What its checks say; "up (table pending)" for a Maglev backend that may take
    new connections once the table that includes it is in place."""
    if not b["healthy"]:
        return "[red]down[/red]"
    if not b["up"] and b["admin"] == "enabled" and b["weight"] > 0:
        return "up (table pending)"
    return "up"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render_conns(result: dict[str, Any], console: Console) -> None:
    if not result["nat"]:
        console.print("NAT is not configured: no connections are tracked.")
        return
    more = " (--limit 0 shows all)" if result["shown"] < result["total"] else ""
    t = Table(
        title=f"Connections: {result['shown']:,} of {result['total']:,} shown{more}",
        title_justify="left",
    )
    balanced = any(c.get("service") for c in result["connections"])
    cols = ["proto", "state", "original", "translated", "expires", "packets (o/r)"]
    if balanced:
        cols += ["service", "client via"]
    for col in cols:
        t.add_column(col, justify="right" if col in ("expires", "packets (o/r)") else "left")
    for c in result["connections"]:
        row = [
            f"{c['protocol']}/{c['family']}",
            (c["state"] or ("assured" if c["assured"] else "unreplied"))
            + (" (XDP)" if c.get("fastpath") else ""),
            " → ".join(c["original"]),
            " → ".join(c["translated"]),
            f"{c['expires_in']:.0f}s",
            f"{c['packets'][0]:,}/{c['packets'][1]:,}",
        ]
        if balanced:
            hops = c.get("hops") or [None, None]
            row += [c.get("service") or "", hops[0] or "-"]
        t.add_row(*row)
    console.print(t)
