"""A steady stream of numbered UDP datagrams, for the labs and benchmarks
(bench/reload.py, tests/lab/test_restart.py): numbered UDP datagrams at a
steady rate, and a receiver that records when each arrived.

    python -m hopgate.lab.udpstream send --to HOST --port P [--rate 20000]
    python -m hopgate.lab.udpstream recv --port P --out FILE [--reply]

``send`` sends datagrams of 18 bytes (60-byte frames), each holding its
sequence number and the time it was sent (``CLOCK_REALTIME``, ns), paced in
ticks of half a millisecond (every tick sends what is due by then, so a tick
that comes late sends more, never fewer), until SIGTERM or SIGINT; then prints
``sent COUNT FIRST_NS LAST_NS``.

``recv`` takes each datagram with the kernel's receive time
(``SO_TIMESTAMPNS``, ``CLOCK_REALTIME``: what the socket got when, whatever
the receiver's own scheduling), prints ``first`` at the first one, and at
SIGTERM writes to FILE three arrays of signed 64-bit integers (``array``
"q", native order, after a count): the sequence numbers, the receive times and
the send times.  ``--reply`` answers the first datagram from each sender once,
so that a NAT between them sees its connection replied (a UDP stream, which
hopgate's fast path may then take).  The clocks are the same: sender and
receiver are network namespaces of one host.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

PAYLOAD = struct.Struct("!QQ2x")  # sequence number, sent (ns); 18 bytes
TICK = 0.0005  # seconds between the sender's wake-ups
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("qq")

STOP = threading.Event()  # set by SIGTERM and SIGINT


def _on_signal(signum: int, frame: object) -> None:
    STOP.set()


def send(host: str, port: int, rate: float) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect((host, port))
    pack = PAYLOAD.pack
    now_ns = time.time_ns
    clock = time.monotonic
    seq = 0
    first = now_ns()
    start = clock()
    while not STOP.is_set():
        due = int((clock() - start) * rate)
        while seq < due:
            # ENOBUFS, or an ICMP error reported: the datagram counts as lost
            with contextlib.suppress(OSError):
                s.send(pack(seq, now_ns()))
            seq += 1
        time.sleep(TICK)
    print(f"sent {seq} {first} {now_ns()}", flush=True)


def recv(port: int, out: Path, reply: bool) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind(("::", port))
    s.settimeout(0.2)
    seqs, rxs, sents = array.array("q"), array.array("q"), array.array("q")
    anc = socket.CMSG_SPACE(TIMESPEC.size)
    replied: set[object] = set()
    unpack = PAYLOAD.unpack_from
    while not STOP.is_set():
        try:
            data, ancdata, _, peer = s.recvmsg(64, anc)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        if len(data) < PAYLOAD.size:
            continue
        rx = 0
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack_from(cdata)
                rx = sec * 1_000_000_000 + nsec
        seq, sent = unpack(data)
        if not seqs:
            print("first", flush=True)
        seqs.append(seq)
        rxs.append(rx or time.time_ns())
        sents.append(sent)
        if reply and peer not in replied:
            replied.add(peer)
            s.sendto(b"reply", peer)
    with open(out, "wb") as f:
        array.array("q", [len(seqs)]).tofile(f)
        for a in (seqs, rxs, sents):
            a.tofile(f)
    print(f"received {len(seqs)}", flush=True)


def read(path: Path) -> tuple[array.array[int], array.array[int], array.array[int]]:
    """What ``recv`` wrote: the sequence numbers, receive times, send times."""
    with open(path, "rb") as f:
        count = array.array("q")
        count.fromfile(f, 1)
        arrays = []
        for _ in range(3):
            a = array.array("q")
            a.fromfile(f, count[0])
            arrays.append(a)
    return arrays[0], arrays[1], arrays[2]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m hopgate.lab.udpstream")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate", type=float, default=20000.0, help="datagrams a second")
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--reply", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.what == "send":
        send(args.to, args.port, args.rate)
    else:
        recv(args.port, args.out, args.reply)
    sys.exit(0)


if __name__ == "__main__":
    main()
