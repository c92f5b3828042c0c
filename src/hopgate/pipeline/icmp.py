"""The ICMP and ICMPv6 messages hopgate originates, under the rules of RFC 1812 4.3.2
and RFC 4443 2.4 (docs/behaviour.md, "Every ICMP error hopgate sends").

Every error:
- is never sent about an ICMP error, a broadcast or multicast packet (IPv6: but
  for Packet Too Big and Parameter Problem code 2), a link-layer broadcast, a
  non-first fragment, or a packet whose source is not one host;
- quotes the offending packet from its IP header, up to 576 bytes (IPv4) or
  1280 bytes (IPv6) of message;
- is sent from the router's address on the interface the packet came in on,
  with TOS 0xc0 and TTL 64 (IPv4) as Linux does;
- leaves by that interface, to the neighbour the packet came from, with no
  route lookup (source in, source out);
- passes the rate limits, whose suppressions are counted.
"""

from __future__ import annotations

from collections.abc import Callable

from hopgate.packet import addr as A
from hopgate.packet import icmp4, icmp6, ipv4, ipv6
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action
from hopgate.pipeline.counters import Counters, NotSent
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.ports import LocalAddresses, Port, v4_source_for, v6_source_for
from hopgate.pipeline.ratelimit import IcmpRateLimiter

V4_ERROR_MAX = 576  # RFC 1812 4.3.2.3
V6_ERROR_MAX = 1280  # RFC 4443 2.4 (c)
ERROR_TOS = 0xC0  # IPTOS_PREC_INTERNETCONTROL
TTL = 64


def reply_l2(frame: Buffer, l3: int, to_mac: Buffer, from_mac: bytes) -> bytearray:
    """The Ethernet header for a frame sent back to ``to_mac``: VLAN tags and
    EtherType as the incoming frame had them."""
    head = bytearray(to_mac)
    head += from_mac
    head += frame[12:l3]
    return head


class IcmpOut:
    def __init__(
        self,
        ports: list[Port],
        local: LocalAddresses,
        limiter: IcmpRateLimiter,
        counters: Counters,
        emit: Emitter,
    ) -> None:
        self._ports = ports
        self._local = local
        self._limiter = limiter
        self._counters = counters
        self._emit = emit
        self._ident = 0

    def next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    # -- IPv4 ----------------------------------------------------------------

    def _v4_rule(self, frame: Buffer, l3: int, l2_group: bool) -> NotSent | None:
        if l2_group:
            return NotSent.LINK_LAYER_BROADCAST
        src, dst = ipv4.addrs(frame, l3)
        if A.v4_is_martian_source(src) or src in self._local.v4_broadcast:
            return NotSent.SOURCE_NOT_A_HOST
        if dst in self._local.v4_broadcast or A.v4_is_multicast(dst):
            return NotSent.TO_BROADCAST
        if ipv4.is_later_fragment(ipv4.frag_field(frame, l3)):
            return NotSent.LATER_FRAGMENT
        if frame[l3 + ipv4.OFF_PROTO] == PROTO_ICMP:
            at = l3 + ipv4.header_len(frame, l3)
            # Unreadable or an error: either way, not to be answered (as Linux).
            if at >= len(frame) or icmp4.is_error(frame[at]):
                return NotSent.ABOUT_ICMP_ERROR
        return None

    def error_v4(
        self,
        frame: Buffer,
        l3: int,
        in_port: int,
        in_mac: Buffer,
        icmp_type: int,
        code: int,
        rest: int,
        now: float,
        out: list[Action],
        *,
        l2_group: bool = False,
        source: int | None = None,
    ) -> None:
        """Answer the IPv4 packet at frame[l3:] with an ICMP error, if the rules allow.
        ``source``: the address to answer from (a packet to one of the router's
        own addresses is answered from that address, as Linux does)."""
        orig_src = ipv4.addrs(frame, l3)[0]
        src = self._may_send(
            4,
            self._v4_rule(frame, l3, l2_group),
            orig_src,
            lambda: source or v4_source_for(self._ports, in_port, orig_src),
            icmp_type,
            code,
            now,
        )
        if src is None:
            return
        port = self._ports[in_port]
        room = min(V4_ERROR_MAX, port.mtu) - ipv4.HEADER_LEN - icmp4.HEADER_LEN
        ihl = ipv4.header_len(frame, l3)
        end = min(l3 + ipv4.total_len(frame, l3), len(frame))
        quote = memoryview(frame)[l3 : min(end, l3 + max(room, ihl + 8))]
        msg = icmp4.build(icmp_type, code, rest, quote)
        header = ipv4.build_header(
            src, orig_src, PROTO_ICMP, len(msg), tos=ERROR_TOS, ident=self.next_ident()
        )
        self._send(4, frame, l3, in_port, in_mac, header, msg, out)

    # -- IPv6 ----------------------------------------------------------------

    def _v6_rule(
        self, frame: Buffer, l3: int, l2_group: bool, icmp_type: int, code: int
    ) -> NotSent | None:
        # RFC 4443 2.4 (e.3)-(e.5): Packet Too Big and Parameter Problem code 2
        # may answer multicast, so that PMTUD and option handling work for it.
        excepted = icmp_type == icmp6.PACKET_TOO_BIG or (
            icmp_type == icmp6.PARAMETER_PROBLEM and code == icmp6.UNRECOGNISED_OPTION
        )
        if l2_group and not excepted:
            return NotSent.LINK_LAYER_BROADCAST
        src = ipv6.src(frame, l3)
        if A.v6_is_martian_source(src):
            return NotSent.SOURCE_NOT_A_HOST
        if A.v6_is_multicast(ipv6.dst(frame, l3)) and not excepted:
            return NotSent.TO_BROADCAST
        end = min(l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3), len(frame))
        chain = ipv6.walk(frame, l3, end)
        if isinstance(chain, str):
            return None  # a malformed chain is answered (Parameter Problem) like any other
        if chain.frag_offset:
            return NotSent.LATER_FRAGMENT
        if chain.proto == PROTO_ICMPV6:
            if chain.offset >= end:
                return NotSent.ABOUT_ICMP_ERROR
            t = frame[chain.offset]
            if icmp6.is_error(t) or t == icmp6.REDIRECT:
                return NotSent.ABOUT_ICMP_ERROR
        return None

    def error_v6(
        self,
        frame: Buffer,
        l3: int,
        in_port: int,
        in_mac: Buffer,
        icmp_type: int,
        code: int,
        rest: int,
        now: float,
        out: list[Action],
        *,
        l2_group: bool = False,
        source: int | None = None,
    ) -> None:
        """Answer the IPv6 packet at frame[l3:] with an ICMPv6 error, if the rules allow."""
        orig_src = ipv6.src(frame, l3)
        src = self._may_send(
            6,
            self._v6_rule(frame, l3, l2_group, icmp_type, code),
            orig_src,
            lambda: source or v6_source_for(self._ports, in_port, orig_src),
            icmp_type,
            code,
            now,
        )
        if src is None:
            return
        port = self._ports[in_port]
        room = min(V6_ERROR_MAX, port.mtu) - ipv6.HEADER_LEN - icmp6.HEADER_LEN
        end = min(l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3), len(frame))
        quote = memoryview(frame)[l3 : min(end, l3 + room)]
        msg = icmp6.build(src, orig_src, icmp_type, code, rest, quote)
        header = ipv6.build_header(src, orig_src, PROTO_ICMPV6, len(msg), hop_limit=TTL)
        self._send(6, frame, l3, in_port, in_mac, header, msg, out)

    # -- shared ----------------------------------------------------------------

    def _may_send(
        self,
        version: int,
        why: NotSent | None,
        orig_src: int,
        source: Callable[[], int | None],
        icmp_type: int,
        code: int,
        now: float,
    ) -> int | None:
        """The address to send the error from, or None (counted) when a rule, the
        lack of an address or a rate limit says no."""
        c = self._counters
        if why is not None:
            c.icmp_not_sent[why] += 1
            return None
        src = source()
        if src is None:
            c.icmp_not_sent[NotSent.NO_SOURCE_ADDRESS] += 1
            return None
        limited = self._limiter.check(version, orig_src, icmp_type, code, now)
        if limited is not None:
            c.icmp_rate_limited[(version, icmp_type, code, limited.value)] += 1
            return None
        return src

    def _send(
        self,
        version: int,
        frame: Buffer,
        l3: int,
        in_port: int,
        in_mac: Buffer,
        header: bytearray,
        msg: bytearray,
        out: list[Action],
    ) -> None:
        """Back out of the ingress port, to the neighbour the offending packet came from."""
        out_frame = reply_l2(frame, l3, in_mac, self._ports[in_port].mac)
        out_frame += header
        out_frame += msg
        self._counters.icmp_sent[(version, msg[0], msg[1])] += 1
        self._emit.transmit(in_port, out_frame, out)

    def sent_echo_reply(self, version: int) -> None:
        if version == A.V4:
            self._counters.icmp_sent[(4, icmp4.ECHO_REPLY, 0)] += 1
        else:
            self._counters.icmp_sent[(6, icmp6.ECHO_REPLY, 0)] += 1
