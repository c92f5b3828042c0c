"""One AF_PACKET socket per interface: frames in as the wire had them, frames out.

What the kernel does to frames before a packet socket sees them, and how this
module undoes it:
- a VLAN tag taken out by receive offload is reported in PACKET_AUXDATA; it is
  put back, so the pipeline sees the tag that was on the wire;
- a TCP/UDP checksum left for offload (CHECKSUM_PARTIAL, a veth peer's or a
  local socket's) is flagged TP_STATUS_CSUMNOTREADY; it is completed here;
- a GRO super-frame is longer than any frame of the link; it arrives truncated
  (MSG_TRUNC) and is passed on as too long, so the pipeline drops and counts it;
- frames this host sends are not looped back (PACKET_IGNORE_OUTGOING, or the
  packet type where that option is missing).

With a control path (io/ctlpath.py), each interface has two sockets, whose
classic BPF programs split the frames between them: control (ARP, ND, what
is addressed to hopgate's own addresses) and data (the rest).  Sends go by the
data socket.

A link that goes down or away makes the socket fail (ENETDOWN, ENXIO, ENODEV):
such errors are counted, never raised.  The loop closes the socket while the
link is down (``close``) and opens it again, bound to the link's index then,
when it is back (``open``); the counters carry on.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from hopgate.packet import ethernet, l4

# linux/socket.h, linux/if_packet.h, linux/if_ether.h: Python's socket module
# (3.11) names only PACKET_OUTGOING of these.
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = socket.PACKET_OUTGOING
ETH_P_ALL = 0x0003

TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

_AUXDATA = struct.Struct("IIIHHHH")
_ANC_SIZE = socket.CMSG_SPACE(_AUXDATA.size)
_U32 = struct.Struct("I")  # tpacket_auxdata's first field, tp_status
_AUX_FLAGS = TP_STATUS_VLAN_VALID | TP_STATUS_CSUMNOTREADY
_MREQ = struct.Struct("iHH8s")
_STATS = struct.Struct("II")  # struct tpacket_stats: packets, drops
# A plain int: socket.MSG_TRUNC is an IntFlag, and testing it costs an enum
# operation per frame.
_MSG_TRUNC = int(socket.MSG_TRUNC)
SOCKET_BUFFER = 4 * 1024 * 1024  # bursts wait here rather than being dropped
SO_RCVBUFFORCE = 33  # asm-generic/socket.h: not in Python's socket module
SO_SNDBUFFORCE = 32


@dataclass
class IoCounters:
    """What happened at the socket, below the pipeline."""

    rx_socket_drops: int = 0  # frames the kernel dropped because hopgate fell behind
    rx_truncated: int = 0  # frames longer than any frame of the link (GRO)
    rx_csum_completed: int = 0
    rx_vlan_restored: int = 0
    tx_errors: int = 0
    tx_dropped_busy: int = 0  # ENOBUFS / EAGAIN: the link's queue was full
    rx_errors: int = 0  # receive failed: the link went down or away (ENETDOWN...)
    tx_link_down: int = 0  # frames for a link that is down: not sent
    rx_data: int = 0  # frames read from the data socket
    rx_control: int = 0  # frames read from the control socket (io/ctlpath.py)
    rx_control_socket_drops: int = 0  # of rx_socket_drops, those at the control socket


Insn = tuple[int, int, int, int]  # a classic BPF instruction: code, jt, jf, k
# (control program, data program), built when the sockets are opened.
Filters = Callable[[], tuple[list[Insn], list[Insn]]]


def socket_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped at a packet socket since the last call (reading
    PACKET_STATISTICS resets it)."""
    try:
        return int(_STATS.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))[1])
    except OSError:
        return 0


def set_buffers(s: socket.socket, *, receive: bool, send: bool) -> None:
    """SOCKET_BUFFER bytes of buffer: past the sysctl limits when root
    (the *BUFFORCE options), else as much as they allow."""
    for wanted, opt, fallback in (
        (receive, SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (send, SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        if not wanted:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)


class PacketSocket:
    def __init__(
        self, ifname: str, ifindex: int, max_frame: int, filters: Filters | None = None
    ) -> None:
        """``filters``: the control path's programs (io/ctlpath.py); without
        them, one socket takes every frame."""
        self.ifname = ifname
        self.filters = filters
        self.ifindex = ifindex
        self.counters = IoCounters()
        # Bytes of buffer per receive: one more than the largest frame of the link,
        # so that a longer one shows as truncated.
        self._bufsize = max_frame + 1
        self.sock: socket.socket | None = None
        self.ctl: socket.socket | None = None
        self.open(ifindex)

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def open(self, ifindex: int) -> None:
        """(Re)open the socket on the interface, now at ``ifindex``."""
        if self.sock is not None:
            self.close()
        programs = self.filters() if self.filters is not None else None
        data = self._socket(ifindex, programs[1] if programs else None)
        ctl = None
        if programs is not None:
            try:
                ctl = self._socket(ifindex, programs[0])
            except BaseException:
                data.close()
                raise
        self.sock, self.ctl = data, ctl
        self.ifindex = ifindex

    def _socket(self, ifindex: int, program: list[Insn] | None) -> socket.socket:
        # Protocol 0 receives nothing until bound to the interface: no frame of
        # another interface slips in between socket() and bind().
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if program is not None:
                # Here, not at the top: capture.py imports this module.
                from hopgate.io.capture import attach

                attach(s, program)  # before bind: no frame passes unfiltered
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            # Kernels before 4.20 lack the option: outgoing frames are then
            # skipped by their packet type in receive().
            with contextlib.suppress(OSError):
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            set_buffers(s, receive=True, send=True)
            s.bind((self.ifname, ETH_P_ALL))
            # Neighbor Discovery needs the solicited-node multicast groups: take all
            # multicast, as NICs would otherwise filter it out.
            s.setsockopt(
                SOL_PACKET, PACKET_ADD_MEMBERSHIP, _MREQ.pack(ifindex, PACKET_MR_ALLMULTI, 0, b"")
            )
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def refilter(self, filters: Filters | None, max_frame: int) -> bool:
        """A reload: the control path's programs for the port's new addresses,
        and its new largest frame.  The open sockets take the new programs in
        place (the kernel swaps a socket's filter at once, and what waits in
        the socket stays).  False if the sockets must be opened again instead:
        the control path came or went (one socket becomes two, or two one)."""
        self._bufsize = max_frame + 1
        had = self.filters is not None
        self.filters = filters
        if self.sock is None or had != (filters is not None):
            return self.sock is None
        if filters is not None and self.ctl is not None:
            from hopgate.io.capture import attach

            control, data = filters()
            attach(self.ctl, control)
            attach(self.sock, data)
        return True

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def filenos(self) -> list[tuple[int, bool]]:
        """The open sockets' descriptors, each with whether it is the control one."""
        out = [] if self.ctl is None else [(self.ctl.fileno(), True)]
        return out + ([] if self.sock is None else [(self.sock.fileno(), False)])

    def receive(self) -> memoryview | None:
        """The next frame from the data socket, or None when there is none waiting.

        Each frame gets its own buffer: the pipeline may keep it (a packet waiting
        for its next hop's address) after this returns."""
        return self.read(False)

    def receive_control(self) -> memoryview | None:
        """The next frame from the control socket (None if none, or no control path)."""
        return self.read(True)

    def read(self, control: bool) -> memoryview | None:
        """``receive`` (``control``: ``receive_control``) in one call, for the loop."""
        sock = self.ctl if control else self.sock
        if sock is None:
            return None
        buf = bytearray(self._bufsize)
        while True:
            try:
                n, anc, flags, addr = sock.recvmsg_into([buf], _ANC_SIZE)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError:
                # The link went down or away (ENETDOWN, ENXIO...): the kernel
                # reports it once; the link monitor parks the socket.
                self.counters.rx_errors += 1
                return None
            if addr[2] == PACKET_OUTGOING:
                continue
            break
        if control:
            self.counters.rx_control += 1
        else:
            self.counters.rx_data += 1
        if flags & _MSG_TRUNC:
            self.counters.rx_truncated += 1
            return memoryview(buf)  # the full buffer: longer than the pipeline accepts
        frame = memoryview(buf)[:n]
        for level, kind, data in anc:
            if level != SOL_PACKET or kind != PACKET_AUXDATA or len(data) < _AUXDATA.size:
                continue
            # Most frames have neither flag: read the status word alone first.
            status = _U32.unpack_from(data)[0]
            if not status & _AUX_FLAGS:
                continue
            status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)
            if status & TP_STATUS_VLAN_VALID:
                frame = self._restore_vlan(frame, tci, tpid, status)
            if status & TP_STATUS_CSUMNOTREADY:
                ethertype, l3 = ethernet.parse(frame)
                if l4.complete_partial_checksum(frame, l3, ethertype):
                    self.counters.rx_csum_completed += 1
        return frame

    def _restore_vlan(self, frame: memoryview, tci: int, tpid: int, status: int) -> memoryview:
        if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
            tpid = ethernet.ETH_P_8021Q
        tagged = bytearray(len(frame) + ethernet.TAG_LEN)
        tagged[:12] = frame[:12]
        tagged[12:16] = struct.pack("!HH", tpid, tci)
        tagged[16:] = frame[12:]
        self.counters.rx_vlan_restored += 1
        return memoryview(tagged)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        sock = self.sock
        if sock is None:
            self.counters.tx_link_down += 1
            return False
        try:
            sock.send(frame)
            return True
        except (BlockingIOError, InterruptedError):
            self.counters.tx_dropped_busy += 1
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.counters.tx_dropped_busy += 1
            else:
                self.counters.tx_errors += 1
        return False

    def update_stats(self) -> IoCounters:
        """Fold in the kernel's count of frames dropped at this socket (reading it
        resets the kernel's counters, so the totals are kept here)."""
        if self.sock is not None:
            self.counters.rx_socket_drops += socket_drops(self.sock)
        if self.ctl is not None:
            dropped = socket_drops(self.ctl)
            self.counters.rx_control_socket_drops += dropped
            self.counters.rx_socket_drops += dropped
        return self.counters

    def close(self) -> None:
        if self.sock is not None:
            self.update_stats()
            self.sock.close()
            self.sock = None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
