"""The packet loop's stall at a load-balancer backend's health flip, before and
after the Maglev table moved to the control plane (issue 10, item 8).  Pipeline
only, no lab.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.control_stall [--rounds 5] [--out docs/benchmarks.md]

Part 1, the pipeline's calls.  A Maglev service (65,537 slots) with 3, then 10
backends, TCP health checks (fall 1, rise 1).  A fake clock advances 1 ms a
step; every step one client SYN goes through ``Router.process`` (a new
connection: a Maglev pick) and ``Router.poll`` runs the timers that are due;
the bench answers the checks of every backend but one, which therefore goes
down, and later answers its checks again, so it comes back.  Each call is timed
(perf_counter).  *In the loop* is the router built without ``on_ring``: the
table is computed inside the call that saw the flip, as before this change.
*Control plane* is the router the daemon builds: the bench takes
``router.maglev.pending()`` after the step, computes the table outside the
timed calls (the daemon does it in a worker process), and times
``MaglevControl.install``, which the daemon runs in the loop (a mailbox call).

Part 2, where the computing runs.  A loop-like cycle (one SYN through the
pipeline, one send and receive on a socketpair: system calls that give up the
GIL, as the loop's do) runs while one 10-backend table is computed: in the loop
itself, in a thread, or in a worker process (control/lbcontrol.py's).  The
longest gap between two cycles is how long packets wait.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import platform
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import replace_section
from hopgate.control.lbcontrol import process_executor
from hopgate.lab.frames import tcp4
from hopgate.packet.proto import PROTO_TCP
from hopgate.pipeline.actions import Action, Transmit
from hopgate.pipeline.lb import BackendSpec, HealthKind, HealthSpec, Scheduler, ServiceSpec, maglev
from hopgate.pipeline.model import NextHopSpec, PortSpec, RouterSpec, RouteSpec
from hopgate.pipeline.neighbours import Heard
from hopgate.pipeline.router import Router

GW_U_MAC, GW_S_MAC = bytes.fromhex("020000000a01"), bytes.fromhex("020000000501")
UPSTREAM_MAC, BACKEND_MAC = bytes.fromhex("020000000a02"), bytes.fromhex("020000000510")
UPSTREAM, GW_S = "198.18.11.2", "198.18.20.1"
VIP, LIP, CLIENT = "198.18.100.1", "198.18.20.100", "198.18.31.10"
U, S = 0, 1  # ports
STEP = 0.001  # simulated seconds a step
DOWN_AT, UP_AT, END = 1.0, 2.0, 3.2  # the failing backend stops answering, answers again


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _backends(n: int) -> list[str]:
    return [f"198.18.20.{11 + i}" for i in range(n)]


def _spec(n: int) -> RouterSpec:
    health = HealthSpec(kind=HealthKind.TCP, interval=0.1, timeout=0.05, rise=1, fall=1)
    service = ServiceSpec(
        name="bench",
        family=4,
        protocol=PROTO_TCP,
        vip=_ip(VIP),
        port=80,
        backends=tuple(BackendSpec(_ip(b), 80) for b in _backends(n)),
        local_addresses=(_ip(LIP),),
        scheduler=Scheduler.MAGLEV,
        health=health,
    )
    ports = (
        PortSpec("gw-u", GW_U_MAC, 1500, (ipaddress.ip_interface("198.18.11.1/24"),)),
        PortSpec("gw-s", GW_S_MAC, 1500, (ipaddress.ip_interface(f"{GW_S}/24"),)),
    )
    route = RouteSpec(
        ipaddress.ip_network("0.0.0.0/0"), (NextHopSpec(ipaddress.ip_address(UPSTREAM)),)
    )
    return RouterSpec(ports, (route,), services=(service,))


def _router(n: int, on_ring: Callable[[], None] | None) -> Router:
    r = Router(_spec(n), now=0.0, on_ring=on_ring)
    out: list[Action] = []
    answer = Heard(solicited=True, create=True)  # as if each had answered an ARP request
    r.arp.table.learn(U, _ip(UPSTREAM), UPSTREAM_MAC, answer, 0.0, out)
    for b in _backends(n):
        r.arp.table.learn(S, _ip(b), BACKEND_MAC, answer, 0.0, out)
    return r


def _syn(i: int) -> bytearray:
    """A new connection to the VIP: its own source address and port."""
    src = _ip(CLIENT) + (i >> 14)
    return bytearray(
        tcp4(GW_U_MAC, UPSTREAM_MAC, src, _ip(VIP), 1024 + (i & 0x3FFF), 80, 0x02, 1, 0)
    )


def _answers(out: list[Action], answering: set[int]) -> list[bytearray]:
    """SYN-ACKs to the health checks (SYNs from the gateway's own address) of
    the backends that answer."""
    frames = []
    gw = _ip(GW_S)
    for a in out:
        if not isinstance(a, Transmit) or a.port != S or a.frame[12:14] != b"\x08\x00":
            continue
        f = a.frame
        src, dst = struct.unpack_from("!II", f, 26)
        sport, dport, seq = struct.unpack_from("!HHI", f, 34)
        if src == gw and f[47] == 0x02 and dst in answering:
            frames.append(
                bytearray(tcp4(GW_S_MAC, BACKEND_MAC, dst, gw, dport, sport, 0x12, 7, seq + 1))
            )
    return frames


@dataclass
class Run:
    calls: list[float] = field(default_factory=list)  # every process and poll
    steady: list[float] = field(default_factory=list)  # those before the first flip
    flips: list[float] = field(default_factory=list)  # the calls that saw a flip
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (now, took)
    flipped_at: list[float] = field(default_factory=list)  # simulated times of flips

    def around(self, window: float = 0.1) -> list[float]:
        """The calls within ``window`` simulated seconds of a flip."""
        return [
            took
            for now, took in self.timeline
            if any(abs(now - at) <= window for at in self.flipped_at)
        ]

    install: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)  # off the loop (control plane)
    events: list[str] = field(default_factory=list)


def pipeline_run(n: int, worker: Executor | None) -> Run:
    """One simulated flip down and back up; every pipeline call timed.  With
    ``worker``, tables are computed there (as the daemon does), not in the call."""
    deferred = worker is not None
    run = Run()
    notified: list[int] = []
    r = _router(n, (lambda: notified.append(1)) if deferred else None)
    backends = [_ip(b) for b in _backends(n)]
    clock = time.perf_counter
    i = 0
    now = 0.0

    def timed(call: Callable[..., list[Action]], *args: object) -> list[Action]:
        seen = (len(r.events), len(notified))
        t = clock()
        out = call(*args)
        took = clock() - t
        run.calls.append(took)
        run.timeline.append((now, took))
        if now < DOWN_AT:
            run.steady.append(took)
        if (len(r.events), len(notified)) != seen:
            run.flips.append(took)
            run.flipped_at.append(now)
        return out

    while now < END:
        now = i * STEP
        answering = set(backends) if not DOWN_AT <= now < UP_AT else set(backends[1:])
        out = timed(r.process, _syn(i), U, now)
        out += timed(r.poll, now)
        for frame in _answers(out, answering):
            timed(r.process, frame, S, now)
        if notified:
            notified.clear()
            for request in r.maglev.pending():
                assert worker is not None
                t = clock()
                ring = worker.submit(
                    maglev.ring, request.names, request.weights, request.size
                ).result()
                run.compute.append(clock() - t)
                t = clock()
                r.maglev.install(request, ring)  # a mailbox call in the loop
                run.install.append(clock() - t)
        i += 1
    run.events = [str(e) for e in r.events]
    assert any("is down" in e for e in run.events), run.events
    assert any("is up" in e for e in run.events), run.events
    assert r.nat is not None
    (service,) = r.nat.services.all
    names = [b.name for b in service.backends]
    assert list(service.table) == maglev.build(names, [1] * n), "the table after the flips"
    return run


# -- part 2 -----------------------------------------------------------------------------------


PERIOD = 0.0005  # part 2: a cycle is due every half millisecond


def loop_gaps(n: int, where: str) -> tuple[float, int, float]:
    """(the latest a cycle started after it was due, cycles, seconds) while a
    table is computed ``where``: "loop", "thread", "process", or "nowhere" (100
    ms of cycles alone).  A cycle is due every PERIOD; the loop sleeps until
    then (giving up the GIL, as the loop does in epoll)."""
    r = _router(n, None)
    names = [f"{b}:80" for b in _backends(n)]
    weights = [0] + [1] * (n - 1)
    a, b = socket.socketpair()
    done = threading.Event()
    executor = None
    if where == "process":
        executor = process_executor()
        executor.submit(int).result()  # started
    i = 0

    def cycle() -> None:
        nonlocal i
        r.process(_syn(i), U, 0.5)
        a.send(b"x")
        b.recv(1)
        i += 1

    for _ in range(50):
        cycle()
    start = due = time.perf_counter()
    if where == "nowhere":
        threading.Timer(0.1, done.set).start()  # the noise floor, for 100 ms
    elif where == "loop":
        maglev.ring(names, weights)  # what the loop did before: the first cycle waits
        done.set()
    elif where == "thread":

        def compute() -> None:
            maglev.ring(names, weights)
            done.set()

        threading.Thread(target=compute).start()
    else:
        assert executor is not None
        executor.submit(maglev.ring, names, weights).add_done_callback(lambda _: done.set())
    latest = 0.0
    cycles = 0
    while cycles == 0 or not done.is_set():
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
            now = time.perf_counter()
        latest = max(latest, now - due)
        cycle()
        cycles += 1
        due = max(due + PERIOD, time.perf_counter())
    took = time.perf_counter() - start
    if executor is not None:
        executor.shutdown()
    a.close()
    b.close()
    return latest, cycles, took


# -- the report -----------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1000:.2f} ms" if x < 0.01 else f"{x * 1000:.0f} ms"


@dataclass
class Row:
    backends: int
    deferred: bool
    flip: list[float]  # per round: the longest call that saw a flip
    around: list[float]  # per round: the longest call within 100 ms of a flip
    longest: list[float]  # per round: the longest call of all
    steady: list[float]  # per round: the longest call before the first flip
    install: list[float]  # per round: the longest install (control plane)
    compute: list[float]  # per round: the longest computing (off the loop)


_WHERE = {
    "nowhere": "nowhere",
    "loop": "in the loop",
    "thread": "in a thread",
    "process": "in a worker process",
}


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.control_stall")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md",
    )
    args = p.parse_args()
    rows = []
    worker = process_executor()
    worker.submit(int).result()  # started
    for n in (3, 10):
        for deferred in (False, True):
            runs = [pipeline_run(n, worker if deferred else None) for _ in range(args.rounds)]
            row = Row(
                n,
                deferred,
                [max(x.flips) for x in runs],
                [max(x.around()) for x in runs],
                [max(x.calls) for x in runs],
                [max(x.steady) for x in runs],
                [max(x.install) for x in runs if x.install],
                [max(x.compute) for x in runs if x.compute],
            )
            rows.append(row)
            print(f"{n:2} backends, {'control plane' if deferred else 'in the loop  '}: "
                  f"flip call {_ms(_med(row.flip))} (longest {_ms(max(row.flip))}), "
                  f"within 100 ms {_ms(_med(row.around))}, "
                  f"longest call {_ms(_med(row.longest))} "
                  f"(before the flips {_ms(_med(row.steady))})"
                  + (f", install {_ms(_med(row.install))}, "
                     f"computing (off the loop) {_ms(_med(row.compute))}" if deferred else ""),
                  flush=True)  # fmt: skip
    worker.shutdown()
    gaps = []
    for where in ("nowhere", "loop", "thread", "process"):
        got = [loop_gaps(10, where) for _ in range(args.rounds)]
        gaps.append((where, got))
        print(f"table computed {where:7}: latest cycle "
              f"{_ms(statistics.median(g[0] for g in got))}, "
              f"{statistics.median(g[1] for g in got):.0f} cycles in "
              f"{_ms(statistics.median(g[2] for g in got))}", flush=True)  # fmt: skip
    replace_section(args.out, "control-stall", _report(rows, gaps, args.rounds))
    print(f"wrote {args.out}")


def _report(
    rows: list[Row], gaps: list[tuple[str, list[tuple[float, int, float]]]], rounds: int
) -> str:
    lines = [
        "## Stall of the packet loop at a health flip",
        "",
        f"Measured {datetime.date.today().isoformat()} by `bench/control_stall.py` with "
        f"{platform.python_implementation()} {platform.python_version()}, {rounds} rounds. "
        "A Maglev service (65,537 slots) with TCP health checks; one backend fails "
        "its check, then passes again, while a client SYN goes through the pipeline "
        "every simulated millisecond. Every `Router.process` and `Router.poll` call "
        "is timed. *In the loop*: the table is computed inside the call that saw "
        "the flip (hopgate before this change; still the pipeline's synchronous "
        "path for tests). *Control plane*: what `hopgate run` does: that call only "
        "takes the backend out (Maglev's pick skips it until the new table is in "
        "place) and marks the service; the table is computed in a worker process, "
        "as the daemon does (*computing*: from the request to the result, the "
        "hand-over included), and the install, which the loop runs, is one "
        "assignment.",
        "",
        "| backends | table computed | the flip's call | longest within 100 ms of a flip "
        "| longest before the flips | longest of all | install | computing (off the loop) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backends} | {'by the control plane' if r.deferred else 'in the loop'} "
            f"| {_ms(_med(r.flip))} | {_ms(_med(r.around))} | {_ms(_med(r.steady))} "
            f"| {_ms(_med(r.longest))} "
            f"| {_ms(_med(r.install)) if r.install else '—'} "
            f"| {_ms(_med(r.compute)) if r.compute else '—'} |"
        )
    lines += [
        "",
        "Medians over the rounds of each round's longest. *The flip's call* is the "
        "longest of the calls during which a backend changed (down, or its table "
        "requested); then the longest of the calls within 100 simulated ms of a "
        "flip (the skipping rule at work, the install), of those of the first "
        "simulated second, when nothing changed, and of all of a round's 6,500 or "
        "so calls. Below a few milliseconds these are the pauses of the garbage "
        "collector and of a shared machine, with or without a flip.",
        "",
        "Where the computing runs matters as much. A loop-like cycle (one SYN "
        "through the pipeline, then one send and one receive on a socketpair: "
        "system calls that give up the GIL, as the loop's do) was due every half "
        "millisecond, the loop sleeping in between (as the loop does in epoll), "
        "while one table of 10 backends was computed; *nowhere* is the same for "
        "100 ms with nothing computed, the machine's own noise. Medians over the "
        "rounds:",
        "",
        "| table computed | latest a cycle started | cycles run | in |",
        "|---|---:|---:|---:|",
    ]
    for where, got in gaps:
        lines.append(
            f"| {_WHERE[where]} "
            f"| {_ms(statistics.median(g[0] for g in got))} "
            f"| {statistics.median(g[1] for g in got):,.0f} "
            f"| {_ms(statistics.median(g[2] for g in got))} |"
        )
    lines += [
        "",
        "A thread does not take the work out of the loop: it holds the GIL, and the "
        "loop, which gives it up in every system call, waits for it each time it "
        "wakes, up to the switch interval (5 ms), so it runs a fraction of its "
        "cycles. So the daemon computes tables in one worker process, spawned at "
        "start when a service uses Maglev (`control/lbcontrol.py`): the loop keeps "
        "its pace, as long as the machine has a core for the worker.",
        "",
        "Reproduce: `.venv/bin/python -m bench.control_stall` (under a minute).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
