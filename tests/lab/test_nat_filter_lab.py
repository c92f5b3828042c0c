"""The NAT as the filter its README promises (issue 9), judged in the NAT lab:
nothing unsolicited reaches an inside host from outside, forged ICMP about a live
flow is not delivered inside, and hopgate answers fragmented pings to its
outside address."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from hopgate.lab import tools
from hopgate.lab.netns import Namespace, Process
from hopgate.lab.topologies import NAT_ADDR, NatLab

A = NAT_ADDR
FLOW_PORT = 47000  # the inside host's port of the live flow
SINK_PORT = 7777  # the server's UDP sink

# Prints "listening", then one line per datagram (its text and source port) or ICMP
# message (its first 8 bytes in hex) that reaches this host.
_LISTENER = """\
import socket, sys
mode = sys.argv[1]
if mode == "udp4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
elif mode == "udp6":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", int(sys.argv[2])))
elif mode == "icmp4":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    if mode == "icmp4":
        data = data[(data[0] & 15) * 4:]
    if mode.startswith("icmp"):
        print(data[:8].hex(), flush=True)
    else:
        print(data.decode(errors="replace"), peer[1], flush=True)
"""


def _listen(ns: Namespace, name: str, mode: str, port: int = 0) -> Process:
    proc = ns.spawn(name, sys.executable, "-u", "-c", _LISTENER, mode, str(port))
    deadline = time.monotonic() + 10
    while not proc.output().startswith("listening"):
        assert proc.alive() and time.monotonic() < deadline, f"{name}: {proc.output()}"
        time.sleep(0.05)
    return proc


def _heard(proc: Process) -> list[str]:
    return [line for line in proc.output().splitlines()[1:] if line]


def _datagrams(proc: Process, text: str) -> list[int]:
    """The source ports of the datagrams holding ``text`` that ``proc`` heard."""
    return [int(line.split()[1]) for line in _heard(proc) if line.split()[0] == text]


def _udp_send(
    ns: Namespace, dst: str, port: int, text: str, count: int = 5, sport: int = 0
) -> None:
    code = (
        "import socket, sys, time\n"
        "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
        "s = socket.socket(fam, socket.SOCK_DGRAM)\n"
        "s.bind(('::' if fam == socket.AF_INET6 else '0.0.0.0', int(sys.argv[5])))\n"
        "for i in range(int(sys.argv[4])):\n"
        "    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n"
        "    time.sleep(0.05)\n"
    )
    ns.run(sys.executable, "-c", code, dst, str(port), text, str(count), str(sport))


def _wait_for(check: Callable[[], object], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def _drops(lab: NatLab, reason: str) -> int:
    return int(lab.status()["drops"].get(reason, 0))


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def lab(request: pytest.FixtureRequest) -> Iterator[NatLab]:
    """The NAT lab on each data plane: what hopgate must filter or translate
    goes up to the pipeline through the XDP program too."""
    with NatLab("hopgate", servers=False, dataplane=request.param) as lab:
        r1 = lab.ns("r1")
        # r1 is told the way to the inside prefixes: nothing but hopgate stops it
        r1.route("198.18.1.0/24", A.gw_u4)
        r1.route("2001:2:0:1::/64", A.gw_u6)
        yield lab


@pytest.mark.parametrize("family", [4, 6])
def test_udp_from_outside_to_an_inside_address_is_not_delivered(lab: NatLab, family: int) -> None:
    inside1, inside_addr = lab.ns("inside1"), A.inside1_4 if family == 4 else A.inside1_6
    port = 5000 + family
    listener = _listen(inside1, f"udp-listener-{family}", f"udp{family}", port)
    # the listener hears what comes over the bridge (not through hopgate)
    _udp_send(lab.ns("inside2"), inside_addr, port, "neighbour", count=3)
    assert _wait_for(lambda: _datagrams(listener, "neighbour")), listener.output()
    before = _drops(lab, "nat-unsolicited")
    _udp_send(lab.ns("r1"), inside_addr, port, "unsolicited", count=5)
    assert _wait_for(lambda: _drops(lab, "nat-unsolicited") >= before + 1), (
        f"{lab.gateway} counted no nat-unsolicited drop: {lab.status()['drops']}"
    )
    time.sleep(0.5)
    assert not _datagrams(listener, "unsolicited"), f"{lab.gateway} let UDP in: {_heard(listener)}"


@pytest.mark.parametrize(
    ("src", "family"), [("r1", 4), ("server", 4), ("r1", 6)], ids=["r1", "server", "r1-v6"]
)
def test_a_fragmented_ping_to_the_outside_address_is_answered(
    lab: NatLab, src: str, family: int
) -> None:
    dst = A.gw_u4 if family == 4 else A.gw_u6
    ping = tools.ping(lab.ns(src), dst, count=3, size=3000)
    assert ping.received >= 1, (
        f"{lab.gateway} did not answer ping -s 3000 to {dst}: {ping.run.output}"
    )


def _frame(lab: NatLab, packet: Packet) -> bytes:
    """``packet`` as r1 hands it to hopgate's outside interface."""
    gw_mac = lab.ns("gw").mac("gw-u")
    return bytes(Ether(src=lab.ns("r1").mac("r1-d"), dst=gw_mac) / packet)


def _inject_until_counted(lab: NatLab, frames: list[bytes], reason: str) -> None:
    """Send ``frames`` from r1 to hopgate until it has counted each as ``reason``
    (r1's link may lose one; hopgate must count every one it gets)."""
    before = _drops(lab, reason)
    for _ in range(3):
        tools.inject(lab.ns("r1"), "r1-d", frames)
        if _wait_for(lambda: _drops(lab, reason) >= before + len(frames), 2.0):
            return
    raise AssertionError(f"{lab.gateway} did not count {reason}: {lab.status()['drops']}")


def _icmp_heard(listener: Process, type_code: str) -> list[str]:
    return [line for line in _heard(listener) if line.startswith(type_code)]


def test_forged_icmp_about_a_live_flow_is_not_delivered_inside(lab: NatLab) -> None:
    inside1, r1, server = lab.ns("inside1"), lab.ns("r1"), lab.ns("server")
    sink4 = _listen(server, "sink4", "udp4", SINK_PORT)
    icmp4 = _listen(inside1, "icmp4-listener", "icmp4")
    _udp_send(inside1, A.server4, SINK_PORT, "flow", count=2, sport=FLOW_PORT)
    assert _wait_for(lambda: _datagrams(sink4, "flow")), (
        f"{lab.gateway}: the flow did not pass: {sink4.output()}"
    )
    port = _datagrams(sink4, "flow")[0]  # as it left hopgate
    # what r1 would quote of a 1400-byte packet of the flow it could not pass on
    big = bytes(
        IP(src=A.gw_u4, dst=A.server4, ttl=63, flags="DF", len=1400)
        / UDP(sport=port, dport=SINK_PORT, len=1380)
    )[:28]

    def error(icmp: Packet) -> bytes:
        return _frame(lab, IP(src=A.r1_d4, dst=A.gw_u4) / icmp / Raw(big))

    # a true fragmentation needed reaches the inside host: the listener hears it
    genuine = error(ICMP(type=3, code=4, nexthopmtu=1280))
    for _ in range(3):
        tools.inject(r1, "r1-d", [genuine])
        if _wait_for(lambda: _icmp_heard(icmp4, "0304"), 2.0):
            break
    assert _icmp_heard(icmp4, "0304"), (
        f"{lab.gateway} did not deliver a genuine frag-needed: {lab.status()}"
    )
    heard = len(_heard(icmp4))
    forged = {
        "nat-icmp-redirect": [error(ICMP(type=5, code=1, gw=A.r1_d4))],
        "nat-bad-mtu": [error(ICMP(type=3, code=4, nexthopmtu=m)) for m in (0, 65535)],
    }
    for reason, frames in forged.items():
        _inject_until_counted(lab, frames, reason)
    time.sleep(0.5)
    assert len(_heard(icmp4)) == heard, (
        f"{lab.gateway} delivered forged ICMP inside: {_heard(icmp4)}"
    )


def test_a_packet_too_big_below_1280_is_not_delivered_inside(lab: NatLab) -> None:
    inside1, r1, server = lab.ns("inside1"), lab.ns("r1"), lab.ns("server")
    sink6 = _listen(server, "sink6", "udp6", SINK_PORT + 1)
    icmp6 = _listen(inside1, "icmp6-listener", "icmp6")
    _udp_send(inside1, A.server6, SINK_PORT + 1, "flow6", count=2, sport=FLOW_PORT)
    assert _wait_for(lambda: _datagrams(sink6, "flow6")), (
        f"{lab.gateway}: the IPv6 flow did not pass: {sink6.output()}"
    )
    port = _datagrams(sink6, "flow6")[0]
    big = bytes(
        IPv6(src=A.gw_u6, dst=A.server6, hlim=63, plen=1360)
        / UDP(sport=port, dport=SINK_PORT + 1, len=1360)
    )[:48]

    def ptb(mtu: int) -> bytes:
        return _frame(lab, IPv6(src=A.r1_d6, dst=A.gw_u6) / ICMPv6PacketTooBig(mtu=mtu) / Raw(big))

    for _ in range(3):
        tools.inject(r1, "r1-d", [ptb(1280)])
        if _wait_for(lambda: _icmp_heard(icmp6, "0200"), 2.0):
            break
    assert _icmp_heard(icmp6, "0200"), f"{lab.gateway} did not deliver a genuine Packet Too Big"
    heard = len(_heard(icmp6))
    _inject_until_counted(lab, [ptb(1000), ptb(0), ptb(65535)], "nat-bad-mtu")
    time.sleep(0.5)
    assert len(_heard(icmp6)) == heard, (
        f"{lab.gateway} delivered a forged Packet Too Big: {_heard(icmp6)}"
    )
