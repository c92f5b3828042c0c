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

from hopgate.packet import addr as A
from hopgate.packet import icmp4, icmp6
from hopgate.packet.types import Buffer
from hopgate.pipeline.context import LATER, Packet
from hopgate.pipeline.counters import Counters, NotSent
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.family import Error
from hopgate.pipeline.ports import Port
from hopgate.pipeline.ratelimit import IcmpRateLimiter


def reply_l2(frame: Buffer, l3: int, to_mac: Buffer, from_mac: bytes) -> bytearray:
    """The Ethernet header for a frame sent back to ``to_mac``: VLAN tags and
    EtherType as the incoming frame had them."""
    head = bytearray(to_mac)
    head += from_mac
    head += frame[12:l3]
    return head


class IcmpOut:
    def __init__(
        self, ports: list[Port], limiter: IcmpRateLimiter, counters: Counters, emit: Emitter
    ) -> None:
        self._ports = ports
        self._limiter = limiter
        self._counters = counters
        self._emit = emit
        self._ident = 0

    def next_ident(self) -> int:
        """The identification of the next IPv4 packet hopgate sends."""
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def error(self, pkt: Packet, error: Error, rest: int = 0, *, source: int | None = None) -> None:
        """Answer ``pkt`` with ``error``, if the rules allow.  ``rest``: the rest of
        the ICMP header (an MTU, a pointer); ``source``: the address to answer
        from (a packet to one of the router's own addresses is answered from that
        address, as Linux does), else the router's on the way back."""
        fam = pkt.fam
        icmp_type, code = fam.errors[error]
        c = self._counters
        why = self._not_sent(pkt, icmp_type, code)
        if why is not None:
            c.icmp_not_sent[why] += 1
            return
        src = source or fam.source_for(pkt.port, pkt.src)
        if src is None:
            c.icmp_not_sent[NotSent.NO_SOURCE_ADDRESS] += 1
            return
        limited = self._limiter.check(fam.version, pkt.src, icmp_type, code, pkt.now)
        if limited is not None:
            c.icmp_rate_limited[(fam.version, icmp_type, code, limited.value)] += 1
            return
        packet = fam.error_packet(src, pkt, (icmp_type, code, rest), self.next_ident())
        # Back out of the ingress port, to the neighbour the offending packet came from.
        frame = reply_l2(pkt.frame, pkt.l3, pkt.source_mac(), self._ports[pkt.port].mac)
        frame += packet
        c.icmp_sent[(fam.version, icmp_type, code)] += 1
        self._emit.transmit(pkt.port, frame, pkt.out)

    @staticmethod
    def _not_sent(pkt: Packet, icmp_type: int, code: int) -> NotSent | None:
        """Which rule forbids an error about ``pkt``, if one does."""
        fam = pkt.fam
        excepted = fam.answers_group(icmp_type, code)
        if pkt.frame[0] & 1 and not excepted:
            return NotSent.LINK_LAYER_BROADCAST
        if fam.not_a_host(pkt.src):
            return NotSent.SOURCE_NOT_A_HOST
        if fam.to_group(pkt.dst) and not excepted:
            return NotSent.TO_BROADCAST
        if pkt.fragment == LATER:
            return NotSent.LATER_FRAGMENT
        # An unreadable ICMP message or an error: either way, not to be answered (as Linux).
        if pkt.proto == fam.icmp_proto and (
            pkt.at >= pkt.end or fam.never_answered(pkt.frame[pkt.at])
        ):
            return NotSent.ABOUT_ICMP_ERROR
        return None

    def sent_echo_reply(self, version: int) -> None:
        if version == A.V4:
            self._counters.icmp_sent[(4, icmp4.ECHO_REPLY, 0)] += 1
        else:
            self._counters.icmp_sent[(6, icmp6.ECHO_REPLY, 0)] += 1
