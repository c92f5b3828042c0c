"""The per-packet cost of ``Router.process`` for established NAT and load-balanced
flows, and for plain routing and local answers beside them, two source trees in
the same run (issue 10, item 3: the load balancer's package and NAT's split must
not slow the hot path).  Pipeline only, no lab.

    .venv/bin/python -m bench.nat_lb_paths [--before DIR] [--frames 100000] [--rounds 5]

``--before`` (and ``--after``, default this tree) is another checkout's root
(e.g. ``git archive HEAD src tests | tar -x -C /tmp/before``); without it only
this tree is measured.  Each round runs one subprocess per tree, alternately,
so both see the same machine load; this file is the code run in both, and it
takes the router and the frame helpers from each tree's ``tests/unit``.

The cases, each one frame repeated ``--frames`` times through ``Router.process``
after a first one checked to be transmitted:

- ``nat-out``, ``nat-in``: an established SNAT flow, opened by a handshake
  through the router, then one ACK (no data: always in window) out, and the
  server's ACK back in;
- ``lb-to-backend``, ``lb-from-backend``: the same for a full-NAT flow to a
  load-balanced VIP, client to backend and backend back;
- ``route4-udp``, ``route6-udp``: a UDP datagram (18 bytes of data) forwarded
  client -> server over the default route, its next hop already resolved (no
  NAT configured);
- ``ecmp4-udp``: the same in IPv4 over a route with three next hops, all resolved;
- ``echo4-local``: an ICMP echo request (56 bytes of data) to the router's
  address on the client's port, answered.

The figure is the median round's ns per frame (the copy of the frame into a
fresh bytearray included, alike for all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(frames: int) -> dict[str, float]:
    """In a subprocess whose sys.path starts with the tree to measure."""
    from ipaddress import ip_address, ip_network

    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from tests.unit import frames as F
    from tests.unit import lb_frames as L
    from tests.unit import nat_frames as N

    from hopgate.pipeline.actions import Transmit
    from hopgate.pipeline.model import NextHopSpec, RouteSpec

    def run(r: object, frame: bytes, port: int) -> float:
        process = r.process  # type: ignore[attr-defined]
        out = process(bytearray(frame), port, 1.0)
        assert out and isinstance(out[-1], Transmit), out
        t = time.perf_counter()
        for _ in range(frames):
            process(bytearray(frame), port, 1.0)
        return (time.perf_counter() - t) / frames * 1e9

    got: dict[str, float] = {}
    # SNAT: A4:40000 -> SERVER4:80 (the port is kept: 40000 outside too).
    r = N.nat_router()
    ip, back = IP(src=N.A4, dst=N.SERVER4), IP(src=N.SERVER4, dst=N.OUT4)
    r.process(N.inside(ip / TCP(sport=40000, dport=80, flags="S", seq=1000)), F.C, 0.5)
    r.process(
        N.outside(back / TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001)), F.U, 0.5
    )
    ack = bytes(N.inside(ip / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001)))
    reply = bytes(N.outside(back / TCP(sport=80, dport=40000, flags="A", seq=5001, ack=1001)))
    got["nat-out"] = run(r, ack, F.C)
    got["nat-in"] = run(r, reply, F.U)
    # Full NAT: CLIENT4:40000 -> VIP4:80, to a backend from a LIP.
    r = L.lb_router()
    ip = IP(src=L.CLIENT4, dst=L.VIP4)
    r.process(L.via_b(ip / TCP(sport=40000, dport=80, flags="S", seq=1000)), L.B, 0.5)
    (conn,) = r.nat.connections()  # type: ignore[union-attr]
    _, _, be, bport, lip, lport = conn.key_reply
    mac = L.BE1_MAC if be == L._ip(L.BE1) else L.BE2_MAC
    back = IP(src=str(ip_address(be)), dst=str(ip_address(lip)))
    syn_ack = TCP(sport=bport, dport=lport, flags="SA", seq=5000, ack=1001)
    r.process(L.from_backend(back / syn_ack, mac), L.S, 0.5)
    ack = bytes(L.via_b(ip / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001)))
    reply = bytes(
        L.from_backend(back / TCP(sport=bport, dport=lport, flags="A", seq=5001, ack=1001), mac)
    )
    got["lb-to-backend"] = run(r, ack, L.B)
    got["lb-from-backend"] = run(r, reply, L.S)
    # Plain routing, no NAT: CLIENT -> SERVER over the default route, its next
    # hop (UPSTREAM) already in the neighbour tables.  Only tests.unit.frames.
    r = F.resolved_router()
    data = b"x" * 18
    udp4 = bytes(F.from_client(IP(src=F.CLIENT4, dst=F.SERVER4) / UDP(sport=40000, dport=9) / data))
    udp6 = bytes(
        F.from_client(IPv6(src=F.CLIENT6, dst=F.SERVER6) / UDP(sport=40000, dport=9) / data)
    )
    got["route4-udp"] = run(r, udp4, F.C)
    got["route6-udp"] = run(r, udp6, F.C)
    # ECMP: the IPv4 default route over three next hops on the upstream port,
    # all resolved (as tests/unit/test_router_ecmp.py builds it).
    hops = ("198.18.2.2", "198.18.2.3", "198.18.2.4")
    routes = (
        RouteSpec(ip_network("0.0.0.0/0"), tuple(NextHopSpec(ip_address(h)) for h in hops)),
        RouteSpec(ip_network("::/0"), (NextHopSpec(ip_address(F.UPSTREAM6)),)),
    )
    r = F.router(routes=routes)
    F.learn_neighbours(r, [(F.U, h, f"02:00:00:00:02:{i + 2:02x}") for i, h in enumerate(hops)])
    got["ecmp4-udp"] = run(r, udp4, F.C)
    # An echo request to the router's own address on the client's port.
    r = F.resolved_router()
    echo = IP(src=F.CLIENT4, dst=F.GW_C4) / ICMP(id=0x1234, seq=1) / (b"p" * 56)
    got["echo4-local"] = run(r, bytes(F.from_client(echo)), F.C)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, help="another checkout's root, measured alternately")
    ap.add_argument(
        "--after", type=Path, default=ROOT, help="the tree measured (default: this one)"
    )
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # the subprocess's side
    args = ap.parse_args()
    if args.tree is not None:
        sys.path[:0] = [str(args.tree / "src"), str(args.tree)]
        import hopgate

        assert Path(hopgate.__file__).is_relative_to(args.tree / "src"), hopgate.__file__
        print(json.dumps(_measure(args.frames)))
        return
    trees = {"before": args.before} if args.before is not None else {}
    trees["after"] = args.after
    results: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            cmd = [sys.executable, "-m", "bench.nat_lb_paths", "--tree", str(tree)]
            cmd += ["--frames", str(args.frames)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{name}: {done.stderr}")
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    flows = list(results["after"][0])
    print(
        f"{'ns per frame (median of ' + str(args.rounds) + ')':<32}"
        + "".join(f"{f:>16}" for f in flows)
    )
    for name, rounds in results.items():
        medians = [statistics.median(r[f] for r in rounds) for f in flows]
        print(f"{name:<32}" + "".join(f"{m:>16.0f}" for m in medians))


if __name__ == "__main__":
    main()
