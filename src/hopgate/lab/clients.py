"""Small clients the lab runs inside a namespace, for what curl cannot say at
scale: which backend answered each of many connections, each from a chosen
source port.

    python -m hopgate.lab.clients http HOST PORT --count N [--first-port P]
    python -m hopgate.lab.clients udp HOST PORT MESSAGE

Each prints one line per exchange: the source port used, then the first line of
the answer or "error: ...".
"""

from __future__ import annotations

import argparse
import socket


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
    a = p.parse_args()
    if a.what == "http":
        print("\n".join(http_first_lines(a.host, a.port, a.count, a.first_port, a.timeout)))
    else:
        print(udp_answer(a.host, a.port, a.message, a.timeout))


if __name__ == "__main__":
    main()
