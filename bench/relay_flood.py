"""``hopgate relay`` under a flood of fragmentation needed / Packet Too Big: the
relay process's CPU time, and what it relayed against what its limits admit,
with the eBPF filter (checks and limits in the kernel) and with the classic one
(limits in Python), in the same rounds.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.relay_flood [--rate 20000] [--seconds 10] [--rounds 5]
                                          [--out docs/benchmarks.md]

The lab (namespaces ``hgr-…``): a sender and the relay's host joined by a veth.
The relay runs as ``hopgate relay --iface eth0 --filter ebpf|classic`` with its
default limits, pinned to CPU 1.  The sender (this module's ``send``, pinned to
CPU 0) writes the frames to a packet socket, paced: every ``--tick`` (10 ms),
rate x tick copies of one frame.  Each send runs the relay's host's receive
(the eBPF filter included) in softirq on CPU 0, before it returns.  Each tick's
frame is from another router, IPv4 and IPv6 in turn, a fresh source every
tick: the per-source bucket (10/s, burst 10) lets 10 of each tick's copies
through, and the per-interface bucket (100/s, burst 100) holds the total to
about 100 + 100/s.

Not the kernel's live-frames generator (``BPF_PROG_TEST_RUN`` with XDP_TX): a
call of one frame takes some 30 µs here, but a call of two or more some 24 ms
(so only calls of one frame can be paced); and with the classic filter the
kernel refused more than half of the calls (ENOSPC), never with the eBPF one.
Each call sets up a page pool, which lives on while a socket holds one of its
pages, as the classic filter's does until the relay reads the frame: the
pools' ids running out would explain it (not checked further).

What is measured, over the flood's window (from the first send to the last):
- the relay process's CPU time: utime + stime of /proc/PID/stat (clock ticks),
  and the sum of its threads' run time from /proc/PID/task/*/schedstat (ns);
  for reference, the same with no flood, over as long a window just before;
- what its counters say (``hopgate status``): seen, relayed, missed (dropped at
  the socket), and with the eBPF filter what the kernel admitted;
- what the limits admit: pipeline/relay.py (the specification) run on the same
  frames at the times the sender sent them.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from bench import quiet
from bench.report import replace_section
from hopgate.control.admin import AdminError, fetch_status
from hopgate.lab.netns import Lab, LabError, Namespace, Process
from hopgate.pipeline.relay import PmtuMessage, Relay, RelaySettings

ROOT = Path(__file__).resolve().parents[1]
SENDER_CPU, RELAY_CPU = 0, 1
FILTERS = ("ebpf", "classic")
RELAY4, RELAY6 = "198.18.0.2", "2001:2::2"  # the relay's host: the shared address
SENDER4, SENDER6 = "198.18.0.1", "2001:2::1"
CLIENT4, CLIENT6 = "198.19.0.10", "2001:2:0:9::10"  # whom the big packets went to
SOURCES = 1000  # routers the errors come from (one per tick, then again)


# -- the sender (run in the sender's namespace) -------------------------------------------


def send(dev: str, frames: list[bytes], rate: float, seconds: float, tick: float) -> None:
    """Send ``rate`` frames a second out of ``dev`` for ``seconds``: every
    ``tick``, that many copies of the next frame of ``frames``.  Prints when
    each went, by tick (JSON)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing
    sock.bind((dev, 0))
    per_tick = max(1, round(rate * tick))
    clock, out = time.monotonic, sock.send
    start = clock()
    ticks: list[list[float]] = []
    failed = 0
    for k in range(round(seconds / tick)):
        delay = start + k * tick - clock()
        if delay > 0:
            time.sleep(delay)
        frame, times = frames[k % len(frames)], []
        for _ in range(per_tick):
            t = clock()
            try:
                out(frame)
            except OSError:
                failed += 1
                continue
            times.append(t)
        ticks.append(times)
    end = clock()
    print(json.dumps({"ticks": ticks, "failed": failed, "start": start, "end": end}))


# -- the lab ------------------------------------------------------------------------------


def ptb_frames(dst_mac: str, src_mac: str) -> list[bytes]:
    """One frame per source, IPv4 and IPv6 in turn: an error about a full-size
    TCP segment the relay's host sent from port 80."""
    frames = []
    for i in range(SOURCES):
        eth = Ether(dst=dst_mac, src=src_mac)
        if i % 2 == 0:
            router = str(ipaddress.IPv4Address("198.18.128.0") + i)
            big = IP(src=RELAY4, dst=CLIENT4, flags="DF") / TCP(sport=80, dport=50000)
            err = IP(src=router, dst=RELAY4) / ICMP(type=3, code=4, nexthopmtu=1400)
            frames.append(bytes(eth / err / bytes(big)[:28]))
        else:
            router = str(ipaddress.IPv6Address("2001:2:0:1::") + i)
            big6 = IPv6(src=RELAY6, dst=CLIENT6) / TCP(sport=80, dport=50000)
            err6 = IPv6(src=router, dst=RELAY6) / ICMPv6PacketTooBig(mtu=1280)
            frames.append(bytes(eth / err6 / bytes(big6)[:48]))
    return frames


def build(lab: Lab) -> tuple[Namespace, Namespace]:
    tx, host = lab.namespace("tx"), lab.namespace("relay")
    lab.link(tx, "eth0", host, "eth0")
    tx.address("eth0", f"{SENDER4}/24", f"{SENDER6}/64")
    host.address("eth0", f"{RELAY4}/24", f"{RELAY6}/64")
    return tx, host


def start_relay(host: Namespace, sock: Path, kind: str) -> Process:
    argv = ["taskset", "-c", str(RELAY_CPU), sys.executable, "-m", "hopgate", "relay"]
    argv += ["--iface", "eth0", "--socket", str(sock), "--filter", kind]
    proc = host.spawn(f"relay-{kind}-{time.monotonic_ns()}", *argv)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LabError(f"the relay exited at start:\n{proc.output()}")
        try:
            if fetch_status(str(sock))["filter"] == kind:
                return proc
            raise LabError(f"the relay runs another filter than {kind}:\n{proc.output()}")
        except AdminError:
            time.sleep(0.05)
    raise LabError(f"the relay did not answer:\n{proc.output()}")


def cpu(pid: int) -> tuple[int, int, int]:
    """(utime, stime in clock ticks, the threads' run time in ns)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ns = sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
    )
    return int(fields[11]), int(fields[12]), ns


def rx_packets(ns: Namespace) -> int:
    return int(ns.run("cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)


def admitted_by_spec(frames: list[bytes], ticks: list[list[float]]) -> int:
    """What pipeline/relay.py admits of the flood: each frame at the time it
    was sent (the buckets full at the start, as the relay's were)."""
    relay = Relay(RelaySettings(), 1, ticks[0][0] - 10.0)
    n = 0
    for k, times in enumerate(ticks):
        frame = frames[k % len(frames)]
        for t in times:
            n += isinstance(relay.consider(frame, 0, t), PmtuMessage)
    return n


def cpu1_busy() -> float:
    """Seconds CPU 1 has been busy (/proc/stat: all but idle and iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{RELAY_CPU} "):
            ticks = [int(x) for x in line.split()[1:]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise LabError(f"no cpu{RELAY_CPU} in /proc/stat")


@dataclass
class Run:
    filter: str
    round: int
    sent: int
    failed: int  # sends the kernel refused
    arrived: int  # the relay's eth0 rx_packets
    window: float  # seconds
    utime: int  # clock ticks
    stime: int
    cpu_ns: int
    seen: int
    admitted_kernel: int | None
    relayed: int
    missed: int
    send_errors: int
    admitted_spec: int
    foreign: float  # CPU 1's busy time that was not the relay's, a share of the window
    idle_share: float  # the relay's CPU with no flood, over as long a window before it

    @property
    def cpu_share(self) -> float:
        return self.cpu_ns / 1e9 / self.window

    @property
    def tick_share(self) -> float:
        return (self.utime + self.stime) / os.sysconf("SC_CLK_TCK") / self.window


def measure(
    lab: Lab, tx: Namespace, host: Namespace, kind: str, n: int, args: argparse.Namespace
) -> Run:
    frames = ptb_frames(host.mac("eth0"), tx.mac("eth0"))
    sock = lab.dir / f"relay-{kind}.sock"
    relay = start_relay(host, sock, kind)
    try:
        time.sleep(1.5)  # settled, its buckets full
        i0, idle_start = cpu(relay.pid), time.monotonic()
        time.sleep(args.seconds)
        i1, idle = cpu(relay.pid), time.monotonic() - idle_start
        before = fetch_status(str(sock))["interfaces"][0]
        rx0 = rx_packets(host)
        frames_file = lab.dir / "frames.json"
        frames_file.write_text(json.dumps([f.hex() for f in frames]))
        c0, busy0 = cpu(relay.pid), cpu1_busy()
        out = tx.run(
            "taskset", "-c", str(SENDER_CPU), sys.executable, "-m", "bench.relay_flood",
            "send", "--dev", "eth0", "--frames", str(frames_file), "--rate", str(args.rate),
            "--seconds", str(args.seconds), "--tick", str(args.tick),
            timeout=args.seconds + 60,
        )  # fmt: skip
        c1, busy1 = cpu(relay.pid), cpu1_busy()
        time.sleep(0.5)  # the last frames read
        after = fetch_status(str(sock))
        rx1 = rx_packets(host)
    finally:
        relay.stop()
    sent = json.loads(out.stdout.strip().splitlines()[-1])
    ticks = sent["ticks"]
    a = after["interfaces"][0]
    window = sent["end"] - sent["start"]
    return Run(
        filter=kind,
        round=n,
        sent=sum(len(t) for t in ticks),
        failed=sent["failed"],
        arrived=rx1 - rx0,
        window=window,
        utime=c1[0] - c0[0],
        stime=c1[1] - c0[1],
        cpu_ns=c1[2] - c0[2],
        seen=a["seen"] - before["seen"],
        admitted_kernel=a["admitted"] - before["admitted"] if "admitted" in a else None,
        relayed=a["relayed"] - before["relayed"],
        missed=a["missed"] - before["missed"],
        send_errors=after["send_errors"],
        admitted_spec=admitted_by_spec(frames, ticks),
        foreign=(busy1 - busy0 - (c1[2] - c0[2]) / 1e9) / window,
        idle_share=(i1[2] - i0[2]) / 1e9 / idle,
    )


FOREIGN_MAX = 0.05  # more of CPU 1 busy with something else: measured again


def measure_quietly(
    lab: Lab, tx: Namespace, host: Namespace, kind: str, n: int, args: argparse.Namespace
) -> Run:
    """``measure`` with the machine to itself (bench/quiet.py)."""
    return quiet.measure_quietly(
        lambda: measure(lab, tx, host, kind, n, args), lambda r: r.foreign, FOREIGN_MAX
    )


# -- the report -----------------------------------------------------------------------------


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.cpu_share)[len(runs) // 2]


TABLE_HEADER = (
    "| filter | round | sent/s | arrived | CPU (run time) | CPU (utime+stime) | CPU idle"
    " | seen | admitted in kernel | relayed | spec admits | missed |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
)


def report(runs: list[Run], args: argparse.Namespace) -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    rows = []
    for r in sorted(runs, key=lambda r: (FILTERS.index(r.filter), r.round)):
        kernel = "–" if r.admitted_kernel is None else f"{r.admitted_kernel:,}"
        rows.append(
            f"| {r.filter} | {r.round} | {r.sent / r.window:,.0f} | {r.arrived:,} |"
            f" {r.cpu_share:.2%} | {r.tick_share:.2%} ({r.utime} + {r.stime}) |"
            f" {r.idle_share:.2%} |"
            f" {r.seen:,} | {kernel} |"
            f" {r.relayed:,} | {r.admitted_spec:,} | {r.missed:,} |"
        )
    summary = []
    for kind in FILTERS:
        mine = [r for r in runs if r.filter == kind]
        if not mine:
            continue
        shares = [r.cpu_share for r in mine]
        idle = statistics.median(r.idle_share for r in mine)
        ratio = [r.relayed / r.admitted_spec for r in mine if r.admitted_spec]
        summary.append(
            f"- **{kind}**: the relay process used {statistics.median(shares):.2%} of a core"
            f" (median of {len(mine)} rounds; {min(shares):.2%} to {max(shares):.2%};"
            f" {idle:.2%} with no flood, before it);"
            f" it relayed {statistics.median(ratio):.1%} of what pipeline/relay.py admits"
            f" of the same frames at the times they were sent (median;"
            f" {min(ratio):.1%} to {max(ratio):.1%}); frames missed at its socket:"
            f" {sum(r.missed for r in mine):,} in all."
        )
    failed = sum(r.failed for r in runs)
    if failed:
        summary.append(
            f"- The sender's socket refused {failed:,} of its sends over all the rounds"
            " (not counted as sent)."
        )
    return f"""## The PMTU relay under a flood

`bench/relay_flood.py`, {datetime.date.today().isoformat()}: `hopgate relay` on one
interface, its default limits (10/s per source with a burst of 10, 100/s per
interface with a burst of 100), under {args.rate:,.0f} fragmentation needed /
Packet Too Big a second for {args.seconds:g} s, IPv4 and IPv6 in turn, each
{args.tick * 1000:g} ms from another router ({SOURCES} in all), with the eBPF
filter (`--filter ebpf`: checks and limits in the kernel) and with the classic
one (`--filter classic`: limits in Python), in the same rounds.

{chr(10).join(summary)}

{TABLE_HEADER}{chr(10).join(rows)}

- *CPU*: the relay process's share of one core over the flood's window, from
  the run time of its threads (/proc/PID/task/*/schedstat) and from utime +
  stime (/proc/PID/stat, in {os.sysconf("SC_CLK_TCK")} Hz ticks, user + system
  in brackets: coarse at these shares); *CPU idle*: the same process with no
  flood, over as long a window just before. The eBPF filter runs in the kernel's
  receive path, in softirq on the sender's CPU here: that time is not the
  relay's, and not in these figures.
- *arrived*: the relay's eth0 `rx_packets`; *seen*: every PMTU message
  counted (with the eBPF filter, those the kernel refused included);
  *relayed*: copies sent; *spec admits*: pipeline/relay.py's Relay run on the
  same frames, each at the time the sender sent it (the kernel's clock stamps
  each frame as it arrives, some microseconds on: a bucket on the edge of a
  token can differ by one); *missed*: frames dropped at the relay's socket.
- Sender: a packet socket, {args.rate * args.tick:,.0f} frames every
  {args.tick * 1000:g} ms, on CPU 0; the relay on CPU 1. The relay's host
  receives each frame in softirq on CPU 0, in the sender's send (not the
  kernel's live-frames generator: `bench/relay_flood.py` says why).
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.relay_flood` (as root, after `scripts/bootstrap`).
"""


MAIN_PID = os.getpid()


def _terminated(*_: object) -> None:
    """SIGTERM: the lab is taken down on the way out.  Only in this process:
    pyroute2's forked helpers inherit the handler, and one that took the lab
    down with it would take it from under this process."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signal.SIGTERM)
    sys.exit("bench: terminated")


def main() -> None:
    ap = argparse.ArgumentParser(description="hopgate relay under a flood of PMTU messages.")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("send", help="(internal) the paced sender, in the sender's namespace")
    s.add_argument("--dev", required=True)
    s.add_argument("--frames", type=Path, required=True, help="a JSON list of hex frames")
    for p in (ap, s):
        p.add_argument("--rate", type=float, default=20_000.0, help="frames a second")
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument("--tick", type=float, default=0.01, help="seconds between sends")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if args.cmd == "send":
        frames = [bytes.fromhex(h) for h in json.loads(args.frames.read_text())]
        send(args.dev, frames, args.rate, args.seconds, args.tick)
        return
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs two CPUs, one for the sender and one for the relay")
    os.chdir(ROOT)  # the sender runs this module (python -m bench.relay_flood)
    signal.signal(signal.SIGTERM, _terminated)
    os.sched_setaffinity(0, {SENDER_CPU})  # off the relay's CPU
    runs: list[Run] = []
    with Lab(prefix="hgr-") as lab:
        tx, host = build(lab)
        for n in range(1, args.rounds + 1):
            # the two filters take turns at going first
            for kind in FILTERS if n % 2 else FILTERS[::-1]:
                r = measure_quietly(lab, tx, host, kind, n, args)
                print(
                    f"round {n} {kind:7} sent {r.sent:,} ({r.sent / r.window:,.0f}/s)"
                    f" arrived {r.arrived:,}  CPU {r.cpu_share:.2%} (idle {r.idle_share:.2%};"
                    f" ticks {r.tick_share:.2%}:"
                    f" user {r.utime}, system {r.stime})"
                    f"  seen {r.seen:,} admitted-in-kernel {r.admitted_kernel}"
                    f" relayed {r.relayed:,} spec {r.admitted_spec:,} missed {r.missed:,}"
                    f" send errors {r.send_errors}; refused sends {r.failed};"
                    f" CPU 1 others {r.foreign:.1%}",
                    flush=True,
                )
                runs.append(r)
    replace_section(args.out, "relay-flood", report(runs, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
