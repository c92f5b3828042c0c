"""Random and malformed frames, sent from inside a lab namespace at an interface.

Run as ``python -m hopgate.lab.flood --iface eth0 --dst-mac MAC --count N``.
The mix is seeded, so a failing run can be replayed: raw random bytes, and IPv4,
IPv6, ARP, ICMP and Neighbor Discovery frames whose every field may be wrong
(versions, lengths, checksums, TTLs, protocols, extension-header chains, option
lengths), truncated anywhere.  Sources never claim the lab's real hosts, so
the flood cannot rewrite hopgate's neighbour entries for them.
Prints one JSON line: frames sent; frames the kernel refused to send; and,
of those sent, how many carry a VLAN tag cut short, which the receiving kernel
drops (skb_vlan_untag) before any packet socket, hopgate's included, sees them.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from hopgate.packet import checksum as cs

ETH_P_ALL = 0x0003


def _ip4(rng: random.Random, targets: list[int]) -> bytes:
    r = rng.random()
    if r < 0.6:
        return rng.choice(targets).to_bytes(4, "big")
    if r < 0.7:
        return rng.choice(
            [b"\x00\x00\x00\x00", b"\x7f\x00\x00\x01", b"\xff\xff\xff\xff", b"\xe0\x00\x00\x01"]
        )
    return rng.randbytes(4)


def _ipv4(rng: random.Random, src_pool: list[int], dst_pool: list[int]) -> bytes:
    ihl = 5 if rng.random() < 0.8 else rng.randrange(0, 16)
    payload = rng.randbytes(rng.randrange(0, 1480))
    proto = rng.choice([1, 6, 17, 17, 1, 47, 58, rng.randrange(256)])
    if proto == 1 and payload and rng.random() < 0.7:
        # An ICMP message: errors quoting a random packet, echo, unknown types.
        icmp_type = rng.choice([0, 3, 8, 11, 12, 5, rng.randrange(256)])
        body = bytes([icmp_type, rng.randrange(16), 0, 0]) + rng.randbytes(4) + payload[:200]
        body = body[:2] + cs.checksum(body).to_bytes(2, "big") + body[4:]
        payload = body if rng.random() < 0.8 else body[: rng.randrange(len(body) + 1)]
    options = rng.randbytes(max(0, ihl * 4 - 20)) if ihl > 5 else b""
    total = 20 + len(options) + len(payload)
    if rng.random() < 0.2:
        total = rng.randrange(65536)
    version = 4 if rng.random() < 0.9 else rng.randrange(16)
    flags = rng.choice([0, 0x4000, 0x2000, rng.randrange(65536)])
    ttl = rng.choice([0, 1, 2, 64, rng.randrange(256)])
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | ihl,
            rng.randrange(256),
            total & 0xFFFF,
            rng.randrange(65536),
            flags,
            ttl,
            proto,
            0,
            _ip4(rng, src_pool),
            _ip4(rng, dst_pool),
        )
        + options
    )
    csum = cs.checksum(hdr) if rng.random() < 0.8 else rng.randrange(65536)
    hdr = hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]
    return b"\x08\x00" + hdr + payload


def _ipv6(rng: random.Random, src_pool: list[int], dst_pool: list[int]) -> bytes:
    upper = rng.choice([58, 6, 17, 59, rng.randrange(256)])
    payload = rng.randbytes(rng.randrange(0, 1400))
    if upper == 58 and rng.random() < 0.7:
        icmp_type = rng.choice([1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, rng.randrange(256)])
        payload = bytes([icmp_type, rng.randrange(8), 0, 0]) + payload[:300]
    # An extension-header chain: right, wrong in length, too long, or of unknown kinds.
    kinds = [
        rng.choice([0, 43, 44, 60, 51, rng.randrange(256)])
        for _ in range(rng.choice([0, 0, 1, 2, 5, 20]))
    ]
    chain = b""
    for i, _kind in enumerate(kinds):
        following = kinds[i + 1] if i + 1 < len(kinds) else upper
        units = rng.choice([0, 1, rng.randrange(256)])
        chain += bytes([following, units]) + rng.randbytes(
            6 + (8 * units if rng.random() < 0.7 else 0)
        )
    first = kinds[0] if kinds else upper

    def addr(pool: list[int]) -> bytes:
        r = rng.random()
        if r < 0.6:
            return rng.choice(pool).to_bytes(16, "big")
        if r < 0.7:
            return rng.choice(
                [
                    bytes(16),
                    bytes(15) + b"\x01",
                    b"\xff\x02" + bytes(13) + b"\x01",
                    b"\xfe\x80" + rng.randbytes(14),
                ]
            )
        return rng.randbytes(16)

    plen = len(chain) + len(payload)
    if rng.random() < 0.2:
        plen = rng.randrange(65536)
    version = 6 if rng.random() < 0.9 else rng.randrange(16)
    hop_limit = rng.choice([0, 1, 255, 64, rng.randrange(256)])
    hdr = (
        struct.pack("!IHBB", version << 28, plen, first, hop_limit)
        + addr(src_pool)
        + addr(dst_pool)
    )
    return b"\x86\xdd" + hdr + chain + payload


def _arp(rng: random.Random, src_pool: list[int], dst_pool: list[int]) -> bytes:
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        rng.choice([1, 1, rng.randrange(65536)]),
        rng.choice([0x0800, 0x0800, rng.randrange(65536)]),
        rng.choice([6, 6, rng.randrange(256)]),
        rng.choice([4, 4, rng.randrange(256)]),
        rng.choice([1, 2, rng.randrange(65536)]),
        rng.randbytes(6),
        rng.choice(src_pool).to_bytes(4, "big"),
        rng.randbytes(6),
        rng.choice(dst_pool).to_bytes(4, "big"),
    )
    return b"\x08\x06" + body


def frames(
    seed: int,
    dst_mac: bytes,
    src4: list[int],
    dst4: list[int],
    src6: list[int],
    dst6: list[int],
    max_frame: int = 1514,
) -> Iterator[bytes]:
    """An endless, seeded stream of frames for ``dst_mac``."""
    rng = random.Random(seed)
    while True:
        r = rng.random()
        if r < 0.7:
            dst = dst_mac
        elif r < 0.85:
            dst = b"\xff" * 6
        elif r < 0.9:
            dst = b"\x33\x33\xff" + rng.randbytes(3)
        else:
            dst = rng.randbytes(6)
        src = b"\x02" + rng.randbytes(5)
        kind = rng.random()
        if kind < 0.15:
            body = rng.randbytes(rng.randrange(0, 1500))
        elif kind < 0.5:
            body = _ipv4(rng, src4, dst4)
        elif kind < 0.85:
            body = _ipv6(rng, src6, dst6)
        elif kind < 0.95:
            body = _arp(rng, src4, dst4)
        else:
            body = (
                b"\x81\x00"
                + rng.randbytes(2)
                + rng.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00"])
                + rng.randbytes(rng.randrange(60))
            )
        frame = dst + src + body
        if rng.random() < 0.15:
            frame = frame[: rng.randrange(14, max(15, len(frame) + 1))]
        yield frame[:max_frame]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=20000.0, help="frames per second")
    ap.add_argument("--src4", action="append", default=[], help="IPv4 sources to use (repeatable)")
    ap.add_argument("--dst4", action="append", default=[], help="IPv4 destinations to use")
    ap.add_argument("--src6", action="append", default=[])
    ap.add_argument("--dst6", action="append", default=[])
    args = ap.parse_args()

    import ipaddress

    def ints(values: list[str], fallback: str) -> list[int]:
        return [int(ipaddress.ip_address(v)) for v in (values or [fallback])]

    src4, dst4 = ints(args.src4, "198.18.1.200"), ints(args.dst4, "198.18.3.10")
    src6, dst6 = ints(args.src6, "2001:2:0:1::200"), ints(args.dst6, "2001:2:0:3::10")
    # The longest frame the link takes: what the kernel would refuse is not sent.
    max_frame = int(Path(f"/sys/class/net/{args.iface}/mtu").read_text()) + 14
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((args.iface, ETH_P_ALL))
    mac = bytes.fromhex(args.dst_mac.replace(":", ""))
    gen = frames(args.seed, mac, src4, dst4, src6, dst6, max_frame)
    sent = refused = vlan_truncated = 0
    start = time.monotonic()
    for i in range(args.count):
        frame = next(gen)
        try:
            s.send(frame)
            sent += 1
        except OSError:
            refused += 1
            continue
        # skb_vlan_untag() needs the tag and two bytes more: 20 bytes in all.
        if frame[12:14] in (b"\x81\x00", b"\x88\xa8") and len(frame) < 20:
            vlan_truncated += 1
        if i % 200 == 199:
            ahead = (i + 1) / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    seconds = round(time.monotonic() - start, 2)
    report = {
        "sent": sent,
        "refused": refused,
        "vlan_truncated": vlan_truncated,
        "seconds": seconds,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
