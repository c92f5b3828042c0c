"""The forwarding benchmark's traffic generator: the kernel's own, an XDP program
returning XDP_TX run by ``BPF_PROG_TEST_RUN`` in live-frames mode
(``hopgate.xdp.libbpf.send_live``), in the namespace of the sending host.

    ip netns exec NS taskset -c 0 .venv/bin/python -m bench.livegen \\
        --dev eth0 --frame HEX [--flows N] [--seconds S] [--per-call COUNT]

It sends the frame out of ``--dev`` in calls of ``--per-call`` frames each (20 M
by default), back to back, until ``--seconds`` have passed or a signal ends it.
Unlike trafgen it does not stop when the receiver drops: a frame the peer cannot
take is counted as the sender's ``tx_dropped`` and the next one goes.  Frames
go through the veth's ``ndo_xdp_xmit``, so the peer interface must have an XDP
program (or GRO) attached, or every frame is dropped there.  The sending runs on
the calling CPU (pin it with taskset).

The program writes the whole frame into the buffer before every XDP_TX, rather
than returning XDP_TX alone (``verdict_program``): the live-frames mode fills
its pages with the frame once, when it allocates them, and recycles them with
whatever the receivers wrote there.  A kernel forwarding the frame rewrites its
Ethernet header and TTL in place, so with XDP_TX alone only the first use of
each page was a frame for the gateway (measured: 12.66 M of 12.78 M frames dropped
by gw-c as addressed to another host).

``--flows N`` (N > 1): the program then writes a random source port into each
frame, one of N consecutive ports from the frame's own
(``bpf_get_prandom_u32() % N``; the UDP checksum must be 0, which IPv4 allows and
``udp4`` writes, and the IPv4 checksum does not cover ports).  A live-frames call
sends one frame, so N frames rotated across calls would change the flow once per
call (millions of frames), and calls of a few frames each would pay a call's
set-up per few frames; drawing the port in the program gives every frame its
flow at full rate.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time

from hopgate.packet import ipv4
from hopgate.packet.proto import PROTO_UDP
from hopgate.xdp import libbpf

ETH_IP = b"\x08\x00"
UDP_SPORT_OFFSET = 14 + 20  # in an untagged IPv4 frame without options
PORT_SPACE = 1 << 16
# Frames per live-frames call.  Each call ends with the generator's CPU idle for
# some 20 ms (measured: 12% of CPU 0 idle, and the receiver's ring running dry,
# with 2 M frames a call; 2% with 20 M, about 1.5 s a call).
PER_CALL = 20_000_000


def udp4(dst_mac: str, src_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 60-byte Ethernet frame (64 on the wire with the FCS): IPv4, UDP, 18 bytes
    of payload, the IPv4 checksum right, the UDP checksum 0 ("none", RFC 768)."""
    payload = b"A" * 18
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s, d = int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst))
    ip = ipv4.build_header(s, d, PROTO_UDP, len(udp))
    macs = bytes.fromhex(dst_mac.replace(":", "") + src_mac.replace(":", ""))
    return macs + ETH_IP + bytes(ip) + udp


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


# eBPF opcodes used below (linux/bpf_common.h, linux/bpf.h)
LDX_W, MOV64_X, ADD64_K, JGT_X, CALL, EXIT = 0x61, 0xBF, 0x07, 0x2D, 0x85, 0x95
ST_W, ST_H, ST_B, STX_H = 0x62, 0x6A, 0x72, 0x6B
MOD32_K, ADD32_K, TO_BE, MOV64_K = 0x94, 0x04, 0xDC, 0xB7
BPF_FUNC_GET_PRANDOM_U32 = 7


def frame_program(frame: bytes, flows: int = 1) -> bytes:
    """XDP: write ``frame`` over the buffer, then XDP_TX.  With ``flows`` > 1,
    the source port is then set to the frame's own plus a random number below
    ``flows``."""
    sport = struct.unpack_from("!H", frame, UDP_SPORT_OFFSET)[0]
    if flows < 1 or sport + flows > PORT_SPACE:
        raise ValueError(f"ports {sport} to {sport + flows - 1} do not fit in 16 bits")
    stores = []
    at = 0
    for size, op in ((4, ST_W), (2, ST_H), (1, ST_B)):
        while len(frame) - at >= size:
            imm = int.from_bytes(frame[at : at + size], "little", signed=True)
            stores.append(_insn(op, dst=6, off=at, imm=imm))
            at += size
    ports = []
    if flows > 1:
        ports = [
            _insn(CALL, imm=BPF_FUNC_GET_PRANDOM_U32),  # r0 = bpf_get_prandom_u32()
            _insn(MOD32_K, dst=0, imm=flows),  # w0 %= flows
            _insn(ADD32_K, dst=0, imm=sport),  # w0 += sport
            _insn(TO_BE, dst=0, imm=16),  # r0 = htobe16(r0)
            _insn(STX_H, dst=6, src=0, off=UDP_SPORT_OFFSET),  # *(u16 *)(r6 + 34) = r0
        ]
    body = stores + ports
    return b"".join(
        (
            _insn(LDX_W, dst=6, src=1, off=0),  # r6 = ctx->data
            _insn(LDX_W, dst=7, src=1, off=4),  # r7 = ctx->data_end
            _insn(MOV64_X, dst=2, src=6),  # r2 = r6
            _insn(ADD64_K, dst=2, imm=len(frame)),  # r2 += len(frame)
            _insn(JGT_X, dst=2, src=7, off=len(body)),  # if r2 > r7: send it as it is
            *body,
            _insn(MOV64_K, dst=0, imm=libbpf.XDP_TX),  # r0 = XDP_TX
            _insn(EXIT),
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="Send one frame as fast as the kernel can.")
    ap.add_argument("--dev", required=True)
    ap.add_argument("--frame", required=True, help="the frame, in hex")
    ap.add_argument("--flows", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--per-call", type=int, default=PER_CALL)
    args = ap.parse_args()
    frame = bytes.fromhex(args.frame)
    prog = libbpf.load_instructions("livegen", frame_program(frame, args.flows))
    ifindex = socket.if_nametoindex(args.dev)
    deadline = time.monotonic() + args.seconds
    sent = 0
    while time.monotonic() < deadline:
        libbpf.send_live(prog, frame, ifindex, args.per_call)
        sent += args.per_call
    print(f"livegen: about {sent:,} frames offered", file=sys.stderr)


if __name__ == "__main__":
    main()
