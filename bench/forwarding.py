"""Forwarding rate: 64-byte UDP frames through hopgate and through the Linux kernel
in the same lab shapes, in one run.  Writes its section of docs/benchmarks.md.

    .venv/bin/python -m bench.forwarding [--seconds 10] [--rounds 3] [--flows 1 [10000]]
                                         [--shapes ...] [--xdp] [--before DIR]
                                         [--sink server|next-hop] [--out docs/benchmarks.md]

Three shapes: routing (client — gw — r1 — server), NAT (an inside host — gw
translating its source — r1 — server; the kernel does it with nftables
masquerade), and FNAT (the same hosts, the inside host sending to a UDP service
on a VIP of gw, which sends it on to the server from a local address; the kernel
does it with nftables dnat and masquerade).  Gateways, in each round and shape:
the Linux kernel, hopgate (AF_PACKET), and with ``--xdp`` hopgate with
``[dataplane] mode = "xdp"`` (``RouterLab``/``NatLab(dataplane="xdp")``).

In the NAT and FNAT shapes each flow is made a tracked, assured connection
before the window, for every gateway alike (``_prime``): the server echoes, the
inside host sends a datagram from each flow's port, and again 2.5 s later, so
that each connection has had its reply and is older than 2 s at its next
datagram (a UDP stream, to Linux and to hopgate).  Only then can hopgate's fast
path take a translated flow; the generator's one-way frames then all belong to
those connections.  With the fast path the bench checks that it forwarded them
(``fast_pps``).

The two CPUs are split so that each gateway gets one of its own:

- CPU 0: the generator (``bench/livegen.py``: the kernel's live-frames mode of
  ``BPF_PROG_TEST_RUN``, an XDP program sending the frame with XDP_TX out of the
  first host's eth0, pinned with taskset).  It keeps sending whatever the
  receiver cannot take (trafgen quit on the first refused frame).  In the NAT
  shapes the frames go past the lab's bridge between the inside hosts and gw:
  the bridge's port from the sender has a program that redirects every frame
  into the port toward gw-c (``xdppass --to``).  So gw-c gets XDP frames in
  every shape, and every gateway builds its own socket buffers, on CPU 1.
  Through the bridge, the kernel's were built on CPU 0, before the gateway.
  And CPU 0 offered 1.05 million frames a second to hopgate XDP against
  1.6 million to the kernel (one round, NAT, sink at the next hop), while
  CPU 1 was idle 29% of hopgate XDP's window: the sending side set the rate.
  Why CPU 0 does more per frame when hopgate's program redirects what came
  as a socket buffer was not looked into.
- CPU 1: gw's receive, forwarding and sending.  gw-c has a native XDP program
  (XDP_PASS, or hopgate's own with ``--xdp``) and threaded NAPI, its NAPI thread
  pinned to CPU 1; hopgate runs pinned to CPU 1 too.  So the kernel's forwarding
  and hopgate's kernel-side receive run in that thread, on CPU 1, whatever CPU
  sent the frame.  Seen in the lab (kernel routing, ticks of /proc/stat over
  4 s): without steering gw-c's NAPI runs in softirq on the generator's CPU
  (CPU 0 94% softirq, CPU 1 75% idle); with RPS (``rps_cpus`` = 2) the XDP run
  and the socket buffer's allocation stay there (CPU 0 74% softirq) and only
  what follows moves; with the NAPI thread CPU 0 has no softirq at all and
  the thread takes CPU 1.
- Downstream: r1-d has a native XDP_PASS program (what XDP_REDIRECT from a gateway
  into gw-u needs; the same for every gateway) and the server's eth0 an XDP_DROP
  one, the sink.  Their NAPIs are not threaded: the gateway's sends schedule them
  on CPU 1, where they run in softirq.  So r1's forwarding and the sink share
  CPU 1 with the gateway: that costs every gateway the same time per packet and
  lowers every rate, and the CPU 1 columns keep it apart (softirq on CPU 1 is
  downstream work, everything else on CPU 1 the gateway's).  They could not go
  to CPU 0: with r1-d's NAPI threaded there, sharing CPU 0 with the generator,
  r1-d's ring refused 45% of what the kernel forwarded.

``--sink next-hop``: the sink is on r1-d, the gateway's next hop, and r1
forwards nothing.  Through r1, a frame hopgate's program redirects reaches
r1-d without a socket buffer and r1 builds one, on CPU 1, where the kernel as
the gateway had built it before; at the next hop nothing needs one.  The
report is a section of its own.

The forwarded rate is what the server's eth0 (or r1-d) counted (``rx_packets``)
over the window, after a warm-up.  A veth counts every frame its XDP program ran on,
XDP_DROP included: checked in the lab, the server's ``rx_packets`` follow r1-s's
``tx_packets`` (919,864 against 919,778 pps in one window, the difference the
time between the two reads); the bench also records r1-s's count, and the
frames gw sent that r1-d's ring refused (gw-u's ``tx_dropped``).  r1 has a
permanent neighbour entry for the server, which answers nothing behind its sink.

The generator's XDP program writes the whole frame on every run: pages of the
live-frames mode are recycled with whatever the receiver wrote into them (the
kernel rewrites the Ethernet header and the TTL in place when it forwards an
XDP frame), and are not initialised again.  With ``--flows N`` it also writes a
random source port, one of N, into each frame (bench/livegen.py says why).

``--before DIR``: also run, in each round and shape, the hopgate of another
source tree (DIR holds its ``src/``, e.g. ``git archive HEAD~3 src | tar -x -C
DIR``), and report this tree's rate over that one's, round by round: a change
measured against what it changes, under the same conditions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.livegen import PER_CALL, udp4
from bench.quiet import measure_quietly
from bench.report import replace_section
from hopgate.lab.netns import LabError, Namespace, Process
from hopgate.lab.topologies import ADDR, NatLab, RouterLab

SRC, DST = ADDR.client4, ADDR.server4  # the same in all shapes: 198.18.1.10 -> 198.18.3.10
SPORT, DPORT = 40000, 9
# FNAT: the service's address, and the gateway's source address toward r1.
VIP, LIP = "198.18.100.1", "198.18.2.100"
SHAPES = ("routing", "NAT", "FNAT")
# Where the frames end: the server's eth0 (behind r1, which forwards them), or
# r1-d, the gateway's next hop (--sink next-hop).
SINKS = ("server", "next-hop")
ROOT = Path(__file__).resolve().parent.parent

GEN_CPU, GW_CPU = 0, 1
# A run is measured again if processes other than the lab's took more CPU than
# this (seconds per second) during its window.
FOREIGN_MAX = 0.02
KERNEL, HOPGATE, XDP = "Linux kernel", "hopgate", "hopgate XDP"
BEFORE = "hopgate, before"  # the gateway label of --before's tree


def fnat_service(protocol: str, port: int) -> str:
    """The FNAT shape's service for hopgate: ``protocol`` on ``port`` of the VIP,
    sent on to the server's same port from the LIP, health checks off."""
    return f"""
[[service]]
name = "bench"
vip = "{VIP}"
port = {port}
protocol = "{protocol}"
scheduler = "rr"
local_addresses = ["{LIP}"]
backend = [{{ address = "{DST}" }}]

[service.health]
kind = "none"
"""


def fnat_nft(protocol: str, port: int) -> str:
    """The kernel's FNAT: the VIP's port sent on to the server, its source
    masqueraded on the way out by the NAT lab's own rule."""
    return f"add rule ip hgnat pre ip daddr {VIP} {protocol} dport {port} dnat to {DST}:{port}"


FNAT_SERVICE = fnat_service("udp", DPORT)
FNAT_NFT = fnat_nft("udp", DPORT)


@dataclass
class Result:
    shape: str  # one of SHAPES
    gateway: str  # KERNEL, HOPGATE, XDP or BEFORE
    flows: int
    offered_pps: float  # the generator's frames, taken by the receiver or refused
    forwarded_pps: float  # counted by the sink's interface
    check_pps: float  # the sink's count, checked: r1-s's tx_packets, or gw-u's (next hop)
    lost_pps: float  # sent by gw, refused by r1-d's ring (gw-u's tx_dropped)
    cpu0_busy: float  # fractions of the window
    cpu0_softirq: float
    cpu1_busy: float
    cpu1_softirq: float
    napi_cpu: float  # gw-c's NAPI thread, CPU seconds per second
    gen_cpu: float  # the generator's process
    hopgate_cpu: float | None  # hopgate's process (None: the kernel)
    socket_drops: int | None = None
    foreign_cpu: float = 0.0  # other processes' CPU seconds per second in the window
    fast_pps: float | None = None  # forwarded by hopgate's XDP program (its own count)

    @property
    def gateway_us(self) -> float:
        """CPU 1's time per forwarded packet outside softirq: the gateway's."""
        return _per_packet(self.cpu1_busy - self.cpu1_softirq, self.forwarded_pps)

    @property
    def downstream_us(self) -> float:
        """CPU 1's softirq time per forwarded packet: r1's (unless the sink
        is at the next hop) and the sink's."""
        return _per_packet(self.cpu1_softirq, self.forwarded_pps)


def _per_packet(share: float, pps: float) -> float:
    return share / pps * 1e6 if pps else float("nan")


@dataclass
class Shape:
    sender: Namespace
    peer: tuple[Namespace, str]  # the sender's eth0's other end
    past_bridge: str | None  # the peer's bridge port toward gw-c (NAT shapes), or None
    gw: Namespace
    r1: Namespace
    server: Namespace
    hopgate: Process | None
    status: object  # a callable returning hopgate's status


def _counter(ns: Namespace, ifname: str, name: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/{name}").stdout)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks() -> dict[int, list[int]]:
    """Per CPU: user, nice, system, idle, iowait, irq, softirq, steal (/proc/stat)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            out[int(name[3:])] = [int(x) for x in fields[:8]]
    return out


def _shares(before: list[int], after: list[int]) -> tuple[float, float]:
    """Busy and softirq fractions of one CPU between two readings."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    user, nice, system, _idle, _iowait, irq, softirq, _steal = d
    return (user + nice + system + irq + softirq) / total, softirq / total


def _helper_env() -> dict[str, str]:
    """The bench's helpers import this tree's hopgate, even under --before."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}


def _helper(ns: Namespace, module: str, *args: str) -> None:
    env = _helper_env()["PYTHONPATH"]
    ns.run("env", f"PYTHONPATH={env}", sys.executable, "-m", module, *args)


def _napi_threads(ifname: str) -> set[int]:
    found = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"napi/{ifname}-"):
            found.add(int(p.name))
    return found


def _threaded_napi(ns: Namespace, ifname: str, cpu: int) -> list[int]:
    """Turn on threaded NAPI on ``ifname`` (it must have a native XDP program:
    a veth has a NAPI only then) and pin its new threads to ``cpu``."""
    before = _napi_threads(ifname)
    ns.run("sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded")
    new = sorted(_napi_threads(ifname) - before)
    if not new:
        raise LabError(f"{ns.name}: no NAPI thread for {ifname} (no native XDP program on it?)")
    for pid in new:
        subprocess.run(["taskset", "-pc", str(cpu), str(pid)], check=True, capture_output=True)
    return new


@contextmanager
def _shape(shape: str, mode: str) -> Iterator[Shape]:
    name = f"hgb-{secrets.token_hex(3)}"
    if shape == "routing":
        lab_mode = "kernel" if mode == "kernel" else "hopgate"
        dataplane = "xdp" if mode == "xdp" else "afpacket"
        with RouterLab(lab_mode, name, servers=False, dataplane=dataplane) as rl:
            yield Shape(
                rl.client, (rl.gw, "gw-c"), None, rl.gw, rl.r1, rl.server, rl.hopgate, rl.status
            )
    else:
        extra = FNAT_SERVICE if shape == "FNAT" else ""
        lab_mode = "kernel" if mode == "kernel" else "hopgate"
        dataplane = "xdp" if mode == "xdp" else "afpacket"
        with NatLab(lab_mode, name, servers=False, extra_config=extra, dataplane=dataplane) as nl:
            if shape == "FNAT" and mode == "kernel":
                nl.ns("gw").run("nft", FNAT_NFT)
            yield Shape(
                nl.ns("inside1"),
                (nl.ns("lan"), "p1"),
                "p0",
                nl.ns("gw"),
                nl.ns("r1"),
                nl.ns("server"),
                nl.hopgate,
                nl.status,
            )


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


# The server's side of _prime: every datagram to port 9 answered.
ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 9))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
# The inside host's: a datagram from each port, twice, 2.5 s apart (each port's
# socket closed at once: the answers need only pass the gateway).
PRIME = """
import socket, sys, time
dst, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(2):
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", port))
            s.sendto(b"prime", (dst, 9))
    time.sleep(2.5)
"""


def _prime(s: Shape, to: str, flows: int) -> None:
    """Make each flow an assured connection of the gateway (see the docstring)."""
    echo = s.server.spawn("echo", sys.executable, "-c", ECHO)
    try:
        time.sleep(0.3)
        s.sender.run(sys.executable, "-c", PRIME, to, str(SPORT), str(flows), timeout=120)
    finally:
        echo.stop()
    time.sleep(1.0)  # hopgate hands the streams to its fast path at the end of a turn


def _prepare(s: Shape, mode: str, shape: str, flows: int, sink: str) -> list[int]:
    """The flows primed, XDP programs, the sink, CPU steering; returns gw-c's
    NAPI threads."""
    # Resolve the neighbours on the path while the server still answers.
    s.sender.run("ping", "-c", "2", "-i", "0.2", DST)
    if shape != "routing":
        _prime(s, VIP if shape == "FNAT" else DST, flows)
    s.r1.run(
        "ip", "neigh", "replace", DST, "lladdr", s.server.mac("eth0"), "dev", "r1-s",
        "nud", "permanent",
    )  # fmt: skip
    peer_ns, peer_if = s.peer
    if s.past_bridge is not None:
        # The generator's frames go past the lab's bridge, straight into the
        # port toward gw-c, and reach gw-c as XDP frames, as in routing.
        _helper(peer_ns, "hopgate.lab.xdppass", "--to", s.past_bridge, peer_if)
    elif not (mode == "xdp" and peer_if == "gw-c"):  # hopgate's own program is there
        _helper(peer_ns, "hopgate.lab.xdppass", peer_if)
    if mode == "xdp":
        link = s.gw.run("ip", "-d", "link", "show", "gw-c").stdout
        if "prog/xdp " not in link:
            raise LabError(f"hopgate attached no native XDP program to gw-c:\n{link}")
    elif peer_if != "gw-c":
        _helper(s.gw, "hopgate.lab.xdppass", "gw-c")
    if sink == "next-hop":
        # The lab gives r1-d a passing program when hopgate runs natively: the
        # sink replaces it, the same for every gateway.
        s.r1.run("ip", "link", "set", "dev", "r1-d", "xdp", "off")
        _helper(s.r1, "hopgate.lab.xdppass", "--drop", "r1-d")
    else:
        _helper(s.r1, "hopgate.lab.xdppass", "r1-d")
        _helper(s.server, "hopgate.lab.xdppass", "--drop", "eth0")
    napi = _threaded_napi(s.gw, "gw-c", GW_CPU)
    if s.hopgate is not None:
        subprocess.run(
            ["taskset", "-apc", str(GW_CPU), str(s.hopgate.pid)], check=True, capture_output=True
        )
    return napi


def measure(
    shape: str, mode: str, flows: int, tree: Path | None, args: argparse.Namespace
) -> Result:
    """One run: ``mode`` is "kernel", "hopgate" (AF_PACKET) or "xdp"; ``args``
    the command line's (``seconds``, ``warmup``, ``per_call``, ``sink``)."""
    sink = args.sink
    with _daemon_from(tree), _shape(shape, mode) as s:
        napi = _prepare(s, mode, shape, flows, sink)
        pid = s.hopgate.pid if s.hopgate is not None else None
        to = VIP if shape == "FNAT" else DST
        frame = udp4(s.gw.mac("gw-c"), s.sender.mac("eth0"), SRC, to, SPORT, DPORT)
        gen = s.sender.spawn(
            "livegen", "taskset", "-c", str(GEN_CPU), sys.executable, "-m", "bench.livegen",
            "--dev", "eth0", "--frame", frame.hex(), "--flows", str(flows),
            "--per-call", str(args.per_call), env=_helper_env(),
        )  # fmt: skip
        try:
            time.sleep(args.warmup)
            if not gen.alive():
                raise LabError(f"the generator exited:\n{gen.output()}")
            fast0 = _fast_forwarded(s) if mode == "xdp" else 0
            c0 = _counters(s, sink)
            cpu0 = _cpu_ticks()
            ours = {os.getpid(), gen.pid, *([pid] if pid else [])}
            foreign0 = _foreign_ticks(ours)
            proc0 = [_cpu_seconds(p) for p in (*napi, gen.pid, *([pid] if pid else []))]
            t0 = time.monotonic()
            time.sleep(args.seconds)
            c1 = _counters(s, sink)
            cpu1 = _cpu_ticks()
            proc1 = [_cpu_seconds(p) for p in (*napi, gen.pid, *([pid] if pid else []))]
            foreign1 = _foreign_ticks(ours)
            elapsed = time.monotonic() - t0
            fast1 = _fast_forwarded(s) if mode == "xdp" else 0
        finally:
            gen.stop()
        drops = None
        if pid is not None and callable(s.status):
            state = s.status()
            drops = next(p for p in state["interfaces"] if p["name"] == "gw-c")["io"][
                "rx_socket_drops"
            ]
        rate = {k: (c1[k] - c0[k]) / elapsed for k in c0}
        used = [(b - a) / elapsed for a, b in zip(proc0, proc1, strict=True)]
        busy0, soft0 = _shares(cpu0[GEN_CPU], cpu1[GEN_CPU])
        busy1, soft1 = _shares(cpu0[GW_CPU], cpu1[GW_CPU])
        gateway = {"kernel": KERNEL, "hopgate": BEFORE if tree else HOPGATE, "xdp": XDP}[mode]
        return Result(
            shape,
            gateway,
            flows,
            offered_pps=rate["sent"] + rate["refused"],
            forwarded_pps=rate["sink"],
            check_pps=rate["check"],
            lost_pps=rate["lost"],
            cpu0_busy=busy0,
            cpu0_softirq=soft0,
            cpu1_busy=busy1,
            cpu1_softirq=soft1,
            napi_cpu=sum(used[: len(napi)]),
            gen_cpu=used[len(napi)],
            hopgate_cpu=used[-1] if pid else None,
            socket_drops=drops,
            foreign_cpu=sum(foreign1[p] - foreign0[p] for p in foreign1.keys() & foreign0.keys())
            / os.sysconf("SC_CLK_TCK")
            / elapsed,
            fast_pps=(fast1 - fast0) / elapsed if mode == "xdp" else None,
        )


def _fast_forwarded(s: Shape) -> int:
    """What hopgate's XDP program has forwarded so far (status, by its counters)."""
    assert callable(s.status)
    forwarded: int = s.status()["dataplane"].get("forwarded", 0)
    return forwarded


PF_KTHREAD = 0x00200000


def _foreign_ticks(ours: set[int]) -> dict[int, int]:
    """CPU ticks of every user-space process but ``ours`` and their children,
    with the children each has reaped (``cutime``, ``cstime``): what else ran."""
    ticks = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in ours:
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, flags = int(fields[1]), int(fields[6])
        if flags & PF_KTHREAD or ppid in ours:
            continue
        ticks[int(p.name)] = sum(int(x) for x in fields[11:15])
    return ticks


def _counters(s: Shape, sink: str) -> dict[str, int]:
    common = {
        "sent": _counter(s.sender, "eth0", "tx_packets"),
        "refused": _counter(s.sender, "eth0", "tx_dropped"),
        "lost": _counter(s.gw, "gw-u", "tx_dropped"),
    }
    if sink == "next-hop":
        return {
            **common,
            "check": _counter(s.gw, "gw-u", "tx_packets"),
            "sink": _counter(s.r1, "r1-d", "rx_packets"),
        }
    return {
        **common,
        "check": _counter(s.r1, "r1-s", "tx_packets"),
        "sink": _counter(s.server, "eth0", "rx_packets"),
    }


Rounds = list[list[Result]]  # each round: every shape and flow count, each gateway
GATEWAYS = (KERNEL, HOPGATE, BEFORE, XDP)


def _runs(rounds: Rounds, shape: str, flows: int, gateway: str) -> list[Result]:
    return [
        r
        for rnd in rounds
        for r in rnd
        if r.shape == shape and r.flows == flows and r.gateway == gateway
    ]


def _median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.forwarded_pps)[len(runs) // 2]


def _cases(rounds: Rounds) -> list[tuple[str, int]]:
    seen = {(r.shape, r.flows) for rnd in rounds for r in rnd}
    return sorted(seen, key=lambda c: (c[1], SHAPES.index(c[0])))


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _medians(rounds: Rounds) -> Iterator[tuple[str, int, str, list[Result], Result]]:
    """Each case and gateway measured: its runs, and the run of median rate."""
    for shape, flows in _cases(rounds):
        for gateway in GATEWAYS:
            runs = _runs(rounds, shape, flows, gateway)
            if runs:
                yield shape, flows, gateway, runs, _median_run(runs)


def _rows(rounds: Rounds) -> str:
    rows = []
    for shape, flows, gateway, runs, r in _medians(rounds):
        each = " / ".join(f"{x.forwarded_pps / 1000:,.0f}k" for x in runs)
        rows.append(
            f"| {shape} | {flows:,} | {gateway} | {r.offered_pps / 1e6:,.2f}M | "
            f"{r.forwarded_pps:,.0f} | {each} | {_pct(r.cpu1_busy)} | "
            f"{r.gateway_us:.2f} | {r.downstream_us:.2f} |"
        )
    return "\n".join(rows)


def _steering_rows(rounds: Rounds) -> str:
    rows = []
    for shape, flows, gateway, _, r in _medians(rounds):
        hop = _pct(r.hopgate_cpu) if r.hopgate_cpu is not None else "–"
        rows.append(
            f"| {shape} | {flows:,} | {gateway} | {_pct(r.cpu0_busy)} | "
            f"{_pct(r.cpu0_softirq)} | {_pct(r.gen_cpu)} | {_pct(r.cpu1_busy)} | "
            f"{_pct(r.cpu1_softirq)} | {_pct(r.napi_cpu)} | {hop} | "
            f"{r.lost_pps:,.0f} | {r.check_pps:,.0f} |"
        )
    return "\n".join(rows)


def _ratio(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    ratios = sorted(n / d if d else 0.0 for n, d in zip(num, den, strict=True))
    return statistics.median(ratios), ratios  # of an even count: the mean of the middle two


def _spread(ratios: list[float]) -> str:
    if len(ratios) < 2:
        return ""
    return f", {ratios[0]:.3f} to {ratios[-1]:.3f} over the rounds"


def _ratio_lines(rounds: Rounds) -> str:
    lines = []
    for shape, flows in _cases(rounds):
        kers = _runs(rounds, shape, flows, KERNEL)
        for gateway in (HOPGATE, XDP):
            runs = _runs(rounds, shape, flows, gateway)
            if not runs or not kers:
                continue
            # The gateways measured back to back in a round share its conditions.
            rate, rates = _ratio([r.forwarded_pps for r in runs], [k.forwarded_pps for k in kers])
            cost, costs = _ratio([k.gateway_us for k in kers], [r.gateway_us for r in runs])
            lines.append(
                f"- **{shape}, {flows:,} flow{'s' if flows > 1 else ''}: {gateway} / kernel ="
                f" {rate:.3f}** in forwarded rate (the median{_spread(rates)}); in the"
                f" gateway's CPU time per packet on CPU 1, kernel / {gateway} = {cost:.3f}"
                f" (the median{_spread(costs)})."
            )
            if gateway == HOPGATE:
                own = statistics.median(
                    _per_packet(r.hopgate_cpu or 0.0, r.forwarded_pps) for r in runs
                )
                napi = statistics.median(_per_packet(r.napi_cpu, r.forwarded_pps) for r in runs)
                lines.append(
                    f"  Of hopgate's time per packet, {own:.1f} µs were its process's and"
                    f" {napi:.1f} µs gw-c's NAPI thread's (the medians), which receives"
                    " the frames hopgate then drops at its socket too."
                )
            shares = [r.fast_pps / r.forwarded_pps for r in runs if r.fast_pps and r.forwarded_pps]
            if gateway == XDP and shares:
                lines.append(
                    f"  hopgate's XDP program forwarded {min(shares):.1%} to {max(shares):.1%}"
                    " of the frames the sink counted (by its own counters)."
                )
            idle = [k for k in kers if k.cpu1_busy < 0.95]
            if gateway == HOPGATE and idle:
                lines.append(
                    f"  In {len(idle)} of {len(kers)} rounds CPU 1 was idle more than 5% of"
                    " the kernel's window: the kernel was not the bottleneck there."
                )
        befores = _runs(rounds, shape, flows, BEFORE)
        hops = _runs(rounds, shape, flows, HOPGATE)
        if befores and hops:
            against, each = _ratio(
                [h.forwarded_pps for h in hops], [b.forwarded_pps for b in befores]
            )
            lines.append(
                f"  This tree / the tree before: {against:.3f} (the median;"
                f" {', '.join(f'{x:.3f}' for x in each)} over the rounds)."
            )
        drops = [h.socket_drops for h in hops if h.socket_drops is not None]
        if drops:
            lines.append(
                f"  hopgate (AF_PACKET) dropped {min(drops):,} to {max(drops):,} frames at its"
                " socket per run (warm-up and window), counted in `hopgate status` as"
                " `rx_socket_drops`."
            )
    return "\n".join(lines)


def _header(*columns: str, text: int = 3) -> str:
    """A Markdown table's head: the first ``text`` columns left, the rest right."""
    rule = ["---"] * text + ["---:"] * (len(columns) - text)
    rule[1] = "---:"  # flows
    return f"| {' | '.join(columns)} |\n|{'|'.join(rule)}|\n"


RATE_HEADER = _header(
    "shape", "flows", "gateway", "offered", "forwarded (pps)", "forwarded, each round",
    "CPU 1 busy", "gateway µs/packet", "downstream µs/packet",
)  # fmt: skip
TIME_HEADER = _header(
    "shape", "flows", "gateway", "CPU 0 busy", "CPU 0 softirq", "generator", "CPU 1 busy",
    "CPU 1 softirq", "gw-c NAPI thread", "hopgate", "lost (pps)", "check (pps)",
)  # fmt: skip


def _downstream_note(sink: str) -> str:
    """What runs downstream of the gateway on CPU 1, and how the times are split."""
    if sink == "next-hop":
        return """The generator has CPU 0, the gateway CPU 1, as in the section above. Here the
sink (an XDP_DROP program) is on r1-d, the gateway's next hop: r1 forwards
nothing, and downstream of the gateway there is only the sink's run, in softirq
on CPU 1. Through r1 (above), a frame that hopgate's program redirects reaches
r1-d without a socket buffer, and r1 builds one to forward it; the kernel as
the gateway has built it already in gw-c's NAPI thread. So there r1 pays on
CPU 1, for XDP, what the kernel pays in the gateway, and the rate counts it
either way. Here nothing after the gateway needs a socket buffer, as a NIC's
driver sending a redirected frame does not. *gateway* is CPU 1's busy time
outside softirq per forwarded packet; *downstream* its softirq time per packet
(the sink). The forwarded rate is what r1-d counted (it counts every frame its
program ran on); *check* below is what gw-u counted as sent."""
    return """The generator has CPU 0, the gateway CPU 1: the kernel's forwarding and
hopgate's kernel-side receive run in gw-c's NAPI thread, pinned to CPU 1
(threaded NAPI, gw-c having a native XDP program), and hopgate is pinned to
CPU 1. r1's forwarding and the server's sink (an XDP_DROP program) run in
softirq on CPU 1 too, scheduled by the gateway's sends: they cost every gateway
about the same per packet (less at high rates, where NAPI batches more) and
lower every rate, the kernel's most. So the gateway's own CPU time per packet
is given apart: CPU 1's busy time outside softirq, over the forwarded packets;
*downstream* is CPU 1's softirq time per packet (r1 and the sink). The ratio of
those times compares the gateways' work; the ratio of rates says what each
forwards on this machine with r1 beside it. *check* below is r1-s's count,
which the sink's should follow. The next section has the sink at the gateway's
next hop instead (`--sink next-hop`)."""


def _report(rounds: Rounds, seconds: float, per_call: int, sink: str = "server") -> str:
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
    gateways = {r.gateway for rnd in rounds for r in rnd}
    xdp = (
        ' and hopgate with its XDP fast path (`[dataplane] mode = "xdp"`)'
        if XDP in gateways
        else ""
    )
    title = ", the sink at the next hop" if sink == "next-hop" else ""
    return f"""## Forwarding rate, 64-byte UDP{title}

Measured {today} by `bench/forwarding.py` ({seconds:g} s window after a warm-up),
{len(rounds)} rounds, each measuring {_shapes_measured(rounds)} with veth pairs and
offloads off: routing (client — gateway — Linux router r1 — server), NAT (inside
host — gateway translating its source — r1 — server) and FNAT (the same hosts;
the inside host sends to a UDP service on a VIP of the gateway, which sends it
on to the server from a local address). Each shape ran with the Linux kernel as
the gateway (nftables masquerade for NAT; nftables dnat and masquerade for FNAT,
which is what FNAT does to a packet, without a load balancer's scheduling), then
with hopgate (AF_PACKET){xdp}.{_before_note(rounds)}

{_downstream_note(sink)}

{RATE_HEADER}{_rows(rounds)}

The row is the round with the median forwarded rate. The rates move from round
to round (the machine is a shared virtual one); the ratios, taken within each
round, move less.

{_ratio_lines(rounds)}

Where the time went (the same median rounds; shares of each CPU over the
window, and of one CPU for the threads; *lost*: frames the gateway sent that
r1-d's ring refused, per second):

{TIME_HEADER}{_steering_rows(rounds)}

- Frames: 60 bytes (64 on the wire with the FCS), IPv4/UDP to port 9, UDP
  checksum 0, sent by `bench/livegen.py`: an XDP program run by the kernel's
  live-frames test run (`BPF_PROG_TEST_RUN`, {per_call:,} frames a call), writing
  the frame and returning XDP_TX, pinned to CPU 0. It keeps sending what the
  receiver refuses ("offered" counts both). In the NAT shapes a program on the
  lab bridge's port from the inside host redirects them into the port toward
  the gateway: they go past the bridge and reach the gateway as XDP frames,
  as in routing, and each gateway builds its own socket buffers. With
  several flows, each frame's source port is one of that many, drawn at random
  in the program. Through the NAT and the load balancer a flow is one tracked
  connection, made an assured UDP stream before the window for every gateway
  alike (the server echoing, the inside host sending from each flow's port
  twice, 2.5 s apart), so that hopgate's fast path holds it.
- Threads on CPU 1 are accounted with their softirq ticks (the kernel counts
  CPU time by ticks here, `CONFIG_TICK_CPU_ACCOUNTING`), so the NAPI thread's
  and hopgate's shares can exceed CPU 1's non-softirq share.
- Machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()},
  Python {platform.python_version()}.

Reproduce: `.venv/bin/python -m bench.forwarding{_sink_option(sink)}` (as root, after
`scripts/bootstrap`).
"""


def _sink_option(sink: str) -> str:
    return f" --sink {sink}" if sink != "server" else ""


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


def _measure_quietly(
    shape: str, mode: str, args: argparse.Namespace, flows: int, tree: Path | None
) -> Result:
    """``measure`` with the machine to itself (bench/quiet.py)."""
    return measure_quietly(
        lambda: measure(shape, mode, flows, tree, args),
        lambda r: r.foreign_cpu,
        FOREIGN_MAX,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="Forwarding rate of hopgate against the Linux kernel.")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
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
        "--flows",
        nargs="+",
        type=int,
        default=[1],
        help="flow counts (source ports), each measured in every round",
    )
    ap.add_argument(
        "--xdp",
        action="store_true",
        help='also hopgate with [dataplane] mode = "xdp"',
    )
    ap.add_argument(
        "--sink",
        choices=SINKS,
        default="server",
        help="where the frames end: the server, behind r1 (r1 forwards them), or r1-d,"
        " the gateway's next hop (its own section of the report)",
    )
    ap.add_argument("--per-call", type=int, default=PER_CALL, help="frames per live-frames call")
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
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs two CPUs, one for the generator and one for the gateway")
    if any(not 1 <= f <= 65536 - SPORT for f in args.flows):
        sys.exit(f"bench: --flows must be between 1 and {65536 - SPORT}")
    # The bench itself, and what it starts, stay off the gateway's CPU.
    os.sched_setaffinity(0, {GEN_CPU})
    rounds: Rounds = []
    for n in range(1, args.rounds + 1):
        rnd = []
        for flows in args.flows:
            for shape in args.shapes:
                runs: list[tuple[str, Path | None]] = [("kernel", None), ("hopgate", None)]
                if args.before is not None:
                    # The two trees take turns at going first.
                    runs.insert(1 + n % 2, ("hopgate", args.before.resolve()))
                if args.xdp:
                    runs.append(("xdp", None))
                for mode, tree in runs:
                    r = _measure_quietly(shape, mode, args, flows, tree)
                    print(
                        f"round {n}  {r.shape:8} {flows:6} flows  {r.gateway:15}"
                        f" offered {r.offered_pps:12,.0f}  forwarded {r.forwarded_pps:10,.0f} pps"
                        f"  CPU1 {r.cpu1_busy:4.0%} (softirq {r.cpu1_softirq:4.0%})"
                        f"  gateway {r.gateway_us:5.2f} µs/pkt  lost {r.lost_pps:,.0f}"
                        f"  others {r.foreign_cpu:.1%}"
                        + (f"  by XDP {r.fast_pps:,.0f} pps" if r.fast_pps is not None else ""),
                        flush=True,
                    )
                    rnd.append(r)
        rounds.append(rnd)
    section = "forwarding-next-hop" if args.sink == "next-hop" else "forwarding"
    replace_section(args.out, section, _report(rounds, args.seconds, args.per_call, args.sink))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
