"""The connections benchmark's client and server: TCP connections opened and
closed as fast as they go, each a full handshake and a close both ways, no data.

    ip netns exec SERVER .venv/bin/python -m bench.tcp_churn server --port 80
    ip netns exec CLIENT .venv/bin/python -m bench.tcp_churn client --to ADDR --port 80 \\
        [--concurrency 64] [--timeout 5]

The server accepts, shuts its side down at once (its FIN goes first, so the
TIME_WAIT is the server's and holds none of the client's ports), waits for the
client's FIN (end of file) and closes.  The client keeps ``--concurrency``
connections in flight: a non-blocking connect, then one wait for the socket to
become readable, which is the server's FIN (end of file: the connection was
made and closed by the server) or an error (refused, reset, unreachable); at end
of file it closes, sending its own FIN.  A connection still open after
``--timeout`` seconds is abandoned and counted as failed; one completed in
``--slow`` seconds or more (a SYN sent again after 1 s, say) is counted as slow
too.  Both are one process with one epoll each, no threads.

Each prints a line when it gets SIGUSR1, and on SIGTERM before it exits::

    mark MONOTONIC COUNTS...

client: ``completed failed refused reset timed_out slow inflight``; server:
``accepted closed reset open``.  ``MONOTONIC`` is ``time.monotonic()``, one
clock for every namespace: the bench marks a window's two ends with SIGUSR1 and
takes the counts' differences.  A failure is ``refused + reset + timed_out``
plus any other error (``failed`` counts them all).
"""

from __future__ import annotations

import argparse
import errno
import select
import signal
import socket
import sys
import time
from types import FrameType

EPOLLIN, EPOLLERR, EPOLLHUP = select.EPOLLIN, select.EPOLLERR, select.EPOLLHUP


class _Marks:
    """Prints the counts on SIGUSR1, and once more on SIGTERM, then exits."""

    def __init__(self, counts: dict[str, int], extra: object = None) -> None:
        self.counts = counts
        self.extra = extra
        signal.signal(signal.SIGUSR1, self._mark)
        signal.signal(signal.SIGTERM, self._stop)

    def line(self) -> str:
        values = " ".join(str(v) for v in self.counts.values())
        more = f" {self.extra()}" if callable(self.extra) else ""
        return f"mark {time.monotonic():.6f} {values}{more}"

    def _mark(self, _sig: int, _frame: FrameType | None) -> None:
        print(self.line(), flush=True)

    def _stop(self, _sig: int, _frame: FrameType | None) -> None:
        print(self.line(), flush=True)
        sys.exit(0)


def serve(port: int, backlog: int) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(backlog)
    ep = select.epoll()
    lfd = lsock.fileno()
    ep.register(lfd, EPOLLIN)
    conns: dict[int, socket.socket] = {}
    counts = {"accepted": 0, "closed": 0, "reset": 0}
    _Marks(counts, lambda: len(conns))
    accept, register, poll = lsock.accept, ep.register, ep.poll
    print(f"listening on {port}", flush=True)
    while True:
        for fd, _events in poll():
            if fd == lfd:
                while True:
                    try:
                        conn, _ = accept()
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. ECONNABORTED: reset in the accept queue
                        counts["reset"] += 1
                        continue
                    counts["accepted"] += 1
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        counts["reset"] += 1
                        conn.close()
                        continue
                    cfd = conn.fileno()
                    conns[cfd] = conn
                    register(cfd, EPOLLIN)
                continue
            conn = conns.pop(fd)
            try:
                data = conn.recv(64)
            except OSError:
                counts["reset"] += 1
            else:
                # The client sends nothing: end of file is its FIN.
                counts["closed" if not data else "reset"] += 1
            conn.close()


def churn(
    to: str,
    port: int,
    concurrency: int,
    timeout: float,
    slow: float,
    ports: tuple[int, int] | None,
) -> None:
    ep = select.epoll()
    # fd -> (socket, when connect was called)
    inflight: dict[int, tuple[socket.socket, float]] = {}
    counts = {"completed": 0, "failed": 0, "refused": 0, "reset": 0, "timed_out": 0, "slow": 0}
    _Marks(counts, lambda: len(inflight))
    dst = (to, port)
    family, kind = socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
    register, poll = ep.register, ep.poll
    mono = time.monotonic
    next_sweep = mono() + 1.0
    lo, hi = ports or (0, 0)
    sport = lo

    def fail(why: str) -> None:
        counts["failed"] += 1
        if why in counts:
            counts[why] += 1

    while True:
        now = mono()
        while len(inflight) < concurrency:
            s = socket.socket(family, kind)
            if ports is not None:
                # The next free port in turn (one still closing is skipped).
                while True:
                    try:
                        s.bind(("0.0.0.0", sport))
                    except OSError:
                        sport = lo if sport == hi else sport + 1
                        continue
                    sport = lo if sport == hi else sport + 1
                    break
            rc = s.connect_ex(dst)
            if rc not in (errno.EINPROGRESS, 0):
                s.close()
                fail("refused" if rc == errno.ECONNREFUSED else "other")
                continue
            fd = s.fileno()
            inflight[fd] = (s, now)
            register(fd, EPOLLIN)
        ready = poll(0.2)
        now = mono()
        for fd, events in ready:
            s, began = inflight.pop(fd)
            if events & EPOLLERR:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                fail(
                    "refused"
                    if err == errno.ECONNREFUSED
                    else "reset"
                    if err == errno.ECONNRESET
                    else "other"
                )
            else:
                # The server sends nothing: readable is its FIN (end of file),
                # or a reset, which recv reports.
                try:
                    data = s.recv(64)
                except OSError as e:
                    fail("reset" if e.errno == errno.ECONNRESET else "other")
                else:
                    if data:
                        fail("other")
                    else:
                        counts["completed"] += 1
                        if now - began >= slow:
                            counts["slow"] += 1
            s.close()
        if now >= next_sweep:
            next_sweep = now + 1.0
            for fd, (s, began) in list(inflight.items()):
                if now - began >= timeout:
                    del inflight[fd]
                    s.close()
                    fail("timed_out")


def main() -> None:
    ap = argparse.ArgumentParser(description="TCP connections opened and closed, no data.")
    sub = ap.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--port", type=int, default=80)
    srv.add_argument("--backlog", type=int, default=4096)
    cli = sub.add_parser("client")
    cli.add_argument("--to", required=True)
    cli.add_argument("--port", type=int, default=80)
    cli.add_argument("--concurrency", type=int, default=64)
    cli.add_argument("--timeout", type=float, default=5.0)
    cli.add_argument("--slow", type=float, default=0.9)
    cli.add_argument(
        "--ports",
        default=None,
        metavar="LO-HI",
        help="source ports, each in turn (default: the kernel's choice)",
    )
    args = ap.parse_args()
    if args.role == "server":
        serve(args.port, args.backlog)
    else:
        ports = None
        if args.ports:
            lo, hi = (int(x) for x in args.ports.split("-"))
            ports = (lo, hi)
        churn(args.to, args.port, args.concurrency, args.timeout, args.slow, ports)


if __name__ == "__main__":
    main()
