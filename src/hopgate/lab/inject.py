"""Exact frames, sent from inside a lab namespace at an interface, as fast as the
kernel takes them: forged ICMP errors for the relay's tests, for one.

    python -m hopgate.lab.inject --iface IF [--rate PPS] FILE

FILE holds one frame per line, in hex.  Prints one JSON line: frames sent, and
the seconds the sending took.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m hopgate.lab.inject")
    p.add_argument("--iface", required=True)
    p.add_argument("--rate", type=float, default=0.0, help="frames a second (0: as fast as can be)")
    p.add_argument("file", type=Path)
    a = p.parse_args()
    frames = [bytes.fromhex(line) for line in a.file.read_text().split()]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((a.iface, 0))
    sent = 0
    start = time.monotonic()
    for i, f in enumerate(frames):
        if a.rate and i % 100 == 0:
            # Paced in bursts of 100: the generator keeps its rate, whatever the receiver does.
            ahead = start + i / a.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
