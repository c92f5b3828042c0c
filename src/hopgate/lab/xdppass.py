"""Attach an XDP program that passes every frame to an interface of this
network namespace, natively, until the interface goes.

A veth drops what an XDP program redirects into it unless its peer has an XDP
program (or GRO) — the labs turn GRO off, so the neighbours of hopgate's
interfaces get this one when hopgate runs its fast path natively.

    python -m hopgate.lab.xdppass IFNAME...
"""

from __future__ import annotations

import os
import socket
import sys

from hopgate.xdp import libbpf


def attach_pass(names: list[str]) -> None:
    fd = libbpf.load_instructions("hopgate_lab_pass", libbpf.verdict_program(libbpf.XDP_PASS))
    try:
        for name in names:
            libbpf.attach(socket.if_nametoindex(name), fd, "native")
    finally:
        os.close(fd)  # the attachments hold the program


if __name__ == "__main__":
    attach_pass(sys.argv[1:])
