"""The lab's frame builder, judged by scapy."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from hopgate.lab.frames import tcp4
from tests.unit.nat_frames import checksums_ok


def test_tcp4_builds_a_segment_scapy_reads_with_right_checksums() -> None:
    frame = tcp4(b"\x02" * 6, b"\x04" * 6, "198.18.1.10", 0xC6120310, 40000, 80, 0x12, 7, 9)
    pkt = Ether(frame)
    assert pkt[IP].src == "198.18.1.10" and pkt[IP].dst == "198.18.3.16"
    assert pkt[IP].flags == "DF" and pkt[IP].ttl == 64
    tcp = pkt[TCP]
    assert (tcp.sport, tcp.dport, tcp.flags, tcp.seq, tcp.ack) == (40000, 80, "SA", 7, 9)
    assert checksums_ok(pkt[IP])
