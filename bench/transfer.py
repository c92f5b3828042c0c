"""TCP transfers through NAT and the load balancer: one stream's throughput and
10 MB downloads, through the Linux kernel, hopgate (AF_PACKET) and hopgate with
its XDP fast path, in the same lab, in one run.  Writes its section of
docs/benchmarks.md.

    .venv/bin/python -m bench.transfer [--seconds 10] [--rounds 3] [--downloads 20]
                                       [--shapes NAT FNAT] [--gateways kernel hopgate xdp]
                                       [--out docs/benchmarks.md] [--no-write]

The lab is bench/connections.py's, built and steered by its ``_shape`` and
``_prepare``: NAT, the inside host downloading from the server through gw
translating its source (the kernel: the NatLab's nftables masquerade), then r1;
FNAT, the inside host downloading from a TCP service on port 80 of a VIP of gw
(one backend, health checks off), which connects to the server from a local
address (the kernel: nftables dnat for the VIP's port, then the masquerade).
Both transfers run on the service's port, 80, so the server serves one at a
time: first ``iperf3 -s -p 80``, then the lab's HTTP server (Python's
``http.server``, ``serve_http``) with its 10 MiB file.

- The stream: ``iperf3 -c ... -p 80 -R -t SECONDS -J`` on the inside host, one
  TCP stream, the server sending (a download), not paced.  Its rate is iperf3's
  receiver's; its retransmissions iperf3's ``retransmits`` (the sender's, the
  server's kernel's count), checked against the server's kernel
  (``RetransSegs`` in its /proc/net/snmp).
- The downloads: ``--downloads`` downloads of the 10 MiB file with curl
  (``hopgate.lab.tools.curl``), one after another, after one more that is not
  counted (the server's page cache, http.server's first request).  Each one's
  time is curl's ``time_total`` (connect to last byte).

The CPUs are split as in bench/connections.py: gw-c's and gw-u's NAPI threads
(which do all of the kernel's forwarding, hopgate's receive, and hopgate's XDP
program) and hopgate's process are pinned to CPU 1; everything else is on CPU 0
(iperf3 and curl, the server, the bridge's and r1's NAPI threads, the hosts'
TCP).  So CPU 1's busy time per MB moved is the gateway's cost.  Each part
(the stream, the downloads) is one window from just before its first byte to
just after its last: CPU time (/proc/stat's ticks, the threads' and processes'
/proc/PID/stat) and counters are read at its two ends; hopgate's status (the
XDP program's counters, the NAT's) just outside them, since a status request
costs hopgate's loop time.  When the kernel leaves CPU 1 idle, the endpoints on
CPU 0 were the limit; the report says what limited each run.

Where segments are lost: p0 (the bridge's port toward gw) and r1-d have native
XDP_PASS programs with threaded NAPI on CPU 0 (connections.py's steering), so
each takes frames into a ring of 256 that its thread empties.  A gateway that
forwards the server's data faster than CPU 0 takes it in fills p0's ring, which
refuses frames (gw-c's ``tx_dropped``), and the server's TCP sends them again.
Seen in the lab (kernel NAT, a 3 s stream at 2.6 Gbit/s): p0's ring refused
82,139 frames, and the server sent 83,563 segments again; with hopgate XDP
79,814 and 81,236 (iperf3's count); hopgate with AF_PACKET, at 150 Mbit/s, lost
none (what waited, waited in its socket's buffer).  The report gives each
part's retransmissions with the frames each ring refused.

r1's link to the server keeps the NatLab's MTU of 1400 (the lab as users see
it).  The server's own interface is on that link: its TCP sends segments that
fit it and announces an MSS of 1360, which keeps the inside host's within it
too, so no ICMP "fragmentation needed" is called for; the report counts r1's
(``OutDestUnreachs`` in its /proc/net/snmp) and the size of the frames gw
received from r1 to show it.

Before each measurement the bench waits until no tests or other benchmarks
run, and measures again if other processes took CPU time in the window
(``bench.quiet``, as bench/forwarding.py and bench/connections.py).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.connections import (
    DST,
    MODES,
    PORT,
    SHAPES,
    Shape,
    _counter,
    _fast_forwarded,
    _gateways,
    _gw_frames,
    _header,
    _pct,
    _prepare,
    _ratio,
    _shape,
    _spread,
    _sum,
)
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
)
from bench.quiet import measure_quietly
from bench.report import gateway_args, need_lab_machine, publish
from hopgate.lab import tools
from hopgate.lab.netns import LabError, Namespace
from hopgate.lab.topologies import BIG_FILE, OUTSIDE_MTU, serve_http, wait_for_listen

ROOT = Path(__file__).resolve().parent.parent
DOWNLOADS = 20
BIG = 10 * 1024 * 1024  # serve_http's BIG_FILE, bytes
MB = 1e6  # of TCP payload received by the inside host
STREAM, DOWNLOAD = "stream", "downloads"
# hopgate's NAT counters the report gives for each part of a run.
NAT_COUNTERS = (
    "fastpath-taken-back",
    "fastpath-replayed",
    "fastpath-replay-passed",
    "tcp-out-of-window",
)
GATEWAYS = (KERNEL, HOPGATE, XDP)
# A CPU this busy over a window was the limit.  Not 95% as in bench/connections.py:
# the downloads' window holds the moments between two downloads, when curl starts.
BUSY = 0.9
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Part:
    """One part of a run (the stream, or the downloads): its window's sums."""

    seconds: float  # the window
    payload: int  # bytes of TCP payload the inside host received
    cpu0: float  # busy CPU seconds of CPU 0 in the window
    cpu1: float
    napi: float  # gw-c's and gw-u's NAPI threads, CPU seconds
    hopgate: float | None  # hopgate's process, CPU seconds (None: the kernel)
    server: float  # the serving process (iperf3 -s, http.server), CPU seconds
    client: float  # the clients (iperf3 -c, curl: the bench's children), CPU seconds
    foreign: float  # other processes' CPU seconds
    frames: int  # frames gw received (gw-c and gw-u)
    from_r1: tuple[int, int]  # frames and bytes gw-u received: the server's side
    retrans: int  # segments the server's kernel sent again (RetransSegs)
    unreach: int  # ICMP destination unreachables r1 sent (OutDestUnreachs)
    refused_at: int  # frames sent to gw that its rings refused (p0's, r1-d's tx_dropped)
    refused_past: tuple[int, int]  # frames gw sent that p0's, r1-d's ring refused
    # (gw-c's, gw-u's tx_dropped)
    to_inside: int  # frames gw sent toward the inside host, refused ones included
    fast: int | None = None  # frames hopgate's XDP program forwarded
    nat: dict[str, int] = field(default_factory=dict)  # NAT_COUNTERS' increments

    @property
    def mbps(self) -> float:
        return self.payload * 8 / self.seconds / 1e6 if self.seconds else float("nan")

    def per_mb(self, seconds: float | None) -> float:
        """CPU milliseconds per MB of payload."""
        if seconds is None or not self.payload:
            return float("nan")
        return seconds * 1e3 / (self.payload / MB)

    @property
    def cpu1_ms(self) -> float:
        """CPU 1's busy time per MB: the gateway's."""
        return self.per_mb(self.cpu1)

    @property
    def busy0(self) -> float:
        return self.cpu0 / self.seconds if self.seconds else 0.0

    @property
    def busy1(self) -> float:
        return self.cpu1 / self.seconds if self.seconds else 0.0

    @property
    def fast_share(self) -> float | None:
        return None if self.fast is None or not self.frames else self.fast / self.frames


@dataclass
class Result:
    shape: str  # one of SHAPES
    gateway: str  # KERNEL, HOPGATE or XDP
    stream: Part
    stream_mbps: float  # iperf3's receiver's rate
    stream_retransmits: int | None  # iperf3's sender's count
    downloads: Part
    times: list[float]  # each counted download's time_total, seconds
    drops: dict[str, int] = field(default_factory=dict)  # hopgate's, the whole run

    @property
    def download_ms(self) -> float:
        return statistics.median(self.times) * 1e3

    def part(self, name: str) -> Part:
        return self.stream if name == STREAM else self.downloads

    @property
    def foreign(self) -> float:
        """Other processes' CPU seconds per second over the two windows."""
        parts = (self.stream, self.downloads)
        return sum(p.foreign for p in parts) / sum(p.seconds for p in parts)


def _snmp(ns: Namespace, group: str, name: str) -> int:
    """One counter of ``ns``'s /proc/net/snmp (``Tcp`` ``RetransSegs``, say)."""
    lines = [x.split() for x in ns.run("cat", "/proc/net/snmp").stdout.splitlines()]
    for head, values in itertools.pairwise(lines):
        if head and head[0] == f"{group}:" and values and values[0] == f"{group}:":
            return int(values[head.index(name)])
    raise LabError(f"{ns.name}: no {group} {name} in /proc/net/snmp")


def _children_cpu() -> float:
    """CPU seconds of the bench's reaped children: the clients it ran."""
    t = os.times()
    return t.children_user + t.children_system


@dataclass
class _Counts:
    """Counters read outside a window (processes, the admin socket)."""

    frames: int
    from_r1: tuple[int, int]
    retrans: int
    unreach: int
    refused_at: int
    refused_past: tuple[int, int]
    to_inside: int
    fast: int | None
    nat: dict[str, int]

    @classmethod
    def read(cls, s: Shape, mode: str) -> _Counts:
        state = s.status() if s.hopgate is not None else None
        nat = {k: state["nat"]["counters"].get(k, 0) for k in NAT_COUNTERS} if state else {}
        return cls(
            _gw_frames(s),
            (_counter(s.gw, "gw-u", "rx_packets"), _counter(s.gw, "gw-u", "rx_bytes")),
            _snmp(s.server, "Tcp", "RetransSegs"),
            _snmp(s.r1, "Icmp", "OutDestUnreachs"),
            _counter(s.lan, "p0", "tx_dropped") + _counter(s.r1, "r1-d", "tx_dropped"),
            (_counter(s.gw, "gw-c", "tx_dropped"), _counter(s.gw, "gw-u", "tx_dropped")),
            _counter(s.gw, "gw-c", "tx_packets") + _counter(s.gw, "gw-c", "tx_dropped"),
            _fast_forwarded(s) if mode == "xdp" else None,
            nat,
        )


def _measured(s: Shape, mode: str, napi: list[int], server: int, work: Callable[[], int]) -> Part:
    """``work()`` (returning the payload bytes the inside host received) in one
    window, and what it cost."""
    hop = s.hopgate.pid if s.hopgate is not None else None
    pids = [*napi, server, *([hop] if hop else [])]
    ours = {os.getpid(), server, *([hop] if hop else [])}
    c0 = _Counts.read(s, mode)
    foreign0 = _foreign_ticks(ours)
    proc0 = [_cpu_seconds(p) for p in pids]
    kids0 = _children_cpu()
    ticks0 = _cpu_ticks()
    t0 = time.monotonic()
    payload = work()
    elapsed = time.monotonic() - t0
    ticks1 = _cpu_ticks()
    kids1 = _children_cpu()
    proc1 = [_cpu_seconds(p) for p in pids]
    foreign1 = _foreign_ticks(ours)
    c1 = _Counts.read(s, mode)
    used = [b - a for a, b in zip(proc0, proc1, strict=True)]
    n = len(napi)
    return Part(
        seconds=elapsed,
        payload=payload,
        cpu0=_busy(ticks0[GEN_CPU], ticks1[GEN_CPU]),
        cpu1=_busy(ticks0[GW_CPU], ticks1[GW_CPU]),
        napi=sum(used[:n]),
        hopgate=used[n + 1] if hop else None,
        server=used[n],
        client=kids1 - kids0,
        foreign=sum(foreign1[p] - foreign0[p] for p in foreign1.keys() & foreign0.keys()) / TICK,
        frames=c1.frames - c0.frames,
        from_r1=(c1.from_r1[0] - c0.from_r1[0], c1.from_r1[1] - c0.from_r1[1]),
        retrans=c1.retrans - c0.retrans,
        unreach=c1.unreach - c0.unreach,
        refused_at=c1.refused_at - c0.refused_at,
        refused_past=(
            c1.refused_past[0] - c0.refused_past[0],
            c1.refused_past[1] - c0.refused_past[1],
        ),
        to_inside=c1.to_inside - c0.to_inside,
        fast=None if c1.fast is None or c0.fast is None else c1.fast - c0.fast,
        nat={k: c1.nat[k] - c0.nat[k] for k in c1.nat},
    )


def _busy(before: list[int], after: list[int]) -> float:
    """Busy CPU seconds of one CPU between two readings of /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, _steal = (
        b - a for a, b in zip(before, after, strict=True)
    )
    return (user + nice + system + irq + softirq) / TICK


def _stream(
    s: Shape, mode: str, napi: list[int], to: str, seconds: int
) -> tuple[Part, float, int | None]:
    """One iperf3 stream from the server to the inside host: the window's part,
    iperf3's receiver's rate (Mbit/s) and its sender's retransmissions."""
    server = s.server.spawn("iperf3-server", "iperf3", "-s", "-p", str(PORT))
    result: dict[str, Any] = {}

    def work() -> int:
        r = tools.run(
            s.inside, "iperf3", "-c", to, "-p", str(PORT), "-R", "-t", str(seconds), "-J",
            timeout=seconds + 30,
        )  # fmt: skip
        try:
            result.update(json.loads(r.stdout))
        except ValueError:
            raise LabError(f"iperf3 printed no JSON:\n{r.output}") from None
        if "error" in result:
            raise LabError(f"iperf3: {result['error']}")
        got: int = result["end"]["sum_received"]["bytes"]
        return got

    try:
        wait_for_listen(s.server, PORT)
        part = _measured(s, mode, napi, server.pid, work)
    finally:
        server.stop()
    end = result["end"]
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return part, end["sum_received"]["bits_per_second"] / 1e6, retransmits


def _downloads(
    s: Shape, mode: str, napi: list[int], to: str, count: int
) -> tuple[Part, list[float]]:
    """``count`` downloads of the 10 MiB file, one after another, in one window
    (one more before it, not counted): the part, and each one's time."""
    server = serve_http(s.server.lab, s.server, "www", process="http-server", port=PORT)
    url = f"http://{to}:{PORT}/{BIG_FILE}"
    times: list[float] = []

    def get() -> tools.Download:
        d = tools.curl(s.inside, url)
        if not d.ok or d.size != BIG:
            raise LabError(f"a download through {MODES[mode]} failed:\n{d.run.output}")
        return d

    def work() -> int:
        for _ in range(count):
            times.append(get().seconds)
        return count * BIG

    try:
        get()
        part = _measured(s, mode, napi, server.pid, work)
    finally:
        server.stop()
    return part, times


def measure(shape: str, mode: str, seconds: int, downloads: int) -> Result:
    """One run: ``mode`` is "kernel", "hopgate" (AF_PACKET) or "xdp"."""
    with _shape(shape, mode) as s:
        napi = _prepare(s, mode)
        to = VIP if shape == "FNAT" else DST
        stream, mbps, retransmits = _stream(s, mode, napi, to, seconds)
        down, times = _downloads(s, mode, napi, to, downloads)
        drops: dict[str, int] = {}
        if s.hopgate is not None:
            state = s.status()
            drops = dict(state.get("drops", {}))
            sock = sum(i["io"]["rx_socket_drops"] for i in state["interfaces"])
            if sock:
                drops["rx_socket_drops"] = sock
    return Result(shape, MODES[mode], stream, mbps, retransmits, down, times, drops)


def _measure_quietly(shape: str, mode: str, args: argparse.Namespace) -> Result:
    """``measure`` with the machine to itself (bench/quiet.py)."""
    return measure_quietly(
        lambda: measure(shape, mode, args.seconds, args.downloads),
        lambda r: r.foreign,
        FOREIGN_MAX,
    )


# -- the report -----------------------------------------------------------------

Rounds = list[list[Result]]  # each round: every shape, each gateway


def _runs(rounds: Rounds, shape: str, gateway: str) -> list[Result]:
    return [r for rnd in rounds for r in rnd if r.shape == shape and r.gateway == gateway]


def _shapes(rounds: Rounds) -> list[str]:
    seen = {r.shape for rnd in rounds for r in rnd}
    return [x for x in SHAPES if x in seen]


def _median_run(runs: list[Result], key: Callable[[Result], float]) -> Result:
    return sorted(runs, key=key)[len(runs) // 2]


def _cases(rounds: Rounds) -> Iterator[tuple[str, str, list[Result]]]:
    for shape in _shapes(rounds):
        for gateway in GATEWAYS:
            runs = _runs(rounds, shape, gateway)
            if runs:
                yield shape, gateway, runs


def _ms(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _share(p: Part) -> str:
    share = p.fast_share
    return "–" if share is None else f"{share:.1%}"


STREAM_HEADER = _header(
    "shape", "gateway", "Mbit/s", "each round", "retransmits", "CPU 0 busy", "CPU 1 busy",
    "CPU 1 ms/MB", "hopgate ms/MB", "frames/MB", "by XDP",
)  # fmt: skip
DOWNLOAD_HEADER = _header(
    "shape", "gateway", "10 MiB download (ms)", "each round", "Mbit/s", "retransmits",
    "CPU 0 busy", "CPU 1 busy", "CPU 1 ms/MB", "hopgate ms/MB", "by XDP",
)  # fmt: skip
COUNTER_HEADER = _header(
    "shape", "gateway", "part", "frames gw received", "by XDP", *NAT_COUNTERS, text=3
)
LOSS_HEADER = _header(
    "shape", "gateway", "part", "sent again (server's kernel)", "iperf3's retransmits",
    "refused by gw's rings", "refused by p0's ring", "by r1-d's", text=3,
)  # fmt: skip
TIME_HEADER = _header(
    "shape", "gateway", "part", "CPU 0 busy", "clients", "server", "CPU 1 busy",
    "NAPI threads (gw-c, gw-u)", "hopgate", text=3,
)  # fmt: skip


def _stream_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs in _cases(rounds):
        r = _median_run(runs, lambda x: x.stream_mbps)
        p = r.stream
        each = " / ".join(f"{x.stream_mbps:,.0f}" for x in runs)
        retr = " / ".join(
            "?" if x.stream_retransmits is None else f"{x.stream_retransmits:,}" for x in runs
        )
        rows.append(
            f"| {shape} | {gateway} | {r.stream_mbps:,.0f} | {each} | {retr} | "
            f"{_pct(p.busy0)} | {_pct(p.busy1)} | {_ms(p.cpu1_ms)} | "
            f"{_ms(p.per_mb(p.hopgate))} | {p.frames / (p.payload / MB):,.0f} | {_share(p)} |"
        )
    return "\n".join(rows)


def _download_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs in _cases(rounds):
        r = _median_run(runs, lambda x: x.download_ms)
        p = r.downloads
        each = " / ".join(f"{x.download_ms:,.0f}" for x in runs)
        retr = " / ".join(f"{x.downloads.retrans:,}" for x in runs)
        mbps = BIG * 8 / (r.download_ms / 1e3) / 1e6
        rows.append(
            f"| {shape} | {gateway} | {r.download_ms:,.0f} | {each} | {mbps:,.0f} | {retr} | "
            f"{_pct(p.busy0)} | {_pct(p.busy1)} | {_ms(p.cpu1_ms)} | "
            f"{_ms(p.per_mb(p.hopgate))} | {_share(p)} |"
        )
    return "\n".join(rows)


def _counter_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs in _cases(rounds):
        if gateway == KERNEL:
            continue
        for part in (STREAM, DOWNLOAD):
            parts = [r.part(part) for r in runs]
            frames = " / ".join(f"{p.frames:,}" for p in parts)
            fast = " / ".join(_share(p) for p in parts)
            counts = [" / ".join(f"{p.nat.get(k, 0):,}" for p in parts) for k in NAT_COUNTERS]
            rows.append(
                f"| {shape} | {gateway} | {part} | {frames} | {fast} | {' | '.join(counts)} |"
            )
    return "\n".join(rows)


def _loss_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs in _cases(rounds):
        for part in (STREAM, DOWNLOAD):
            parts = [r.part(part) for r in runs]
            iperf = (
                " / ".join(
                    "?" if r.stream_retransmits is None else f"{r.stream_retransmits:,}"
                    for r in runs
                )
                if part == STREAM
                else "–"
            )
            rows.append(
                f"| {shape} | {gateway} | {part} | {' / '.join(f'{p.retrans:,}' for p in parts)}"
                f" | {iperf} | {' / '.join(f'{p.refused_at:,}' for p in parts)}"
                f" | {' / '.join(f'{p.refused_past[0]:,}' for p in parts)}"
                f" | {' / '.join(f'{p.refused_past[1]:,}' for p in parts)} |"
            )
    return "\n".join(rows)


def _time_rows(rounds: Rounds) -> str:
    rows = []
    for shape, gateway, runs in _cases(rounds):
        for part, key in (
            (STREAM, lambda x: x.stream_mbps),
            (DOWNLOAD, lambda x: x.download_ms),
        ):
            p = _median_run(runs, key).part(part)
            s = p.seconds
            hop = _pct(p.hopgate / s) if p.hopgate is not None else "–"
            rows.append(
                f"| {shape} | {gateway} | {part} | {_pct(p.busy0)} | {_pct(p.client / s)} | "
                f"{_pct(p.server / s)} | {_pct(p.busy1)} | {_pct(p.napi / s)} | {hop} |"
            )
    return "\n".join(rows)


def _range(values: list[float], fmt: str = "{:.0%}") -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo} to {hi}"


def _limit(gateway: str, parts: list[Part]) -> str:
    """What limited ``parts`` (one a round): the gateway's CPU, or the endpoints'."""
    busy1 = [p.busy1 for p in parts]
    busy0 = [p.busy0 for p in parts]
    if all(b >= BUSY for b in busy1):
        return (
            f"{gateway} kept CPU 1 busy ({_range(busy1)}) with CPU 0 {_range(busy0)} busy:"
            " the gateway was the limit"
        )
    # p0's ring is emptied on CPU 0: what it refused of the gateway's output is
    # CPU 0 not keeping up with the gateway.
    refused = [p.refused_past[0] / p.to_inside if p.to_inside else 0.0 for p in parts]
    if all(b < BUSY for b in busy1) and all(
        b0 >= BUSY or r > 0 for b0, r in zip(busy0, refused, strict=True)
    ):
        return (
            f"{gateway} left CPU 1 idle ({_range([1 - b for b in busy1])} of the window)"
            f" while CPU 0 was {_range(busy0)} busy, and p0's ring, emptied on CPU 0, refused"
            f" {_range(refused, '{:.1%}')} of the frames gw sent toward the inside host: the"
            " endpoints' CPU was the limit"
        )
    return (
        f"{gateway}: CPU 1 {', '.join(_pct(b) for b in busy1)} busy, CPU 0"
        f" {', '.join(_pct(b) for b in busy0)} (the rounds): neither was the limit throughout"
    )


def _ratio_lines(rounds: Rounds) -> str:
    lines = []
    for shape in _shapes(rounds):
        kers = _runs(rounds, shape, KERNEL)
        for gateway in (HOPGATE, XDP):
            runs = _runs(rounds, shape, gateway)
            if not runs or len(runs) != len(kers):
                continue
            # The gateways measured back to back in a round share its conditions.
            rate, rates = _ratio([r.stream_mbps for r in runs], [k.stream_mbps for k in kers])
            cost, costs = _ratio([r.stream.cpu1_ms for r in runs], [k.stream.cpu1_ms for k in kers])
            digits = 2 if cost < 10 else 1
            lines.append(
                f"- **{shape}, one stream: {gateway} / kernel = {rate:.2f}** in Mbit/s"
                f" (the median{_spread(rates, 2)}); CPU 1's time per MB was"
                f" {cost:.{digits}f} times the kernel's (the median{_spread(costs, digits)})."
            )
            took, tooks = _ratio([r.download_ms for r in runs], [k.download_ms for k in kers])
            cost, costs = _ratio(
                [r.downloads.cpu1_ms for r in runs], [k.downloads.cpu1_ms for k in kers]
            )
            digits = 2 if cost < 10 else 1
            lines.append(
                f"- **{shape}, 10 MiB downloads: through {gateway} a download took {took:.2f}"
                f" times as long as through the kernel** (each round's median time over the"
                f" kernel's; the median{_spread(tooks, 2)}); CPU 1's time per MB was"
                f" {cost:.{digits}f} times the kernel's (the median{_spread(costs, digits)})."
            )
            split = []
            for part in (STREAM, DOWNLOAD):
                own = statistics.median(r.part(part).per_mb(r.part(part).hopgate) for r in runs)
                napi = statistics.median(r.part(part).per_mb(r.part(part).napi) for r in runs)
                ker = statistics.median(k.part(part).per_mb(k.part(part).napi) for k in kers)
                split.append(
                    f"in the {part} {own:.2f} ms per MB were hopgate's process's and"
                    f" {napi:.2f} ms gw's NAPI threads' (the kernel's NAPI threads: {ker:.2f} ms)"
                )
            lines.append(f"  Of CPU 1's time, {'; '.join(split)} (the medians).")
            if gateway == XDP:
                for part in (STREAM, DOWNLOAD):
                    shares = [s for r in runs if (s := r.part(part).fast_share) is not None]
                    if shares:
                        lines.append(
                            f"  In the {part}, hopgate's XDP program forwarded"
                            f" {_range(shares, '{:.1%}')} of the frames gw received"
                            " (by its own counters)."
                        )
        for gateway in GATEWAYS:
            runs = _runs(rounds, shape, gateway)
            if runs:
                stream = _limit(gateway, [r.stream for r in runs])
                down = _limit(gateway, [r.downloads for r in runs])
                lines.append(f"- {shape}, the stream: {stream}.")
                lines.append(f"- {shape}, the downloads: {down}.")
        lines.append(
            f"- {shape}: where the endpoints were the limit, the rate and the times are what"
            " they made, and CPU 1's time per MB compares the gateways' work."
        )
    return "\n".join(lines)


def _note_lines(rounds: Rounds, downloads: int) -> str:
    lines = []
    for shape, gateway, runs in _cases(rounds):
        times = sorted(t for r in runs for t in r.times)
        line = (
            f"- {shape}, {gateway}: the downloads took {times[0] * 1e3:,.0f} to"
            f" {times[-1] * 1e3:,.0f} ms ({len(times)}, {downloads} a round)."
        )
        drops = _sum([r.drops for r in runs])
        if drops:
            line += (
                " hopgate dropped (the whole runs):"
                f" {', '.join(f'{v:,} `{k}`' for k, v in sorted(drops.items()))}."
            )
        lines.append(line)
    parts = [r.part(p) for rnd in rounds for r in rnd for p in (STREAM, DOWNLOAD)]
    sizes = [p.from_r1[1] / p.from_r1[0] for p in parts if p.from_r1[0]]
    unreach = sum(p.unreach for p in parts)
    lines.append(
        f"- r1's link to the server has an MTU of {OUTSIDE_MTU} (kept: the lab as users see"
        f" it). The frames gw received from r1, nearly all the server's data segments,"
        f" averaged {_range(sizes, '{:,.0f}')} bytes (gw-u's `rx_bytes` over `rx_packets`,"
        f" per part of a run); r1 sent"
        f" {unreach:,} ICMP destination unreachables in all the windows. The server is on"
        " that link itself: its TCP sends segments that fit its own MTU, and announces an"
        f" MSS ({OUTSIDE_MTU - 40}) that keeps the inside host's within it, so no path MTU"
        " discovery took place in these transfers."
    )
    return "\n".join(lines)


def _machine() -> str:
    cpu = Path("/proc/cpuinfo").read_text()
    model = next(
        (x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("model name")),
        "?",
    )
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()},\n"
        f"  Python {platform.python_version()}"
    )


def _report(rounds: Rounds, seconds: int, downloads: int) -> str:
    today = datetime.date.today().isoformat()
    return f"""## TCP transfers through NAT and FNAT

Measured {today} by `bench/transfer.py`, {len(rounds)} round{"s" if len(rounds) > 1 else ""},
each measuring {" and ".join(_shapes(rounds))} with each gateway in turn:
{_gateways(rounds)}.
The lab is bench/connections.py's: NAT, an inside host downloading from the
server through the gateway translating its source (the kernel: the lab's
nftables masquerade), then r1; FNAT, the inside host downloading from a TCP
service on port 80 of a VIP of the gateway (one backend, health checks off),
which connects to the server from a local address (the kernel: nftables dnat
to the server, and the masquerade).

In each run, one after the other on port 80 of the server: a single TCP
stream for {seconds} s (`iperf3 -R -J`: the server sends, not paced), then
{downloads} downloads of a 10 MiB file with curl from Python's `http.server`,
one after another (after one more, not counted). MB here is 10⁶ bytes of TCP
payload received by the inside host; veth pairs, offloads off.

The gateway has CPU 1 to itself: gw-c's and gw-u's NAPI threads (all of the
kernel's forwarding; hopgate's receive and its XDP program) and hopgate's
process are pinned there; iperf3, curl, the server and the lab's other hosts
(the bridge, r1, whose receive runs in NAPI threads pinned to CPU 0) have
CPU 0. So CPU 1's busy time per MB is the gateway's cost. Each part (the
stream, the downloads) is one window around its transfers.

One stream (the row is the round with the median rate; *retransmits*:
iperf3's, each round; *frames/MB*: frames gw received, both directions; *by
XDP*: the frames hopgate's XDP program forwarded, of those gw received):

{STREAM_HEADER}{_stream_rows(rounds)}

10 MiB downloads (*10 MiB download*: the median of a round's {downloads}
downloads, curl's `time_total`; the row is the round with the median of them;
*Mbit/s*: 10 MiB over that time; *retransmits*: segments the server's kernel
sent again over the round's downloads, `RetransSegs`):

{DOWNLOAD_HEADER}{_download_rows(rounds)}

{_ratio_lines(rounds)}

The fast path and the NAT's TCP counters, each round (increments over the
part's window; *by XDP* as above):

{COUNTER_HEADER}{_counter_rows(rounds)}

Where segments were lost, each round (over the part's window): *sent again*:
the server's kernel's `RetransSegs`; *refused by gw's rings*: frames r1 and
the bridge sent to gw that its interfaces' receive rings refused (r1-d's and
p0's `tx_dropped`); *refused by p0's ring*: frames gw sent toward the inside
host that p0's ring refused (gw-c's `tx_dropped`; p0 is the bridge's port
toward gw), *by r1-d's*: the same toward r1 (gw-u's). A veth with an XDP
program takes frames into a ring of 256, emptied by its NAPI thread; p0's is
on CPU 0 with the endpoints, so a gateway that forwards the server's data
faster than CPU 0 takes it in fills that ring, and TCP finds the bottleneck by
those losses:

{LOSS_HEADER}{_loss_rows(rounds)}

Where the time went (the median rounds; shares of each CPU over the part's
window, and of one CPU for the processes and threads; *clients*: iperf3 -c or
the curls; *server*: iperf3 -s or `http.server`):

{TIME_HEADER}{_time_rows(rounds)}

{_note_lines(rounds, downloads)}
- Threads on CPU 1 are accounted with their softirq ticks (the kernel counts
  CPU time by ticks here, `CONFIG_TICK_CPU_ACCOUNTING`).
- Machine: {_machine()}.

Reproduce: `.venv/bin/python -m bench.transfer` (as root, after `scripts/bootstrap`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description="TCP transfers through hopgate and the Linux kernel: NAT and FNAT."
    )
    ap.add_argument("--seconds", type=int, default=10, help="the stream's length")
    ap.add_argument("--downloads", type=int, default=DOWNLOADS, help="10 MiB downloads a run")
    gateway_args(ap, SHAPES, MODES, ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if args.seconds < 1 or args.downloads < 1:
        sys.exit("bench: --seconds and --downloads must be at least 1")
    # The bench itself, and what it starts, stay off the gateway's CPU.
    need_lab_machine(args, "the endpoints", GEN_CPU)
    rounds: Rounds = []
    for n in range(1, args.rounds + 1):
        rnd = []
        for shape in args.shapes:
            for mode in args.gateways:
                r = _measure_quietly(shape, mode, args)
                st, dl = r.stream, r.downloads
                print(
                    f"round {n}  {r.shape:5} {r.gateway:12}"
                    f"  stream {r.stream_mbps:7,.0f} Mbit/s retr {r.stream_retransmits}"
                    f" (server {st.retrans})  CPU0 {st.busy0:4.0%} CPU1 {st.busy1:4.0%}"
                    f" {st.cpu1_ms:6.2f} ms/MB"
                    + (f" hopgate {st.per_mb(st.hopgate):6.2f}" if st.hopgate is not None else "")
                    + (f" XDP {_share(st)}" if st.fast is not None else "")
                    + (f" {st.nat}" if st.nat else "")
                    + f" refused {st.refused_at}/{st.refused_past}"
                    + f"  |  download {r.download_ms:6,.0f} ms (median)"
                    f" retr {dl.retrans}  CPU0 {dl.busy0:4.0%} CPU1 {dl.busy1:4.0%}"
                    f" {dl.cpu1_ms:6.2f} ms/MB"
                    + (f" hopgate {dl.per_mb(dl.hopgate):6.2f}" if dl.hopgate is not None else "")
                    + (f" XDP {_share(dl)}" if dl.fast is not None else "")
                    + (f" {dl.nat}" if dl.nat else "")
                    + f" refused {dl.refused_at}/{dl.refused_past}"
                    + f"  others {r.foreign:.1%}"
                    + (f"  drops {r.drops}" if r.drops else ""),
                    flush=True,
                )
                rnd.append(r)
        rounds.append(rnd)
    text = _report(rounds, args.seconds, args.downloads)
    publish(args.out, "transfer", text, no_write=args.no_write)


if __name__ == "__main__":
    main()
