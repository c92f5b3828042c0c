"""The relay's BPF capture in a real kernel: of assorted frames sent at an
interface, only the fragmentation needed / Packet Too Big addressed to the host
reach the relay's socket, through the classic filter and through the eBPF one
(xdp/relayfilter.c, which sees the frame from its Ethernet header as the
classic one does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from hopgate.lab import tools
from hopgate.lab.netns import Lab

RECEIVER = r"""
import json, socket, sys, time
from hopgate.io.capture import CaptureSocket
from hopgate.pipeline.relay import RelaySettings
from hopgate.xdp.relayfilter import RelayFilter
program = None
if sys.argv[2] == "ebpf":
    kernel = RelayFilter(RelaySettings(), [socket.if_nametoindex("eb")])
    program = kernel.prog_fd
c = CaptureSocket("eb", program)
print("ready", flush=True)
got = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    f = c.receive()
    if f:
        got.append(f.hex())
    else:
        time.sleep(0.01)
print(json.dumps(got))
"""


@pytest.mark.parametrize("kind", ["classic", "ebpf"])
def test_only_pmtu_messages_to_this_host_are_captured(kind: str) -> None:
    with Lab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        lab.link(a, "ea", b, "eb")
        mac = b.mac("eb")
        inner4 = bytes(IP(src="198.18.5.1", dst="198.18.9.9") / TCP(sport=80))[:28]
        inner6 = bytes(IPv6(src="2001:2::1", dst="2001:2::9") / TCP(sport=80))[:48]
        v4 = IP(src="198.18.7.1", dst="198.18.5.1")
        v6 = IPv6(src="2001:2::7", dst="2001:2::1")
        ptb4 = ICMP(type=3, code=4, nexthopmtu=1400) / inner4
        frames = {
            "frag needed": Ether(dst=mac) / v4 / ptb4,
            "frag needed, IPv4 options": Ether(dst=mac)
            / IP(src="198.18.7.1", dst="198.18.5.1", options=b"\x01\x01\x01\x01")
            / ptb4,
            "packet too big": Ether(dst=mac) / v6 / ICMPv6PacketTooBig(mtu=1280) / inner6,
            "nothing quoted": Ether(dst=mac) / v4 / ICMP(type=3, code=4, nexthopmtu=1400),
            "broadcast (a relayed copy)": Ether(dst="ff:ff:ff:ff:ff:ff") / v4 / ptb4,
            "another host's": Ether(dst="02:00:00:00:00:99") / v4 / ptb4,
            "port unreachable": Ether(dst=mac) / v4 / ICMP(type=3, code=3) / inner4,
            "echo": Ether(dst=mac) / v4 / ICMP(),
            "echo v6": Ether(dst=mac) / v6 / ICMPv6EchoRequest(),
            "udp": Ether(dst=mac) / v4 / UDP(),
            "later fragment": Ether(dst=mac)
            / IP(src="198.18.7.1", dst="198.18.5.1", frag=4, proto=1)
            / bytes(ptb4),
        }
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", b.name, sys.executable, "-c", RECEIVER, "2", kind],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            tools.inject(a, "ea", [bytes(f) for f in frames.values()])
            out, _ = receiver.communicate(timeout=30)
        finally:
            receiver.kill()
        names = {bytes(f).hex(): name for name, f in frames.items()}
        got = [names.get(h, h) for h in json.loads(out.strip().splitlines()[-1])]
        pmtu = ["frag needed", "frag needed, IPv4 options", "packet too big"]
        # the eBPF filter does the relay's checks too: it would not relay that one
        assert got == ([*pmtu, "nothing quoted"] if kind == "classic" else pmtu)
