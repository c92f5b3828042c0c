"""The forwarding stall a configuration reload causes: a steady UDP stream
through hopgate's NAT while the daemon reloads its config file again and
again.  A report, no verdict.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.reload [--rounds 3] [--reloads 10] [--rate 20000]
                                     [--flows 0 10000] [--dataplanes afpacket xdp]
                                     [--out docs/benchmarks.md] [--no-write]

The lab is ``NatLab``: inside1 sends the stream (``hopgate.lab.udpstream``:
numbered 18-byte datagrams, 60-byte frames, ``--rate`` a second, paced every
half millisecond) through hopgate translating its source, then r1, to the
server, whose receiver takes each datagram's kernel receive time
(``SO_TIMESTAMPNS``) and answers the first one (the NAT's connection is then
replied: a UDP stream, which the XDP fast path takes).  With ``--flows N``,
inside2 first makes N UDP connections through the NAT (one datagram from each
of N ports, each answered by an echo on the server; ``[nat.timeouts]`` keep
them for the run), so that the table a reload carries over holds them.

Two configs take turns, each reload swapping one for the other: they differ in
a route (198.18.9.0/24 via r1, present or not) and in the weight of a service's
backend (a UDP service on a VIP, to the server; no traffic uses either), so
that each reload has two changes to apply.  Reloads are one a second, by
``POST /reload`` on the admin socket (what ``hopgate reload`` sends; the bench
sends it itself, so that the command's start-up does not take the CPUs), after
a warm-up of 3 s.

For each reload its window is from 50 ms before the request to 50 ms after
the answer; its *quiet window* is the same span half a period later (dropped
where it would meet a reload window).  Reported, over all reloads of all
rounds: the largest inter-arrival gap of the stream in each window (a gap
counts for a window if it overlaps it), against the same in the quiet windows
(the machine's and the stream's own jitter); the largest gap anywhere outside
the reload windows; the largest one-way delay (send to receive, one clock) of
a datagram received in each window; datagrams lost (by sequence number, each
placed at the time it was due), at reloads, in quiet windows and overall; and
the daemon's own ``stall_ms`` (how long its packet loop was held by the swap).

CPUs: hopgate is pinned to CPU 1, everything else (the bench, the sender, the
receiver, the echo, the lab's kernel forwarding) to CPU 0.  Before each run the
bench waits until no tests or other benchmarks run, and measures again if
other processes took CPU time during it (``bench.quiet``, as
bench/forwarding.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.forwarding import (
    ECHO,
    FOREIGN_MAX,
    GEN_CPU,
    GW_CPU,
    LIP,
    VIP,
    _foreign_ticks,
    _helper_env,
)
from bench.quiet import measure_quietly
from bench.report import publish
from hopgate.control.admin import fetch
from hopgate.lab.configs import Table, dumps, merge
from hopgate.lab.netns import LabError, Namespace, Process
from hopgate.lab.topologies import (
    NAT_ADDR,
    NatLab,
    dataplane_section,
    nat_config,
    route,
    write_config,
)
from hopgate.lab.udpstream import read

N = NAT_ADDR
ROOT = Path(__file__).resolve().parent.parent
STREAM_PORT = 5001
ECHO_PORT = 9  # bench/forwarding.py's ECHO
FLOWS_FIRST_PORT = 20000  # inside2's connections: from this port up
SPARE_ROUTE = "198.18.9.0/24"
PERIOD = 1.0  # seconds between reloads
MARGIN = 0.05  # a reload's window: this much before its request and after its answer
WARMUP = 3.0  # the stream before the first reload (the fast path takes it after 2 s)
DATAPLANES = ("afpacket", "xdp")
NS = 1_000_000_000

# inside2's side of the table's connections: one datagram from each port.
FLOWS = """
import socket, sys
dst, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for p in range(first, first + count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", p))
        s.sendto(b"flow", (dst, port))
"""


def variant(which: int) -> Table:
    """What the two configs add to the NAT lab's: ``which`` 0 has the spare
    route and the backend at weight 1; 1 has no spare route, weight 2."""
    doc: Table = {
        "nat": {"timeouts": {"udp": 3600, "udp_stream": 3600}},
        "service": [
            {
                "name": "bench",
                "vip": VIP,
                "port": ECHO_PORT,
                "protocol": "udp",
                "scheduler": "wrr",
                "local_addresses": [LIP],
                "backend": [{"address": N.server4, "weight": 1 + which}],
                "health": {"kind": "none"},
            }
        ],
    }
    if which == 0:
        doc["route"] = [route(SPARE_ROUTE, N.r1_d4)]
    return doc


@dataclass
class Reload:
    start: float  # time.time() as the request went, and as its answer came
    end: float
    stall_ms: float  # the daemon's
    changes: int
    kept: int

    @property
    def window(self) -> tuple[float, float]:
        return self.start - MARGIN, self.end + MARGIN


@dataclass
class Stream:
    """What the sender said and the receiver recorded."""

    rate: float
    sent: int
    first_ns: int  # when the first datagram went
    seqs: Any  # array("q"): each datagram received, its sequence number
    rxs: Any  # ...its kernel receive time (ns)
    sents: Any  # ...the time it was sent (ns)


@dataclass
class Result:
    dataplane: str
    flows: int
    rate: float
    table: int  # connections in hopgate's table before the first reload
    sent: int
    received: int
    reloads: list[Reload]
    at_reload: list[float]  # per reload: the largest gap in its window (s)
    gap_began: list[float]  # per reload: when that gap began, after the request went (s)
    quiet: list[float]  # per quiet window: the largest gap
    delay_at_reload: list[float]  # per reload: the largest one-way delay (s)
    delay_quiet: list[float]
    largest_outside: float  # the largest gap outside every reload window
    lost: int  # from the first reload window to the last's end
    lost_at_reload: int
    lost_quiet: int
    fast_share: float | None  # of the datagrams received then, forwarded by the XDP program
    foreign_cpu: float = 0.0
    # hopgate's garbage collector during the reloads: full collections, the longest (ms)
    gc_full: int = 0
    gc_longest_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def _wait_output(proc: Process, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if not proc.alive() or time.monotonic() > deadline:
            raise LabError(f"{proc.name}: no {text!r} in {timeout:g} s:\n{proc.output()}")
        time.sleep(0.05)


def _wait_udp(ns: Namespace, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ns.run("ss", "-Hlun", f"sport = :{port}", check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise LabError(f"{ns.name}: nothing listens on UDP port {port}")
        time.sleep(0.05)


def _spawn_py(ns: Namespace, name: str, *argv: str) -> Process:
    return ns.spawn(name, sys.executable, *argv, env=_helper_env())


def _fast_forwarded(lab: NatLab) -> int:
    forwarded: int = lab.status()["dataplane"].get("forwarded", 0)
    return forwarded


def measure(dataplane: str, flows: int, rate: float, count: int) -> Result:
    """One run: the stream, ``count`` reloads one a second, the analysis."""
    texts = []
    name = f"hgr-{secrets.token_hex(3)}"
    extra0 = dumps(variant(0))
    with NatLab("hopgate", name, servers=False, extra_config=extra0, dataplane=dataplane) as lab:
        for which in (0, 1):
            more = dumps(merge(dataplane_section(dataplane), variant(which)))
            texts.append(nat_config(lab.admin_socket, more))
        assert lab.hopgate is not None
        subprocess.run(
            ["taskset", "-apc", str(GW_CPU), str(lab.hopgate.pid)], check=True, capture_output=True
        )
        inside1, inside2, server = lab.ns("inside1"), lab.ns("inside2"), lab.ns("server")
        for ns in (inside1, inside2):
            ns.run("ping", "-c", "2", "-i", "0.2", N.server4)  # neighbours resolved
        echo = _spawn_py(server, "echo", "-c", ECHO)
        _wait_udp(server, ECHO_PORT)
        for _ in range(3 if flows else 0):
            # Again if some were lost on a busy machine: the ports made already
            # only refresh their connections.
            inside2.run(
                sys.executable, "-c", FLOWS, N.server4, str(ECHO_PORT), str(FLOWS_FIRST_PORT),
                str(flows), timeout=300,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while (got := lab.status()["nat"]["connections"]) < flows:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if got >= flows:
                break
        else:
            if flows:
                raise LabError(f"hopgate holds {got} connections, not {flows}")
        out = lab.lab.dir / "stream.bin"
        recv = _spawn_py(
            server, "stream-recv", "-m", "hopgate.lab.udpstream", "recv",
            "--port", str(STREAM_PORT), "--out", str(out), "--reply",
        )  # fmt: skip
        _wait_udp(server, STREAM_PORT)
        send = _spawn_py(
            inside1, "stream-send", "-m", "hopgate.lab.udpstream", "send", "--to", N.server4,
            "--port", str(STREAM_PORT), "--rate", str(rate),
        )  # fmt: skip
        reloads: list[Reload] = []
        try:
            _wait_output(recv, "first", 10.0)
            time.sleep(WARMUP)
            before = lab.status()
            table = before["nat"]["connections"]
            ours = {os.getpid(), lab.hopgate.pid, send.pid, recv.pid, echo.pid}
            foreign0 = _foreign_ticks(ours)
            fast0 = _fast_forwarded(lab) if dataplane == "xdp" else 0
            fast_from = time.time()
            t0 = time.monotonic()
            due = time.monotonic() + PERIOD / 2
            # Each file is written half a period before its reload: the write
            # (a synced file renamed) runs on the stream's CPU, outside the
            # reload's window.
            write_config(lab.config_path, texts[1])
            for i in range(count):
                time.sleep(max(0.0, due - time.monotonic()))
                start = time.time()
                reply: dict[str, Any] = json.loads(fetch(lab.admin_socket, "/reload", "POST", 30))
                end = time.time()
                if not reply["changes"]:
                    raise LabError(f"reload {i + 1} changed nothing: {reply}")
                conns = reply["connections"]
                reloads.append(
                    Reload(start, end, float(reply["stall_ms"]), len(reply["changes"]),
                           conns["kept"])
                )  # fmt: skip
                due += PERIOD
                time.sleep(max(0.0, due - PERIOD / 2 - time.monotonic()))
                write_config(lab.config_path, texts[i % 2])  # the next reload's
            time.sleep(max(0.0, due - time.monotonic()))
            elapsed = time.monotonic() - t0
            foreign1 = _foreign_ticks(ours)
            fast1 = _fast_forwarded(lab) if dataplane == "xdp" else 0
            fast_to = time.time()
            collector = (before.get("gc"), lab.status().get("gc"))
        finally:
            send.stop()
            time.sleep(0.5)  # what is in flight arrives
            recv.stop(timeout=30)
            echo.stop()
        if not lab.hopgate.alive():
            raise LabError(f"hopgate died during the reloads:\n{lab.hopgate.output()[-3000:]}")
        sent_line = [x for x in send.output().splitlines() if x.startswith("sent ")]
        if not sent_line or not out.exists():
            raise LabError(f"the stream did not finish:\n{send.output()}\n{recv.output()}")
        _, sent, first_ns, _ = sent_line[-1].split()
        stream = Stream(rate, int(sent), int(first_ns), *read(out))
    foreign = sum(foreign1[p] - foreign0[p] for p in foreign1.keys() & foreign0.keys())
    r = analyse(dataplane, flows, table, stream, reloads)
    r.foreign_cpu = foreign / os.sysconf("SC_CLK_TCK") / elapsed
    gc0, gc1 = collector
    if gc0 and gc1:
        r.gc_full = gc1["collections"][2] - gc0["collections"][2]
        r.gc_longest_ms = gc1["longest_ms"]
    if dataplane == "xdp":
        received = _received_between(stream.rxs, fast_from, fast_to)
        r.fast_share = (fast1 - fast0) / received if received else 0.0
    return r


def _received_between(rxs: Any, a: float, b: float) -> int:
    return sum(1 for x in rxs if a * NS <= x < b * NS)


def _largest_gap(times: list[int], a: float, b: float) -> tuple[float, float]:
    """The largest gap between consecutive ``times`` (sorted, ns) that overlaps
    [a, b] (seconds), and when it began."""
    lo = max(1, bisect_right(times, int(a * NS)))
    hi = min(len(times) - 1, bisect_left(times, int(b * NS)))
    gap, i = max(((times[i] - times[i - 1], i) for i in range(lo, hi + 1)), default=(0, lo))
    return gap / NS, times[i - 1] / NS


def analyse(
    dataplane: str, flows: int, table: int, stream: Stream, reloads: list[Reload]
) -> Result:
    """The stream's gaps, delays and losses at the reloads and between them."""
    rxs, sents = stream.rxs, stream.sents
    order = sorted(range(len(rxs)), key=rxs.__getitem__)
    times = [rxs[i] for i in order]
    delays = [(rxs[i] - sents[i]) / NS for i in order]
    windows = [r.window for r in reloads]

    def overlaps(a: float, b: float) -> bool:
        return any(a < wb and b > wa for wa, wb in windows)

    quiet = [(a + PERIOD / 2, b + PERIOD / 2) for a, b in windows]
    quiet = [(a, b) for a, b in quiet if not overlaps(a, b)]
    span = (windows[0][0] - PERIOD / 2, reloads[-1].end + 0.5)

    def delay_in(a: float, b: float) -> float:
        lo, hi = bisect_left(times, int(a * NS)), bisect_right(times, int(b * NS))
        return max(delays[lo:hi], default=0.0)

    largest_outside = 0.0
    lo = max(1, bisect_right(times, int(span[0] * NS)))
    hi = min(len(times) - 1, bisect_left(times, int(span[1] * NS)))
    for i in range(lo, hi + 1):
        a, b = times[i - 1] / NS, times[i] / NS
        if not overlaps(a, b):
            largest_outside = max(largest_outside, b - a)

    at_reload = [_largest_gap(times, a, b) for a, b in windows]
    got = set(stream.seqs)
    due = stream.first_ns / NS
    missing = [due + s / stream.rate for s in range(stream.sent) if s not in got]

    def lost_in(spans: list[tuple[float, float]]) -> int:
        return sum(1 for t in missing if any(a <= t < b for a, b in spans))

    return Result(
        dataplane=dataplane,
        flows=flows,
        rate=stream.rate,
        table=table,
        sent=stream.sent,
        received=len(got),
        reloads=reloads,
        at_reload=[gap for gap, _ in at_reload],
        gap_began=[at - r.start for (_, at), r in zip(at_reload, reloads, strict=True)],
        quiet=[_largest_gap(times, a, b)[0] for a, b in quiet],
        delay_at_reload=[delay_in(a, b) for a, b in windows],
        delay_quiet=[delay_in(a, b) for a, b in quiet],
        largest_outside=largest_outside,
        lost=lost_in([span]),
        lost_at_reload=lost_in(windows),
        lost_quiet=lost_in(quiet),
        fast_share=None,
    )


def _measure_quietly(dataplane: str, flows: int, args: argparse.Namespace) -> Result:
    """``measure`` with the machine to itself (bench/quiet.py)."""
    return measure_quietly(
        lambda: measure(dataplane, flows, args.rate, args.reloads),
        lambda r: r.foreign_cpu,
        FOREIGN_MAX,
    )


# -- the report -----------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _med_max(xs: list[float]) -> str:
    if not xs:
        return "–"
    return f"{_ms(statistics.median(xs))} / {_ms(max(xs))}"


def _cases(results: list[Result]) -> list[tuple[str, int]]:
    seen = {(r.dataplane, r.flows) for r in results}
    return sorted(seen, key=lambda c: (DATAPLANES.index(c[0]), c[1]))


def _pooled(results: list[Result], dataplane: str, flows: int) -> list[Result]:
    return [r for r in results if r.dataplane == dataplane and r.flows == flows]


def summary(runs: list[Result]) -> dict[str, str]:
    """A case's runs pooled: each column of the report's table."""

    def each(get: Any) -> list[float]:
        return [x for r in runs for x in get(r)]

    stalls = [x.stall_ms / 1000 for r in runs for x in r.reloads]
    took = [x.end - x.start for r in runs for x in r.reloads]
    fast = [r.fast_share for r in runs if r.fast_share is not None]
    return {
        "gap at reload": _med_max(each(lambda r: r.at_reload)),
        "gap began": _ms(statistics.median(each(lambda r: r.gap_began))),
        "gap quiet": _med_max(each(lambda r: r.quiet)),
        "gap outside": _ms(max(r.largest_outside for r in runs)),
        "delay at reload": _med_max(each(lambda r: r.delay_at_reload)),
        "delay quiet": _med_max(each(lambda r: r.delay_quiet)),
        "stall_ms": _med_max(stalls),
        "request": _med_max(took),
        "lost": f"{sum(r.lost_at_reload for r in runs):,} / {sum(r.lost_quiet for r in runs):,}"
        f" / {sum(r.lost for r in runs):,}",
        "table": f"{statistics.median(r.table for r in runs):,.0f}",
        "fast": f"{min(fast):.0%} to {max(fast):.0%}" if fast else "–",
    }


def _line(r: Result) -> str:
    s = summary([r])
    return (
        f"{r.dataplane:8} {r.flows:6} flows  table {r.table:,}  gap at reload {s['gap at reload']}"
        f" ms, quiet {s['gap quiet']} ms, outside {s['gap outside']} ms;"
        f" delay at reload {s['delay at reload']} ms, quiet {s['delay quiet']} ms;"
        f" stall_ms {s['stall_ms']}; request {s['request']} ms (the gap began at"
        f" {s['gap began']} ms);"
        f" lost (reload/quiet/all) {s['lost']} of {r.sent:,}"
        + (f"; by XDP {s['fast']}" if r.fast_share is not None else "")
        + f"; others {r.foreign_cpu:.1%}"
        + f"; gc: {r.gc_full} full collections, the longest {r.gc_longest_ms:.1f} ms"
    )


HEADER = (
    "| "
    + " | ".join(
        (
            "data plane", "connections in the table", "largest gap at a reload (ms)",
            "largest gap in a quiet window (ms)", "largest gap outside the reloads (ms)",
            "one-way delay at a reload (ms)", "one-way delay, quiet (ms)",
            "lost: at reloads / quiet / all", "`stall_ms`", "request to answer (ms)",
            "stream forwarded by XDP",
        )
    )
    + " |\n|---|" + "---:|" * 10 + "\n"
)  # fmt: skip


def _report(results: list[Result], rounds: int, reloads: int, rate: float) -> str:
    cpu = Path("/proc/cpuinfo").read_text()
    model = next(
        (x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("model name")), "?"
    )
    rows, began = [], []
    for dataplane, flows in _cases(results):
        s = summary(_pooled(results, dataplane, flows))
        rows.append(
            f"| {dataplane} | {s['table']} | {s['gap at reload']} | {s['gap quiet']} "
            f"| {s['gap outside']} | {s['delay at reload']} | {s['delay quiet']} "
            f"| {s['lost']} | {s['stall_ms']} | {s['request']} | {s['fast']} |"
        )
        began.append(
            f"- {dataplane}, {s['table']} connections: the largest gap at a reload began"
            f" {s['gap began']} ms after the request went (the median; negative: before it)."
        )
    today = datetime.date.today().isoformat()
    return f"""## Forwarding stall at a configuration reload

Measured {today} by `bench/reload.py`, {rounds} round{"s" if rounds > 1 else ""} of
{reloads} reloads per case, one a second. A UDP stream of {rate:,.0f} datagrams a
second (60-byte frames, numbered) from an inside host through hopgate's NAT
(the NatLab) to the server, which takes each datagram's kernel receive time.
Each reload (`POST /reload`, what `hopgate reload` sends) swaps between two
configs that differ in a route and in a service backend's weight (two changes,
no traffic on either). *Connections in the table*: hopgate's count before
the first reload, which every reload carries over: the stream's, the pings'
that resolved the neighbours, and in the larger rows UDP connections made
through the NAT before the run (one datagram each, answered).

{HEADER}{chr(10).join(rows)}

Each "a / b" is the median / the largest over all reloads of the rounds (or
their quiet windows). A reload's window runs from 50 ms before its request
to 50 ms after the answer; its quiet window is the same span half a second
later: what the stream and the machine do without a reload. *Largest gap*:
the longest time between two consecutive datagrams received, for a gap that
overlaps the window. *One-way delay*: from the sender's clock to the
receiver's kernel timestamp (one host, one clock), the largest of the
datagrams received in the window. *Lost*: datagrams that never came, each
placed at the time it was due, in the reload windows, in the quiet windows,
and from half a second before the first reload to half a second after the
last. *`stall_ms`*: the daemon's own measure of how long its packet loop was
held by the swap (the reply's). *Request to answer*: the whole reload as the
client saw it (the file read and checked, the new configuration built, the
swap, the connections checked against the new rules). *Stream forwarded by
XDP*: what the fast path forwarded (its own count) over the stream's
datagrams received meanwhile, from half a second before the first reload to
a second after the last (with the XDP data plane).

{chr(10).join(began)}
- hopgate's garbage collector: {sum(r.gc_full for r in results)} full collections during the
  reloads of all the runs; its longest collection in a run, at most
  {max((r.gc_longest_ms for r in results), default=0.0):.1f} ms.
- hopgate pinned to CPU 1; the bench, the stream's sender and receiver and the
  lab's kernel forwarding on CPU 0.
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.reload` (as root, after `scripts/bootstrap`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description="The forwarding stall of a configuration reload.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reloads", type=int, default=10, help="reloads per run, one a second")
    ap.add_argument("--rate", type=float, default=20000.0, help="the stream's datagrams a second")
    ap.add_argument(
        "--flows",
        nargs="+",
        type=int,
        default=[0, 10000],
        help="connections made through the NAT before each run, each measured",
    )
    ap.add_argument("--dataplanes", nargs="+", choices=DATAPLANES, default=list(DATAPLANES))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print the report, write nothing")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    if args.rounds < 1 or args.reloads < 2:
        sys.exit("bench: --rounds must be at least 1, --reloads at least 2")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs two CPUs, one for hopgate and one for the rest")
    if any(not 0 <= f <= 65536 - FLOWS_FIRST_PORT for f in args.flows):
        sys.exit(f"bench: --flows must be between 0 and {65536 - FLOWS_FIRST_PORT}")
    os.sched_setaffinity(0, {GEN_CPU})  # the bench and what it starts; hopgate is moved
    results = []
    for n in range(1, args.rounds + 1):
        for dataplane in args.dataplanes:
            for flows in args.flows:
                r = _measure_quietly(dataplane, flows, args)
                print(f"round {n}  {_line(r)}", flush=True)
                results.append(r)
    text = _report(results, args.rounds, args.reloads, args.rate)
    publish(args.out, "reload", text, no_write=args.no_write)


if __name__ == "__main__":
    main()
