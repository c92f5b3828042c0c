"""The host port (io/hostport.py): the host's addresses on one of hopgate's links.

What is for a host address goes up to the host as it arrived (a ``ToHost``
action): ARP for it, IP to it (any protocol, before the hop limit, NAT and the
route), a Neighbor Solicitation for it on its solicited-node group.  hopgate
answers none of it itself, and never routes to a host address; what the host
sends (``Router.from_host``) leaves by its port unchanged.  The config's checks,
the control path, the loop with a stand-in host port, the status and metrics,
and the XDP program (which passes frames to host addresses up)."""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from hopgate import daemon
from hopgate.control import metrics, status
from hopgate.control.config import ConfigError, parse
from hopgate.control.reload import restart_only
from hopgate.io import ctlpath
from hopgate.io.afpacket import IoCounters, PacketSocket
from hopgate.io.hostport import HostPort
from hopgate.io.links import Change, LinkInfo
from hopgate.io.loop import Loop
from hopgate.pipeline.actions import Action, Drop, DropReason, ToHost, Transmit
from hopgate.pipeline.router import Router
from tests.unit import frames as F
from tests.unit.test_ctlpath import run as run_classic
from tests.unit.test_loop import WAIT, FakeClock, PairSocket

HOST4 = "198.18.1.111"  # on gw-c's subnet
HOST6 = "2001:2:0:1::111"
HOST_U4 = "198.18.2.111"  # on gw-u's
HOST_U6 = "2001:2:0:2::111"
HOST_MAC = F.GW_C_MAC  # the host port has its port's MAC


def host_router(*, upstream: bool = False, learn: bool = True) -> Router:
    """The test router with host addresses on gw-c (and on gw-u if ``upstream``),
    its neighbours known (``learn``)."""
    spec = F.spec()
    c, u = spec.ports
    hosts_c = (ipaddress.ip_interface(f"{HOST4}/24"), ipaddress.ip_interface(f"{HOST6}/64"))
    hosts_u = (ipaddress.ip_interface(f"{HOST_U4}/24"), ipaddress.ip_interface(f"{HOST_U6}/64"))
    ports = (
        dataclasses.replace(c, host_addresses=hosts_c),
        dataclasses.replace(u, host_addresses=hosts_u if upstream else ()),
    )
    r = Router(dataclasses.replace(spec, ports=ports), now=0.0)
    if learn:
        F.learn_neighbours(
            r,
            (
                (F.U, F.UPSTREAM4, F.UPSTREAM_MAC),
                (F.U, F.UPSTREAM6, F.UPSTREAM_MAC),
                (F.C, F.CLIENT4, F.CLIENT_MAC),
                (F.C, F.CLIENT6, F.CLIENT_MAC),
            ),
        )
    return r


def up(actions: list[Action], port: int = F.C) -> list[bytes]:
    """The frames passed up to ``port``'s host."""
    return [bytes(a.frame) for a in actions if isinstance(a, ToHost) and a.port == port]


def only_to_host(actions: list[Action], frame: bytes) -> None:
    """``frame`` went up to gw-c's host as it came, and nothing else happened."""
    assert up(actions) == [frame], actions
    assert not any(isinstance(a, (Transmit, Drop)) for a in actions), actions


# -- the pipeline: what goes up ------------------------------------------------------


def test_an_arp_request_for_a_host_address_goes_up_and_hopgate_does_not_answer() -> None:
    r = host_router()
    frame = bytes(
        Ether(src=F.CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=F.CLIENT_MAC, psrc=F.CLIENT4, pdst=HOST4)
    )
    out = r.process(bytearray(frame), F.C, 1.0)
    only_to_host(out, frame)
    assert r.counters.arp_sent["reply"] == 0
    assert r.counters.to_host[F.C] == 1


def test_without_host_addresses_the_same_request_is_not_for_anyone() -> None:
    """The test above can fail: without the host port, the request is dropped."""
    frame = bytearray(
        bytes(
            Ether(src=F.CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=F.CLIENT_MAC, psrc=F.CLIENT4, pdst=HOST4)
        )
    )
    out = F.resolved_router().process(frame, F.C, 1.0)
    assert F.drops(out) == [DropReason.ARP_NOT_FOR_US] and up(out) == []


def test_an_arp_reply_to_the_host_goes_up() -> None:
    r = host_router()
    frame = bytes(
        Ether(src=F.CLIENT_MAC, dst=HOST_MAC)
        / ARP(op=2, hwsrc=F.CLIENT_MAC, psrc=F.CLIENT4, hwdst=HOST_MAC, pdst=HOST4)
    )
    only_to_host(r.process(bytearray(frame), F.C, 1.0), frame)


@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.CLIENT4, dst=HOST4) / ICMP(id=7, seq=1) / b"ping",
        IP(src=F.CLIENT4, dst=HOST4, ttl=1) / ICMP(id=7, seq=2),  # before the TTL
        IP(src=F.CLIENT4, dst=HOST4) / TCP(sport=40000, dport=179, flags="S"),
        IP(src=F.CLIENT4, dst=HOST4) / UDP(sport=40000, dport=3784) / b"bfd",
        IP(src=F.CLIENT4, dst=HOST4, proto=89) / b"ospf",
        IPv6(src=F.CLIENT6, dst=HOST6) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping"),
        IPv6(src=F.CLIENT6, dst=HOST6, hlim=1) / TCP(sport=40000, dport=179, flags="S"),
        IPv6(src=F.CLIENT6, dst=HOST6) / UDP(sport=40000, dport=3784) / b"bfd",
    ],
    ids=["ping4", "ttl1", "tcp4", "udp4", "proto89", "ping6", "hlim1-tcp6", "udp6"],
)
def test_ip_to_a_host_address_goes_up_unchanged_and_hopgate_answers_none(ip: Any) -> None:
    r = host_router()
    frame = bytes(F.from_client(ip))
    out = r.process(bytearray(frame), F.C, 1.0)
    only_to_host(out, frame)
    assert not r.counters.icmp_sent and r.counters.tcp_resets_sent == 0
    assert r.counters.forwarded[F.C] == 0


def test_a_solicitation_for_a_host_address_on_its_group_goes_up() -> None:
    r = host_router()
    group = socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, HOST6)))
    frame = bytes(
        Ether(src=F.CLIENT_MAC, dst=in6_getnsmac(socket.inet_pton(socket.AF_INET6, group)))
        / IPv6(src=F.CLIENT6, dst=group, hlim=255)
        / ICMPv6ND_NS(tgt=HOST6)
        / ICMPv6NDOptSrcLLAddr(lladdr=F.CLIENT_MAC)
    )
    out = r.process(bytearray(frame), F.C, 1.0)
    only_to_host(out, frame)
    assert r.counters.nd_sent["advertisement"] == 0


def test_without_host_addresses_that_solicitation_is_dropped() -> None:
    group = socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, HOST6)))
    frame = bytearray(
        bytes(
            Ether(src=F.CLIENT_MAC, dst=in6_getnsmac(socket.inet_pton(socket.AF_INET6, group)))
            / IPv6(src=F.CLIENT6, dst=group, hlim=255)
            / ICMPv6ND_NS(tgt=HOST6)
        )
    )
    out = F.resolved_router().process(frame, F.C, 1.0)
    assert F.drops(out) == [DropReason.MULTICAST_NOT_ROUTED] and up(out) == []


def test_an_advertisement_to_the_host_and_a_unicast_solicitation_go_up() -> None:
    r = host_router()
    for msg in (
        ICMPv6ND_NA(tgt=F.CLIENT6, S=1, O=1),
        ICMPv6ND_NS(tgt=HOST6) / ICMPv6NDOptSrcLLAddr(lladdr=F.CLIENT_MAC),
    ):
        frame = bytes(
            Ether(src=F.CLIENT_MAC, dst=HOST_MAC) / IPv6(src=F.CLIENT6, dst=HOST6, hlim=255) / msg
        )
        only_to_host(r.process(bytearray(frame), F.C, 1.0), frame)


def test_hopgate_still_answers_for_its_own_addresses_beside_the_host() -> None:
    r = host_router()
    request = Ether(src=F.CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=F.CLIENT_MAC, psrc=F.CLIENT4, pdst=F.GW_C4
    )
    out = r.process(bytearray(bytes(request)), F.C, 1.0)
    (reply,) = F.sent(out)
    assert reply[ARP].op == 2 and reply[ARP].psrc == F.GW_C4 and up(out) == []
    out = r.process(F.from_client(IP(src=F.CLIENT4, dst=F.GW_C4) / ICMP()), F.C, 1.0)
    (echo,) = F.sent(out)
    assert echo[ICMP].type == 0 and up(out) == []


# -- never routed to ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.UPSTREAM4, dst=HOST4) / UDP(sport=1, dport=2),
        IPv6(src=F.UPSTREAM6, dst=HOST6) / UDP(sport=1, dport=2),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_packet_to_a_host_address_from_another_link_is_not_routed_to_it(ip: Any) -> None:
    r = host_router()
    frame = F.from_upstream(ip)
    out = r.process(frame, F.U, 1.0)
    assert F.drops(out) == [DropReason.HOST_ADDRESS_NOT_ROUTED]
    assert F.sent(out) == [] and up(out) == [] and up(out, F.U) == []
    # The test can fail: without the host port hopgate routes it out of gw-c.
    plain = F.resolved_router().process(F.from_upstream(ip), F.U, 1.0)
    assert [a.port for a in plain if isinstance(a, Transmit)] == [F.C]


def test_a_packet_from_a_host_address_on_the_wire_is_a_martian() -> None:
    r = host_router()
    out = r.process(F.from_client(IP(src=HOST4, dst=F.SERVER4) / UDP()), F.C, 1.0)
    assert F.drops(out) == [DropReason.MARTIAN_SOURCE]
    out = r.process(F.from_client(IPv6(src=HOST6, dst=F.SERVER6) / UDP()), F.C, 1.0)
    assert F.drops(out) == [DropReason.MARTIAN_SOURCE]


# -- from the host ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        Ether(src=HOST_MAC, dst=F.CLIENT_MAC) / IP(src=HOST4, dst=F.CLIENT4) / TCP(sport=179),
        Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=HOST4, pdst=F.CLIENT4),
        Ether(src=HOST_MAC, dst=F.CLIENT_MAC)
        / IPv6(src=HOST6, dst=F.CLIENT6, hlim=1)
        / ICMPv6EchoRequest(),
    ],
    ids=["tcp4", "arp", "ping6-hlim1"],
)
def test_what_the_host_sends_leaves_by_its_port_unchanged(frame: Any) -> None:
    r = host_router()
    raw = bytes(frame)
    out = r.from_host(raw, F.C, 1.0)
    assert [(a.port, bytes(a.frame)) for a in out if isinstance(a, Transmit)] == [(F.C, raw)]
    assert F.drops(out) == []
    assert r.counters.from_host[F.C] == 1 and r.counters.tx_packets[F.C] == 1


def test_what_is_no_frame_of_the_link_is_dropped_with_a_reason() -> None:
    r = host_router()
    too_long = bytes(Ether(src=HOST_MAC) / IP(src=HOST4, dst=F.CLIENT4) / (b"x" * 1600))
    group_source = bytes(Ether(src="01:00:5e:00:00:01") / IP(src=HOST4, dst=F.CLIENT4))
    assert F.drops(r.from_host(too_long, F.C, 1.0)) == [DropReason.HOST_FRAME_EXCEEDS_MTU]
    assert F.drops(r.from_host(b"\x00" * 10, F.C, 1.0)) == [DropReason.HOST_FRAME_MALFORMED]
    assert F.drops(r.from_host(group_source, F.C, 1.0)) == [DropReason.HOST_FRAME_MALFORMED]
    r.link_down(F.C)
    ok = bytes(Ether(src=HOST_MAC, dst=F.CLIENT_MAC) / IP(src=HOST4, dst=F.CLIENT4))
    assert F.drops(r.from_host(ok, F.C, 1.0)) == [DropReason.LINK_DOWN]
    assert r.counters.from_host[F.C] == 4 and r.counters.tx_packets[F.C] == 0


def test_the_counters_show_the_host_ports_frames_only_where_there_is_one() -> None:
    r = host_router()
    r.process(F.from_client(IP(src=F.CLIENT4, dst=HOST4) / ICMP()), F.C, 1.0)
    r.from_host(bytes(Ether(src=HOST_MAC, dst=F.CLIENT_MAC) / IP()), F.C, 1.0)
    c, u = r.counters.snapshot()["ports"]
    assert (c["to_host"], c["from_host"]) == (1, 1)
    assert "to_host" not in u and "from_host" not in u


def test_a_new_mac_keeps_the_host_addresses_solicited_node_group() -> None:
    r = host_router()
    group = int(
        ipaddress.ip_address(
            socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, HOST6)))
        )
    )
    assert group in r.ports[F.C].v6_groups
    r.link_up(F.C, bytes.fromhex("020000000199"))
    assert group in r.ports[F.C].v6_groups


# -- the control path ---------------------------------------------------------------


def test_frames_to_the_ports_host_addresses_take_the_control_socket() -> None:
    r = host_router(upstream=True)
    control, data = ctlpath.programs(*ctlpath.own_addresses(r.ports, F.C))
    for ip in (IP(src=F.CLIENT4, dst=HOST4) / TCP(), IPv6(src=F.CLIENT6, dst=HOST6) / TCP()):
        frame = bytes(F.from_client(ip))
        assert run_classic(control, frame) and not run_classic(data, frame), ip.summary()
    # Another port's host addresses are not served here: data (and dropped).
    for ip in (IP(src=F.CLIENT4, dst=HOST_U4) / TCP(), IPv6(src=F.CLIENT6, dst=HOST_U6) / TCP()):
        frame = bytes(F.from_client(ip))
        assert run_classic(data, frame) and not run_classic(control, frame), ip.summary()


# -- the config ---------------------------------------------------------------------

CONFIG = """
[[interface]]
name = "gw-c"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]
{host}

[[interface]]
name = "gw-u"
addresses = ["198.18.2.1/24", "2001:2:0:2::1/64"]
{host_u}

[[route]]
prefix = "0.0.0.0/0"
via = ["198.18.2.2"]
{extra}
"""
HOST = 'host_addresses = ["198.18.1.111/24", "2001:2:0:1::111/64"]'


def config(host: str = HOST, host_u: str = "", extra: str = "") -> str:
    return CONFIG.format(host=host, host_u=host_u, extra=extra)


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return [str(i) for i in e.value.issues]


def test_host_addresses_reach_the_pipeline_and_name_their_port() -> None:
    cfg = parse(config())
    c, u = cfg.interface
    assert c.host_port() == "h-gw-c" and u.host_port() is None
    spec = cfg.router_spec({"gw-c": (b"\x02" * 6, 1500), "gw-u": (b"\x04" * 6, 1500)})
    assert [str(a) for a in spec.ports[0].host_addresses] == [
        "198.18.1.111/24",
        "2001:2:0:1::111/64",
    ]
    assert spec.ports[1].host_addresses == ()
    r = Router(spec)
    assert r.local.hosts[4] == {int(ipaddress.ip_address(HOST4)): 0}


def test_a_long_interface_names_host_port_is_cut_to_15_characters() -> None:
    text = config().replace('"gw-c"', '"uplink-0123456"')
    assert parse(text).interface[0].host_port() == "h-uplink-012345"
    named = config(host=HOST + '\nhost_name = "bgp0"')
    assert parse(named).interface[0].host_port() == "bgp0"


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        (
            'host_addresses = ["198.18.1.1/24"]',
            "",
            "interface[0].host_addresses[0]: 198.18.1.1 is gw-c's own address; a host address"
            " is the host's, not hopgate's",
        ),
        (
            'host_addresses = ["198.18.2.1/24"]',
            "",
            "interface[0].host_addresses[0]: 198.18.2.1 is gw-u's own address",
        ),
        (
            'host_addresses = ["198.18.9.1/24"]',
            "",
            "interface[0].host_addresses[0]: 198.18.9.1 is not on a subnet of gw-c's addresses",
        ),
        (
            'host_addresses = ["2001:2:0:9::1/64"]',
            "",
            "interface[0].host_addresses[0]: 2001:2:0:9::1 is not on a subnet of gw-c's",
        ),
        (
            'host_addresses = ["198.18.1.111/24", "198.18.1.111/24"]',
            "",
            "interface[0].host_addresses[1]: 198.18.1.111 is already"
            " interface[0].host_addresses[0]",
        ),
        (
            'host_addresses = ["198.18.1.111"]',
            "",
            "interface[0].host_addresses[0]: '198.18.1.111' needs a prefix length",
        ),
        (
            HOST + '\nhost_name = "gw-u"',
            "",
            "interface[0].host_name: 'gw-u' is interface[1]'s name",
        ),
        (
            HOST + '\nhost_name = "a/b"',
            "",
            "interface[0].host_name: not a Linux interface name",
        ),
        ('host_name = "bgp0"', "", "interface[0].host_name: names the host port"),
        (
            HOST,
            '\n[[service]]\nvip = "198.18.1.111"\nport = 80\nprotocol = "tcp"\n'
            'local_addresses = ["198.18.2.100"]\nbackend = [{ address = "198.18.2.11" }]\n',
            "interface[0].host_addresses[0]: 198.18.1.111 is the VIP of service[0]: hopgate"
            " answers for it itself",
        ),
        (
            HOST,
            '\n[[service]]\nvip = "198.18.100.1"\nport = 80\nprotocol = "tcp"\n'
            'local_addresses = ["198.18.1.111"]\nbackend = [{ address = "198.18.2.11" }]\n',
            "interface[0].host_addresses[0]: 198.18.1.111 is a LIP (service[0].local_addresses[0])",
        ),
        (
            HOST,
            '\n[[service]]\nvip = "198.18.100.1"\nport = 80\nprotocol = "tcp"\n'
            'local_addresses = ["198.18.2.100"]\nbackend = [{ address = "198.18.1.111" }]\n',
            "service[0].backend[0].address: 198.18.1.111 is a host address"
            " (interface[0].host_addresses[0])",
        ),
        (
            HOST,
            '\n[nat]\n[[nat.snat]]\ninside = ["198.18.2.0/24"]\ninterface = "gw-c"\n'
            'pool = ["198.18.1.111"]\n',
            "interface[0].host_addresses[0]: 198.18.1.111 is a NAT pool address",
        ),
        (
            HOST,
            '\n[nat]\n[[nat.dnat]]\nprotocol = "tcp"\npublished = "198.18.1.111:80"\n'
            'inside = "198.18.2.5:80"\n',
            "interface[0].host_addresses[0]: 198.18.1.111 is published by nat.dnat[0]",
        ),
        (
            HOST,
            '\n[[route]]\nprefix = "198.18.7.0/24"\nvia = ["198.18.1.111"]\n',
            "interface[0].host_addresses[0]: 198.18.1.111 is a next hop (route[1].via[0])",
        ),
    ],
    ids=[
        "own",
        "another-interfaces-own",
        "off-subnet",
        "off-subnet-v6",
        "twice",
        "no-prefix",
        "name-of-an-interface",
        "bad-name",
        "name-without-addresses",
        "vip",
        "lip",
        "backend",
        "pool",
        "published",
        "next-hop",
    ],
)
def test_a_host_address_is_the_hosts_alone_on_its_interfaces_subnet(
    host: str, extra: str, expected: str
) -> None:
    found = issues(config(host=host, extra=extra))
    assert any(i.startswith(expected) for i in found), found


def test_the_same_host_address_or_port_name_on_two_interfaces_is_refused() -> None:
    found = issues(config(host_u='host_addresses = ["198.18.2.111/24"]\nhost_name = "h-gw-c"'))
    assert found == ["interface[1].host_name: 'h-gw-c' is already interface[0]'s host port"], found
    long = config(host_u='host_addresses = ["198.18.2.111/24"]')
    long = long.replace('"gw-c"', '"uplink-0123456a"').replace('"gw-u"', '"uplink-0123456b"')
    found = issues(long)
    assert found == [
        "interface[1].host_name: 'h-uplink-012345' is already interface[0]'s host port"
        " (the default for uplink-0123456b: set host_name)"
    ], found


def test_host_addresses_change_only_by_a_restart() -> None:
    old = parse(config())
    assert restart_only(old, parse(config())) == []
    moved = parse(config(host='host_addresses = ["198.18.1.112/24"]'))
    assert [str(i) for i in restart_only(old, moved)] == [
        "interface[0].host_addresses: changes only by a restart"
    ]
    renamed = parse(config(host=HOST + '\nhost_name = "bgp0"'))
    assert [str(i) for i in restart_only(old, renamed)] == [
        "interface[0].host_name: changes only by a restart"
    ]


# -- the loop, with a stand-in for the TAP device -----------------------------------


class FakeHost:
    """A host port over a socketpair: the test's end is the host's kernel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gone = False
        self.carrier: list[bool] = []
        self.macs: list[bytes] = []
        ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self.kernel.settimeout(WAIT)
        self._sock = ours

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self._sock.recv(65536)
        except BlockingIOError:
            return None

    def write(self, frame: bytes | bytearray | memoryview) -> bool:
        self._sock.send(bytes(frame))
        return True

    def set_carrier(self, on: bool) -> None:
        self.carrier.append(on)

    def set_mac(self, mac: bytes) -> None:
        self.macs.append(mac)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "addresses": [f"{HOST4}/24", f"{HOST6}/64"],
            "carrier": not self.carrier or self.carrier[-1],
            "gone": self.gone,
            "io": {"rx_frames": 1, "tx_frames": 1, "tx_dropped_busy": 2, "tx_errors": 3},
        }

    def close(self) -> None:
        self._sock.close()
        self.kernel.close()


@contextmanager
def running(r: Router) -> Iterator[tuple[Loop, PairSocket, PairSocket, FakeHost]]:
    socks = [PairSocket("gw-c"), PairSocket("gw-u")]
    host = FakeHost("h-gw-c")
    loop = Loop(r, list[PacketSocket](socks), clock=FakeClock(1.0), hosts={F.C: host})
    thread = threading.Thread(target=loop.run, name="hopgate-loop", daemon=True)
    thread.start()
    try:
        yield loop, socks[0], socks[1], host
    finally:
        loop.call(lambda: setattr(loop.mailbox, "stopping", True))
        thread.join(WAIT)
        alive = thread.is_alive()
        loop.close()
        host.close()
        for s in socks:
            s.close()
            if s.wire is not None:
                s.wire.close()
        assert not alive, "the loop did not stop when asked"


def test_the_loop_passes_frames_up_to_the_host_and_the_hosts_out_of_its_port() -> None:
    with running(host_router()) as (loop, gw_c, gw_u, host):
        ping = bytes(F.from_client(IP(src=F.CLIENT4, dst=HOST4) / ICMP(id=1) / b"up"))
        gw_c.put(ping)
        assert host.kernel.recv(65536) == ping
        reply = bytes(
            Ether(src=HOST_MAC, dst=F.CLIENT_MAC)
            / IP(src=HOST4, dst=F.CLIENT4)
            / ICMP(type=0, id=1)
            / b"up"
        )
        host.kernel.send(reply)
        got = gw_c.get()
        assert bytes(got) == reply
        assert gw_u.nothing_sent() and gw_c.nothing_sent()
        counts = loop.call(lambda: loop.router.counters.snapshot()["ports"][F.C]).result(WAIT)
        assert (counts["to_host"], counts["from_host"]) == (1, 1)


def test_a_host_port_deleted_under_hopgate_is_read_no_more() -> None:
    with running(host_router()) as (loop, gw_c, _, host):
        frame = bytes(Ether(src=HOST_MAC, dst=F.CLIENT_MAC) / IP(src=HOST4, dst=F.CLIENT4))
        host.gone = True  # as a read that failed with EBADFD leaves it
        host.kernel.send(frame)
        assert bytes(gw_c.get()) == frame  # what was read goes out
        # The turn that read it ends (its read loop would take a frame sent
        # meanwhile, before it sees the port gone): only then the next one.
        loop.call(lambda: None).result(WAIT)
        host.kernel.send(frame)
        loop.call(lambda: None).result(WAIT)
        loop.call(lambda: None).result(WAIT)
        assert gw_c.nothing_sent(), "a deleted host port is still read"
        assert loop.call(lambda: loop.internal_errors).result(WAIT) == 0


def test_the_hosts_carrier_follows_the_ports_link() -> None:
    with running(host_router()) as (loop, _, _, host):
        info = LinkInfo(index=3, name="gw-c", up=False, carrier=False, mac=None)
        loop.call(lambda: loop.apply_link_changes([Change("down", F.C, info, "carrier lost")]))
        loop.call(lambda: None).result(WAIT)
        assert host.carrier == [False]
        back = LinkInfo(
            index=3, name="gw-c", up=True, carrier=True, mac=bytes.fromhex("020000000199")
        )
        loop.call(lambda: loop.apply_link_changes([Change("up", F.C, back, "carrier back")]))
        loop.call(lambda: None).result(WAIT)
        assert host.carrier == [False, True]
        assert host.macs == [bytes.fromhex("020000000199")]


# -- status and metrics -------------------------------------------------------------


class _Loop:
    internal_errors = 0

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def link_status(self, port: int) -> None:
        return None

    def host_status(self, port: int) -> dict[str, Any] | None:
        return self.host.snapshot() if port == F.C else None


class _Socket:
    def update_stats(self) -> IoCounters:
        return IoCounters()


def test_status_and_metrics_show_the_host_port() -> None:
    r = host_router()
    r.process(F.from_client(IP(src=F.CLIENT4, dst=HOST4) / ICMP()), F.C, 1.0)
    host = FakeHost("h-gw-c")
    try:
        sockets: Any = [_Socket(), _Socket()]
        state = daemon.snapshot(r, _Loop(host), sockets, 0.0, "t.toml")  # type: ignore[arg-type]
    finally:
        host.close()
    state = json.loads(json.dumps(state))
    c, u = state["interfaces"]
    assert c["host"]["name"] == "h-gw-c" and c["to_host"] == 1 and "host" not in u
    text = metrics.render(state).decode()
    assert 'hopgate_host_frames_total{direction="to_host",interface="gw-c"} 1.0' in text
    assert 'hopgate_host_frames_total{direction="from_host",interface="gw-c"} 0.0' in text
    assert 'hopgate_host_port_up{interface="gw-c"} 1.0' in text
    assert 'hopgate_host_port_events_total{event="tx_errors",interface="gw-c"} 3.0' in text
    assert 'interface="gw-u"' not in "".join(
        line for line in text.splitlines() if line.startswith("hopgate_host")
    )
    console = Console(record=True, width=200)
    status.render(state, console)
    shown = console.export_text()
    assert "Host ports" in shown and "h-gw-c" in shown and f"{HOST4}/24" in shown


# -- the XDP fast path ---------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
@pytest.mark.parametrize(
    "ip",
    [
        IP(src=F.CLIENT4, dst=HOST_U4) / UDP(sport=40000, dport=9) / (b"x" * 18),
        IPv6(src=F.CLIENT6, dst=HOST_U6) / UDP(sport=40000, dport=9) / (b"x" * 18),
        IP(src=F.CLIENT4, dst=HOST4) / TCP(sport=40000, dport=179, flags="A"),
        IPv6(src=F.CLIENT6, dst=HOST6) / TCP(sport=40000, dport=179, flags="A"),
    ],
    ids=["other-port-v4", "other-port-v6", "own-port-v4", "own-port-v6"],
)
def test_the_fast_path_passes_frames_to_host_addresses_up(ip: Any) -> None:
    """Frames to a host address are the pipeline's: the program passes them
    up.  Without the host port the same frames to gw-u's neighbours (known to
    the router, so the program could send them) are forwarded: the test fails
    if the tables lose the host addresses."""
    from hopgate.xdp import tables as T
    from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject

    lo = 1  # the program's test runs need a real ingress device: lo is port C
    assert T.OBJECT.exists(), f"{T.OBJECT} is not built: run scripts/bootstrap"
    frame = bytes(F.from_client(ip))
    # Known as neighbours, as if someone on the link claimed them: without the
    # host port, the program would send these frames to it.
    neighbours = [
        (F.U, HOST_U4, "02:00:00:00:02:99"),
        (F.U, HOST_U6, "02:00:00:00:02:99"),
        (F.C, HOST4, "02:00:00:00:01:99"),
        (F.C, HOST6, "02:00:00:00:01:99"),
    ]
    verdicts = {}
    for with_host in (True, False):
        r = host_router(upstream=True) if with_host else F.resolved_router()
        F.learn_neighbours(r, neighbours)
        with BpfObject(T.OBJECT) as obj:
            T.Tables(obj).fill(r, {F.C: lo, F.U: lo})
            obj.update("port_of", ctypes.c_uint32(lo), ctypes.c_uint32(F.C + 1))
            verdicts[with_host] = obj.test_run(T.PROGRAM, frame, lo).verdict
        out = r.process(bytearray(frame), F.C, 1.0)
        if with_host:
            assert not any(isinstance(a, Transmit) for a in out), out
    assert verdicts[True] == XDP_PASS, f"hopgate's fast path did not pass {ip.summary()} up"
    assert verdicts[False] == XDP_REDIRECT  # the control


# -- the device's reads and writes never raise ------------------------------------


def test_a_full_or_failing_device_is_counted_never_raised() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    host = HostPort("h-test", "gw-c", ours.detach(), ())
    try:
        assert host.read() is None  # nothing sent yet: EAGAIN
        theirs.send(b"frame")
        assert host.read() == b"frame" and host.counters.rx_frames == 1
        while host.write(b"x" * 1000):  # until the other end's queue is full
            assert host.counters.tx_frames < 100_000
        assert host.counters.tx_dropped_busy == 1 and host.counters.tx_errors == 0
        theirs.close()
        host.write(b"x")  # the other end is gone: ECONNREFUSED
        assert host.counters.tx_errors == 1
    finally:
        host.close()
        theirs.close()
    assert host.write(b"x") is False and host.read() is None  # closed: nothing raised
    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = HostPort("h-test", "gw-c", write_end, ())  # reads fail with EBADF
    try:
        assert broken.read() is None and broken.gone and broken.counters.rx_errors == 1
    finally:
        broken.close()
