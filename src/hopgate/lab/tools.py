"""The real tools, run inside lab namespaces, and what their output says.

Tests and the demo judge hopgate by what ping, traceroute, tracepath, mtr,
curl and iperf3 report, exactly as an operator would read them.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from hopgate.lab.netns import Namespace

_HOP_LINE = re.compile(r"^\s*(\d+)\s+(.*)$")
_ADDRESS = re.compile(r"(?<![\w:.])((?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]*:[0-9a-fA-F:]+)(?![\w:.])")


@dataclass
class ToolRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def run(ns: Namespace, *argv: str, timeout: float = 60.0) -> ToolRun:
    done = ns.run(*argv, timeout=timeout, check=False)
    return ToolRun(list(argv), done.returncode, done.stdout, done.stderr)


def _family(dst: str) -> str:
    return "-6" if ":" in dst else "-4"


# -- traceroute ----------------------------------------------------------------


@dataclass
class Trace:
    run: ToolRun
    # One entry per hop: the addresses that answered at that TTL (empty: all '*').
    hops: list[list[str]] = field(default_factory=list)

    @property
    def path(self) -> list[str]:
        """The first address that answered at each hop ('*' where none did)."""
        return [h[0] if h else "*" for h in self.hops]


def traceroute(
    ns: Namespace,
    dst: str,
    mode: str = "udp",
    *,
    port: int | None = None,
    queries: int = 3,
    max_hops: int = 8,
    wait: float = 1.0,
) -> Trace:
    """Run ``traceroute -n`` in UDP (default: a new port per probe), UDP to one
    port (-U, port 53 unless given), ICMP (-I) or TCP (-T) mode."""
    argv = [
        "traceroute",
        _family(dst),
        "-n",
        "-q",
        str(queries),
        "-w",
        str(wait),
        "-m",
        str(max_hops),
    ]
    argv += {"udp": [], "udp-fixed": ["-U"], "icmp": ["-I"], "tcp": ["-T"]}[mode]
    if port is not None:
        argv += ["-p", str(port)]
    argv.append(dst)
    r = run(ns, *argv, timeout=max_hops * queries * wait + 30)
    trace = Trace(r)
    for line in r.stdout.splitlines()[1:]:
        m = _HOP_LINE.match(line)
        if not m:
            continue
        addrs: list[str] = []
        for a in _ADDRESS.findall(m.group(2)):
            if a not in addrs:
                addrs.append(a)
        trace.hops.append(addrs)
    return trace


# -- ping --------------------------------------------------------------------------


@dataclass
class Ping:
    run: ToolRun
    transmitted: int
    received: int
    errors: list[str]  # lines such as "From 198.18.1.1 icmp_seq=1 Destination Net Unreachable"


_PING_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping(
    ns: Namespace,
    dst: str,
    *,
    count: int = 3,
    size: int | None = None,
    dont_fragment: bool = False,
    interval: float = 0.2,
    wait: float = 2.0,
    ident: int | None = None,
) -> Ping:
    argv = ["ping", _family(dst), "-n", "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if size is not None:
        argv += ["-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    if ident is not None:
        argv += ["-e", str(ident)]
    argv.append(dst)
    r = run(ns, *argv, timeout=count * (interval + wait) + 20)
    m = _PING_STATS.search(r.stdout)
    tx, rx = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    errors = [line.strip() for line in r.stdout.splitlines() if line.startswith("From ")]
    return Ping(r, tx, rx, errors)


# -- tracepath ------------------------------------------------------------------------


@dataclass
class Tracepath:
    run: ToolRun
    pmtu: int | None
    reached: bool


_RESUME = re.compile(r"Resume: pmtu (\d+)")


def tracepath(ns: Namespace, dst: str) -> Tracepath:
    r = run(ns, "tracepath", _family(dst), "-n", "-m", "8", dst, timeout=60)
    m = _RESUME.search(r.stdout)
    return Tracepath(r, int(m.group(1)) if m else None, "reached" in r.stdout)


# -- mtr -----------------------------------------------------------------------------


@dataclass
class MtrHop:
    host: str
    loss_percent: float
    sent: int


def mtr_report(
    ns: Namespace, dst: str, *, count: int = 10, mode: str = "icmp"
) -> tuple[ToolRun, list[MtrHop]]:
    argv = ["mtr", _family(dst), "-n", "--json", "-c", str(count), "-i", "0.2"]
    if mode == "udp":
        argv.append("--udp")
    elif mode == "tcp":
        argv.append("--tcp")
    argv.append(dst)
    r = run(ns, *argv, timeout=count * 2 + 30)
    hops = []
    try:
        data = json.loads(r.stdout)
        for h in data["report"]["hubs"]:
            hops.append(MtrHop(str(h["host"]), float(h["Loss%"]), int(h["Snt"])))
    except (ValueError, KeyError):
        pass
    return r, hops


# -- TCP, HTTP, iperf3 ----------------------------------------------------------------

_CONNECT = """\
import socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected", time.monotonic() - start)
except ConnectionRefusedError:
    print("refused", time.monotonic() - start)
except OSError as e:
    print("failed", time.monotonic() - start, e)
"""


def tcp_connect(ns: Namespace, host: str, port: int, timeout: float = 5.0) -> tuple[str, float]:
    """("connected" | "refused" | "failed", seconds it took)."""
    import sys

    r = run(ns, sys.executable, "-c", _CONNECT, host, str(port), str(timeout), timeout=timeout + 10)
    parts = r.stdout.split()
    if len(parts) < 2:
        return "failed", timeout
    return parts[0], float(parts[1])


@dataclass
class Download:
    run: ToolRun
    ok: bool
    size: int
    seconds: float


def curl(ns: Namespace, url: str, *, timeout: float = 60.0) -> Download:
    r = run(
        ns,
        "curl", "-g", "-s", "-o", "/dev/null", "--max-time", f"{timeout:g}",
        "-w", "%{http_code} %{size_download} %{time_total}", url,
        timeout=timeout + 10,
    )  # fmt: skip
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) != 3:
        return Download(r, False, 0, 0.0)
    return Download(r, parts[0] == "200", int(parts[1]), float(parts[2]))


def iperf3(
    ns: Namespace, server: str, *, seconds: int = 3, udp: bool = False, bitrate: str = "50M"
) -> tuple[ToolRun, dict[str, Any] | None]:
    argv = ["iperf3", "-c", server, "-t", str(seconds), "--json"]
    if udp:
        argv += ["-u", "-b", bitrate, "-l", "1200"]
    r = run(ns, *argv, timeout=seconds + 30)
    try:
        return r, json.loads(r.stdout)
    except ValueError:
        return r, None


def curl_many(
    ns: Namespace, url: str, count: int, *, first_port: int, timeout: float = 30.0
) -> list[Download]:
    """``count`` downloads of ``url`` at once, each from its own client port
    (first_port, first_port + 1, ...), so that ECMP spreads them."""
    import subprocess
    import time

    procs = []
    for i in range(count):
        argv = [
            "curl", "-g", "-s", "-o", "/dev/null", "--max-time", f"{timeout:g}",
            "--local-port", str(first_port + i),
            "-w", "%{http_code} %{size_download} %{time_total}", url,
        ]  # fmt: skip
        procs.append(
            (
                argv,
                subprocess.Popen(
                    ["ip", "netns", "exec", ns.name, *argv],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    results = []
    deadline = time.monotonic() + timeout + 30
    for argv, p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        r = ToolRun(argv, p.returncode, out, err)
        parts = out.split()
        if p.returncode != 0 or len(parts) != 3:
            results.append(Download(r, False, int(parts[1]) if len(parts) == 3 else 0, 0.0))
        else:
            results.append(Download(r, parts[0] == "200", int(parts[1]), float(parts[2])))
    return results


def inject(
    ns: Namespace, ifname: str, frames: list[bytes], *, rate: float = 0.0, timeout: float = 60.0
) -> tuple[int, float]:
    """Send exact frames out of ``ifname`` of ``ns`` (``rate`` a second, or as
    fast as the kernel takes them); (frames sent, seconds taken)."""
    import sys

    path = ns.lab.dir / f"inject-{len(list(ns.lab.dir.glob('inject-*')))}.hex"
    path.write_text("\n".join(f.hex() for f in frames))
    argv = [sys.executable, "-m", "hopgate.lab.inject", "--iface", ifname, "--rate", str(rate)]
    r = run(ns, *argv, str(path), timeout=timeout)
    try:
        result = json.loads(r.stdout)
    except ValueError:
        raise RuntimeError(f"inject failed: {r.output}") from None
    return int(result["sent"]), float(result["seconds"])
