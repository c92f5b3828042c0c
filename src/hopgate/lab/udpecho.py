"""A UDP server for lab backends: answers each datagram with its own name and the
datagram, so a client can tell which backend a load balancer chose.

    python -m hopgate.lab.udpecho PORT NAME
"""

from __future__ import annotations

import socket
import sys


def serve(port: int, name: str) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 as well
    sock.bind(("::", port))
    prefix = f"{name}: ".encode()
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(prefix + data, peer)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
