"""``hopgate demo``: build the lab, drive the real tools through hopgate, show what
they saw, judge it, and tear the lab down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.rule import Rule

from hopgate.control import status as status_view
from hopgate.lab import tools
from hopgate.lab.topologies import ADDR, HTTP_PORT, RouterLab

A = ADDR


@dataclass
class Check:
    title: str
    run: Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]


def _ping(dst: str, **kw: object) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        p = tools.ping(lab.client, dst, **kw)  # type: ignore[arg-type]
        return p.run, p.received == p.transmitted > 0, f"{p.received}/{p.transmitted} replies"

    return go


def _trace(
    dst: str, mode: str, expected: list[str], port: int | None = None
) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        t = tools.traceroute(lab.client, dst, mode, port=port)
        return t.run, t.path == expected, "hops: " + " → ".join(t.path)

    return go


def _too_big(
    dst: str, size: int, expect: str
) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        p = tools.ping(lab.client, dst, count=1, size=size, dont_fragment=True)
        first = p.errors[0] if p.errors else "no error reported"
        return p.run, expect in first, first

    return go


def _tracepath(dst: str) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        t = tools.tracepath(lab.client, dst)
        return (
            t.run,
            t.reached and t.pmtu == 1400,
            f"pmtu {t.pmtu}, {'reached' if t.reached else 'not reached'}",
        )

    return go


def _error(dst: str, expect: str) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        p = tools.ping(lab.client, dst, count=1, wait=5)
        first = p.errors[0] if p.errors else "no error reported"
        return p.run, first == expect, first

    return go


def _refused(dst: str, port: int) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        outcome, seconds = tools.tcp_connect(lab.client, dst, port)
        run = tools.ToolRun(
            ["connect", f"{dst} port {port}"], 0, f"{outcome} after {seconds * 1000:.1f} ms\n", ""
        )
        return run, outcome == "refused" and seconds < 0.5, f"{outcome} in {seconds * 1000:.1f} ms"

    return go


def _curl(url: str) -> Callable[[RouterLab], tuple[tools.ToolRun, bool, str]]:
    def go(lab: RouterLab) -> tuple[tools.ToolRun, bool, str]:
        d = tools.curl(lab.client, url)
        rate = d.size * 8 / d.seconds / 1e6 if d.seconds else 0.0
        return (
            d.run,
            d.ok and d.size == 10 * 1024 * 1024,
            f"{d.size:,} bytes in {d.seconds:.2f} s ({rate:.0f} Mbit/s)",
        )

    return go


CHECKS = [
    Check("ping the server through hopgate", _ping(A.server4)),
    Check("ping6 the server through hopgate", _ping(A.server6)),
    Check("traceroute (UDP)", _trace(A.server4, "udp", [A.gw_c4, A.r1_d4, A.server4])),
    Check("traceroute -I (ICMP)", _trace(A.server4, "icmp", [A.gw_c4, A.r1_d4, A.server4])),
    Check(
        "traceroute -T (TCP, port 80)",
        _trace(A.server4, "tcp", [A.gw_c4, A.r1_d4, A.server4], HTTP_PORT),
    ),
    Check("traceroute -6 (UDP)", _trace(A.server6, "udp", [A.gw_c6, A.r1_d6, A.server6])),
    Check("traceroute -6 -I (ICMPv6)", _trace(A.server6, "icmp", [A.gw_c6, A.r1_d6, A.server6])),
    Check(
        "traceroute -6 -T (TCP, port 80)",
        _trace(A.server6, "tcp", [A.gw_c6, A.r1_d6, A.server6], HTTP_PORT),
    ),
    Check(
        "1500-byte ping with DF: hopgate's upstream MTU is 1400",
        _too_big(A.server4, 1472, f"From {A.gw_c4} icmp_seq=1 Frag needed and DF set (mtu = 1400)"),
    ),
    Check(
        "1500-byte ping6: routers never fragment IPv6",
        _too_big(A.server6, 1452, f"From {A.gw_c6} icmp_seq=1 Packet too big: mtu=1400"),
    ),
    Check("tracepath finds the path MTU", _tracepath(A.server4)),
    Check("tracepath -6 finds the path MTU", _tracepath(A.server6)),
    Check("ping hopgate itself", _ping(A.gw_c4)),
    Check("traceroute (UDP) to hopgate ends there", _trace(A.gw_c4, "udp", [A.gw_c4])),
    Check("TCP to hopgate is refused at once (RST)", _refused(A.gw_c4, 22)),
    Check(
        "a destination hopgate has no route to",
        _error(A.unrouted4, f"From {A.gw_c4} icmp_seq=1 Destination Net Unreachable"),
    ),
    Check(
        "a host on hopgate's subnet that never answers ARP",
        _error(A.absent4, f"From {A.gw_c4} icmp_seq=1 Destination Host Unreachable"),
    ),
    Check("curl 10 MB through hopgate", _curl(f"http://{A.server4}:{HTTP_PORT}/10M.bin")),
    Check("curl 10 MB over IPv6", _curl(f"http://[{A.server6}]:{HTTP_PORT}/10M.bin")),
]


def run_demo(console: Console, *, kernel: bool = False, keep: bool = False) -> bool:
    mode = "kernel" if kernel else "hopgate"
    gw_name = "a Linux kernel router (the reference)" if kernel else "hopgate"
    console.print(f"[bold]hopgate demo[/bold]: client — {gw_name} — Linux router r1 — server")
    console.print("Building the lab (network namespaces joined by veth pairs)…")
    lab = RouterLab(mode)
    passed = 0
    try:
        console.print(
            f"  lab [bold]{lab.name}[/bold]: namespaces "
            + ", ".join(ns.name for ns in lab.lab.namespaces.values())
        )
        console.print(
            f"  gw: gw-c {A.gw_c4}/24 {A.gw_c6}/64 (client side); "
            f"gw-u {A.gw_u4}/24 {A.gw_u6}/64, MTU 1400 (towards r1)"
        )
        if not kernel:
            console.print(f"  config: {lab.config_path}")
        for check in CHECKS:
            console.print(Rule(check.title, align="left"))
            run, ok, summary = check.run(lab)
            console.print(f"[dim]{lab.client.name}$[/dim] {run.command}", highlight=False)
            console.print(run.output, highlight=False, markup=False)
            mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
            console.print(f"{mark} {summary}", highlight=False)
            passed += ok
        if not kernel:
            console.print(Rule("hopgate status (from the running daemon)", align="left"))
            status_view.render(lab.status(), console)
        all_ok = passed == len(CHECKS)
        colour = "green" if all_ok else "red"
        console.print(f"\n[bold {colour}]{passed} of {len(CHECKS)} checks passed.[/bold {colour}]")
        if keep:
            console.print(
                "The lab stays up: explore with"
                f" `ip netns exec {lab.client.name} traceroute -n {A.server4}`,"
                f" `hopgate status -s {lab.admin_socket}`;"
                f" remove it with `hopgate lab down {lab.name}`."
            )
        return all_ok
    finally:
        if not keep:
            console.print("Tearing the lab down…")
            lab.close()
