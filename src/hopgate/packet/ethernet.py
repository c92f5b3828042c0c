"""Ethernet II frames, with up to two 802.1Q/802.1ad tags before the EtherType."""

from __future__ import annotations

from struct import Struct

from hopgate.packet.types import Buffer

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

HEADER_LEN = 14
TAG_LEN = 4
MAX_TAGS = 2

BROADCAST = b"\xff\xff\xff\xff\xff\xff"
ZERO_MAC = b"\x00" * 6

HEADER = Struct("!6s6sH")
_U16 = Struct("!H")
_TAG_TYPES = (ETH_P_8021Q, ETH_P_8021AD)


def parse(frame: Buffer) -> tuple[int, int]:
    """Return (ethertype, offset of the layer-3 header), skipping VLAN tags.

    (-1, 0) when the frame is too short or carries more tags than we pass through.
    """
    size = len(frame)
    if size < HEADER_LEN:
        return -1, 0
    ethertype = _U16.unpack_from(frame, 12)[0]
    offset = HEADER_LEN
    tags = 0
    while ethertype in _TAG_TYPES:
        tags += 1
        if tags > MAX_TAGS or size < offset + TAG_LEN:
            return -1, 0
        ethertype = _U16.unpack_from(frame, offset + 2)[0]
        offset += TAG_LEN
    return ethertype, offset


def is_group(mac: Buffer) -> bool:
    """True for broadcast and multicast MAC addresses (the I/G bit)."""
    return bool(mac[0] & 1)


def multicast_mac_v6(addr: int) -> bytes:
    """The 33:33:xx:xx:xx:xx MAC an IPv6 multicast address maps to (RFC 2464 section 7)."""
    return b"\x33\x33" + (addr & 0xFFFFFFFF).to_bytes(4, "big")


def multicast_mac_v4(addr: int) -> bytes:
    """The 01:00:5e MAC an IPv4 multicast address maps to (RFC 1112 section 6.4)."""
    return b"\x01\x00\x5e" + (addr & 0x7FFFFF).to_bytes(3, "big")


def header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return HEADER.pack(dst, src, ethertype)


def format_mac(mac: Buffer) -> str:
    return ":".join(f"{b:02x}" for b in bytes(mac))


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
