"""Forwarding rate: 64-byte UDP frames through hopgate and through the Linux kernel
in the same lab shapes, in one run.  Writes docs/benchmarks.md.

    .venv/bin/python -m bench.forwarding [--seconds 10] [--out docs/benchmarks.md]

Two shapes: routing (client — gw — r1 — server), and NAT (an inside host — gw
translating its source — r1 — server; the kernel does it with nftables
masquerade).  trafgen (netsniff-ng) sends one UDP flow from the first host at the
highest rate it can, pinned to CPU 0; the server drops the frames in netfilter's
prerouting hook, after its interface has counted them.  The forwarded rate is the
server's received frames over the measuring window, after a warm-up.  hopgate
runs pinned to CPU 1; its CPU time in the window is read from /proc.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hopgate.lab.netns import Namespace, Process
from hopgate.lab.topologies import ADDR, NatLab, RouterLab

SRC, DST = ADDR.client4, ADDR.server4  # the same in both shapes: 198.18.1.10 -> 198.18.3.10


@dataclass
class Result:
    shape: str  # "routing" or "NAT"
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


def _trafgen_config(dst_mac: str, src_mac: str) -> str:
    """One 60-byte IPv4/UDP frame in trafgen's language; csumip fills the header checksum."""
    src = ", ".join(SRC.split("."))
    dst = ", ".join(DST.split("."))
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
        with NatLab(mode, servers=False) as nl:
            yield Shape(nl.ns("inside1"), nl.ns("server"), nl.ns("gw"), nl.hopgate, nl.status)


def measure(shape: str, mode: str, seconds: float, warmup: float) -> Result:
    with _shape(shape, mode) as s:
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
        cfg.write_text(_trafgen_config(s.gw.mac("gw-c"), s.sender.mac("eth0")))
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
        return Result(
            "routing" if shape == "routing" else "NAT",
            "hopgate" if mode == "hopgate" else "Linux kernel",
            (tx1 - tx0) / elapsed,
            (rx1 - rx0) / elapsed,
            (cpu1 - cpu0) / elapsed if pid else None,
            drops,
        )


def _rows(results: list[Result]) -> str:
    return "\n".join(
        f"| {r.shape} | {r.gateway} | {r.offered_pps:,.0f} | {r.forwarded_pps:,.0f} | "
        + (f"{r.gateway_cpu * 100:.0f}%" if r.gateway_cpu is not None else "in softirq")
        + " |"
        for r in results
    )


def _ratio_lines(results: list[Result]) -> str:
    lines = []
    for shape in ("routing", "NAT"):
        hop = next(r for r in results if r.shape == shape and r.gateway == "hopgate")
        ker = next(r for r in results if r.shape == shape and r.gateway != "hopgate")
        ratio = hop.forwarded_pps / ker.forwarded_pps if ker.forwarded_pps else 0.0
        bound = ""
        if ker.forwarded_pps >= 0.99 * ker.offered_pps:
            bound = " (an upper bound: the kernel forwarded all that trafgen offered)"
        lines.append(f"- **{shape}: hopgate / kernel = {ratio:.3f}** ({ratio * 100:.1f}%){bound}.")
        if hop.socket_drops is not None:
            lines.append(
                f"  hopgate dropped {hop.socket_drops:,} frames at its socket, counted in"
                " `hopgate status` as `rx_socket_drops`."
            )
    return "\n".join(lines)


def _report(results: list[Result], seconds: float) -> str:
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
    return f"""# Benchmarks

## Forwarding rate, 64-byte UDP

Measured {today} by `bench/forwarding.py` ({seconds:g} s window after a warm-up), in
one run, in two lab shapes with veth pairs and offloads off: routing (client —
gateway — Linux router r1 — server) and NAT (inside host — gateway translating
its source — r1 — server). Each shape ran with hopgate as the gateway, then with
the Linux kernel (nftables masquerade for NAT).

| shape | gateway | offered (pps) | forwarded (pps) | gateway CPU |
|---|---|---:|---:|---:|
{_rows(results)}

{_ratio_lines(results)}

- Frames: 60 bytes (64 on the wire with the FCS), IPv4/UDP to port 9, one flow,
  sent by trafgen (netsniff-ng {_trafgen_version()}) pinned to CPU 0. Through the
  NAT the flow is one tracked connection.
- hopgate runs pinned to CPU 1, single-threaded; "gateway CPU" is its CPU time
  over the window. The kernel forwards in softirq on the sending CPU, so the
  gateways do not get the same CPU budget: the ratio says what a Python data
  plane achieves against the kernel on the same machine, not an efficiency per
  cycle.
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.forwarding` (as root, after `scripts/bootstrap`).
"""


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
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    results = [
        measure(shape, mode, args.seconds, args.warmup)
        for shape in ("routing", "nat")
        for mode in ("hopgate", "kernel")
    ]
    for r in results:
        print(
            f"{r.shape:8} {r.gateway:13} offered {r.offered_pps:12,.0f} pps"
            f"  forwarded {r.forwarded_pps:12,.0f} pps"
        )
    args.out.write_text(_report(results, args.seconds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
