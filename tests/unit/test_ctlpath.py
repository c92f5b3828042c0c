"""The control path's classic BPF programs, run by a small interpreter of the
instructions they use (with the kernel's rule that a load past the end of the
frame returns 0: drop) on frames built by scapy."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from hopgate.io import ctlpath
from hopgate.io.ctlpath import (
    JA,
    JEQ_K,
    JGE_K,
    LD_B_ABS,
    LD_H_ABS,
    LD_W_ABS,
    LD_W_LEN,
    RET_K,
    Insn,
    ProgramTooLongError,
)
from hopgate.packet import addr as A
from tests.unit.frames import GW_C4, GW_C6, GW_U4, GW_U6, GW_U_MAC, SERVER4, SERVER6, U, router

_SIZES = {LD_W_ABS: 4, LD_H_ABS: 2, LD_B_ABS: 1}


def run(program: list[Insn], frame: bytes) -> int:
    """What the kernel's classic BPF would return for ``frame``."""
    a = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]  # running off the end is a bug: IndexError
        pc += 1
        if code == LD_W_LEN:
            a = len(frame)
        elif code in _SIZES:
            size = _SIZES[code]
            if k + size > len(frame):
                return 0
            a = int.from_bytes(frame[k : k + size], "big")
        elif code == JA:
            pc += k
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == JGE_K:
            pc += jt if a >= k else jf
        elif code == RET_K:
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")


def _check_shape(program: list[Insn]) -> None:
    """What the kernel's checker asks: jumps forward and inside, a return last."""
    assert program[-1][0] == RET_K
    for i, (code, jt, jf, k) in enumerate(program):
        if code == RET_K:
            continue
        targets = [i + 1 + k] if code == JA else [i + 1 + jt, i + 1 + jf]
        assert all(i < t < len(program) for t in targets), (i, program[i])


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _programs() -> tuple[list[Insn], list[Insn]]:
    """gw-u's programs in the reference router of the pipeline tests."""
    r = router()
    ctl, data = ctlpath.programs(*ctlpath.own_addresses(r.ports, U))
    _check_shape(ctl)
    _check_shape(data)
    return ctl, data


def _path(frame: bytes) -> str:
    ctl, data = _programs()
    c, d = run(ctl, frame), run(data, frame)
    assert (c > 0) != (d > 0), "read by exactly one socket"
    return "control" if c else "data"


def _eth(payload: object, dst: str = GW_U_MAC) -> bytes:
    return bytes(Ether(src="02:00:00:00:02:02", dst=dst) / payload)


BCAST = "ff:ff:ff:ff:ff:ff"
R = router()
GW_U_LL = str(ipaddress.IPv6Address(R.ports[U].link_local))
GW_C_LL = str(ipaddress.IPv6Address(R.ports[0].link_local))


def test_arp_and_nd_are_control() -> None:
    assert _path(_eth(ARP(op=1, psrc="198.18.2.2", pdst=GW_U4), BCAST)) == "control"
    assert _path(_eth(ARP(op=2, psrc="198.18.2.2", pdst=GW_U4))) == "control"
    group = str(ipaddress.IPv6Address(A.v6_solicited_node(_ip(GW_U6))))
    ns = IPv6(src="2001:2:0:2::2", dst=group) / ICMPv6ND_NS(tgt=GW_U6)
    assert _path(_eth(ns, "33:33:ff:00:00:01")) == "control"


def test_traffic_to_hopgates_addresses_is_control() -> None:
    for dst in (GW_U4, GW_C4):  # any of its interfaces' addresses
        assert _path(_eth(IP(src=SERVER4, dst=dst) / TCP(flags="SA"))) == "control"
    for dst in (GW_U6, GW_C6, GW_U_LL):
        assert _path(_eth(IPv6(src=SERVER6, dst=dst) / ICMPv6EchoRequest())) == "control"


def test_everything_else_is_data() -> None:
    for dst in (SERVER4, "198.18.2.50"):  # forwarded; a VIP or NAT address
        assert _path(_eth(IP(src="198.18.1.10", dst=dst) / UDP())) == "data"
    for dst in (SERVER6, GW_C_LL):  # forwarded; another link's link-local
        assert _path(_eth(IPv6(src="2001:2:0:1::10", dst=dst) / UDP())) == "data"
    # The tag left in place: data (and the pipeline decides).
    assert _path(_eth(Dot1Q(vlan=5) / ARP(pdst=GW_U4), BCAST)) == "data"
    assert _path(_eth(IP(src=SERVER4, dst="224.0.0.5") / ICMP())) == "data"


def test_short_frames_are_data_not_dropped() -> None:
    """A classic BPF load past the end returns 0: both sockets would drop the
    frame, and the pipeline would not count it as malformed."""
    for n in range(60):
        for ethertype in (b"\x08\x00", b"\x86\xdd", b"\x08\x06"):
            frame = (bytes.fromhex(GW_U_MAC.replace(":", "")) + bytes(6) + ethertype + bytes(60))[
                :n
            ]
            got = _path(frame)
            assert got == ("control" if ethertype == b"\x08\x06" and n >= 14 else "data"), n


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"ab"]))
def test_every_frame_is_read_by_exactly_one_socket(tail: bytes, ethertype: bytes) -> None:
    frame = bytes(12) + ethertype + tail
    _path(frame)
    ip = tail[:16].ljust(16, b"\0") + bytes.fromhex("c6120201") + tail[20:]  # to gw-u's IPv4
    assert _path(bytes(12) + b"\x08\x00" + ip) == "control"


def test_many_addresses_take_long_jumps_and_too_many_are_refused() -> None:
    v4 = [_ip("198.18.0.0") + i for i in range(300)]  # the v6 block > 255 instructions on
    v6 = [_ip("2001:2::") + i for i in range(100)]
    ctl, data = ctlpath.programs(v4, v6)
    _check_shape(ctl)
    frame = _eth(IPv6(src=SERVER6, dst="2001:2::63") / UDP())
    assert run(ctl, frame) and not run(data, frame)
    assert run(data, _eth(IPv6(src=SERVER6, dst="2001:2::64") / UDP()))
    assert run(ctl, _eth(IP(src=SERVER4, dst="198.18.1.43") / UDP()))
    try:
        ctlpath.programs([], [_ip("2001:2::") + i for i in range(500)])
    except ProgramTooLongError:
        pass
    else:
        raise AssertionError("a program over 4096 instructions was built")
