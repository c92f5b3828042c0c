"""Capturing fragmentation needed and Packet Too Big on a live Linux interface, for
the standalone relay: an AF_PACKET socket with a filter, so that the kernel
wakes the relay only for the frames it wants, next to the kernel's own stack
(which still gets every frame).

The filter is the eBPF program xdp/relayfilter.c when the relay could load it
(io/relayloop.py decides; xdp/relayfilter.py loads it): it passes only what the
relay will relay, its checks and rate limits done in the kernel.  Otherwise it
is the classic BPF program below, which passes a frame only if
- it came in addressed to this host (packet type PACKET_HOST: not sent by this
  host, not to the link-layer broadcast or a multicast address — relayed copies
  go to the broadcast address, so they are never captured again),
- it is IPv4 ICMP type 3 code 4, not a later fragment, or IPv6 with ICMPv6 type 2
  code 0 right after the header (routers add no extension headers to errors);
the relay then checks and meters the rest in Python (pipeline/relay.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from hopgate.io.afpacket import (
    ETH_P_ALL,
    PACKET_IGNORE_OUTGOING,
    SOL_PACKET,
    set_buffers,
    socket_drops,
)
from hopgate.packet import ethernet

SO_ATTACH_FILTER = 26
SO_ATTACH_BPF = 50

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_LD_B_ABS = 0x30
BPF_LD_B_IND = 0x50
BPF_LDX_B_MSH = 0xB1
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE, as a u32
PACKET_HOST = 0
SNAPLEN = 0x40000

Insn = tuple[int, int, int, int]  # code, jump if true, jump if false, k


def _assemble(program: Sequence[tuple[str | None, int, str | int, str | int, int]]) -> list[Insn]:
    """Lines of (label, code, jt, jf, k) with jumps to labels made relative."""
    where = {label: i for i, (label, *_rest) in enumerate(program) if label}
    out = []
    for i, (_, code, jt, jf, k) in enumerate(program):
        t = where[jt] - i - 1 if isinstance(jt, str) else jt
        f = where[jf] - i - 1 if isinstance(jf, str) else jf
        if not (0 <= t < 256 and 0 <= f < 256):
            raise ValueError(f"jump out of range at {i}")
        out.append((code, t, f, k))
    return out


def pmtu_filter() -> list[Insn]:
    """The program described in the module's docstring."""
    return _assemble(
        [
            (None, BPF_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
            (None, BPF_JEQ_K, 0, "drop", PACKET_HOST),
            (None, BPF_LD_H_ABS, 0, 0, 12),  # ethertype
            (None, BPF_JEQ_K, "v4", 0, 0x0800),
            (None, BPF_JEQ_K, "v6", "drop", 0x86DD),
            ("v4", BPF_LD_B_ABS, 0, 0, 14 + 9),  # protocol
            (None, BPF_JEQ_K, 0, "drop", 1),
            (None, BPF_LD_H_ABS, 0, 0, 14 + 6),  # flags and fragment offset
            (None, BPF_JSET_K, "drop", 0, 0x1FFF),
            (None, BPF_LDX_B_MSH, 0, 0, 14),  # X = IPv4 header length
            (None, BPF_LD_B_IND, 0, 0, 14),  # ICMP type
            (None, BPF_JEQ_K, 0, "drop", 3),
            (None, BPF_LD_B_IND, 0, 0, 15),  # ICMP code
            (None, BPF_JEQ_K, "accept", "drop", 4),
            ("v6", BPF_LD_B_ABS, 0, 0, 14 + 6),  # next header
            (None, BPF_JEQ_K, 0, "drop", 58),
            (None, BPF_LD_B_ABS, 0, 0, 14 + 40),  # ICMPv6 type
            (None, BPF_JEQ_K, 0, "drop", 2),
            (None, BPF_LD_B_ABS, 0, 0, 14 + 41),  # code
            (None, BPF_JEQ_K, "accept", "drop", 0),
            ("accept", BPF_RET_K, 0, 0, SNAPLEN),
            ("drop", BPF_RET_K, 0, 0, 0),
        ]
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, program: list[Insn]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = _SockFprog(len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


class FilterError(Exception):
    """The kernel refused to attach the eBPF filter to a socket."""


def attach_program(sock: socket.socket, prog_fd: int) -> None:
    """Attach the eBPF socket filter program ``prog_fd`` (SO_ATTACH_BPF)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
    except OSError as e:
        raise FilterError(f"attaching the eBPF filter: {e.strerror}") from None


class InterfaceError(Exception):
    """The interface named is not there, or is not Ethernet."""


def interface_mac(ifname: str) -> bytes:
    """The interface's MAC (the source of the copies relayed there)."""
    try:
        text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    except OSError:
        raise InterfaceError(f"no interface named {ifname!r} here") from None
    mac = ethernet.parse_mac(text)
    if len(mac) != 6:
        raise InterfaceError(f"{ifname} is not an Ethernet interface (address {text!r})")
    return mac


class CaptureSocket:
    """Frames that pass the filter, on one interface; also sends frames there.
    ``program``: the eBPF filter's descriptor, else the classic filter."""

    def __init__(self, ifname: str, program: int | None = None) -> None:
        self.ifname = ifname
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            # The filter goes on before the socket is bound: it never sees a frame
            # the filter would have refused.
            if program is None:
                attach(s, pmtu_filter())
            else:
                attach_program(s, program)
            with contextlib.suppress(OSError):
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            set_buffers(s, receive=True, send=False)  # a burst of errors waits, not dropped
            s.bind((ifname, ETH_P_ALL))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s
        # Received into once, copied out at the frame's length: recv(SNAPLEN)
        # would allocate the whole snap length for every frame.
        self._buffer = bytearray(SNAPLEN)
        self.dropped = 0  # frames the kernel dropped because the relay fell behind

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> bytes | None:
        try:
            n = self.sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return None
        return bytes(memoryview(self._buffer)[:n])

    def send(self, frame: bytes | bytearray) -> bool:
        try:
            self.sock.send(frame)
            return True
        except OSError:
            return False

    def update_stats(self) -> int:
        """Fold in the kernel's count of frames dropped at this socket (reading it
        resets the kernel's counters, so the total is kept here)."""
        self.dropped += socket_drops(self.sock)
        return self.dropped

    def close(self) -> None:
        self.sock.close()
