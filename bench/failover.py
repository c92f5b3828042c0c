"""How fast the routers stop sending a node traffic, and what the clients see.

In the BGP lab (hopgate/lab/bgplab.py: three hopgate load balancers announce
their VIP to a Linux router running BIRD, which spreads the flows over them),
one node is taken out in each of four ways:

- **drain**: ``hopgate drain``;
- **stop**: SIGTERM (hopgate stops BIRD first; BIRD closes its sessions);
- **kill, BFD**: SIGKILL to hopgate (its host port goes with it; the router's
  BFD finds the node gone, 100 ms × 3);
- **kill, hold timer**: the same without BFD (the router's hold time, 9 s).

For each, while a client opens a new TCP connection to the VIP every 20 ms and
nine paced downloads run (2 MB at 400 kB/s), it measures: the time from the
event until the router's route to the VIP has lost the node (polled every 10
ms); the new connections that failed (no answer within a second); and the
downloads that did not complete, those the node held and those the others did.
Median and largest of several rounds.

    python -m bench.failover [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import publish
from hopgate.control.admin import drain, fetch_conns, undrain
from hopgate.lab.bgplab import HOLD_TIME, BgpLab, all_nodes
from hopgate.lab.ecmplab import ECMP_ADDR, FILE, FILE_SIZE, NODES
from hopgate.lab.netns import Process

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ("drain", "stop", "kill, BFD", "kill, hold timer")
NODE = "n2"  # the node taken out
RATE = 400_000
DOWNLOADS = 9
PROBE_EVERY = 0.02  # seconds between two new connections
PROBE_FOR = 6.0  # seconds of probing after the event (BFD's rounds)
PROBE_FOR_HOLD = HOLD_TIME + 4.0  # ... and the hold timer's

# A client that opens a connection to HOST:80 every EVERY seconds for FOR
# seconds, each with a second to answer; prints "ok" or "failed" with its
# start time (monotonic), one a line.
PROBE = r"""
import socket, sys, time, threading
host, every, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
results = []
def one(t0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, 80))
        results.append((t0, "ok"))
    except OSError:
        results.append((t0, "failed"))
    finally:
        s.close()
start = time.monotonic()
threads = []
while time.monotonic() - start < duration:
    t = threading.Thread(target=one, args=(time.monotonic(),))
    t.start()
    threads.append(t)
    time.sleep(every)
for t in threads:
    t.join()
for t0, r in sorted(results):
    print(f"{t0:.3f} {r}")
"""


@dataclass
class Round:
    withdrawn: float  # seconds from the event to the router's route without the node
    connections: int
    failed: int
    own_broken: int  # downloads the node held that did not complete
    own: int
    others_broken: int
    others: int


@dataclass
class Results:
    rounds: dict[str, list[Round]] = field(default_factory=lambda: {e: [] for e in EVENTS})


def _paced(lab: BgpLab, port: int) -> Process:
    argv = [sys.executable, "-m", "hopgate.lab.clients", "download", ECMP_ADDR.shared4, "80"]
    argv += [f"/{FILE}", "--rate", str(RATE), "--local-port", str(port), "--timeout", "40"]
    return lab.ns("client").spawn(f"download-{port}", *argv)


def _holder(lab: BgpLab, port: int) -> str | None:
    for node in NODES:
        alive = node in lab.hopgates and lab.hopgates[node].alive()
        if alive and fetch_conns(lab.socket_of(node), {"port": str(port)})["connections"]:
            return node
    return None


def _complete(proc: Process, deadline: float) -> bool:
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stop()
    lines = proc.output().strip().splitlines()
    return bool(lines) and lines[-1].startswith(f"200 {FILE_SIZE} ")


def _withdrawal(lab: BgpLab, event_at: float, timeout: float) -> float:
    gone = ECMP_ADDR.nodes4[NODES.index(NODE)]
    while time.monotonic() - event_at < timeout:
        if gone not in lab.next_hops(4):
            return time.monotonic() - event_at
        time.sleep(0.01)
    return float("nan")


def one_round(lab: BgpLab, event: str, first_port: int) -> Round:
    duration = PROBE_FOR_HOLD if event == "kill, hold timer" else PROBE_FOR
    downloads = {first_port + i: _paced(lab, first_port + i) for i in range(DOWNLOADS)}
    time.sleep(1.0)
    holders = {port: _holder(lab, port) for port in downloads}
    probe = lab.ns("client").spawn(
        f"probe-{first_port}",
        sys.executable,
        "-c",
        PROBE,
        ECMP_ADDR.shared4,
        str(PROBE_EVERY),
        str(duration + 1.0),
    )
    time.sleep(1.0)  # the probe's first second: every node in
    # The event is sent, not waited for: the clock runs from the request, the
    # signal.
    event_at = time.monotonic()
    if event == "drain":
        drain(lab.socket_of(NODE))
    else:
        sig = signal.SIGTERM if event == "stop" else signal.SIGKILL
        os.killpg(lab.hopgates[NODE].pid, sig)
    withdrawn = _withdrawal(lab, event_at, duration)
    if event != "drain":
        lab.hopgates[NODE].stop()  # waits for it to end
    deadline = time.monotonic() + 40
    while probe.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = probe.output().split("\n")
    results = [line.split()[1] for line in lines if len(line.split()) == 2]
    done = {port: _complete(p, time.monotonic() + 40) for port, p in downloads.items()}
    own = [p for p in downloads if holders[p] == NODE]
    others = [p for p in downloads if holders[p] not in (NODE, None)]
    # Everything back in for the next round.
    if event == "drain":
        undrain(lab.socket_of(NODE))
    else:
        lab.hopgates.pop(NODE, None)
        lab.start_node(NODE)
    lab.wait_for_next_hops(all_nodes(4), 4, timeout=60)
    return Round(
        withdrawn,
        len(results),
        results.count("failed"),
        sum(not done[p] for p in own),
        len(own),
        sum(not done[p] for p in others),
        len(others),
    )


def _stat(values: list[float]) -> str:
    ok = [v for v in values if not math.isnan(v)]  # NaN: not withdrawn in time
    if not ok:
        return "never"
    return f"{statistics.median(ok):.2f} / {max(ok):.2f}"


def report(results: Results, rounds: int) -> str:
    lines = [
        "## Failover over BGP (bench/failover.py)",
        "",
        "Three hopgate nodes behind a Linux router running BIRD (ECMP, L4 hash);",
        f"one node taken out per round, {rounds} rounds each, while a client opens a",
        f"connection to the VIP every {PROBE_EVERY * 1000:.0f} ms and {DOWNLOADS} paced"
        " downloads run (2 MB at 400 kB/s).",
        "Withdrawn: seconds from the event until the router's route has lost the",
        "node (median / largest). Failed: new connections with no answer within a",
        "second, of all opened. Downloads broken: of those the node held, and of",
        "those the two others held (second chance on), each found holding it by",
        "the client's port a second after it started. The hold timer is 9 s",
        "(keepalives every 3 s); BFD sends every 100 ms and gives up after 3.",
        "",
        "| event | withdrawn (s) | failed connections | downloads broken: the node's"
        " | the others' |",
        "|---|---:|---:|---:|---:|",
    ]
    for event in EVENTS:
        rs = results.rounds[event]
        if not rs:
            continue
        lines.append(
            f"| {event} | {_stat([r.withdrawn for r in rs])} "
            f"| {sum(r.failed for r in rs)} of {sum(r.connections for r in rs)} "
            f"| {sum(r.own_broken for r in rs)} of {sum(r.own for r in rs)} "
            f"| {sum(r.others_broken for r in rs)} of {sum(r.others for r in rs)} |"
        )
    lines += [
        "",
        "Reproduce: `.venv/bin/python -m bench.failover` (as root, after `scripts/bootstrap`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Failover of a hopgate node behind BGP ECMP.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", nargs="+", choices=EVENTS, default=list(EVENTS))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print the report, write nothing")
    args = ap.parse_args()
    results = Results()
    port = 40000
    for bfd in (True, False):
        events = [e for e in args.events if (e == "kill, hold timer") != bfd]
        if not events:
            continue
        with BgpLab(bfd=bfd) as lab:
            for family in (4, 6):
                lab.wait_for_next_hops(all_nodes(family), family, timeout=60)
            for r in range(args.rounds):
                for event in events:
                    got = one_round(lab, event, port)
                    port += 100
                    results.rounds[event].append(got)
                    print(f"round {r + 1}, {event}: {got}", flush=True)
    publish(args.out, "failover", report(results, args.rounds), no_write=args.no_write)


if __name__ == "__main__":
    main()
