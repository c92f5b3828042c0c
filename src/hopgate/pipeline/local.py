"""Packets addressed to the router itself (docs/behaviour.md, "The router's own addresses").

Echo requests are answered from the address they were sent to; UDP gets port
unreachable; TCP gets a reset, as Linux sends it; any other protocol gets
protocol unreachable (IPv4) or Parameter Problem, unrecognised next header
(IPv6).  Every answer goes back by the interface and neighbour the request came
from.  Fragments are reassembled first, and a large answer is fragmented.
"""

from __future__ import annotations

from struct import Struct

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import icmp4, icmp6, ipv4, ipv6, l4, rewrite
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_NONE, PROTO_TCP, PROTO_UDP
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.counters import Counters
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.icmp import TTL, IcmpOut, reply_l2
from hopgate.pipeline.lb.health import HealthChecker
from hopgate.pipeline.ports import Port, v6_source_for
from hopgate.pipeline.reassembly import Complete, Head, Reassembler
from hopgate.pipeline.resolvers import NdResolver

_U16 = Struct("!H")
_SEQ_ACK = Struct("!II")


class LocalDelivery:
    def __init__(
        self,
        ports: list[Port],
        emit: Emitter,
        icmp: IcmpOut,
        nd: NdResolver,
        reassembler: Reassembler,
        health: HealthChecker | None = None,
    ) -> None:
        self._ports = ports
        self._emit = emit
        self._counters: Counters = emit.counters
        self._icmp = icmp
        self._nd = nd
        self._reasm = reassembler
        self._health = health  # answers to health checks come to the router's addresses
        self._v6_ident = 0

    # -- IPv4 ----------------------------------------------------------------

    def ipv4(
        self, frame: Buffer, port: int, l3: int, src: int, dst: int, now: float, out: list[Action]
    ) -> None:
        frag = ipv4.frag_field(frame, l3)
        if ipv4.is_fragment(frag):
            whole = self._reassemble_v4(frame, port, l3, src, dst, frag, now, out)
            if whole is None:
                return
            frame, l3 = whole
        ihl = ipv4.header_len(frame, l3)
        end = l3 + ipv4.total_len(frame, l3)
        at = l3 + ihl
        proto = frame[l3 + ipv4.OFF_PROTO]
        if self._health is not None and self._health.receive(
            4, frame, at, end, proto, src, dst, now, out
        ):
            return
        if proto == PROTO_ICMP:
            self._icmp4(frame, port, l3, at, end, src, dst, now, out)
        elif proto == PROTO_UDP:
            if self._udp_ok(frame, port, at, end, 4, src, dst, out):
                self._emit.drop(port, DropReason.LOCAL_UDP_PORT_CLOSED, out)
                self._icmp.error_v4(
                    frame, l3, port, frame[6:12], icmp4.DEST_UNREACH, icmp4.PORT_UNREACH, 0,
                    now, out, l2_group=bool(frame[0] & 1), source=dst,
                )  # fmt: skip
        elif proto == PROTO_TCP:
            self._tcp(frame, port, l3, at, end, 4, src, dst, out)
        else:
            self._emit.drop(port, DropReason.LOCAL_PROTOCOL_UNREACHABLE, out)
            self._icmp.error_v4(
                frame, l3, port, frame[6:12], icmp4.DEST_UNREACH, icmp4.PROTO_UNREACH, 0,
                now, out, l2_group=bool(frame[0] & 1), source=dst,
            )  # fmt: skip

    def _reassemble_v4(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        src: int,
        dst: int,
        frag: int,
        now: float,
        out: list[Action],
    ) -> tuple[bytearray, int] | None:
        """The whole packet (and its layer-3 offset) once the last fragment is in."""
        ihl = ipv4.header_len(frame, l3)
        end = l3 + ipv4.total_len(frame, l3)
        ident = _U16.unpack_from(frame, l3 + ipv4.OFF_ID)[0]
        proto = frame[l3 + ipv4.OFF_PROTO]
        offset = (frag & ipv4.FRAG_OFFSET_MASK) << 3
        head = None
        if offset == 0:
            head = Head(bytearray(frame[:end]), l3, port, bytes(frame[6:12]))
        got = self._reasm.offer(
            (4, src, dst, proto, ident),
            offset,
            bool(frag & ipv4.FLAG_MF),
            bytes(frame[l3 + ihl : end]),
            head,
            now,
        )
        if not isinstance(got, Complete):
            if got is not None:
                self._emit.drop(port, got, out)
            return None
        self._counters.reassembled += 1
        h = got.head
        hlen = ipv4.header_len(h.frame, h.l3)
        whole = bytearray(h.frame[: h.l3 + hlen])
        _U16.pack_into(whole, h.l3 + ipv4.OFF_FRAG, ipv4.frag_field(whole, h.l3) & ipv4.FLAG_DF)
        _U16.pack_into(whole, h.l3 + ipv4.OFF_TOTAL_LEN, hlen + len(got.payload))
        ipv4.set_checksum(whole, h.l3)
        whole += got.payload
        return whole, h.l3

    def _icmp4(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        at: int,
        end: int,
        src: int,
        dst: int,
        now: float,
        out: list[Action],
    ) -> None:
        emit = self._emit
        if end - at < icmp4.HEADER_LEN:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        msg = memoryview(frame)[at:end]
        if not cs.verify(msg):
            emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return
        icmp_type = msg[0]
        if icmp_type != icmp4.ECHO_REQUEST:
            reason = (
                DropReason.ICMP_ERROR_TO_ROUTER
                if icmp4.is_error(icmp_type)
                else DropReason.ICMP_IGNORED
            )
            emit.drop(port, reason, out)
            return
        reply = bytearray(msg)
        reply[0] = icmp4.ECHO_REPLY
        old = _U16.unpack_from(reply, 2)[0]
        new = cs.update16(old, icmp4.ECHO_REQUEST << 8, icmp4.ECHO_REPLY << 8)
        _U16.pack_into(reply, 2, new)
        if new == 0:
            rewrite.icmp4_checksum(reply, 0, len(reply))  # all-zero words: see icmp4_checksum
        # As Linux: the reply keeps the request's TOS and leaves DF clear.
        packet = ipv4.build_header(
            dst,
            src,
            PROTO_ICMP,
            len(reply),
            tos=frame[l3 + ipv4.OFF_TOS],
            ident=self._icmp.next_ident(),
        )
        packet += reply
        self._send_back(frame, port, l3, packet, 4, out)
        self._icmp.sent_echo_reply(A.V4)

    # -- IPv6 ----------------------------------------------------------------

    def ipv6(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        end: int,
        src: int,
        dst: int,
        now: float,
        out: list[Action],
        *,
        multicast: bool,
    ) -> None:
        emit = self._emit
        chain = ipv6.walk(frame, l3, end)
        if isinstance(chain, str):
            emit.drop(port, DropReason.IPV6_BAD_EXTENSION_HEADER, out)
            return
        if chain.is_fragment:
            if multicast:
                emit.drop(port, DropReason.BROADCAST_IGNORED, out)
                return
            whole = self._reassemble_v6(frame, port, l3, end, src, dst, now, out)
            if whole is None:
                return
            frame, l3 = whole
            end = len(frame)
            chain = ipv6.walk(frame, l3, end)
            if isinstance(chain, str) or chain.is_fragment:
                emit.drop(port, DropReason.REASSEMBLY_INVALID, out)
                return
        proto, at = chain.proto, chain.offset
        if self._health is not None and self._health.receive(
            6, frame, at, end, proto, src, dst, now, out
        ):
            return
        if src == 0 and proto != PROTO_ICMPV6:
            emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        if proto == PROTO_ICMPV6:
            self._icmp6(frame, port, l3, at, end, src, dst, now, out, multicast=multicast)
        elif multicast:
            emit.drop(port, DropReason.BROADCAST_IGNORED, out)
        elif proto == PROTO_UDP:
            if self._udp_ok(frame, port, at, end, 6, src, dst, out):
                emit.drop(port, DropReason.LOCAL_UDP_PORT_CLOSED, out)
                self._icmp.error_v6(
                    frame, l3, port, frame[6:12], icmp6.DEST_UNREACH, icmp6.PORT_UNREACH, 0,
                    now, out, l2_group=bool(frame[0] & 1), source=dst,
                )  # fmt: skip
        elif proto == PROTO_TCP:
            self._tcp(frame, port, l3, at, end, 6, src, dst, out)
        elif proto == PROTO_NONE:
            emit.drop(port, DropReason.NO_NEXT_HEADER, out)
        else:
            emit.drop(port, DropReason.LOCAL_PROTOCOL_UNREACHABLE, out)
            self._icmp.error_v6(
                frame, l3, port, frame[6:12], icmp6.PARAMETER_PROBLEM,
                icmp6.UNRECOGNISED_NEXT_HEADER, chain.nh_field - l3, now, out,
                l2_group=bool(frame[0] & 1), source=dst,
            )  # fmt: skip

    def _reassemble_v6(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        end: int,
        src: int,
        dst: int,
        now: float,
        out: list[Action],
    ) -> tuple[bytearray, int] | None:
        fh = ipv6.fragment_header(frame, l3, end)
        if fh is None:
            self._emit.drop(port, DropReason.IPV6_BAD_EXTENSION_HEADER, out)
            return None
        head = None
        if fh.offset == 0:
            head = Head(bytearray(frame[:end]), l3, port, bytes(frame[6:12]))
        got = self._reasm.offer(
            (6, src, dst, fh.ident),
            fh.offset,
            fh.more,
            bytes(frame[fh.at + ipv6.FRAGMENT_HEADER_LEN : end]),
            head,
            now,
        )
        if not isinstance(got, Complete):
            if got is not None:
                self._emit.drop(port, got, out)
            return None
        self._counters.reassembled += 1
        h = got.head
        hfh = ipv6.fragment_header(h.frame, h.l3, len(h.frame))
        if hfh is None:  # cannot happen: the head was parsed when it arrived
            self._emit.drop(port, DropReason.REASSEMBLY_INVALID, out)
            return None
        whole = bytearray(h.frame[: hfh.at])
        whole[hfh.nh_field] = hfh.next_header
        whole += got.payload
        _U16.pack_into(whole, h.l3 + ipv6.OFF_PAYLOAD_LEN, len(whole) - h.l3 - ipv6.HEADER_LEN)
        return whole, h.l3

    def _icmp6(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        at: int,
        end: int,
        src: int,
        dst: int,
        now: float,
        out: list[Action],
        *,
        multicast: bool,
    ) -> None:
        emit = self._emit
        if end - at < icmp6.HEADER_LEN:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        msg = memoryview(frame)[at:end]
        if not cs.verify(msg, cs.pseudo_sum_v6(src, dst, PROTO_ICMPV6, end - at)):
            emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return
        icmp_type = msg[0]
        if icmp_type in (icmp6.NEIGHBOR_SOLICITATION, icmp6.NEIGHBOR_ADVERTISEMENT):
            # RFC 4861 7.1: only from the link itself, and well formed.
            if frame[l3 + ipv6.OFF_HOP_LIMIT] != icmp6.ND_HOP_LIMIT or msg[1] != 0:
                emit.drop(port, DropReason.ND_MALFORMED, out)
            elif icmp_type == icmp6.NEIGHBOR_SOLICITATION:
                if src == 0 and dst >> 24 != A.V6_SOLICITED_NODE_PREFIX >> 24:
                    emit.drop(port, DropReason.ND_MALFORMED, out)
                else:
                    self._nd.solicitation(frame, port, l3, msg, src, now, out)
            elif src == 0:
                emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            else:
                self._nd.advertisement(port, msg, now, out)
            return
        if src == 0:
            emit.drop(port, DropReason.MARTIAN_SOURCE, out)
            return
        if icmp_type != icmp6.ECHO_REQUEST:
            reason = (
                DropReason.ICMP_ERROR_TO_ROUTER
                if icmp6.is_error(icmp_type)
                else DropReason.ICMP_IGNORED
            )
            emit.drop(port, reason, out)
            return
        # Echo to a group (ff02::1, say) is answered from our own unicast address.
        reply_src = v6_source_for(self._ports, port, src) if multicast else dst
        if reply_src is None:
            emit.drop(port, DropReason.ICMP_IGNORED, out)
            return
        reply = bytearray(msg)
        reply[0] = icmp6.ECHO_REPLY
        reply[2] = reply[3] = 0
        _U16.pack_into(reply, 2, icmp6.checksum(reply_src, src, reply))
        packet = ipv6.build_header(reply_src, src, PROTO_ICMPV6, len(reply), hop_limit=TTL)
        packet += reply
        self._send_back(frame, port, l3, packet, 6, out)
        self._icmp.sent_echo_reply(A.V6)

    # -- shared ----------------------------------------------------------------

    def _udp_ok(
        self,
        frame: Buffer,
        port: int,
        at: int,
        end: int,
        version: int,
        src: int,
        dst: int,
        out: list[Action],
    ) -> bool:
        """Whether a datagram to us is sound enough to answer (as Linux: a bad
        checksum is dropped silently; the checksum is optional only in IPv4)."""
        if end - at < l4.UDP_HEADER_LEN:
            self._emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return False
        length = _U16.unpack_from(frame, at + 4)[0]
        if length < l4.UDP_HEADER_LEN or at + length > end:
            self._emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return False
        has_sum = frame[at + l4.UDP_OFF_CSUM] or frame[at + l4.UDP_OFF_CSUM + 1]
        if version == 4:
            if not has_sum:
                return True
            pseudo_sum = cs.pseudo_sum_v4(src, dst, PROTO_UDP, length)
        else:
            pseudo_sum = cs.pseudo_sum_v6(src, dst, PROTO_UDP, length)
        if not has_sum or not cs.verify(memoryview(frame)[at : at + length], pseudo_sum):
            self._emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return False
        return True

    def _tcp(
        self,
        frame: Buffer,
        port: int,
        l3: int,
        at: int,
        end: int,
        version: int,
        src: int,
        dst: int,
        out: list[Action],
    ) -> None:
        """Answer a segment to a port nobody listens on with a reset (RFC 9293 3.10.7.1,
        and tcp_v4_send_reset in Linux)."""
        emit = self._emit
        if end - at < l4.TCP_HEADER_LEN:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        doff = l4.tcp_header_len(frame, at)
        if doff < l4.TCP_HEADER_LEN or at + doff > end:
            emit.drop(port, DropReason.LOCAL_TRUNCATED, out)
            return
        if version == 4:
            pseudo = cs.pseudo_sum_v4(src, dst, PROTO_TCP, end - at)
        else:
            pseudo = cs.pseudo_sum_v6(src, dst, PROTO_TCP, end - at)
        if not cs.verify(memoryview(frame)[at:end], pseudo):
            emit.drop(port, DropReason.LOCAL_BAD_CHECKSUM, out)
            return
        flags = l4.tcp_flags(frame, at)
        if flags & l4.TCP_RST:
            emit.drop(port, DropReason.LOCAL_TCP_RST_IGNORED, out)
            return
        if frame[0] & 1:  # never answer a link-layer broadcast
            emit.drop(port, DropReason.BROADCAST_IGNORED, out)
            return
        sport, dport = l4.ports(frame, at)
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
            l4.TCP_HEADER.pack(dport, sport, rst_seq, rst_ack, (5 << 12) | rst_flags, 0, 0, 0)
        )
        if version == 4:
            l4.fill_checksum(
                segment, 0, len(segment), l4.TCP_OFF_CSUM,
                cs.pseudo_sum_v4(dst, src, PROTO_TCP, len(segment)), udp=False,
            )  # fmt: skip
            packet = ipv4.build_header(
                dst,
                src,
                PROTO_TCP,
                len(segment),
                tos=frame[l3 + ipv4.OFF_TOS] & 0xFC,
                ident=0,
                frag=ipv4.FLAG_DF,
            )
        else:
            l4.fill_checksum(
                segment, 0, len(segment), l4.TCP_OFF_CSUM,
                cs.pseudo_sum_v6(dst, src, PROTO_TCP, len(segment)), udp=False,
            )  # fmt: skip
            packet = ipv6.build_header(dst, src, PROTO_TCP, len(segment), hop_limit=TTL)
        packet += segment
        emit.drop(port, DropReason.LOCAL_TCP_RESET, out)
        self._counters.tcp_resets_sent += 1
        self._send_back(frame, port, l3, packet, version, out)

    def _send_back(
        self, frame: Buffer, port: int, l3: int, packet: bytearray, version: int, out: list[Action]
    ) -> None:
        """Send ``packet`` back out of ``port`` to the neighbour ``frame`` came from,
        fragmenting it if it exceeds the port's MTU."""
        p = self._ports[port]
        head = reply_l2(frame, l3, frame[6:12], p.mac)
        if len(packet) <= p.mtu:
            self._emit.transmit(port, head + packet, out)
            return
        if version == 4:
            pieces = ipv4.fragment(memoryview(packet), p.mtu)
        else:
            self._v6_ident = (self._v6_ident + 1) & 0xFFFFFFFF
            pieces = ipv6.fragment(memoryview(packet), p.mtu, self._v6_ident)
        self._counters.fragments_created += len(pieces)
        for piece in pieces:
            self._emit.transmit(port, head + piece, out)
