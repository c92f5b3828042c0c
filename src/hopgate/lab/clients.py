"""Small clients the lab runs inside a namespace, for what curl cannot say at
scale: which backend answered each of many connections, each from a chosen
source port; and a download at a steady rate, which curl's ``--limit-rate``
does not keep on a fast link (it averages over seconds: the first ones go at
full speed, and a 10 MB download through the lab often ends in a second).

    python -m hopgate.lab.clients http HOST PORT --count N [--first-port P]
    python -m hopgate.lab.clients udp HOST PORT MESSAGE
    python -m hopgate.lab.clients download HOST PORT PATH --rate BYTES [--local-port P]

Each of the first two prints one line per exchange: the source port used, then
the first line of the answer or "error: ...".  ``download`` prints, as curl's
``-w "%{http_code} %{size_download} %{time_total}"``, the status, the body's
bytes and the seconds it took.
"""

from __future__ import annotations

import argparse
import socket
import time

READ = 32768  # bytes a download reads at a time, and its receive buffer


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def http_first_lines(
    host: str, port: int, count: int, first_port: int | None, timeout: float
) -> list[str]:
    lines = []
    for i in range(count):
        sport = 0 if first_port is None else first_port + i
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.bind(("", sport))
                s.connect((host, port))
                sport = s.getsockname()[1]
                s.sendall(f"GET /index.html HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
                lines.append(f"{sport} {body.splitlines()[0] if body else 'error: empty'}")
            except OSError as e:
                lines.append(f"{sport} error: {e}")
    return lines


def udp_answer(host: str, port: int, message: str, timeout: float) -> str:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        sport = s.getsockname()[1]
        try:
            s.send(message.encode())
            return f"{sport} {s.recv(65535).decode(errors='replace')}"
        except OSError as e:
            return f"{sport} error: {e}"


def download(host: str, port: int, path: str, rate: float, local_port: int, timeout: float) -> str:
    """GET ``path`` over HTTP/1.0, read at ``rate`` bytes a second at most (a
    small receive buffer, so the server is held back by TCP's window)."""
    start = time.monotonic()
    got = b""
    total = 0
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ)
        s.settimeout(timeout)
        s.bind(("", local_port))
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        while chunk := s.recv(READ):
            if len(got) < 4096:
                got += chunk[:4096]
            total += len(chunk)
            ahead = start + total / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    head, _, _ = got.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "000"
    return f"{status} {total - len(head) - 4} {time.monotonic() - start:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m hopgate.lab.clients")
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("http")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--count", type=int, default=1)
    h.add_argument("--first-port", type=int)
    h.add_argument("--timeout", type=float, default=5.0)
    u = sub.add_parser("udp")
    u.add_argument("host")
    u.add_argument("port", type=int)
    u.add_argument("message")
    u.add_argument("--timeout", type=float, default=3.0)
    d = sub.add_parser("download")
    d.add_argument("host")
    d.add_argument("port", type=int)
    d.add_argument("path")
    d.add_argument("--rate", type=float, required=True, help="bytes a second")
    d.add_argument("--local-port", type=int, default=0)
    d.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    if a.what == "http":
        print("\n".join(http_first_lines(a.host, a.port, a.count, a.first_port, a.timeout)))
    elif a.what == "udp":
        print(udp_answer(a.host, a.port, a.message, a.timeout))
    else:
        print(download(a.host, a.port, a.path, a.rate, a.local_port, a.timeout))


if __name__ == "__main__":
    main()
