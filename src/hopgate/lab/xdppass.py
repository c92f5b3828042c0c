"""Attach an XDP program with one verdict for every frame to interfaces of
this network namespace, natively, until the interfaces go.

A veth drops what an XDP program redirects or sends into it (XDP_TX) unless its
peer has an XDP program (or GRO), and the labs turn GRO off: the neighbours of
hopgate's interfaces get one that passes everything when hopgate runs its fast
path natively, and so do the benchmark's hosts.  ``--drop`` makes a cheap sink.
``--to OTHER`` sends every frame out of OTHER instead (``bpf_redirect``): the
benchmark's path past a bridge, the frames staying XDP frames, as a NIC's.
An interface that has a native program already keeps it.

    python -m hopgate.lab.xdppass [--drop | --to OTHER] IFNAME...
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from hopgate.xdp import libbpf


def attach(names: list[str], verdict: int = libbpf.XDP_PASS, to: str | None = None) -> None:
    program = (
        libbpf.redirect_program(socket.if_nametoindex(to))
        if to is not None
        else libbpf.verdict_program(verdict)
    )
    fd = libbpf.load_instructions("hopgate_lab_xdp", program)
    try:
        for name in names:
            ifindex = socket.if_nametoindex(name)
            current = libbpf.attached_id(ifindex, "native")
            if current:
                print(f"{name} has XDP program {current} already: left as it is", file=sys.stderr)
                continue
            libbpf.attach(ifindex, fd, "native")
    finally:
        os.close(fd)  # the attachments hold the program


def main() -> None:
    ap = argparse.ArgumentParser(description="Attach a one-verdict XDP program.")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--drop", action="store_true", help="drop every frame (a sink)")
    how.add_argument("--to", metavar="OTHER", help="send every frame out of OTHER")
    ap.add_argument("ifnames", nargs="+")
    args = ap.parse_args()
    attach(args.ifnames, libbpf.XDP_DROP if args.drop else libbpf.XDP_PASS, args.to)


if __name__ == "__main__":
    main()
