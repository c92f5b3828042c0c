"""IPv4 and IPv6 as one interface, so that forwarding, local delivery and the
ICMP errors are written once (docs/behaviour.md, "Forwarding (IPv4 / IPv6)").

A ``Family`` is what the pipeline knows of one IP version: how its header is
read (``parse``), which packets a router may not forward or answer, how the
hop limit is spent, whether a router may fragment, which ICMP type and code
stand for each error (``Error``), how hopgate's own answers are built; and the
router's tables for it (routes, neighbours).  The steps that genuinely differ
are methods of ``Inet4`` and ``Inet6``; everything else lives once, in the
router, ``LocalDelivery`` and ``IcmpOut``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from enum import Enum, IntEnum
from struct import Struct
from typing import ClassVar, Final, NamedTuple

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import ethernet, flows, icmp4, icmp6, ipv4, ipv6, rewrite
from hopgate.packet.proto import PORT_PROTOCOLS, PROTO_ICMP, PROTO_ICMPV6, PROTO_NONE, PROTO_TCP
from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.context import FIRST, LATER, Frame, Packet
from hopgate.pipeline.neighbours import NeighbourTable
from hopgate.pipeline.ports import LocalAddresses, Port, v4_source_for, v6_source_for
from hopgate.pipeline.reassembly import Head
from hopgate.pipeline.routes import RouteTable, flow_hash

_PORTS = Struct("!HH")
# For the per-packet code: module globals, read faster than attributes.
_unpack_ports = _PORTS.unpack_from
_unpack_v4 = ipv4.HEADER.unpack_from
_V4_HEADER_LEN = ipv4.HEADER_LEN
_V4_OFFSET_MASK = ipv4.FRAG_OFFSET_MASK
_KIND_PORTS = flows.PORTS
_U16 = Struct("!H")
_V4_FRAGMENT = ipv4.FLAG_MF | ipv4.FRAG_OFFSET_MASK
_MARTIAN_TOP = frozenset({0, 127})  # first octets of "this network" and loopback

ERROR_TOS = 0xC0  # IPv4 ICMP errors' TOS (IPTOS_PREC_INTERNETCONTROL, as Linux)


class Error(Enum):
    """The ICMP errors hopgate sends, by meaning; each family has its type and code."""

    NO_ROUTE = "no-route"
    HOST_UNREACHABLE = "host-unreachable"  # the next hop never answered ARP/ND
    PROTOCOL_UNREACHABLE = "protocol-unreachable"
    PORT_UNREACHABLE = "port-unreachable"
    TOO_BIG = "too-big"  # fragmentation needed and DF set / Packet Too Big
    TTL_EXCEEDED = "ttl-exceeded"
    REASSEMBLY_TIMEOUT = "reassembly-timeout"
    BEYOND_SCOPE = "beyond-scope"  # IPv6 only


class Part(NamedTuple):
    """One fragment of a datagram to the router, for reassembly."""

    key: Hashable  # the datagram it belongs to
    offset: int
    more: bool
    payload: bytes


class Way(IntEnum):
    """Where a packet the router has not dropped goes."""

    ON = 0  # on through the pipeline: NAT, then forwarded
    LOCAL = 1  # to the router itself
    GROUP = 2  # to a multicast group its port has joined


# Module constants for the per-packet code (a global is read faster than an
# enum class attribute).
ON: Final = Way.ON
LOCAL: Final = Way.LOCAL
GROUP: Final = Way.GROUP


class Family(ABC):
    version: ClassVar[int]
    ethertype: ClassVar[int]
    icmp_proto: ClassVar[int]
    header_len: ClassVar[int]
    addr_len: ClassVar[int]  # bytes in an address
    hop_offset: ClassVar[int]  # of the TTL / hop limit
    error_max: ClassVar[int]  # the longest error message (RFC 1812 4.3.2.3, RFC 4443 2.4)
    errors: ClassVar[Mapping[Error, tuple[int, int]]]
    echo_request: ClassVar[int]
    no_next_header: ClassVar[int]  # -1: no such protocol in this family

    def __init__(
        self,
        ports: list[Port],
        local: LocalAddresses,
        routes: RouteTable,
        neighbours: NeighbourTable,
    ) -> None:
        self.ports = ports
        self.local = local
        self.routes = routes
        self.neighbours = neighbours
        # The host addresses of this family, each with the port whose host has
        # it (``LocalAddresses.hosts``); empty when no interface has any.
        self.hosts: dict[int, int] = local.hosts[self.version]

    # -- reading a packet ------------------------------------------------------------

    @abstractmethod
    def admit(self, pkt: Packet) -> DropReason | Way:
        """Check a packet from the wire (its IP header, its source) and describe
        it (fill in ``pkt``'s fields): why it is dropped, ``GROUP`` if it is for
        a multicast group its port joined, else ``ON``."""

    @abstractmethod
    def describe(self, pkt: Packet) -> None:
        """Fill in ``pkt``'s fields from a header known to be sound."""

    def packet(
        self, frame: Frame, l3: int, port: int, in_mac: bytes, now: float, out: list[Action]
    ) -> Packet:
        """A packet kept for later (or rebuilt), described for this turn."""
        pkt = Packet(frame, port, l3, self, now, out)
        pkt.in_mac = in_mac
        self.describe(pkt)
        return pkt

    def _transport(self, pkt: Packet, proto: int, at: int) -> None:
        """The flow of the upper-layer header at ``at`` (packet/flows.py)."""
        pkt.proto, pkt.at = proto, at
        if proto in PORT_PROTOCOLS and pkt.end - at >= 4:
            pkt.kind = flows.PORTS
            pkt.sport, pkt.dport = _PORTS.unpack_from(pkt.frame, at)
            return
        pkt.kind, pkt.sport, pkt.dport = flows.classify(
            proto, pkt.frame, at, pkt.end, self.version == A.V6
        )

    @abstractmethod
    def addresses(self, buf: Frame, l3: int) -> tuple[int, int]:
        """Source and destination of the header at ``l3``."""

    @abstractmethod
    def quoted_flow(self, buf: Frame, l3: int, end: int) -> flows.Flow:
        """The flow of a packet quoted in an ICMP error (packet/flows.py)."""

    # -- receiving -----------------------------------------------------------------

    @abstractmethod
    def destination(self, pkt: Packet, planned: bool, l2_group: bool) -> DropReason | Way:
        """After NAT: ``LOCAL`` if the packet is for the router (never when NAT
        ``planned`` its translation), why it may not be forwarded (``l2_group``:
        it came in a link-layer broadcast or multicast nothing takes), or ``ON``."""

    # -- forwarding ------------------------------------------------------------------

    # Whether some sources may not leave their link (IPv6 link-local): then
    # ``out_of_scope`` says which.
    has_scopes: ClassVar[bool] = False

    def out_of_scope(self, src: int) -> bool:
        """Whether a packet from ``src`` may not leave its link."""
        return False

    def ecmp_hash(self, pkt: Packet) -> int:
        """The flow hash that picks among equal-cost next hops: the ports, or an
        echo's identifier, or the flow an ICMP error quotes (so that it takes its
        flow's path)."""
        kind, width = pkt.kind, self.addr_len
        if kind == flows.PORTS:
            return flow_hash(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, width)
        if kind == flows.QUERY:
            ident = pkt.sport | pkt.dport  # one of them is the identifier, the other 0
            return flow_hash(pkt.proto, pkt.src, ident, pkt.dst, ident, width)
        if kind == flows.ERROR:
            frame, inner, end = pkt.frame, pkt.at + 8, pkt.end
            if end - inner >= self.header_len and frame[inner] >> 4 == self.version:
                q = self.quoted_flow(frame, inner, end)
                isrc, idst = self.addresses(frame, inner)
                if q.kind == flows.PORTS:
                    return flow_hash(q.proto, isrc, q.sport, idst, q.dport, width)
                return flow_hash(q.proto, isrc, 0, idst, 0, width)
        return flow_hash(pkt.proto, pkt.src, 0, pkt.dst, 0, width)

    @abstractmethod
    def may_fragment(self, frame: Frame, l3: int) -> bool:
        """Whether a router may fragment this packet (IPv4 without DF)."""

    @staticmethod
    @abstractmethod
    def spend_hop(buf: Frame, off: int) -> None:
        """Take one from the TTL / hop limit of the header at ``off`` (known to be
        above 1)."""

    @abstractmethod
    def fragment(self, packet: memoryview, mtu: int, ident: int) -> list[bytearray]:
        """``packet`` cut to fit ``mtu`` (``ident``: IPv6's identification)."""

    # -- the ICMP errors hopgate sends (pipeline/icmp.py) ------------------------------

    def answers_group(self, icmp_type: int, code: int) -> bool:
        """Whether this error is sent even about a packet to a group (IPv6's
        exceptions, RFC 4443 2.4 (e.3)-(e.5))."""
        return False

    @abstractmethod
    def not_a_host(self, src: int) -> bool:
        """Whether ``src`` cannot be one host (so is never sent an error)."""

    @abstractmethod
    def to_group(self, dst: int) -> bool:
        """Whether ``dst`` is a broadcast or multicast address."""

    @abstractmethod
    def is_error(self, icmp_type: int) -> bool:
        """Whether an ICMP message of this type is an error message."""

    def never_answered(self, icmp_type: int) -> bool:
        """Whether an ICMP message of this type is never answered with an error."""
        return self.is_error(icmp_type)

    @abstractmethod
    def source_for(self, port: int, toward: int) -> int | None:
        """The address hopgate speaks from on ``port`` to ``toward``."""

    @abstractmethod
    def quote_end(self, pkt: Packet, mtu: int) -> int:
        """Where the quote of ``pkt`` in an error sent on a link of ``mtu`` ends."""

    @abstractmethod
    def error_packet(
        self, src: int, pkt: Packet, kind: tuple[int, int, int], ident: int
    ) -> bytearray:
        """The IP packet of an error from ``src`` about ``pkt``: ``kind`` is its
        type, code and the rest of its header."""

    # -- hopgate's own answers (pipeline/local.py) -------------------------------------

    def protocol_pointer(self, pkt: Packet) -> int:
        """The rest of the header of a protocol-unreachable error about ``pkt``."""
        return 0

    @abstractmethod
    def pseudo_sum(self, src: int, dst: int, proto: int, length: int) -> int:
        """The transport checksum's pseudo-header sum (0 where there is none: ICMP)."""

    @abstractmethod
    def udp_checksum_required(self, has_sum: bool) -> bool:
        """Whether a UDP datagram's checksum must be checked (IPv4: only when set)."""

    @abstractmethod
    def echo_reply(self, pkt: Packet, src: int, ident: int) -> bytearray:
        """The IP packet answering the echo request ``pkt`` from ``src``."""

    @abstractmethod
    def reset_header(self, pkt: Packet, length: int) -> bytearray:
        """The IP header of a TCP reset answering ``pkt`` (as Linux's)."""

    @abstractmethod
    def build_header(self, src: int, dst: int, proto: int, length: int, ident: int) -> bytearray:
        """A plain header for a packet hopgate sends (health checks)."""

    @abstractmethod
    def part(self, pkt: Packet) -> Part | DropReason:
        """The fragment ``pkt`` as a part of its datagram."""

    @abstractmethod
    def rejoin(self, head: Head, payload: bytes) -> bytearray | None:
        """The whole datagram from its first fragment and the payload; None if the
        first fragment cannot be read again (it was read when it arrived)."""


class Inet4(Family):
    version = A.V4
    ethertype = ethernet.ETH_P_IP
    icmp_proto = PROTO_ICMP
    header_len = ipv4.HEADER_LEN
    addr_len = 4
    hop_offset = ipv4.OFF_TTL
    error_max = 576
    echo_request = icmp4.ECHO_REQUEST
    no_next_header = -1
    errors: ClassVar[Mapping[Error, tuple[int, int]]] = {
        Error.NO_ROUTE: (icmp4.DEST_UNREACH, icmp4.NET_UNREACH),
        Error.HOST_UNREACHABLE: (icmp4.DEST_UNREACH, icmp4.HOST_UNREACH),
        Error.PROTOCOL_UNREACHABLE: (icmp4.DEST_UNREACH, icmp4.PROTO_UNREACH),
        Error.PORT_UNREACHABLE: (icmp4.DEST_UNREACH, icmp4.PORT_UNREACH),
        Error.TOO_BIG: (icmp4.DEST_UNREACH, icmp4.FRAG_NEEDED_CODE),
        Error.TTL_EXCEEDED: (icmp4.TIME_EXCEEDED, icmp4.TTL_EXCEEDED),
        Error.REASSEMBLY_TIMEOUT: (icmp4.TIME_EXCEEDED, icmp4.REASSEMBLY_EXCEEDED),
    }

    def admit(self, pkt: Packet) -> DropReason | Way:
        frame, l3 = pkt.frame, pkt.l3
        end = len(frame)
        if end - l3 < _V4_HEADER_LEN:
            return DropReason.IPV4_TRUNCATED
        vihl, _, total, _, frag, _, proto, _, src, dst = _unpack_v4(frame, l3)
        if vihl == 0x45:  # no options: the checks of ipv4.check, inline
            if total < _V4_HEADER_LEN or l3 + total > end:
                return DropReason.IPV4_BAD_TOTAL_LENGTH
            # The header sums to 0xFFFF, i.e. reads as a multiple of 0xFFFF (checksum.py).
            if int.from_bytes(frame[l3 : l3 + 20], "big") % 0xFFFF:
                return DropReason.IPV4_BAD_CHECKSUM
        else:
            why = ipv4.check(frame, l3, end)
            if why is not None:
                return DropReason(why)
        top = src >> 24
        if top in _MARTIAN_TOP or top >= 224 or src in self.local.v4_not_source:
            return DropReason.MARTIAN_SOURCE
        pkt.src, pkt.dst = src, dst
        pkt.end = end = l3 + total
        at = l3 + ((vihl & 0xF) << 2)
        if frag & _V4_FRAGMENT:
            if frag & _V4_OFFSET_MASK:
                pkt.fragment, pkt.kind, pkt.proto, pkt.at = LATER, flows.LATER_FRAGMENT, proto, at
                pkt.sport = pkt.dport = 0
                return ON
            pkt.fragment = FIRST
        if proto in PORT_PROTOCOLS and end - at >= 4:  # most of the traffic: inline
            pkt.proto, pkt.at, pkt.kind = proto, at, _KIND_PORTS
            pkt.sport, pkt.dport = _unpack_ports(frame, at)
            return ON
        self._transport(pkt, proto, at)
        return ON

    def describe(self, pkt: Packet) -> None:
        frame, l3 = pkt.frame, pkt.l3
        pkt.src, pkt.dst = ipv4.addrs(frame, l3)
        pkt.end = l3 + ipv4.total_len(frame, l3)
        at = l3 + ipv4.header_len(frame, l3)
        frag = ipv4.frag_field(frame, l3)
        if frag & _V4_FRAGMENT:
            pkt.fragment = LATER if frag & ipv4.FRAG_OFFSET_MASK else FIRST
        proto = frame[l3 + ipv4.OFF_PROTO]
        if pkt.fragment == LATER:
            pkt.kind, pkt.proto, pkt.at = flows.LATER_FRAGMENT, proto, at
            pkt.sport = pkt.dport = 0
            return
        self._transport(pkt, proto, at)

    def addresses(self, buf: Frame, l3: int) -> tuple[int, int]:
        return ipv4.addrs(buf, l3)

    def quoted_flow(self, buf: Frame, l3: int, end: int) -> flows.Flow:
        return flows.v4(buf, l3, end)

    def destination(self, pkt: Packet, planned: bool, l2_group: bool) -> DropReason | Way:
        dst = pkt.dst
        local = self.local
        if not planned and dst in local.v4:
            return LOCAL
        top = dst >> 24
        if not (top >= 224 or top in _MARTIAN_TOP or dst in local.v4_broadcast or l2_group):
            return ON
        if dst in local.v4_broadcast:
            # As Linux (icmp_echo_ignore_broadcasts, no directed-broadcast forwarding).
            return DropReason.BROADCAST_IGNORED
        if A.v4_is_multicast(dst):
            return DropReason.MULTICAST_NOT_ROUTED
        if A.v4_is_martian_destination(dst):
            return DropReason.MARTIAN_DESTINATION
        return DropReason.L2_BROADCAST_NOT_FORWARDED  # unicast in a link-layer broadcast

    def may_fragment(self, frame: Frame, l3: int) -> bool:
        return not frame[l3 + ipv4.OFF_FRAG] & (ipv4.FLAG_DF >> 8)

    spend_hop = staticmethod(ipv4.decrement_ttl)

    def fragment(self, packet: memoryview, mtu: int, ident: int) -> list[bytearray]:
        return ipv4.fragment(packet, mtu)

    def not_a_host(self, src: int) -> bool:
        return A.v4_is_martian_source(src) or src in self.local.v4_broadcast

    def to_group(self, dst: int) -> bool:
        return dst in self.local.v4_broadcast or A.v4_is_multicast(dst)

    def is_error(self, icmp_type: int) -> bool:
        return icmp4.is_error(icmp_type)

    def source_for(self, port: int, toward: int) -> int | None:
        return v4_source_for(self.ports, port, toward)

    def quote_end(self, pkt: Packet, mtu: int) -> int:
        room = min(self.error_max, mtu) - ipv4.HEADER_LEN - icmp4.HEADER_LEN
        # Never less than the header and 8 bytes of what it carries (RFC 792).
        l3 = pkt.l3
        return min(pkt.end, len(pkt.frame), l3 + max(room, ipv4.header_len(pkt.frame, l3) + 8))

    def error_packet(
        self, src: int, pkt: Packet, kind: tuple[int, int, int], ident: int
    ) -> bytearray:
        quote = memoryview(pkt.frame)[pkt.l3 : self.quote_end(pkt, self.ports[pkt.port].mtu)]
        msg = icmp4.build(*kind, quote)
        fields = ipv4.Fields(ERROR_TOS, ident)
        return ipv4.build_header(src, pkt.src, PROTO_ICMP, len(msg), fields) + msg

    def pseudo_sum(self, src: int, dst: int, proto: int, length: int) -> int:
        if proto == PROTO_ICMP:
            return 0
        return cs.pseudo_sum_v4(src, dst, proto, length)

    def udp_checksum_required(self, has_sum: bool) -> bool:
        return has_sum

    def echo_reply(self, pkt: Packet, src: int, ident: int) -> bytearray:
        reply = bytearray(pkt.frame[pkt.at : pkt.end])
        reply[0] = icmp4.ECHO_REPLY
        old = _U16.unpack_from(reply, 2)[0]
        new = cs.update16(old, icmp4.ECHO_REQUEST << 8, icmp4.ECHO_REPLY << 8)
        _U16.pack_into(reply, 2, new)
        if new == 0:
            rewrite.icmp4_checksum(reply, 0, len(reply))  # all-zero words: see icmp4_checksum
        # As Linux: the reply keeps the request's TOS and leaves DF clear.
        fields = ipv4.Fields(pkt.frame[pkt.l3 + ipv4.OFF_TOS], ident)
        return ipv4.build_header(src, pkt.src, PROTO_ICMP, len(reply), fields) + reply

    def reset_header(self, pkt: Packet, length: int) -> bytearray:
        tos = pkt.frame[pkt.l3 + ipv4.OFF_TOS] & 0xFC  # as Linux: no ECN bits
        fields = ipv4.Fields(tos=tos, ident=0, frag=ipv4.FLAG_DF)
        return ipv4.build_header(pkt.dst, pkt.src, PROTO_TCP, length, fields)

    def build_header(self, src: int, dst: int, proto: int, length: int, ident: int) -> bytearray:
        return ipv4.build_header(src, dst, proto, length, ipv4.Fields(ident=ident))

    def part(self, pkt: Packet) -> Part | DropReason:
        frame, l3 = pkt.frame, pkt.l3
        frag = ipv4.frag_field(frame, l3)
        ident = _U16.unpack_from(frame, l3 + ipv4.OFF_ID)[0]
        key = (A.V4, pkt.src, pkt.dst, frame[l3 + ipv4.OFF_PROTO], ident)
        offset = (frag & ipv4.FRAG_OFFSET_MASK) << 3
        return Part(key, offset, bool(frag & ipv4.FLAG_MF), bytes(frame[pkt.at : pkt.end]))

    def rejoin(self, head: Head, payload: bytes) -> bytearray | None:
        l3 = head.l3
        hlen = ipv4.header_len(head.frame, l3)
        whole = bytearray(head.frame[: l3 + hlen])
        _U16.pack_into(whole, l3 + ipv4.OFF_FRAG, ipv4.frag_field(whole, l3) & ipv4.FLAG_DF)
        _U16.pack_into(whole, l3 + ipv4.OFF_TOTAL_LEN, hlen + len(payload))
        ipv4.set_checksum(whole, l3)
        whole += payload
        return whole


class Inet6(Family):
    version = A.V6
    ethertype = ethernet.ETH_P_IPV6
    icmp_proto = PROTO_ICMPV6
    header_len = ipv6.HEADER_LEN
    addr_len = 16
    hop_offset = ipv6.OFF_HOP_LIMIT
    error_max = 1280
    echo_request = icmp6.ECHO_REQUEST
    no_next_header = PROTO_NONE
    errors: ClassVar[Mapping[Error, tuple[int, int]]] = {
        Error.NO_ROUTE: (icmp6.DEST_UNREACH, icmp6.NO_ROUTE),
        Error.BEYOND_SCOPE: (icmp6.DEST_UNREACH, icmp6.BEYOND_SCOPE),
        Error.HOST_UNREACHABLE: (icmp6.DEST_UNREACH, icmp6.ADDR_UNREACH),
        Error.PORT_UNREACHABLE: (icmp6.DEST_UNREACH, icmp6.PORT_UNREACH),
        Error.TOO_BIG: (icmp6.PACKET_TOO_BIG, 0),
        Error.TTL_EXCEEDED: (icmp6.TIME_EXCEEDED, icmp6.HOP_LIMIT_EXCEEDED),
        Error.REASSEMBLY_TIMEOUT: (icmp6.TIME_EXCEEDED, icmp6.REASSEMBLY_EXCEEDED),
        Error.PROTOCOL_UNREACHABLE: (icmp6.PARAMETER_PROBLEM, icmp6.UNRECOGNISED_NEXT_HEADER),
    }

    def admit(self, pkt: Packet) -> DropReason | Way:
        why = ipv6.check(pkt.frame, pkt.l3, len(pkt.frame))
        if why is not None:
            return DropReason(why)
        self.describe(pkt)
        if A.v6_is_multicast(pkt.src) or A.v6_is_loopback(pkt.src):
            return DropReason.MARTIAN_SOURCE
        if A.v6_is_multicast(pkt.dst):
            if pkt.dst in self.ports[pkt.port].v6_groups:
                return GROUP
            return DropReason.MULTICAST_NOT_ROUTED
        return ON

    def describe(self, pkt: Packet) -> None:
        frame, l3 = pkt.frame, pkt.l3
        pkt.end = end = l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3)
        pkt.src = int.from_bytes(frame[l3 + ipv6.OFF_SRC : l3 + ipv6.OFF_DST], "big")
        pkt.dst = int.from_bytes(frame[l3 + ipv6.OFF_DST : l3 + ipv6.HEADER_LEN], "big")
        nh = frame[l3 + ipv6.OFF_NEXT_HEADER]
        if nh not in ipv6.EXTENSIONS:  # no extension headers: most of the traffic
            self._transport(pkt, nh, l3 + ipv6.HEADER_LEN)
            return
        chain = ipv6.walk(frame, l3, end)
        if isinstance(chain, str):
            pkt.bad_chain = True
            pkt.kind, pkt.proto, pkt.at = flows.UNREADABLE, 0, l3 + ipv6.HEADER_LEN
            pkt.sport = pkt.dport = 0
            return
        pkt.nh_field = chain.nh_field
        if chain.is_fragment:
            pkt.fragment = LATER if chain.frag_offset else FIRST
            if chain.frag_offset:
                pkt.kind, pkt.proto, pkt.at = flows.LATER_FRAGMENT, chain.proto, chain.offset
                pkt.sport = pkt.dport = 0
                return
        self._transport(pkt, chain.proto, chain.offset)

    def addresses(self, buf: Frame, l3: int) -> tuple[int, int]:
        return ipv6.src(buf, l3), ipv6.dst(buf, l3)

    def quoted_flow(self, buf: Frame, l3: int, end: int) -> flows.Flow:
        return flows.v6(buf, l3, end)

    def destination(self, pkt: Packet, planned: bool, l2_group: bool) -> DropReason | Way:
        src, dst = pkt.src, pkt.dst
        if not planned and self.local.is_v6_local(pkt.port, dst):
            return LOCAL
        if src == 0 or src in self.local.v6_not_source:
            return DropReason.MARTIAN_SOURCE
        if A.v6_is_link_local(dst):
            return DropReason.LINK_LOCAL_NOT_FORWARDED
        if dst <= 1:  # :: and ::1
            return DropReason.MARTIAN_DESTINATION
        if l2_group:
            return DropReason.L2_BROADCAST_NOT_FORWARDED
        return ON

    has_scopes = True

    def out_of_scope(self, src: int) -> bool:
        return A.v6_is_link_local(src)

    def may_fragment(self, frame: Frame, l3: int) -> bool:
        return False  # routers never fragment IPv6 (RFC 8200 5): Packet Too Big, always

    @staticmethod
    def spend_hop(buf: Frame, off: int) -> None:
        buf[off + ipv6.OFF_HOP_LIMIT] -= 1

    def fragment(self, packet: memoryview, mtu: int, ident: int) -> list[bytearray]:
        return ipv6.fragment(packet, mtu, ident)

    def answers_group(self, icmp_type: int, code: int) -> bool:
        # RFC 4443 2.4 (e.3)-(e.5): Packet Too Big and Parameter Problem code 2
        # may answer multicast, so that PMTUD and option handling work for it.
        return icmp_type == icmp6.PACKET_TOO_BIG or (
            icmp_type == icmp6.PARAMETER_PROBLEM and code == icmp6.UNRECOGNISED_OPTION
        )

    def not_a_host(self, src: int) -> bool:
        return A.v6_is_martian_source(src)

    def to_group(self, dst: int) -> bool:
        return A.v6_is_multicast(dst)

    def is_error(self, icmp_type: int) -> bool:
        return icmp6.is_error(icmp_type)

    def never_answered(self, icmp_type: int) -> bool:
        # A redirect is informational, but never answered either (RFC 4443 2.4 (e)).
        return icmp6.is_error(icmp_type) or icmp_type == icmp6.REDIRECT

    def source_for(self, port: int, toward: int) -> int | None:
        return v6_source_for(self.ports, port, toward)

    def quote_end(self, pkt: Packet, mtu: int) -> int:
        room = min(self.error_max, mtu) - ipv6.HEADER_LEN - icmp6.HEADER_LEN
        return min(pkt.end, len(pkt.frame), pkt.l3 + room)

    def error_packet(
        self, src: int, pkt: Packet, kind: tuple[int, int, int], ident: int
    ) -> bytearray:
        quote = memoryview(pkt.frame)[pkt.l3 : self.quote_end(pkt, self.ports[pkt.port].mtu)]
        msg = icmp6.build(src, pkt.src, *kind, quote)
        return ipv6.build_header(src, pkt.src, PROTO_ICMPV6, len(msg)) + msg

    def protocol_pointer(self, pkt: Packet) -> int:
        # RFC 4443 3.4: the "next header" field that names the protocol.
        return pkt.nh_field - pkt.l3 if pkt.nh_field >= 0 else ipv6.OFF_NEXT_HEADER

    def pseudo_sum(self, src: int, dst: int, proto: int, length: int) -> int:
        return cs.pseudo_sum_v6(src, dst, proto, length)

    def udp_checksum_required(self, has_sum: bool) -> bool:
        return True

    def echo_reply(self, pkt: Packet, src: int, ident: int) -> bytearray:
        reply = bytearray(pkt.frame[pkt.at : pkt.end])
        reply[0] = icmp6.ECHO_REPLY
        reply[2] = reply[3] = 0
        _U16.pack_into(reply, 2, icmp6.checksum(src, pkt.src, reply))
        return ipv6.build_header(src, pkt.src, PROTO_ICMPV6, len(reply)) + reply

    def reset_header(self, pkt: Packet, length: int) -> bytearray:
        return ipv6.build_header(pkt.dst, pkt.src, PROTO_TCP, length)

    def build_header(self, src: int, dst: int, proto: int, length: int, ident: int) -> bytearray:
        return ipv6.build_header(src, dst, proto, length)

    def part(self, pkt: Packet) -> Part | DropReason:
        fh = ipv6.fragment_header(pkt.frame, pkt.l3, pkt.end)
        if fh is None:
            return DropReason.IPV6_BAD_EXTENSION_HEADER
        payload = bytes(pkt.frame[fh.at + ipv6.FRAGMENT_HEADER_LEN : pkt.end])
        return Part((A.V6, pkt.src, pkt.dst, fh.ident), fh.offset, fh.more, payload)

    def rejoin(self, head: Head, payload: bytes) -> bytearray | None:
        fh = ipv6.fragment_header(head.frame, head.l3, len(head.frame))
        if fh is None:
            return None
        whole = bytearray(head.frame[: fh.at])
        whole[fh.nh_field] = fh.next_header
        whole += payload
        _U16.pack_into(
            whole, head.l3 + ipv6.OFF_PAYLOAD_LEN, len(whole) - head.l3 - ipv6.HEADER_LEN
        )
        return whole
