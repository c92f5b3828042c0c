"""Forwarding rate: 64-byte UDP frames through hopgate, and through a Linux kernel
router in the same lab shape, in one run.  Writes docs/benchmarks.md.

    .venv/bin/python -m bench.forwarding [--seconds 10] [--out docs/benchmarks.md]

trafgen (netsniff-ng) sends from the client at the highest rate it can, pinned
to one CPU; the gateway forwards to the server, which drops the frames in
netfilter's prerouting hook (counted in the interface's rx counter first).  The
forwarded rate is the server's received frames over the measuring window,
after a warm-up.  hopgate runs pinned to the other CPU; its CPU time in the
window is read from /proc.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hopgate.lab.netns import Namespace
from hopgate.lab.topologies import ADDR, RouterLab

FRAME_LEN = 60  # 64 bytes on the wire with the FCS
A = ADDR


@dataclass
class Result:
    gateway: str
    offered_pps: float
    forwarded_pps: float
    gateway_cpu: float | None  # CPU seconds per second of the gateway process (hopgate only)
    socket_drops: int | None = None


def _mac_bytes(mac: str) -> str:
    return ", ".join(f"0x{b}" for b in mac.split(":"))


def _trafgen_config(dst_mac: str, src_mac: str) -> str:
    """One 60-byte IPv4/UDP frame in trafgen's language; csumip fills the header checksum."""
    mac = _mac_bytes
    src = ", ".join(A.client4.split("."))
    dst = ", ".join(A.server4.split("."))
    return (
        "{\n"
        f"  {mac(dst_mac)}, {mac(src_mac)}, c16(0x0800),\n"
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


def measure(mode: str, seconds: float, warmup: float) -> Result:
    with RouterLab(mode, servers=False) as lab:
        lab.server.run("nft", "add table inet bench")
        lab.server.run(
            "nft",
            "add chain inet bench pre"
            " { type filter hook prerouting priority -300; policy accept; }",
        )
        lab.server.run("nft", "add rule inet bench pre udp dport 9 drop")
        # Resolve the neighbours on the path before measuring.
        lab.client.run("ping", "-c", "2", "-i", "0.2", A.server4)
        hopgate_pid = lab.hopgate.pid if lab.hopgate is not None else None
        if hopgate_pid is not None:
            subprocess.run(
                ["taskset", "-pc", "1", str(hopgate_pid)], check=True, capture_output=True
            )
        cfg = lab.lab.dir / "udp64.cfg"
        cfg.write_text(_trafgen_config(lab.gw.mac("gw-c"), lab.client.mac("eth0")))
        gen = lab.client.spawn(
            "trafgen",
            "taskset",
            "-c",
            "0",
            "trafgen",
            "--dev",
            "eth0",
            "--conf",
            str(cfg),
            "--cpus",
            "1",
            "-q",
        )
        try:
            time.sleep(warmup)
            tx0, rx0 = (
                _counter(lab.client, "eth0", "tx_packets"),
                _counter(lab.server, "eth0", "rx_packets"),
            )
            cpu0 = _cpu_seconds(hopgate_pid) if hopgate_pid else 0.0
            t0 = time.monotonic()
            time.sleep(seconds)
            tx1, rx1 = (
                _counter(lab.client, "eth0", "tx_packets"),
                _counter(lab.server, "eth0", "rx_packets"),
            )
            cpu1 = _cpu_seconds(hopgate_pid) if hopgate_pid else 0.0
            elapsed = time.monotonic() - t0
        finally:
            gen.stop()
        drops = None
        if mode == "hopgate":
            state = lab.status()
            drops = next(p for p in state["interfaces"] if p["name"] == "gw-c")["io"][
                "rx_socket_drops"
            ]
        return Result(
            "hopgate" if mode == "hopgate" else "Linux kernel",
            (tx1 - tx0) / elapsed,
            (rx1 - rx0) / elapsed,
            (cpu1 - cpu0) / elapsed if hopgate_pid else None,
            drops,
        )


def _report(results: list[Result], seconds: float) -> str:
    hop = next(r for r in results if r.gateway == "hopgate")
    ker = next(r for r in results if r.gateway != "hopgate")
    ratio = hop.forwarded_pps / ker.forwarded_pps if ker.forwarded_pps else 0.0
    cpu = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpu.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    rows = "\n".join(
        f"| {r.gateway} | {r.offered_pps:,.0f} | {r.forwarded_pps:,.0f} | "
        + (f"{r.gateway_cpu * 100:.0f}%" if r.gateway_cpu is not None else "in softirq")
        + " |"
        for r in results
    )
    today = datetime.date.today().isoformat()
    bound = ""
    if ker.forwarded_pps >= 0.99 * ker.offered_pps:
        bound = (
            "- The kernel forwarded all that trafgen offered: its own ceiling is higher\n"
            "  than the figure above, so the ratio is an upper bound for hopgate.\n"
        )
    return f"""# Benchmarks

## Forwarding rate, 64-byte UDP

Measured {today} by `bench/forwarding.py` ({seconds:g} s window after a warm-up), in
one run: the same lab (client — gateway — Linux router r1 — server, veth pairs,
offloads off), first with hopgate as the gateway, then with the Linux kernel.

| gateway | offered (pps) | forwarded (pps) | gateway CPU |
|---|---:|---:|---:|
{rows}

**hopgate / kernel: {ratio:.3f}** ({ratio * 100:.1f}% of the kernel's rate).

- Frames: 60 bytes (64 on the wire with the FCS), IPv4/UDP to port 9, one flow,
  sent by trafgen (netsniff-ng {_trafgen_version()}) pinned to CPU 0.
- hopgate runs pinned to CPU 1, single-threaded; "gateway CPU" is its CPU time
  over the window.  The kernel forwards in softirq on the sending CPU, so the
  two gateways do not get the same CPU budget: the ratio says what a Python
  data plane achieves against the kernel on the same machine, not an
  efficiency per cycle.
- hopgate dropped {hop.socket_drops:,} frames at its socket (it fell behind the
  offered load), counted in `hopgate status` as `rx_socket_drops`.
{bound}- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
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
    results = [measure(mode, args.seconds, args.warmup) for mode in ("hopgate", "kernel")]
    for r in results:
        print(
            f"{r.gateway:13} offered {r.offered_pps:12,.0f} pps"
            f"  forwarded {r.forwarded_pps:12,.0f} pps"
        )
    args.out.write_text(_report(results, args.seconds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
