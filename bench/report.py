"""docs/benchmarks.md holds one section per benchmark, each between markers, so
that each benchmark rewrites its own and leaves the others as they were."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

HEADER = "# Benchmarks\n"


def publish(path: Path, name: str, text: str, *, no_write: bool) -> None:
    """A report: printed (``no_write``), or written as section ``name`` of
    ``path`` (``replace_section``)."""
    if no_write:
        print(text)
        return
    replace_section(path, name, text)
    print(f"wrote {path}")


def replace_section(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    doc = path.read_text() if path.exists() else HEADER
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = head + block + tail.lstrip("\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)


def gateway_args(
    ap: argparse.ArgumentParser, shapes: Iterable[str], modes: Iterable[str], out: Path
) -> None:
    """The options of a bench that measures lab shapes through each gateway
    in rounds (bench/connections.py, bench/transfer.py): ``--rounds``,
    ``--shapes``, ``--gateways``, ``--out``, ``--no-write``."""
    ap.add_argument("--rounds", type=int, default=3)
    shapes, modes = list(shapes), list(modes)
    ap.add_argument("--shapes", nargs="+", choices=shapes, default=shapes)
    ap.add_argument(
        "--gateways",
        nargs="+",
        choices=modes,
        default=modes,
        help="measure only these (kernel, hopgate, xdp)",
    )
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--no-write", action="store_true", help="print the report, write nothing")


def need_lab_machine(args: argparse.Namespace, cpu0: str, cpu: int) -> None:
    """Exit with the reason unless this can run a lab bench (root, two CPUs,
    ``--rounds`` at least 1); then keep this process, and what it starts, on
    ``cpu`` (the gateway has the other).  ``cpu0``: what runs there."""
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    if args.rounds < 1:
        sys.exit("bench: --rounds must be at least 1")
    if (os.cpu_count() or 1) < 2:
        sys.exit(f"bench: needs two CPUs, one for {cpu0} and one for the gateway")
    os.sched_setaffinity(0, {cpu})
