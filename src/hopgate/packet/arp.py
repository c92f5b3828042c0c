"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from hopgate.packet import ethernet
from hopgate.packet.types import Buffer

# hardware type, protocol type, hw len, proto len, op, sha, spa, tha, tpa
BODY = Struct("!HHBBH6sI6sI")
BODY_LEN = BODY.size  # 28

HTYPE_ETHERNET = 1
OP_REQUEST = 1
OP_REPLY = 2


class Arp(NamedTuple):
    op: int
    sha: bytes
    spa: int
    tha: bytes
    tpa: int


def parse(buf: Buffer, off: int) -> Arp | None:
    """The ARP body at ``off`` if it is Ethernet/IPv4 ARP, else None."""
    if len(buf) - off < BODY_LEN:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = BODY.unpack_from(buf, off)
    if htype != HTYPE_ETHERNET or ptype != ethernet.ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return Arp(op, sha, spa, tha, tpa)


def build(op: int, sha: bytes, spa: int, tha: bytes, tpa: int) -> bytes:
    return BODY.pack(HTYPE_ETHERNET, ethernet.ETH_P_IP, 6, 4, op, sha, spa, tha, tpa)


def frame(dst_mac: bytes, src_mac: bytes, op: int, spa: int, tha: bytes, tpa: int) -> bytearray:
    """A whole ARP frame from ``src_mac``, padded to the 60-byte Ethernet minimum."""
    out = bytearray(ethernet.header(dst_mac, src_mac, ethernet.ETH_P_ARP))
    out += build(op, src_mac, spa, tha, tpa)
    out += bytes(60 - len(out))
    return out
