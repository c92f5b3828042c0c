"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

The full sum uses one fact to stay in C: since 2**16 == 1 (mod 0xFFFF), the
ones'-complement sum of the 16-bit words of a buffer is congruent to the buffer
read as one big-endian integer, modulo 0xFFFF.  ``int.from_bytes`` and ``%`` do
the whole buffer at C speed, where a Python loop over words would not.
"""

from __future__ import annotations

from hopgate.packet.types import Buffer

_FOLD = 0xFFFF


def ones_sum(data: Buffer) -> int:
    """Ones'-complement sum of ``data`` as 16-bit big-endian words, in 0..0xFFFF.

    An odd trailing byte is padded with a zero byte, as RFC 1071 says.
    The result is 0 only when every word is zero.
    """
    view = memoryview(data)
    n = int.from_bytes(view, "big")
    if view.nbytes & 1:
        n <<= 8
    if n == 0:
        return 0
    r = n % _FOLD
    return r if r else 0xFFFF


def fold(total: int) -> int:
    """Fold a sum of 16-bit quantities (any size) into 16 bits with end-around carry."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: Buffer, initial: int = 0) -> int:
    """The Internet checksum of ``data`` plus an already-summed ``initial`` (a pseudo-header)."""
    return ~fold(ones_sum(data) + initial) & 0xFFFF


def verify(data: Buffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) sums to all ones."""
    return fold(ones_sum(data) + initial) == 0xFFFF


def pseudo_sum_v4(src: int, dst: int, proto: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header (RFC 768, RFC 793)."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


def pseudo_sum_v6(src: int, dst: int, proto: int, length: int) -> int:
    """Unfolded sum of the IPv6 pseudo-header (RFC 8200 section 8.1)."""
    return int_sum(src) + int_sum(dst) + proto + (length >> 16) + (length & 0xFFFF)


def update16(hc: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes from ``old`` to ``new``."""
    return ~fold((~hc & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def update_sum(hc: int, old_sum: int, new_sum: int) -> int:
    """RFC 1624 for a change of several words, given the ones'-complement sums of old and new."""
    return ~fold((~hc & 0xFFFF) + (~fold(old_sum) & 0xFFFF) + new_sum) & 0xFFFF


def update_bytes(hc: int, old: Buffer, new: Buffer) -> int:
    """RFC 1624 for a changed run of bytes of even length (an address, a port pair)."""
    return update_sum(hc, ones_sum(old), ones_sum(new))


def update_addr(hc: int, old: int, new: int) -> int:
    """RFC 1624 for an address (as an integer, any width) changed from ``old`` to ``new``."""
    return update_sum(hc, int_sum(old), int_sum(new))


def int_sum(value: int) -> int:
    """Ones'-complement sum of the 16-bit words of a non-negative integer of any
    width (an address), in 0..0xFFFF: ``ones_sum`` of its big-endian bytes.

    The result is 0 only for 0; a nonzero multiple of 0xFFFF sums to 0xFFFF
    (negative zero), as adding its words with end-around carry does.
    """
    if value == 0:
        return 0
    r = value % _FOLD
    return r if r else 0xFFFF
