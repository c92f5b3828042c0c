"""New TCP connections per second through NAT and the load balancer, each a full
handshake and a close both ways, through hopgate and through the Linux kernel
in the same lab, in one run.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.connections [--seconds 10] [--rounds 3]
                                          [--shapes NAT FNAT] [--gateways ...]
                                          [--concurrency 64] [--ports sequential|kernel]
                                          [--out docs/benchmarks.md] [--no-write]

The shapes are bench/forwarding.py's NAT and FNAT (``NatLab``): NAT, an inside
host connecting to the server through gw translating its source, then r1; FNAT,
the inside host connecting to a TCP service on a VIP of gw (port 80, one
backend, health checks off), which opens the connection to the server from a
local address.  The kernel does NAT with the lab's nftables masquerade, and
FNAT with an nftables dnat rule for the VIP's port added to it (the lab's
masquerade then translates the source).  Gateways, in each round and shape:
the Linux kernel, hopgate (AF_PACKET), and hopgate with its XDP fast path
(``[dataplane] mode = "xdp"``).

The connections (``bench/tcp_churn.py``): the client, on the inside host, keeps
64 of them in flight with non-blocking sockets and epoll; the server accepts,
shuts its side down at once (its FIN first: the TIME_WAIT is the server's, and
holds none of the client's ports), waits for the client's FIN and closes.  A
connection counts as completed when the client has read the server's FIN and
closed; the server's count of the client's FINs is the check.  A connection
refused, reset or not done in 5 s counts as failed, one done in 0.9 s or more
as slow.  Only what the client completed in the window after a warm-up counts.

Source ports: by default the client binds each of 1024-65535 in turn, so a port
comes back after 64,512 connections (some 3 s at the kernel's rate, never
within a run at hopgate's). A new SYN on a tuple the gateway holds in TIME_WAIT
reopens the connection (Linux's conntrack; hopgate's NAT does the same, its
balancer schedules it afresh), and the server's TIME_WAIT takes the new SYN:
none failed or was slow so in the lab. ``--ports kernel`` leaves the choice to
the client's kernel (``ip_local_port_range`` 1024-65535), which in this lab
brought a port back after some 7,100 connections. Seen in the lab that way with
hopgate's FNAT (one 8 s run, tcpdump on gw-c and gw-u): 2,435 new SYNs came on
a client tuple in TIME_WAIT (``connections-rescheduled``), each scheduled
afresh from a new local port (all 2,387 of them in the capture), so that the
local port of the connection it replaced was free again in hopgate's table
while the server held it in TIME_WAIT (60 s). 153 times another client's
connection got such a port within 60 s; 66 of those SYNs the server answered
with an ACK (PAWS: that client's timestamps are not those of the port's last
connection), the client's RST to it was dropped by hopgate as out of window
(``tcp-out-of-window``), and the client sent its SYN again every second,
answered the same way, until its 5 s timeout: each such connection held one of
the client's 64 slots for 5 s. Marked every 0.5 s in another run: some 2,800
connections a second for the first 3 s, then fewer, none from 6.5 s to 7.5 s
with all 64 slots stuck, then waves as they timed out. With ``--ports kernel``
(one round, 10 s window) hopgate's FNAT completed 1,069 connections a second
(CPU 1 37% busy) and 64 timed out, with its fast path 1,143 (64 timed out); its
NAT reopened 13,285 connections and none failed; with the default ports,
three rounds of another run gave 3,103 to 3,224 (CPU 1 100% busy). The Linux
kernel's FNAT keeps the client's port (masquerade keeps it when it is free), so
a reused client tuple is the same tuple at the server; no connection through it
failed or was slow that way.

Each gateway's table may hold 262,144 connections: hopgate's ``[nat]
max_connections`` is set to it, and it is the kernel's ``nf_conntrack_max``
here (global: read-only in a network namespace).  The bench reports how many
each held at the end, most of them in TIME_WAIT (120 s).

The CPUs are split as in bench/forwarding.py, one for the gateway, here both
ways: gw-c and gw-u have native XDP programs (XDP_PASS, or hopgate's own with
the fast path) and threaded NAPI, their NAPI threads pinned to CPU 1, and
hopgate is pinned to CPU 1.  Everything else runs on CPU 0: the client, the
server, and the kernels of the lab's other hosts.  The veth ends that receive
from gw (the bridge's p0, r1's r1-d) have an XDP_PASS program too and threaded
NAPI pinned to CPU 0.  Without them, what gw sends is received, bridged, routed
and taken by the client's and the server's TCP in softirq on CPU 1, in the
gateway's time: seen in the lab (kernel NAT, 4 s), CPU 1 was 74% busy, 50% in
softirq, with its NAPI threads at 70% of a CPU; with them 26%, no softirq.  So
CPU 1 holds the gateway's work only, and CPU 1's busy time per connection is
the gateway's cost; hopgate's process time per connection is given apart.
When the kernel leaves CPU 1 idle, the generator (the client and the server on
CPU 0, in Python, with their kernels' TCP) is the limit, not the kernel; the
report says so.

Before each measurement the bench waits until no tests or other benchmarks
run, and measures again if other processes took CPU time in the window
(``bench.quiet``, as bench/forwarding.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.forwarding import (
    FOREIGN_MAX,
    GEN_CPU,
    GW_CPU,
    HOPGATE,
    KERNEL,
    VIP,
    XDP,
    _cpu_seconds,
    _cpu_ticks,
    _foreign_ticks,
    _helper,
    _helper_env,
    _shares,
    _threaded_napi,
    fnat_nft,
    fnat_service,
)
from bench.quiet import measure_quietly
from bench.report import gateway_args, need_lab_machine, publish
from hopgate.lab.netns import LabError, Namespace, Process
from hopgate.lab.topologies import NAT_ADDR, NatLab, wait_for_listen

DST = NAT_ADDR.server4
PORT = 80
SHAPES = ("NAT", "FNAT")
MODES = {"kernel": KERNEL, "hopgate": HOPGATE, "xdp": XDP}
CONCURRENCY = 64
TIMEOUT = 5.0  # a connection not done by then is abandoned, and failed
PORT_RANGE = "1024 65535"
# The gateway's connection table: hopgate's [nat] max_connections, as the
# kernel's nf_conntrack_max here.
TABLE_MAX = 262144
ROOT = Path(__file__).resolve().parent.parent

NAT_TABLE = f"""
[nat]
max_connections = {TABLE_MAX}
"""
FNAT_SERVICE = fnat_service("tcp", PORT)
FNAT_NFT = fnat_nft("tcp", PORT)


@dataclass
class Result:
    shape: str  # one of SHAPES
    gateway: str  # KERNEL, HOPGATE or XDP
    rate: float  # connections the client completed, per second
    failed: float  # connections that failed, per second
    failures: dict[str, int]  # in the window, by kind (refused, reset, timed out)
    slow: int  # completed in the window, but in 0.9 s or more (a SYN sent again)
    server_closed: float  # client FINs the server got, per second: the check
    frames: float  # frames gw received (gw-c and gw-u), per second
    cpu0_busy: float  # fractions of the window
    cpu1_busy: float
    cpu1_softirq: float
    napi_cpu: float  # gw-c's and gw-u's NAPI threads, CPU seconds per second
    client_cpu: float
    server_cpu: float
    hopgate_cpu: float | None  # hopgate's process (None: the kernel)
    table: int  # connections the gateway held at the end
    foreign_cpu: float = 0.0  # other processes' CPU seconds per second in the window
    fast_frames: float | None = None  # forwarded by hopgate's XDP program, per second
    drops: dict[str, int] = field(default_factory=dict)  # hopgate's, the whole run
    nat: dict[str, int] = field(default_factory=dict)  # hopgate's NAT counters, the whole run

    @property
    def gateway_us(self) -> float:
        """CPU 1's busy time per connection: the gateway's."""
        return _per_conn(self.cpu1_busy, self.rate)

    @property
    def hopgate_us(self) -> float | None:
        return None if self.hopgate_cpu is None else _per_conn(self.hopgate_cpu, self.rate)

    @property
    def frames_per_conn(self) -> float:
        return self.frames / self.rate if self.rate else float("nan")


def _per_conn(share: float, rate: float) -> float:
    return share / rate * 1e6 if rate else float("nan")


@dataclass
class Shape:
    inside: Namespace
    lan: Namespace
    gw: Namespace
    r1: Namespace
    server: Namespace
    hopgate: Process | None
    status: Any  # a callable returning hopgate's status


@contextmanager
def _shape(shape: str, mode: str) -> Iterator[Shape]:
    name = f"hgc-{secrets.token_hex(3)}"
    extra = NAT_TABLE + (FNAT_SERVICE if shape == "FNAT" else "")
    lab_mode = "kernel" if mode == "kernel" else "hopgate"
    dataplane = "xdp" if mode == "xdp" else "afpacket"
    with NatLab(lab_mode, name, servers=False, extra_config=extra, dataplane=dataplane) as nl:
        if shape == "FNAT" and mode == "kernel":
            nl.ns("gw").run("nft", FNAT_NFT)
        yield Shape(
            nl.ns("inside1"),
            nl.ns("lan"),
            nl.ns("gw"),
            nl.ns("r1"),
            nl.ns("server"),
            nl.hopgate,
            nl.status,
        )


def _prepare(s: Shape, mode: str) -> list[int]:
    """XDP programs and CPU steering (see the docstring); returns gw's NAPI threads."""
    s.inside.run("sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={PORT_RANGE}")
    # Resolve the neighbours on the path while nothing else runs.
    s.inside.run("ping", "-c", "2", "-i", "0.2", DST)
    # Interfaces that have a native program already (hopgate's, the lab's) keep it.
    _helper(s.gw, "hopgate.lab.xdppass", "gw-c", "gw-u")
    _helper(s.lan, "hopgate.lab.xdppass", "p0")
    _helper(s.r1, "hopgate.lab.xdppass", "r1-d")
    if mode == "xdp":
        attached = s.status()["dataplane"].get("interfaces", [])
        if sorted(attached) != ["gw-c", "gw-u"]:
            raise LabError(f"hopgate's XDP program is on {attached}, not on gw-c and gw-u")
    napi = _threaded_napi(s.gw, "gw-c", GW_CPU) + _threaded_napi(s.gw, "gw-u", GW_CPU)
    _threaded_napi(s.lan, "p0", GEN_CPU)
    _threaded_napi(s.r1, "r1-d", GEN_CPU)
    if s.hopgate is not None:
        subprocess.run(
            ["taskset", "-apc", str(GW_CPU), str(s.hopgate.pid)], check=True, capture_output=True
        )
    return napi


def _churn(ns: Namespace, name: str, *args: str) -> Process:
    return ns.spawn(name, sys.executable, "-m", "bench.tcp_churn", *args, env=_helper_env())


def _marks(proc: Process) -> list[tuple[float, list[int]]]:
    """The ``mark`` lines ``bench/tcp_churn.py`` printed: (time, counts)."""
    out = []
    for line in proc.output().splitlines():
        if line.startswith("mark "):
            _, t, *counts = line.split()
            out.append((float(t), [int(c) for c in counts]))
    return out


def _mark(*procs: Process) -> None:
    for p in procs:
        os.kill(p.pid, signal.SIGUSR1)


def _wait_marks(proc: Process, count: int, timeout: float = 5.0) -> list[tuple[float, list[int]]]:
    deadline = time.monotonic() + timeout
    while True:
        marks = _marks(proc)
        if len(marks) >= count:
            return marks
        if time.monotonic() > deadline:
            raise LabError(f"{proc.name} printed {len(marks)} marks, not {count}:\n{proc.output()}")
        time.sleep(0.05)


def _counter(ns: Namespace, ifname: str, name: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/{name}").stdout)


def _gw_frames(s: Shape) -> int:
    return _counter(s.gw, "gw-c", "rx_packets") + _counter(s.gw, "gw-u", "rx_packets")


def _fast_forwarded(s: Shape) -> int:
    forwarded: int = s.status()["dataplane"].get("forwarded", 0)
    return forwarded


def measure(
    shape: str, mode: str, seconds: float, warmup: float, concurrency: int, ports: str
) -> Result:
    """One run: ``mode`` is "kernel", "hopgate" (AF_PACKET) or "xdp"."""
    with _shape(shape, mode) as s:
        napi = _prepare(s, mode)
        pid = s.hopgate.pid if s.hopgate is not None else None
        to = VIP if shape == "FNAT" else DST
        server = _churn(s.server, "churn-server", "server", "--port", str(PORT))
        wait_for_listen(s.server, PORT)
        client = _churn(
            s.inside, "churn-client", "client", "--to", to, "--port", str(PORT),
            "--concurrency", str(concurrency), "--timeout", str(TIMEOUT),
            *(["--ports", PORT_RANGE.replace(" ", "-")] if ports == "sequential" else []),
        )  # fmt: skip
        try:
            time.sleep(warmup)
            for p in (client, server):
                if not p.alive():
                    raise LabError(f"{p.name} exited:\n{p.output()}")
            ours = {os.getpid(), client.pid, server.pid, *([pid] if pid else [])}
            procs = [*napi, client.pid, server.pid, *([pid] if pid else [])]
            fast0 = _fast_forwarded(s) if mode == "xdp" else 0
            frames0 = _gw_frames(s)
            foreign0 = _foreign_ticks(ours)
            cpu0 = _cpu_ticks()
            proc0 = [_cpu_seconds(p) for p in procs]
            _mark(client, server)
            t0 = time.monotonic()
            time.sleep(seconds)
            _mark(client, server)
            cpu1 = _cpu_ticks()
            proc1 = [_cpu_seconds(p) for p in procs]
            elapsed = time.monotonic() - t0
            foreign1 = _foreign_ticks(ours)
            frames1 = _gw_frames(s)
            fast1 = _fast_forwarded(s) if mode == "xdp" else 0
            cmarks = _wait_marks(client, 2)
            smarks = _wait_marks(server, 2)
        finally:
            client.stop()
            server.stop()
        if pid is not None:
            state = s.status()
            table = state["nat"]["connections"]
            drops = dict(state.get("drops", {}))
            nat = dict(state["nat"]["counters"])
            sock = sum(i["io"]["rx_socket_drops"] for i in state["interfaces"])
            if sock:
                drops["rx_socket_drops"] = sock
        else:
            table = int(s.gw.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
            drops, nat = {}, {}
    (ct0, c0), (ct1, c1) = cmarks[:2]
    (_, sv0), (_, sv1) = smarks[:2]
    window = ct1 - ct0
    completed, failed, refused, reset, timed_out, slow = (
        b - a for a, b in zip(c0[:6], c1[:6], strict=True)
    )
    used = [(b - a) / elapsed for a, b in zip(proc0, proc1, strict=True)]
    busy0, _ = _shares(cpu0[GEN_CPU], cpu1[GEN_CPU])
    busy1, soft1 = _shares(cpu0[GW_CPU], cpu1[GW_CPU])
    n = len(napi)
    return Result(
        shape,
        MODES[mode],
        rate=completed / window,
        failed=failed / window,
        failures={"refused": refused, "reset": reset, "timed out": timed_out},
        slow=slow,
        server_closed=(sv1[1] - sv0[1]) / window,
        frames=(frames1 - frames0) / elapsed,
        cpu0_busy=busy0,
        cpu1_busy=busy1,
        cpu1_softirq=soft1,
        napi_cpu=sum(used[:n]),
        client_cpu=used[n],
        server_cpu=used[n + 1],
        hopgate_cpu=used[n + 2] if pid else None,
        table=table,
        foreign_cpu=sum(foreign1[p] - foreign0[p] for p in foreign1.keys() & foreign0.keys())
        / os.sysconf("SC_CLK_TCK")
        / elapsed,
        fast_frames=(fast1 - fast0) / elapsed if mode == "xdp" else None,
        drops=drops,
        nat=nat,
    )


def _measure_quietly(shape: str, mode: str, args: argparse.Namespace) -> Result:
    """``measure`` with the machine to itself (bench/quiet.py)."""
    return measure_quietly(
        lambda: measure(shape, mode, args.seconds, args.warmup, args.concurrency, args.ports),
        lambda r: r.foreign_cpu,
        FOREIGN_MAX,
    )


# -- the report -----------------------------------------------------------------

Rounds = list[list[Result]]  # each round: every shape, each gateway
GATEWAYS = (KERNEL, HOPGATE, XDP)


def _runs(rounds: Rounds, shape: str, gateway: str) -> list[Result]:
    return [r for rnd in rounds for r in rnd if r.shape == shape and r.gateway == gateway]


def _median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def _shapes(rounds: Rounds) -> list[str]:
    seen = {r.shape for rnd in rounds for r in rnd}
    return [x for x in SHAPES if x in seen]


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _header(*columns: str, text: int = 2) -> str:
    """A Markdown table's head: the first ``text`` columns left, the rest right."""
    rule = ["---"] * text + ["---:"] * (len(columns) - text)
    return f"| {' | '.join(columns)} |\n|{'|'.join(rule)}|\n"


RATE_HEADER = _header(
    "shape", "gateway", "connections/s", "each round", "failed/s", "CPU 1 busy",
    "CPU 1 µs/conn", "hopgate µs/conn", "frames/conn", "table at the end",
)  # fmt: skip
TIME_HEADER = _header(
    "shape", "gateway", "CPU 0 busy", "client", "server", "CPU 1 busy", "CPU 1 softirq",
    "NAPI threads (gw-c, gw-u)", "hopgate", "server got FINs/s",
)  # fmt: skip


def _medians(rounds: Rounds) -> Iterator[tuple[str, str, list[Result], Result]]:
    """Each shape and gateway measured: its runs, and the run of median rate."""
    for shape in _shapes(rounds):
        for gateway in GATEWAYS:
            runs = _runs(rounds, shape, gateway)
            if runs:
                yield shape, gateway, runs, _median_run(runs)


def _rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs, r in _medians(rounds):
        each = " / ".join(f"{x.rate:,.0f}" for x in runs)
        hop = f"{r.hopgate_us:.0f}" if r.hopgate_us is not None else "–"
        rows.append(
            f"| {shape} | {gateway} | {r.rate:,.0f} | {each} | {r.failed:,.1f} | "
            f"{_pct(r.cpu1_busy)} | {r.gateway_us:.1f} | {hop} | "
            f"{r.frames_per_conn:.2f} | {r.table:,} |"
        )
    return "\n".join(rows)


def _time_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, _, r in _medians(rounds):
        hop = _pct(r.hopgate_cpu) if r.hopgate_cpu is not None else "–"
        rows.append(
            f"| {shape} | {gateway} | {_pct(r.cpu0_busy)} | {_pct(r.client_cpu)} | "
            f"{_pct(r.server_cpu)} | {_pct(r.cpu1_busy)} | {_pct(r.cpu1_softirq)} | "
            f"{_pct(r.napi_cpu)} | {hop} | {r.server_closed:,.0f} |"
        )
    return "\n".join(rows)


def _ratio(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    ratios = sorted(n / d if d else 0.0 for n, d in zip(num, den, strict=True))
    return statistics.median(ratios), ratios  # of an even count: the mean of the middle two


def _spread(ratios: list[float], digits: int = 3) -> str:
    if len(ratios) < 2:
        return ""
    return f", {ratios[0]:.{digits}f} to {ratios[-1]:.{digits}f} over the rounds"


def _ratio_lines(rounds: Rounds) -> str:
    lines = []
    for shape in _shapes(rounds):
        kers = _runs(rounds, shape, KERNEL)
        for gateway in (HOPGATE, XDP):
            runs = _runs(rounds, shape, gateway)
            if not runs or not kers or len(runs) != len(kers):
                continue
            # The gateways measured back to back in a round share its conditions.
            rate, rates = _ratio([r.rate for r in runs], [k.rate for k in kers])
            cost, costs = _ratio([r.gateway_us for r in runs], [k.gateway_us for k in kers])
            lines.append(
                f"- **{shape}: {gateway} / kernel = {rate:.3f}** in connections per second"
                f" (the median{_spread(rates)}); CPU 1's time per connection was"
                f" {cost:.1f} times the kernel's (the median{_spread(costs, 1)})."
            )
            own = statistics.median(r.hopgate_us or 0.0 for r in runs)
            napi = statistics.median(_per_conn(r.napi_cpu, r.rate) for r in runs)
            lines.append(
                f"  Of it, {own:.0f} µs per connection were hopgate's process's and"
                f" {napi:.0f} µs gw's NAPI threads' (the medians)."
            )
            fast = [
                r.fast_frames / r.frames for r in runs if r.fast_frames is not None and r.frames
            ]
            if fast and max(fast) == 0:
                lines.append(
                    "  hopgate's XDP program forwarded none of the frames gw received (by its"
                    " own counters): all went up to the pipeline."
                )
            elif fast:
                lines.append(
                    f"  hopgate's XDP program forwarded {min(fast):.1%} to {max(fast):.1%} of"
                    " the frames gw received (by its own counters)."
                )
        idle = [k for k in kers if k.cpu1_busy < 0.95]
        if idle:
            lines.append(
                f"- **{shape}: the kernel left CPU 1 idle**"
                f" ({_pct(1 - max(k.cpu1_busy for k in idle))} to"
                f" {_pct(1 - min(k.cpu1_busy for k in idle))} of the window, in {len(idle)} of"
                f" {len(kers)} rounds) while CPU 0 was"
                f" {_pct(min(k.cpu0_busy for k in idle))} to {_pct(max(k.cpu0_busy for k in idle))}"
                " busy: the generator was the limit, not the kernel. The kernel's rate is"
                " what the generator made; the ratios of rates above overstate hopgate"
                " against what the kernel could do, and CPU 1's time per connection"
                " compares the gateways' work."
            )
        for gateway in (HOPGATE, XDP):
            runs = _runs(rounds, shape, gateway)
            if runs and all(r.cpu1_busy >= 0.95 for r in runs):
                lines.append(
                    f"- {shape}: {gateway} kept CPU 1 busy"
                    f" ({_pct(min(r.cpu1_busy for r in runs))} to"
                    f" {_pct(max(r.cpu1_busy for r in runs))}) with CPU 0"
                    f" {_pct(min(r.cpu0_busy for r in runs))} to"
                    f" {_pct(max(r.cpu0_busy for r in runs))} busy: the gateway was the limit."
                )
            elif runs:
                lines.append(
                    f"- {shape}: {gateway} left CPU 1 idle in some rounds (busy"
                    f" {', '.join(_pct(r.cpu1_busy) for r in runs)}), CPU 0 busy"
                    f" {', '.join(_pct(r.cpu0_busy) for r in runs)}: neither was the limit"
                    " throughout (waits: see the notes below)."
                )
    return "\n".join(lines)


def _sum(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


# hopgate's NAT counters worth a word: new SYNs on a tuple in TIME_WAIT (NAT
# reopens the connection, the balancer schedules it afresh), and connections
# the XDP fast path held and the pipeline took back.
NAT_NOTES = {
    "connections-reopened": "reopened",
    "connections-rescheduled": "scheduled afresh",
    "fastpath-taken-back": (
        "taken back from the fast path (a connection is handed to it once established"
        " and assured, and taken back at the next segment it passes up, here a FIN)"
    ),
}


def _note_lines(rounds: Rounds) -> str:
    lines = []
    for shape in _shapes(rounds):
        for gateway in GATEWAYS:
            runs = _runs(rounds, shape, gateway)
            if not runs:
                continue
            failed = _sum([r.failures for r in runs])
            slow = sum(r.slow for r in runs)
            what = ", ".join(f"{v:,} {k}" for k, v in failed.items() if v) or "none"
            line = (
                f"- {shape}, {gateway}: failed in the windows: {what};"
                f" completed in 0.9 s or more: {slow:,}."
            )
            drops = _sum([r.drops for r in runs])
            if drops:
                line += (
                    " hopgate dropped (warm-up and window):"
                    f" {', '.join(f'{v:,} `{k}`' for k, v in sorted(drops.items()))}."
                )
            nat = _sum([r.nat for r in runs])
            created = nat.get("connections-created", 0)
            notes = [f"{nat[k]:,} {v}" for k, v in NAT_NOTES.items() if nat.get(k)]
            if created and notes:
                line += f" Of the {created:,} connections it made, {', '.join(notes)}."
            lines.append(line)
    return "\n".join(lines)


def _gateways(rounds: Sequence[Sequence[Any]]) -> str:
    """The gateways the rounds measured (each result has a ``gateway``), in
    words, in their order (bench/transfer.py's report too)."""
    names = {
        KERNEL: "the Linux kernel",
        HOPGATE: "hopgate (AF_PACKET)",
        XDP: 'hopgate XDP (its XDP fast path, `[dataplane] mode = "xdp"`)',
    }
    seen = [names[g] for g in GATEWAYS if any(r.gateway == g for rnd in rounds for r in rnd)]
    return ", ".join(seen[:-1]) + " and " + seen[-1] if len(seen) > 1 else seen[0]


def _ports_text(ports: str) -> str:
    if ports == "sequential":
        return (
            "The client binds its source ports, each of 1024-65535 in turn, so a port\n"
            "comes back after 64,512 connections (within a run only at the kernel's\n"
            "rate), to a tuple the gateway holds in TIME_WAIT: the gateway reopens the\n"
            "connection at the new SYN, as Linux's conntrack does. Left to the client's\n"
            "kernel (`--ports kernel`), a port came back after some 7,100 connections,\n"
            "and hopgate's FNAT stalled connections then: bench/connections.py's\n"
            "docstring tells what was seen."
        )
    return (
        "The client's kernel chose its source ports (`--ports kernel`,\n"
        "`ip_local_port_range` 1024-65535): a port came back after some 7,100\n"
        "connections in this lab, to a tuple the gateway holds in TIME_WAIT.\n"
        "bench/connections.py's docstring tells what that does to hopgate's FNAT."
    )


def _report(rounds: Rounds, seconds: float, warmup: float, concurrency: int, ports: str) -> str:
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
    return f"""## New TCP connections per second, NAT and FNAT

Measured {today} by `bench/connections.py` ({seconds:g} s window after a {warmup:g} s
warm-up), {len(rounds)} round{"s" if len(rounds) > 1 else ""}, each measuring \
{" and ".join(_shapes(rounds))} with each gateway in turn:
{_gateways(rounds)}.
NAT: an inside host connects to the server through the gateway translating its
source (the kernel: the lab's nftables masquerade), then r1. FNAT: the inside
host connects to a TCP service on a VIP of the gateway (port 80, one backend,
health checks off), which connects to the server from a local address (the
kernel: nftables dnat to the server, and the masquerade: what FNAT does to a
packet, without a load balancer's scheduling).

Each connection is a full handshake and a close both ways, no data: the server
(`bench/tcp_churn.py`) accepts and shuts its side down at once, the client
reads that FIN and closes, the server reads the client's FIN and closes. The
client keeps {concurrency} connections in flight (non-blocking sockets, epoll) and
counts those it completed in the window; the server's count of the client's
FINs is the check.

{_ports_text(ports)}

The client and the server are Python processes on CPU 0, with the lab's other
hosts (the bridge, r1), whose receive runs in NAPI threads pinned there. The
gateway has CPU 1 to itself: gw-c's and gw-u's NAPI threads (which do all of
the kernel's forwarding, and hopgate's receive) and hopgate's process are
pinned there. So CPU 1's busy time per connection is the gateway's cost.

{RATE_HEADER}{_rows(rounds)}

The row is the round with the median rate. *failed/s*: connections refused,
reset or not done in {TIMEOUT:g} s, per second. *frames/conn*: frames gw received
(gw-c and gw-u) per completed connection; a connection is 6 without a
retransmission (SYN, ACK, the client's FIN; SYN-ACK, the server's FIN, the last
ACK), 7 when the client's kernel acknowledges the server's FIN before the
client's FIN goes. *table at the end*: the connections the gateway held after
the run (`nf_conntrack_count`; `hopgate status`), most of them in TIME_WAIT
(120 s), out of {TABLE_MAX:,} allowed (hopgate's `[nat] max_connections` set so,
the kernel's `nf_conntrack_max` here).

{_ratio_lines(rounds)}

Where the time went (the same median rounds; shares of each CPU over the
window, and of one CPU for the processes and threads; *server got FINs/s*: the
server's check of the client's count):

{TIME_HEADER}{_time_rows(rounds)}

{_note_lines(rounds)}
- Threads on CPU 1 are accounted with their softirq ticks (the kernel counts
  CPU time by ticks here, `CONFIG_TICK_CPU_ACCOUNTING`), so CPU 1's softirq
  share is 0 and the NAPI threads' time holds it.
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.connections` (as root, after `scripts/bootstrap`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description="New TCP connections per second through hopgate and the Linux kernel."
    )
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    ap.add_argument(
        "--ports",
        choices=("sequential", "kernel"),
        default="sequential",
        help="the client's source ports: each of 1024-65535 in turn, or the kernel's choice",
    )
    gateway_args(ap, SHAPES, MODES, ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    # The bench itself, and what it starts, stay off the gateway's CPU.
    need_lab_machine(args, "the generator", GEN_CPU)
    rounds: Rounds = []
    for n in range(1, args.rounds + 1):
        rnd = []
        for shape in args.shapes:
            for mode in args.gateways:
                r = _measure_quietly(shape, mode, args)
                fails = ", ".join(f"{v} {k}" for k, v in r.failures.items() if v)
                print(
                    f"round {n}  {r.shape:5} {r.gateway:12} {r.rate:9,.0f} conn/s"
                    f"  failed {r.failed:6,.1f}/s{f' ({fails})' if fails else ''}  slow {r.slow}"
                    f"  server {r.server_closed:9,.0f}/s  CPU0 {r.cpu0_busy:4.0%}"
                    f"  CPU1 {r.cpu1_busy:4.0%} (softirq {r.cpu1_softirq:4.0%})"
                    f"  {r.gateway_us:6.1f} µs/conn"
                    + (f"  hopgate {r.hopgate_us:5.0f} µs/conn" if r.hopgate_us else "")
                    + f"  {r.frames_per_conn:.2f} frames/conn  table {r.table:,}"
                    f"  others {r.foreign_cpu:.1%}"
                    + (f"  by XDP {r.fast_frames:,.0f} fr/s" if r.fast_frames is not None else "")
                    + (f"  drops {r.drops}" if r.drops else "")
                    + (f"  nat {r.nat}" if r.nat else ""),
                    flush=True,
                )
                rnd.append(r)
        rounds.append(rnd)
    text = _report(rounds, args.seconds, args.warmup, args.concurrency, args.ports)
    publish(args.out, "connections", text, no_write=args.no_write)


if __name__ == "__main__":
    main()
