"""Packets addressed to the router itself (docs/behaviour.md, "The router's own addresses").

Echo requests are answered from the address they were sent to; UDP gets port
unreachable; TCP gets a reset, as Linux sends it; any other protocol gets
protocol unreachable (IPv4) or Parameter Problem, unrecognised next header
(IPv6).  Every answer goes back by the interface and neighbour the request came
from.  Fragments are reassembled first, and a large answer is fragmented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from struct import Struct
from typing import Protocol

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import icmp6, ipv6, l4
from hopgate.packet.proto import PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.context import Packet
from hopgate.pipeline.counters import Counters
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.family import Error
from hopgate.pipeline.icmp import IcmpOut, reply_l2
from hopgate.pipeline.ports import Port
from hopgate.pipeline.reassembly import Complete, Head, Reassembler
from hopgate.pipeline.resolvers import NdResolver

_U16 = Struct("!H")
_SEQ_ACK = Struct("!II")


class Listener(Protocol):
    """Something of hopgate's own that takes packets addressed to the router
    (the health checker takes the answers to its probes)."""

    def receive(self, pkt: Packet) -> bool:
        """Take ``pkt`` if it is for this listener; False to leave it to the router."""


class LocalDelivery:
    def __init__(
        self,
        ports: list[Port],
        emit: Emitter,
        icmp: IcmpOut,
        nd: NdResolver,
        reassembler: Reassembler,
        listeners: Mapping[int, Sequence[Listener]] | None = None,
    ) -> None:
        """``listeners``: by upper-layer protocol, what is offered each packet to
        the router before the router answers it itself."""
        self._ports = ports
        self._emit = emit
        self._counters: Counters = emit.counters
        self._icmp = icmp
        self._nd = nd
        self._reasm = reassembler
        self._listeners = listeners or {}
        self._v6_ident = 0

    def deliver(self, pkt: Packet, *, multicast: bool = False) -> None:
        """A packet addressed to the router (``multicast``: to a group its port joined)."""
        emit = self._emit
        port = pkt.port
        if pkt.bad_chain:
            emit.drop(port, DropReason.IPV6_BAD_EXTENSION_HEADER, pkt.out)
            return
        if pkt.fragment:
            if multicast:
                emit.drop(port, DropReason.BROADCAST_IGNORED, pkt.out)
                return
            whole = self._reassemble(pkt)
            if whole is None:
                return
            if whole.bad_chain or whole.fragment:
                emit.drop(port, DropReason.REASSEMBLY_INVALID, pkt.out)
                return
            pkt = whole
        proto = pkt.proto
        for listener in self._listeners.get(proto, ()):
            if listener.receive(pkt):
                return
        fam = pkt.fam
        if pkt.src == 0 and proto != PROTO_ICMPV6:  # IPv6's unspecified address
            emit.drop(port, DropReason.MARTIAN_SOURCE, pkt.out)
        elif proto == fam.icmp_proto:
            self._icmp_message(pkt, multicast)
        elif multicast:
            emit.drop(port, DropReason.BROADCAST_IGNORED, pkt.out)
        elif proto == PROTO_UDP:
            if self._udp_ok(pkt):
                emit.drop(port, DropReason.LOCAL_UDP_PORT_CLOSED, pkt.out)
                self._icmp.error(pkt, Error.PORT_UNREACHABLE, source=pkt.dst)
        elif proto == PROTO_TCP:
            self._tcp(pkt)
        elif proto == fam.no_next_header:
            emit.drop(port, DropReason.NO_NEXT_HEADER, pkt.out)
        else:
            emit.drop(port, DropReason.LOCAL_PROTOCOL_UNREACHABLE, pkt.out)
            self._icmp.error(
                pkt, Error.PROTOCOL_UNREACHABLE, fam.protocol_pointer(pkt), source=pkt.dst
            )

    def _reassemble(self, pkt: Packet) -> Packet | None:
        """The whole datagram, described, once the last fragment is in."""
        part = pkt.fam.part(pkt)
        if isinstance(part, DropReason):
            self._emit.drop(pkt.port, part, pkt.out)
            return None
        head = None
        if part.offset == 0:
            head = Head(bytearray(pkt.frame[: pkt.end]), pkt.l3, pkt.port, bytes(pkt.frame[6:12]))
        got = self._reasm.offer(part.key, part.offset, part.more, part.payload, head, pkt.now)
        if not isinstance(got, Complete):
            if got is not None:
                self._emit.drop(pkt.port, got, pkt.out)
            return None
        self._counters.reassembled += 1
        h = got.head
        whole = pkt.fam.rejoin(h, got.payload)
        if whole is None:  # cannot happen: the head was read when it arrived
            self._emit.drop(pkt.port, DropReason.REASSEMBLY_INVALID, pkt.out)
            return None
        return pkt.fam.packet(whole, h.l3, pkt.port, h.in_mac, pkt.now, pkt.out)

    def _icmp_message(self, pkt: Packet, multicast: bool) -> None:
        emit, fam, port, out = self._emit, pkt.fam, pkt.port, pkt.out
        at, end, src, dst = pkt.at, pkt.end, pkt.src, pkt.dst
        if end - at < icmp6.HEADER_LEN:  # the same 8 bytes in both families
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        msg = memoryview(pkt.frame)[at:end]
        if not cs.verify(msg, fam.pseudo_sum(src, dst, fam.icmp_proto, end - at)):
            emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return
        icmp_type = msg[0]
        if fam.version == A.V6 and icmp_type in (
            icmp6.NEIGHBOR_SOLICITATION,
            icmp6.NEIGHBOR_ADVERTISEMENT,
        ):
            self._nd_message(pkt, msg)
            return
        if src == 0:
            emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        if icmp_type != fam.echo_request:
            reason = (
                DropReason.ICMP_ERROR_TO_ROUTER
                if fam.is_error(icmp_type)
                else DropReason.ICMP_IGNORED
            )
            emit.drop(port, reason, out)
            return
        # Echo to a group (ff02::1, say) is answered from our own unicast address.
        reply_src = fam.source_for(port, src) if multicast else dst
        if reply_src is None:
            emit.drop(port, DropReason.ICMP_IGNORED, out)
            return
        self._send_back(pkt, fam.echo_reply(pkt, reply_src, self._icmp.next_ident()))
        self._icmp.sent_echo_reply(fam.version)

    def _nd_message(self, pkt: Packet, msg: memoryview) -> None:
        """A Neighbor Solicitation or Advertisement: to the ND resolver, if sound."""
        emit, port, out, src = self._emit, pkt.port, pkt.out, pkt.src
        # RFC 4861 7.1: only from the link itself, and well formed.
        if pkt.frame[pkt.l3 + ipv6.OFF_HOP_LIMIT] != icmp6.ND_HOP_LIMIT or msg[1] != 0:
            emit.drop(port, DropReason.ND_MALFORMED, out)
        elif msg[0] == icmp6.NEIGHBOR_SOLICITATION:
            if src == 0 and pkt.dst >> 24 != A.V6_SOLICITED_NODE_PREFIX >> 24:
                emit.drop(port, DropReason.ND_MALFORMED, out)
            else:
                self._nd.solicitation(pkt.frame, port, pkt.l3, msg, src, pkt.now, out)
        elif src == 0:
            emit.drop(port, DropReason.MARTIAN_SOURCE, out)
        else:
            self._nd.advertisement(port, msg, pkt.now, out)

    def _udp_ok(self, pkt: Packet) -> bool:
        """Whether a datagram to us is sound enough to answer (as Linux: a bad
        checksum is dropped silently; the checksum is optional only in IPv4)."""
        frame, at, end = pkt.frame, pkt.at, pkt.end
        if end - at < l4.UDP_HEADER_LEN:
            self._emit.drop(pkt.port, DropReason.LOCAL_TRUNCATED, pkt.out)
            return False
        length = _U16.unpack_from(frame, at + 4)[0]
        if length < l4.UDP_HEADER_LEN or at + length > end:
            self._emit.drop(pkt.port, DropReason.LOCAL_TRUNCATED, pkt.out)
            return False
        has_sum = bool(frame[at + l4.UDP_OFF_CSUM] or frame[at + l4.UDP_OFF_CSUM + 1])
        if not pkt.fam.udp_checksum_required(has_sum):
            return True
        pseudo_sum = pkt.fam.pseudo_sum(pkt.src, pkt.dst, PROTO_UDP, length)
        if not has_sum or not cs.verify(memoryview(frame)[at : at + length], pseudo_sum):
            self._emit.drop(pkt.port, DropReason.LOCAL_BAD_CHECKSUM, pkt.out)
            return False
        return True

    def _tcp(self, pkt: Packet) -> None:
        """Answer a segment to a port nobody listens on with a reset (RFC 9293 3.10.7.1,
        and tcp_v4_send_reset in Linux)."""
        emit, fam, port, out = self._emit, pkt.fam, pkt.port, pkt.out
        frame, at, end = pkt.frame, pkt.at, pkt.end
        if end - at < l4.TCP_HEADER_LEN:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        doff = l4.tcp_header_len(frame, at)
        if doff < l4.TCP_HEADER_LEN or at + doff > end:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        if not cs.verify(
            memoryview(frame)[at:end], fam.pseudo_sum(pkt.src, pkt.dst, PROTO_TCP, end - at)
        ):
            emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return
        flags = l4.tcp_flags(frame, at)
        if flags & l4.TCP_RST:
            emit.drop(port, DropReason.LOCAL_TCP_RST_IGNORED, out)
            return
        if frame[0] & 1:  # never answer a link-layer broadcast
            emit.drop(port, DropReason.BROADCAST_IGNORED, out)
            return
        seq, ack = _SEQ_ACK.unpack_from(frame, at + 4)
        if flags & l4.TCP_ACK:
            rst_seq, rst_ack, rst_flags = ack, 0, l4.TCP_RST
        else:
            datalen = end - at - doff
            rst_seq = 0
            rst_ack = (seq + datalen + bool(flags & l4.TCP_SYN) + bool(flags & l4.TCP_FIN)) & (
                0xFFFFFFFF
            )
            rst_flags = l4.TCP_RST | l4.TCP_ACK
        segment = bytearray(
            l4.TCP_HEADER.pack(
                pkt.dport, pkt.sport, rst_seq, rst_ack, (5 << 12) | rst_flags, 0, 0, 0
            )
        )
        pseudo = fam.pseudo_sum(pkt.dst, pkt.src, PROTO_TCP, len(segment))
        l4.fill_checksum(segment, 0, len(segment), l4.TCP_OFF_CSUM, pseudo, udp=False)
        emit.drop(port, DropReason.LOCAL_TCP_RESET, out)
        self._counters.tcp_resets_sent += 1
        self._send_back(pkt, fam.reset_header(pkt, len(segment)) + segment)

    def _send_back(self, pkt: Packet, packet: bytearray) -> None:
        """Send ``packet`` back out of the port ``pkt`` came in on, to the neighbour
        it came from, fragmenting it if it exceeds the port's MTU."""
        p = self._ports[pkt.port]
        head = reply_l2(pkt.frame, pkt.l3, pkt.source_mac(), p.mac)
        if len(packet) <= p.mtu:
            self._emit.transmit(pkt.port, head + packet, pkt.out)
            return
        self._v6_ident = (self._v6_ident + 1) & 0xFFFFFFFF
        pieces = pkt.fam.fragment(memoryview(packet), p.mtu, self._v6_ident)
        self._counters.fragments_created += len(pieces)
        for piece in pieces:
            self._emit.transmit(pkt.port, head + piece, pkt.out)
