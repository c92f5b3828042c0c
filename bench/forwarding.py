"""Forwarding rate: 64-byte UDP frames through hopgate and through the Linux kernel
in the same lab shapes, in one run.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.forwarding [--seconds 10] [--rounds 3] [--out docs/benchmarks.md]
                                         [--before DIR]

Three shapes: routing (client — gw — r1 — server), NAT (an inside host — gw
translating its source — r1 — server; the kernel does it with nftables
masquerade), and FNAT (the same hosts, the inside host sending to a UDP service
on a VIP of gw, which sends it on to the server from a local address; the kernel
does it with nftables dnat and masquerade).  trafgen (netsniff-ng) sends one UDP
flow from the first host at the highest rate it can, pinned to CPU 0; the server
drops the frames in netfilter's prerouting hook, after its interface has counted
them.  The forwarded rate is the server's received frames over the measuring
window, after a warm-up.  hopgate runs pinned to CPU 1; its CPU time in the
window is read from /proc.  Every shape is measured in each of several rounds;
the report gives the median and the spread.

``--before DIR``: also run, in each round and shape, the hopgate of another
source tree (DIR holds its ``src/``, e.g. ``git archive HEAD~3 src | tar -x -C
DIR``), between this tree's run and the kernel's, and report this tree's rate
over that one's, round by round: a change measured against what it changes,
under the same conditions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.report import replace_section
from hopgate.lab.netns import Namespace, Process
from hopgate.lab.topologies import ADDR, NatLab, RouterLab

SRC, DST = ADDR.client4, ADDR.server4  # the same in all shapes: 198.18.1.10 -> 198.18.3.10
# FNAT: the service's address, and the gateway's source address toward r1.
VIP, LIP = "198.18.100.1", "198.18.2.100"
SHAPES = ("routing", "NAT", "FNAT")

FNAT_SERVICE = f"""
[[service]]
name = "bench"
vip = "{VIP}"
port = 9
protocol = "udp"
scheduler = "rr"
local_addresses = ["{LIP}"]
backend = [{{ address = "{DST}" }}]

[service.health]
kind = "none"
"""
# The kernel's FNAT: the VIP's port sent on to the server, its source masqueraded
# on the way out by the NAT lab's own rule.
FNAT_NFT = f"add rule ip hgnat pre ip daddr {VIP} udp dport 9 dnat to {DST}:9"


@dataclass
class Result:
    shape: str  # one of SHAPES
    gateway: str  # "hopgate" or "Linux kernel"
    offered_pps: float
    forwarded_pps: float
    gateway_cpu: float | None  # CPU seconds per second of hopgate's process
    socket_drops: int | None = None


@dataclass
class Shape:
    sender: Namespace
    server: Namespace
    gw: Namespace
    hopgate: Process | None
    status: object  # a callable returning hopgate's status, or None


def _mac_bytes(mac: str) -> str:
    return ", ".join(f"0x{b}" for b in mac.split(":"))


def _trafgen_config(dst_mac: str, src_mac: str, to: str) -> str:
    """One 60-byte IPv4/UDP frame in trafgen's language; csumip fills the header checksum."""
    src = ", ".join(SRC.split("."))
    dst = ", ".join(to.split("."))
    return (
        "{\n"
        f"  {_mac_bytes(dst_mac)}, {_mac_bytes(src_mac)}, c16(0x0800),\n"
        f"  0x45, 0x00, c16(46), c16(0), c16(0), 64, 17, csumip(14, 33), {src}, {dst},\n"
        "  c16(40000), c16(9), c16(26), c16(0),\n"
        "  fill(0x41, 18)\n"
        "}\n"
    )


def _counter(ns: Namespace, ifname: str, name: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/{name}").stdout)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _shape(shape: str, mode: str) -> Iterator[Shape]:
    if shape == "routing":
        with RouterLab(mode, servers=False) as rl:
            yield Shape(rl.client, rl.server, rl.gw, rl.hopgate, rl.status)
    else:
        extra = FNAT_SERVICE if shape == "FNAT" else ""
        with NatLab(mode, servers=False, extra_config=extra) as nl:
            if shape == "FNAT" and mode == "kernel":
                nl.ns("gw").run("nft", FNAT_NFT)
            yield Shape(nl.ns("inside1"), nl.ns("server"), nl.ns("gw"), nl.hopgate, nl.status)


BEFORE = "hopgate, before"  # the gateway label of --before's tree


@contextmanager
def _daemon_from(tree: Path | None) -> Iterator[None]:
    """hopgate daemons started meanwhile run ``tree``'s code (None: this tree's)."""
    if tree is None:
        yield
        return
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree / "src")
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def measure(
    shape: str, mode: str, seconds: float, warmup: float, tree: Path | None = None
) -> Result:
    with _daemon_from(tree), _shape(shape, mode) as s:
        s.server.run("nft", "add table inet bench")
        s.server.run(
            "nft",
            "add chain inet bench pre"
            " { type filter hook prerouting priority -300; policy accept; }",
        )
        s.server.run("nft", "add rule inet bench pre udp dport 9 drop")
        # Resolve the neighbours on the path before measuring.
        s.sender.run("ping", "-c", "2", "-i", "0.2", DST)
        pid = s.hopgate.pid if s.hopgate is not None else None
        if pid is not None:
            subprocess.run(["taskset", "-pc", "1", str(pid)], check=True, capture_output=True)
        cfg = s.sender.lab.dir / "udp64.cfg"
        to = VIP if shape == "FNAT" else DST
        cfg.write_text(_trafgen_config(s.gw.mac("gw-c"), s.sender.mac("eth0"), to))
        gen = s.sender.spawn(
            "trafgen", "taskset", "-c", "0", "trafgen", "--dev", "eth0", "--conf", str(cfg),
            "--cpus", "1", "-q",
        )  # fmt: skip
        try:
            time.sleep(warmup)
            tx0 = _counter(s.sender, "eth0", "tx_packets")
            rx0 = _counter(s.server, "eth0", "rx_packets")
            cpu0 = _cpu_seconds(pid) if pid else 0.0
            t0 = time.monotonic()
            time.sleep(seconds)
            tx1 = _counter(s.sender, "eth0", "tx_packets")
            rx1 = _counter(s.server, "eth0", "rx_packets")
            cpu1 = _cpu_seconds(pid) if pid else 0.0
            elapsed = time.monotonic() - t0
        finally:
            gen.stop()
        drops = None
        if pid is not None and callable(s.status):
            state = s.status()
            drops = next(p for p in state["interfaces"] if p["name"] == "gw-c")["io"][
                "rx_socket_drops"
            ]
        gateway = "Linux kernel" if mode == "kernel" else BEFORE if tree else "hopgate"
        return Result(
            shape,
            gateway,
            (tx1 - tx0) / elapsed,
            (rx1 - rx0) / elapsed,
            (cpu1 - cpu0) / elapsed if pid else None,
            drops,
        )


Rounds = list[list[Result]]  # each round: every shape, hopgate then the kernel


def _runs(rounds: Rounds, shape: str, gateway: str) -> list[Result]:
    return [r for rnd in rounds for r in rnd if r.shape == shape and r.gateway == gateway]


def _median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.forwarded_pps)[len(runs) // 2]


def _rows(rounds: Rounds) -> str:
    rows = []
    for shape in SHAPES:
        for gateway in ("hopgate", BEFORE, "Linux kernel"):
            runs = _runs(rounds, shape, gateway)
            if not runs:
                continue
            r = _median_run(runs)
            each = " / ".join(f"{x.forwarded_pps / 1000:,.0f}k" for x in runs)
            cpu = f"{r.gateway_cpu * 100:.0f}%" if r.gateway_cpu is not None else "in softirq"
            rows.append(
                f"| {shape} | {gateway} | {r.offered_pps:,.0f} | {r.forwarded_pps:,.0f} | "
                f"{each} | {cpu} |"
            )
    return "\n".join(rows)


def _ratio_lines(rounds: Rounds) -> str:
    lines = []
    for shape in SHAPES:
        hops, kers = _runs(rounds, shape, "hopgate"), _runs(rounds, shape, "Linux kernel")
        if not hops:
            continue  # not measured (--shapes)
        # hopgate and the kernel measured back to back in a round share its conditions.
        ratios = sorted(
            h.forwarded_pps / k.forwarded_pps if k.forwarded_pps else 0.0
            for h, k in zip(hops, kers, strict=True)
        )
        ratio = statistics.median(ratios)  # of an even count: the mean of the middle two
        spread = f", {ratios[0]:.3f} to {ratios[-1]:.3f} over the rounds" if len(ratios) > 1 else ""
        bound = ""
        if all(k.forwarded_pps >= 0.99 * k.offered_pps for k in kers):
            bound = " An upper bound: the kernel forwarded all that trafgen offered."
        lines.append(
            f"- **{shape}: hopgate / kernel = {ratio:.3f}** ({ratio * 100:.1f}%, the median"
            f"{spread}).{bound}"
        )
        befores = _runs(rounds, shape, BEFORE)
        if befores:
            against = sorted(
                h.forwarded_pps / b.forwarded_pps if b.forwarded_pps else 0.0
                for h, b in zip(hops, befores, strict=True)
            )
            lines.append(
                f"  This tree / the tree before: {statistics.median(against):.3f} (the median;"
                f" {', '.join(f'{x:.3f}' for x in against)} over the rounds)."
            )
        drops = [h.socket_drops for h in hops if h.socket_drops is not None]
        if drops:
            lines.append(
                f"  hopgate dropped {min(drops):,} to {max(drops):,} frames at its socket per"
                " round, counted in `hopgate status` as `rx_socket_drops`."
            )
    return "\n".join(lines)


def _report(rounds: Rounds, seconds: float) -> str:
    cpu = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpu.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    today = datetime.date.today().isoformat()
    return f"""## Forwarding rate, 64-byte UDP

Measured {today} by `bench/forwarding.py` ({seconds:g} s window after a warm-up),
{len(rounds)} rounds, each measuring {_shapes_measured(rounds)} with veth pairs and
offloads off: routing (client — gateway — Linux router r1 — server), NAT (inside
host — gateway translating its source — r1 — server) and FNAT (the same hosts;
the inside host sends to a UDP service on a VIP of the gateway, which sends it
on to the server from a local address). Each shape ran with hopgate as the
gateway, then with the Linux kernel (nftables masquerade for NAT; nftables dnat
and masquerade for FNAT, which is what FNAT does to a packet, without a load
balancer's scheduling).{_before_note(rounds)}

| shape | gateway | offered (pps) | forwarded (pps) | forwarded, each round | gateway CPU |
|---|---|---:|---:|---:|---:|
{_rows(rounds)}

The row is the round with the median forwarded rate. The rates move from round
to round (the machine is a shared virtual one); the ratios, taken within each
round, move less.

{_ratio_lines(rounds)}

- Frames: 60 bytes (64 on the wire with the FCS), IPv4/UDP to port 9, one flow,
  sent by trafgen (netsniff-ng {_trafgen_version()}) pinned to CPU 0. Through the
  NAT and the load balancer the flow is one tracked connection.
- hopgate runs pinned to CPU 1, single-threaded; "gateway CPU" is its CPU time
  over the window. The kernel forwards in softirq on the sending CPU, so the
  gateways do not get the same CPU budget: the ratio says what a Python data
  plane achieves against the kernel on the same machine, not an efficiency per
  cycle.
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.forwarding` (as root, after `scripts/bootstrap`).
"""


def _shapes_measured(rounds: Rounds) -> str:
    measured = {r.shape for r in rounds[0]}
    if measured == set(SHAPES):
        return "three lab shapes"
    return "of the lab shapes " + " and ".join(x for x in SHAPES if x in measured) + " only"


def _before_note(rounds: Rounds) -> str:
    if not any(r.gateway == BEFORE for rnd in rounds for r in rnd):
        return ""
    return (
        " In each round and shape, the hopgate of another source tree (`--before`,"
        f' "{BEFORE}") ran too, the two trees taking turns at going first.'
    )


def _trafgen_version() -> str:
    out = subprocess.run(
        ["trafgen", "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.split()[1] if len(out.split()) > 1 else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description="Forwarding rate of hopgate against the Linux kernel.")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--shapes",
        nargs="+",
        choices=SHAPES,
        default=list(SHAPES),
        help="measure only these shapes (the report then says so)",
    )
    ap.add_argument(
        "--before", type=Path, default=None, help="another source tree's root, measured too"
    )
    args = ap.parse_args()
    if args.before is not None and not (args.before / "src" / "hopgate").is_dir():
        sys.exit(f"bench: {args.before} holds no src/hopgate")
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    if args.rounds < 1:
        sys.exit("bench: --rounds must be at least 1")
    rounds: Rounds = []
    for n in range(1, args.rounds + 1):
        rnd = []
        for shape in args.shapes:
            runs: list[tuple[str, Path | None]] = [("hopgate", None)]
            if args.before is not None:
                # The two trees take turns at going first.
                runs.insert(n % 2, ("hopgate", args.before.resolve()))
            for mode, tree in [*runs, ("kernel", None)]:
                r = measure(shape, mode, args.seconds, args.warmup, tree)
                print(
                    f"round {n}  {r.shape:8} {r.gateway:15} offered {r.offered_pps:12,.0f} pps"
                    f"  forwarded {r.forwarded_pps:12,.0f} pps",
                    flush=True,
                )
                rnd.append(r)
        rounds.append(rnd)
    replace_section(args.out, "forwarding", _report(rounds, args.seconds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
