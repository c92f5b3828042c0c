"""ICMP errors about translated connections (RFC 5508; docs/behaviour.md, "NAT"):
an error is translated by the packet it quotes, the quote restored to what its
sender sent and the outer header to match, never creating a connection; one
that matches no connection but is about a translated address is dropped and
counted.  ``restore`` undoes a packet's translation so that an error hopgate
sends about it quotes what its sender sent.
"""

from __future__ import annotations

from struct import Struct

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import flows, icmp4, icmp6, ipv4, ipv6, rewrite
from hopgate.packet.proto import PROTO_ICMPV6
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import DropReason
from hopgate.pipeline.conntrack import ConnTable, Side
from hopgate.pipeline.context import Packet
from hopgate.pipeline.plans import ErrorAbout

_U16 = Struct("!H")
_U32 = Struct("!I")


def bad_mtu(version: int, frame: Buffer, at: int, inner: int) -> bool:
    """Whether the ICMP error at ``at``, quoting the packet at ``inner``, is a
    fragmentation needed (IPv4 3/4) or Packet Too Big (IPv6 2) with an MTU no
    link may have (below 68, IPv6 1280) or one the quoted packet would have fitted
    (not below its size): broken or forged, whatever its sender."""
    if version == A.V4:
        if frame[at] != icmp4.DEST_UNREACH or frame[at + 1] != icmp4.FRAG_NEEDED_CODE:
            return False
        mtu = int(_U16.unpack_from(frame, at + 6)[0])
        return mtu < ipv4.MIN_MTU or mtu >= ipv4.total_len(frame, inner)
    if frame[at] != icmp6.PACKET_TOO_BIG:
        return False
    mtu = int(_U32.unpack_from(frame, at + 4)[0])
    return mtu < ipv6.MIN_MTU or mtu >= ipv6.HEADER_LEN + ipv6.payload_len(frame, inner)


def is_redirect(pkt: Packet) -> bool:
    """Whether an ICMPv6 message read as another protocol's flow is a redirect."""
    return (
        pkt.fam.version == A.V6
        and pkt.kind == flows.OTHER
        and pkt.proto == PROTO_ICMPV6
        and pkt.frame[pkt.at] == icmp6.REDIRECT
    )


def error_plan(
    table: ConnTable, addresses: set[int], pkt: Packet
) -> ErrorAbout | DropReason | None:
    """An ICMP error arrived: about a connection of ``table`` (translated in
    ``apply``), dropped (about one of the translated ``addresses``, but no
    connection), or none of NAT's business."""
    version, frame, dst = pkt.fam.version, pkt.frame, pkt.dst
    flow = pkt.flow()
    inner = flow.at + 8
    if version == A.V4:
        if flow.end - inner < ipv4.HEADER_LEN or frame[inner] >> 4 != 4:
            return None
        iflow = flows.v4(frame, inner, flow.end)
        isrc, idst = ipv4.addrs(frame, inner)
    else:
        if flow.end - inner < ipv6.HEADER_LEN or frame[inner] >> 4 != 6:
            return None
        iflow = flows.v6(frame, inner, flow.end)
        isrc, idst = ipv6.src(frame, inner), ipv6.dst(frame, inner)
    if iflow.kind not in (flows.PORTS, flows.QUERY, flows.OTHER):
        return None
    # The quote is a packet of the connection going the other way: its reverse
    # is how this error's direction arrives.
    side = table.lookup((version, iflow.proto, idst, iflow.dport, isrc, iflow.sport))
    # A redirect is about its sender's routes, not the connection it quotes,
    # and its gateway is on the sender's link: never translated (Linux's NAT
    # translates IPv4 ones; see docs/behaviour.md).
    redirect = version == A.V4 and frame[flow.at] == icmp4.REDIRECT
    if side is None:
        if isrc in addresses:
            return DropReason.NAT_ICMP_REDIRECT if redirect else DropReason.NAT_ICMP_UNMATCHED
        return None
    if redirect:
        return DropReason.NAT_ICMP_REDIRECT
    if bad_mtu(version, frame, flow.at, inner):
        return DropReason.NAT_BAD_MTU
    conn = side.conn
    a_src = conn.rewrite_for(1 - side.direction)[0]
    b = conn.arrives_as(1 - side.direction)
    new_dst = b[2] if dst == a_src else dst
    return ErrorAbout(flow, new_dst, side, inner, iflow)


def translate_error(plan: ErrorAbout, pkt: Packet) -> None:
    """Rewrite the error: its quote back to what its sender sent, its outer
    header to the connection's addresses."""
    side = plan.side
    version, frame, l3, end = pkt.fam.version, pkt.frame, pkt.l3, pkt.end
    conn = side.conn
    inner, iflow = plan.inner, plan.iflow
    quoted = 1 - side.direction
    a_src, a_sport, a_dst, a_dport = conn.rewrite_for(quoted)  # the quote as it left us
    b = conn.arrives_as(quoted)  # as its sender sent it
    b_src, b_sport, b_dst, b_dport = b[2], b[3], b[4], b[5]
    # The quoted packet, back to what its sender sent.
    if version == A.V4:
        sums = rewrite.ipv4_addresses(frame, inner, b_src, b_dst)
        whole = inner + ipv4.total_len(frame, inner) <= iflow.end
    else:
        sums = rewrite.ipv6_addresses(frame, inner, b_src, b_dst)
        whole = inner + ipv6.HEADER_LEN + ipv6.payload_len(frame, inner) <= iflow.end
    if iflow.kind != flows.OTHER:
        # Its transport checksum only when the quote holds all of the segment
        # (RFC 5508 and Linux leave a truncated one as it is).
        rewrite.transport(
            frame,
            iflow,
            sums,
            (a_sport, b_sport) if a_sport != b_sport else None,
            (a_dport, b_dport) if a_dport != b_dport else None,
            checksum=whole,
        )
    # The outer header: the addresses that were the connection's.
    if version == A.V4:
        osrc, odst = ipv4.addrs(frame, l3)
    else:
        osrc, odst = ipv6.src(frame, l3), ipv6.dst(frame, l3)
    new_src = b_dst if osrc == a_dst else osrc
    new_dst = b_src if odst == a_src else odst
    at = plan.flow.at
    if version == A.V4:
        rewrite.ipv4_addresses(frame, l3, new_src, new_dst)
        frame[at + 2] = frame[at + 3] = 0
        _U16.pack_into(frame, at + 2, cs.checksum(memoryview(frame)[at:end]))
    else:
        rewrite.ipv6_addresses(frame, l3, new_src, new_dst)
        frame[at + 2] = frame[at + 3] = 0
        _U16.pack_into(frame, at + 2, icmp6.checksum(new_src, new_dst, memoryview(frame)[at:end]))


def restore(frame: bytearray, l3: int, side: Side) -> None:
    """Undo the translation of a packet that arrived on ``side`` (a copy of one
    that could not be delivered), so that an error about it quotes what its
    sender sent."""
    conn, direction = side.conn, side.direction
    version = A.V4 if frame[l3] >> 4 == 4 else A.V6
    if version == A.V4:
        end = l3 + ipv4.total_len(frame, l3)
        flow = flows.v4(frame, l3, end)
    else:
        end = l3 + ipv6.HEADER_LEN + ipv6.payload_len(frame, l3)
        flow = flows.v6(frame, l3, end)
    _, now_sport, _, now_dport = conn.rewrite_for(direction)
    was = conn.arrives_as(direction)
    if version == A.V4:
        sums = rewrite.ipv4_addresses(frame, l3, was[2], was[4])
    else:
        sums = rewrite.ipv6_addresses(frame, l3, was[2], was[4])
    if flow.kind in (flows.PORTS, flows.QUERY, flows.OTHER):
        rewrite.transport(
            frame,
            flow,
            sums,
            (now_sport, was[3]) if now_sport != was[3] else None,
            (now_dport, was[5]) if now_dport != was[5] else None,
        )
