"""Second chance (pipeline/lb/cluster.py): three load-balancer nodes behind one
ECMP router, end to end on the wire (tests/unit/wire.py).  A connection opened
through node 1 whose later segments the router hands to node 2 (its set of next
hops changed) reaches its backend through node 1 all the same: node 2 holds no
connection for them, so it sends each to its peers, and node 1, which holds it,
forwards it, byte for byte as it forwards the segment arriving directly.

    ECMP router ── front ── (gw-f) n1, n2, n3 (gw-b) ── back ── be1, be2
    (the test)                                               (the test)

Each node names the other two as ``[relay]`` peers (by their IPv4 addresses on
the front link, resolved by ARP over the wire) and shares the VIPs (Maglev); each
has its own local address on the back LAN, as in the lab (lab/ecmplab.py).

Then: the config (``[relay] second_chance``), the counts in status and metrics,
and the XDP fast path in front of the node holding the connection (root only,
BPF_PROG_TEST_RUN): it passes the copies up, and the pipeline forwards them as
the program forwards the segment itself.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from rich.console import Console
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from hopgate import daemon
from hopgate.control import config, metrics, status, views
from hopgate.control.config import ConfigError
from hopgate.pipeline import conntrack
from hopgate.pipeline.actions import Drop, DropReason, Replay, Transmit
from hopgate.pipeline.conntrack import Conn, TcpState
from hopgate.pipeline.model import RelaySpec, RouterSpec
from hopgate.pipeline.relay import SECOND_CHANCE_ETHERTYPE
from hopgate.pipeline.router import Router
from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import XDP_PASS, XDP_REDIRECT, BpfObject
from tests.unit import lb_frames as L
from tests.unit.frames import mac
from tests.unit.nat_frames import checksums_ok
from tests.unit.test_state_views import _Loop, _Socket
from tests.unit.test_xdp_nat import _executed
from tests.unit.wire import Host, Wire

ECMP_MAC = "02:00:00:00:52:01"
NODE_F_MACS = ("02:00:00:00:52:11", "02:00:00:00:52:12", "02:00:00:00:52:13")
NODE_B_MACS = ("02:00:00:00:53:01", "02:00:00:00:53:02", "02:00:00:00:53:03")
BE_MACS = ("02:00:00:00:53:15", "02:00:00:00:53:16")

ECMP4, ECMP6 = "198.18.52.1", "2001:2:0:52::1"
CLIENT4, CLIENT6 = "198.18.50.10", "2001:2:0:50::10"
FRONT4 = ("198.18.52.11", "198.18.52.12", "198.18.52.13")
FRONT6 = ("2001:2:0:52::11", "2001:2:0:52::12", "2001:2:0:52::13")
BACK4 = ("198.18.53.1", "198.18.53.2", "198.18.53.3")
BACK6 = ("2001:2:0:53::1", "2001:2:0:53::2", "2001:2:0:53::3")
LIPS4 = ("198.18.53.101", "198.18.53.102", "198.18.53.103")
LIPS6 = ("2001:2:0:53::101", "2001:2:0:53::102", "2001:2:0:53::103")
BE4, BE6 = ("198.18.53.21", "198.18.53.22"), ("2001:2:0:53::21", "2001:2:0:53::22")
VIP4, VIP6 = "198.18.60.1", "2001:2:0:60::1"
NODES = ("n1", "n2", "n3")


def node_config(i: int, relay: str) -> str:
    """Node ``i``'s config file; ``relay``: the body of its ``[relay]``."""

    def service(name: str, vip: str, lip: str, backends: tuple[str, ...], proto: str) -> str:
        listed = ", ".join(f'{{ address = "{b}" }}' for b in backends)
        return f"""
[[service]]
name = "{name}"
vip = "{vip}"
port = 80
protocol = "{proto}"
scheduler = "maglev"
local_addresses = ["{lip}"]
backend = [{listed}]
health = {{ kind = "none" }}
"""

    return (
        f"""
[[interface]]
name = "gw-f"
addresses = ["{FRONT4[i]}/24", "{FRONT6[i]}/64"]

[[interface]]
name = "gw-b"
addresses = ["{BACK4[i]}/24", "{BACK6[i]}/64"]

[[route]]
prefix = "0.0.0.0/0"
via = ["{ECMP4}"]

[[route]]
prefix = "::/0"
via = ["{ECMP6}"]
"""
        + service("web", VIP4, LIPS4[i], BE4, "tcp")
        + service("web6", VIP6, LIPS6[i], BE6, "tcp")
        + service("web-udp", VIP4, LIPS4[i], BE4, "udp")
        + f"""
[relay]
interfaces = ["gw-f"]
{relay}
"""
    )


def peers_of(i: int) -> str:
    listed = ", ".join(f'"{a}"' for j, a in enumerate(FRONT4) if j != i)
    return f"peers = [{listed}]"


def node_spec(i: int, relay: str) -> RouterSpec:
    links = {"gw-f": (mac(NODE_F_MACS[i]), 1500), "gw-b": (mac(NODE_B_MACS[i]), 1500)}
    return config.parse(node_config(i, relay), f"n{i + 1}.toml").router_spec(links)


class Cluster:
    def __init__(self, relays: tuple[str, ...]) -> None:
        self.wire = Wire()
        for i, relay in enumerate(relays):
            self.wire.router(NODES[i], node_spec(i, relay))
            self.wire.plug("front", NODES[i], "gw-f")
            self.wire.plug("back", NODES[i], "gw-b")
        self.ecmp = self.wire.host("front", "ecmp", ECMP_MAC, ECMP4, ECMP6)
        self.backends = (
            self.wire.host("back", "be1", BE_MACS[0], BE4[0], BE6[0]),
            self.wire.host("back", "be2", BE_MACS[1], BE4[1], BE6[1]),
        )

    def router(self, i: int) -> Router:
        return self.wire.routers[NODES[i]]

    def to_node(self, i: int, packet: Packet) -> None:
        """The ECMP router hands ``packet`` to node ``i``."""
        self.ecmp.send(packet, NODE_F_MACS[i])

    def at_backends(self) -> list[tuple[Host, Ether]]:
        return [(b, f) for b in self.backends for f in b.take()]

    def chance(self, i: int) -> dict[str, int]:
        r = self.router(i)
        assert r.cluster is not None
        got = views.relay(r.cluster.state())["second_chance"]
        assert got is not None, f"{NODES[i]} has second chance off"
        return dict(got)

    def drops(self, i: int) -> list[DropReason]:
        """What node ``i`` dropped on its front link, but the others' ARP and ND
        (its peers resolving each other)."""
        return [
            reason
            for port, reason in self.wire.drops[NODES[i]]
            if port == 0 and not reason.value.startswith(("arp-", "nd-"))
        ]


def three_nodes(relay: str | None = None) -> Cluster:
    """Three nodes, each naming the other two as peers (``relay``: the same
    ``[relay]`` body for each, in place of that)."""
    return Cluster(tuple(relay if relay is not None else peers_of(i) for i in range(3)))


def ip(v6: bool, src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)


def client_vip(v6: bool) -> tuple[str, str]:
    return (CLIENT6, VIP6) if v6 else (CLIENT4, VIP4)


def connect(c: Cluster, v6: bool, node: int, sport: int) -> tuple[Host, Ether]:
    """The client's handshake through ``node``: the backend and the SYN it got."""
    client, vip = client_vip(v6)
    c.to_node(node, ip(v6, client, vip) / TCP(sport=sport, dport=80, flags="S", seq=1000))
    got = c.at_backends()
    assert len(got) == 1, f"{NODES[node]} sent the SYN to no backend or several: {got}"
    backend, fwd = got[0]
    assert fwd.src == NODE_B_MACS[node], f"the SYN did not come from {NODES[node]}"
    assert fwd.payload.src == (LIPS6 if v6 else LIPS4)[node]
    synack = TCP(sport=80, dport=fwd[TCP].sport, flags="SA", seq=5000, ack=1001)
    backend.send(ip(v6, fwd.payload.dst, fwd.payload.src) / synack, fwd.src)
    (back,) = c.ecmp.take()
    assert back.src == NODE_F_MACS[node] and back[TCP].flags == "SA"
    c.to_node(node, ip(v6, client, vip) / TCP(sport=sport, dport=80, flags="A", seq=1001, ack=5001))
    assert [b for b, _ in c.at_backends()] == [backend]
    return backend, fwd


def segment(
    v6: bool, sport: int, flags: str = "PA", data: bytes = b"GET / HTTP/1.0\r\n\r\n"
) -> Packet:
    client, vip = client_vip(v6)
    return ip(v6, client, vip) / TCP(sport=sport, dport=80, flags=flags, seq=1001, ack=5001) / data


def front_frames(c: Cluster, sender: str) -> list[bytes]:
    """The frames ``sender`` put on the front link, but ARP and ND."""
    return [
        f
        for s, f in c.wire.segments["front"].frames
        if s == sender
        and Ether(f).type != 0x0806
        and not (IPv6 in Ether(f) and Ether(f)[IPv6].nh == 58)
    ]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_moved_segment_reaches_the_backend_through_the_node_holding_it(v6: bool) -> None:
    c = three_nodes()
    backend, syn = connect(c, v6, 0, 45000)
    # The router's next hops changed: the connection's next segment reaches n2.
    moved = segment(v6, 45000)
    c.to_node(1, moved)
    got = c.at_backends()
    assert len(got) == 1, f"the moved segment reached the backends {len(got)} times: {got}"
    (at, via_second_chance) = got[0]
    assert at is backend and via_second_chance.src == NODE_B_MACS[0], (
        "the moved segment did not reach its backend through n1, which holds its connection"
    )
    assert via_second_chance.payload.src == syn.payload.src  # n1's LIP
    assert via_second_chance[TCP].sport == syn[TCP].sport and checksums_ok(
        via_second_chance.payload
    )

    # The copies n2 sent: to n1 and n3, by unicast, the IP packet as it came.
    copies = [Ether(f) for f in front_frames(c, "n2")]
    assert sorted(f.dst for f in copies) == sorted(NODE_F_MACS[0::2]), copies
    original = bytes(moved)
    for f in copies:
        assert f.src == NODE_F_MACS[1] and f.type == SECOND_CHANCE_ETHERTYPE
        assert bytes(f.payload) == original, "the copy's IP packet is not the segment as it came"
    assert c.ecmp.take() == [], "a copy reached the ECMP router"

    # The same segment (a retransmission) straight to n1: the very same bytes out.
    c.to_node(0, moved)
    ((at2, direct),) = c.at_backends()
    assert at2 is backend
    assert bytes(direct) == bytes(via_second_chance), (
        "n1 forwarded the copy otherwise than the segment itself"
    )

    assert c.drops(1) == [DropReason.SECOND_CHANCE_SENT]
    assert c.drops(2) == [DropReason.SECOND_CHANCE_MISS]
    assert c.drops(0) == []
    assert c.chance(1) == {
        "segments_sent": 1, "copies_sent": 2, "copies_received": 0,
        "copies_forwarded": 0, "copies_missed": 0,
    }  # fmt: skip
    assert c.chance(0)["copies_received"] == 1 and c.chance(0)["copies_forwarded"] == 1
    assert c.chance(2)["copies_received"] == 1 and c.chance(2)["copies_missed"] == 1
    # n2 made no connection for it, n3 neither.
    for i in (1, 2):
        nat = c.router(i).nat
        assert nat is not None and len(nat.table) == 0


def test_the_backends_answer_goes_back_by_the_node_holding_the_connection() -> None:
    c = three_nodes()
    backend, syn = connect(c, False, 0, 45001)
    c.to_node(2, segment(False, 45001))  # moved to n3
    ((_, fwd),) = c.at_backends()
    acked = fwd[TCP].seq + len(fwd[TCP].payload)
    data = TCP(sport=80, dport=syn[TCP].sport, flags="PA", seq=5001, ack=acked)
    backend.send(IP(src=fwd[IP].dst, dst=fwd[IP].src) / data / b"ok", fwd.src)
    (back,) = c.ecmp.take()
    assert back.src == NODE_F_MACS[0] and (back[IP].src, back[IP].dst) == (VIP4, CLIENT4)
    assert back[TCP].dport == 45001 and back[TCP].load == b"ok"


@pytest.mark.parametrize("flags", ["A", "FA", "R", "RA"])
def test_a_segment_no_node_holds_is_dropped_everywhere_and_never_sent_on(flags: str) -> None:
    c = three_nodes()
    c.to_node(1, segment(False, 46000, flags, b""))
    assert c.at_backends() == [], "a segment of no connection was scheduled somewhere"
    assert len(front_frames(c, "n2")) == 2
    # The peers count the copy and drop it: nothing more on the wire from them.
    for i in (0, 2):
        assert front_frames(c, NODES[i]) == [], f"{NODES[i]} sent a copy on"
        assert c.drops(i) == [DropReason.SECOND_CHANCE_MISS]
        assert c.chance(i)["copies_missed"] == 1 and c.chance(i)["copies_forwarded"] == 0
    assert c.drops(1) == [DropReason.SECOND_CHANCE_SENT]
    assert c.ecmp.take() == []
    for i in range(3):
        nat = c.router(i).nat
        assert nat is not None and len(nat.table) == 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_syn_is_scheduled_where_it_arrives(v6: bool) -> None:
    c = three_nodes()
    connect(c, v6, 1, 47000)  # n2 makes the connection, from its own LIP
    on_front = [Ether(f) for _, f in c.wire.segments["front"].frames]
    assert not [f for f in on_front if f.type == SECOND_CHANCE_ETHERTYPE], "a copy was sent"
    assert c.chance(1)["segments_sent"] == 0
    for i in (0, 2):
        assert c.chance(i)["copies_received"] == 0


def test_a_syn_on_a_connection_held_elsewhere_is_a_new_connection_here() -> None:
    c = three_nodes()
    connect(c, False, 0, 47001)
    # The same tuple's SYN at n2 (the client reused its port): n2's own connection.
    connect(c, False, 1, 47001)
    assert c.chance(1)["segments_sent"] == 0


def test_udp_is_scheduled_where_it_arrives() -> None:
    c = three_nodes()
    ask = IP(src=CLIENT4, dst=VIP4) / UDP(sport=33000, dport=80) / b"q"
    c.to_node(0, ask)
    ((_, first),) = c.at_backends()
    c.to_node(1, ask)  # moved: UDP has no handshake to lose, n2 takes it
    ((_, second),) = c.at_backends()
    assert first.src == NODE_B_MACS[0] and second.src == NODE_B_MACS[1]
    assert c.chance(1)["segments_sent"] == 0


def test_a_moved_segment_of_a_port_no_service_serves_is_the_vips_to_answer() -> None:
    c = three_nodes()
    client = IP(src=CLIENT4, dst=VIP4)
    c.to_node(1, client / TCP(sport=46001, dport=8080, flags="A", seq=1, ack=1))
    (reset,) = c.ecmp.take()
    assert reset[TCP].flags == "R" and reset.src == NODE_F_MACS[1]
    assert c.chance(1)["segments_sent"] == 0


@pytest.mark.parametrize(
    "relays",
    [("", "", ""), tuple(peers_of(i) + "\nsecond_chance = false" for i in range(3))],
    ids=["no-peers", "second-chance-off"],
)
def test_without_peers_or_turned_off_a_moved_segment_is_scheduled_as_before(
    relays: tuple[str, ...],
) -> None:
    c = Cluster(relays)
    connect(c, False, 0, 45002)
    c.to_node(1, segment(False, 45002))
    # As before second chance: n2 picks the segment up as a new connection of
    # its own, from its own LIP (the backend has no socket for it and resets it).
    got = c.at_backends()
    assert len(got) == 1 and got[0][1].src == NODE_B_MACS[1]
    assert got[0][1][IP].src == LIPS4[1]
    assert front_frames(c, "n2") == []
    r = c.router(1)
    assert r.cluster is not None and r.cluster.state().second_chance is None
    assert views.relay(r.cluster.state())["second_chance"] is None


def test_a_copy_where_second_chance_is_off_is_an_unknown_ethertype() -> None:
    # n1 sends copies; n2 has it off; n3 has no [relay] peers.
    c = Cluster((peers_of(0), peers_of(1) + "\nsecond_chance = false", ""))
    connect(c, False, 1, 45003)
    c.to_node(0, segment(False, 45003))
    assert c.at_backends() == []
    assert c.drops(1) == [DropReason.UNKNOWN_ETHERTYPE]


def test_a_copy_on_another_interface_than_the_relays_is_not_taken() -> None:
    c = three_nodes()
    connect(c, False, 0, 45004)
    frame = Ether(src=BE_MACS[0], dst=NODE_B_MACS[0], type=SECOND_CHANCE_ETHERTYPE) / segment(
        False, 45004
    )
    be1 = c.backends[0]
    be1.wire._carry(deque([(be1.segment, be1.name, bytes(frame))]))
    assert c.at_backends() == []
    assert (1, DropReason.UNKNOWN_ETHERTYPE) in c.wire.drops["n1"]


# -- config -------------------------------------------------------------------------


def parse_relay(body: str, services: bool = True) -> config.Config:
    text = node_config(0, body)
    if not services:
        text = re.sub(r"\[\[service\]\].*?(?=\n\[)", "", text, flags=re.S)
    return config.parse(text, "n1.toml")


def test_second_chance_is_on_by_default_with_peers_and_off_without() -> None:
    links = {"gw-f": (mac(NODE_F_MACS[0]), 1500), "gw-b": (mac(NODE_B_MACS[0]), 1500)}
    with_peers = parse_relay(peers_of(0)).router_spec(links).relay
    assert with_peers is not None and with_peers.second_chance_on
    alone = parse_relay("").router_spec(links).relay
    assert alone is not None and not alone.second_chance_on
    off = parse_relay(peers_of(0) + "\nsecond_chance = false").router_spec(links).relay
    assert off is not None and not off.second_chance_on
    on = parse_relay(peers_of(0) + "\nsecond_chance = true").router_spec(links).relay
    assert on is not None and on.second_chance_on


@pytest.mark.parametrize(
    ("body", "services", "path", "words"),
    [
        ("second_chance = true", True, "relay.second_chance", "needs peers"),
        (peers_of(0) + "\nsecond_chance = true", False, "relay.second_chance", "[[service]]"),
        (peers_of(0) + '\nsecond_chance = "yes"', True, "relay.second_chance", "bool"),
        (peers_of(0) + "\nsecond_chances = true", True, "relay.second_chances", "unknown key"),
    ],
)
def test_bad_second_chance_settings_name_their_key(
    body: str, services: bool, path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_relay(body, services)
    assert any(i.path == path and words in i.message for i in e.value.issues), e.value.issues


# -- status and metrics --------------------------------------------------------------


class _Collector(Collector):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield from metrics.second_chance_metrics(self.counts)


def test_status_and_metrics_show_the_counts() -> None:
    c = three_nodes()
    connect(c, False, 0, 45005)
    c.to_node(1, segment(False, 45005))
    n1, n2 = (c.router(i).cluster for i in (0, 1))
    assert n1 is not None and n2 is not None
    # Through JSON, as the admin socket serves it.
    held = json.loads(json.dumps(views.relay(n1.state())))["second_chance"]
    registry = CollectorRegistry()
    registry.register(_Collector(held))
    text = generate_latest(registry).decode()
    assert "hopgate_second_chance_copies_received_total 1.0" in text, text
    assert "hopgate_second_chance_copies_forwarded_total 1.0" in text
    assert "hopgate_second_chance_copies_missed_total 0.0" in text
    console = Console(width=300, record=True)
    console.print(status.second_chance_line(views.relay(n2.state())["second_chance"]))
    assert "sent to the peers 1 (2 copies)" in console.export_text()


# -- the XDP fast path ---------------------------------------------------------------

PEER4, PEER_MAC = "198.18.12.7", "02:00:00:00:0b:07"  # on lb_frames' gw-b, as its peer


class _FastPath:
    """What FastPath.snapshot gives, its program having forwarded 3 copies."""

    def __init__(self, ports: int) -> None:
        self.ports = ports

    def snapshot(self) -> dict[str, Any]:
        per_port = [{"passed": 0, "forwarded": 3 if p == L.B else 0} for p in range(self.ports)]
        return {"mode": "xdp", "passed": 0, "forwarded": 3, "copies_forwarded": 3,
                "sync_errors": 0, "ports": per_port}  # fmt: skip


def test_status_counts_the_copies_the_fast_path_forwarded_with_the_pipelines() -> None:
    spec = RelaySpec(("gw-b",), (ipaddress.ip_address(PEER4),))
    r = L.lb_router(L.service(), L.service6(), relay=spec)
    assert r.cluster is not None
    r.cluster.chance.copies_received, r.cluster.chance.copies_forwarded = 2, 1
    sockets: Any = [_Socket() for _ in r.ports]
    loop: Any = _Loop()
    fast: Any = _FastPath(len(r.ports))
    state = json.loads(json.dumps(daemon.snapshot(r, loop, sockets, 0.0, "t.toml", fast)))
    chance = state["relay"]["second_chance"]
    assert (chance["copies_received"], chance["copies_forwarded"]) == (5, 4), chance
    assert state["dataplane"]["copies_forwarded"] == 3
    text = metrics.render(state).decode()
    assert "hopgate_second_chance_copies_forwarded_total 4.0" in text
    assert "hopgate_second_chance_copies_received_total 5.0" in text


LO = 1  # test runs need a real ingress device: lo stands for each port in turn


def balanced_and_offloaded(
    obj: BpfObject, v6: bool
) -> tuple[Router, T.Tables, Conn, Callable[[int], bytes]]:
    """A load-balancer node (tests/unit/lb_frames.py) with second chance toward
    a peer on gw-b, whose TCP connection from the client (by gw-b) is
    established and held by the fast path; the client's plain ACKs, as the
    router hands them over (by the sequence number they carry)."""
    spec = RelaySpec(("gw-b",), (ipaddress.ip_address(PEER4),))
    r = L.lb_router(L.service(), L.service6(), relay=spec)
    client, vip = (L.CLIENT6, L.VIP6) if v6 else (L.CLIENT4, L.VIP4)

    def from_client(flags: str, seq: int, payload: bytes = b"") -> bytes:
        tcp = TCP(sport=41000, dport=80, flags=flags, seq=seq, ack=5001 if "A" in flags else 0)
        return bytes(L.via_b(ip(v6, client, vip) / tcp / payload))

    sent = [a for a in r.process(bytearray(from_client("S", 1000)), L.B, 0.0)]
    (to_backend,) = [Ether(bytes(a.frame)) for a in sent if isinstance(a, Transmit)]
    be = to_backend.payload
    synack = TCP(sport=80, dport=to_backend[TCP].sport, flags="SA", seq=5000, ack=1001)
    backend_mac = L.BE1_MAC if be.dst in (L.BE1, L.BE1_6) else L.BE2_MAC
    r.process(L.from_backend(ip(v6, be.dst, be.src) / synack, backend_mac), L.S, 0.01)
    r.process(bytearray(from_client("A", 1001)), L.B, 0.02)
    assert r.nat is not None
    (conn,) = r.nat.table.connections()
    assert conn.state == TcpState.ESTABLISHED and conn.assured
    tables = T.Tables(obj, time.monotonic_ns())
    tables.fill(r, dict.fromkeys(range(len(r.ports)), LO))
    assert tables.sync_connections(r.nat.table) == []
    assert conn in r.nat.table.offloaded and tables._ids.get(conn) is not None
    return r, tables, conn, lambda seq: from_client("A", seq)


def run_program(obj: BpfObject, frame: bytes, port: int) -> tuple[int, bytes]:
    obj.update("port_of", ctypes.c_uint32(LO), ctypes.c_uint32(port + 1))
    got = obj.test_run(T.PROGRAM, frame, LO)
    return got.verdict, got.frame


def as_copy(frame: bytes) -> bytes:
    """A peer's second-chance copy of what the router handed it: to this node's
    gw-b, from the peer, under the second-chance EtherType."""
    copy = bytearray(frame)
    copy[0:6] = mac(L.GW_B_MAC)
    copy[6:12] = mac(PEER_MAC)
    copy[12:14] = SECOND_CHANCE_ETHERTYPE.to_bytes(2, "big")
    return bytes(copy)


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_copy_of_a_connection_the_fast_path_holds_leaves_by_the_program(
    obj: BpfObject, v6: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conntrack, "TCP_OFFLOAD_AFTER", 0)  # handed over at once
    r, tables, conn, ack = balanced_and_offloaded(obj, v6)
    assert r.nat is not None and r.cluster is not None
    # The segment from the router: the program forwards it to the backend.
    verdict, direct = run_program(obj, ack(1001), L.B)
    assert verdict == XDP_REDIRECT, "the fast path passed up an offloaded connection's ACK"
    # The same segment (a retransmission) as a peer's copy: the program
    # forwards it as it forwarded the segment, its IP EtherType back.
    copy = as_copy(ack(1001))
    verdict, out = run_program(obj, copy, L.B)
    assert verdict == XDP_REDIRECT and out == direct, "the copy left otherwise than the segment"
    assert tables.replay(copy, LO) == (L.S, direct), "the copy left by another port"
    counts = tables.counters(len(r.ports))[L.B]
    assert (counts["copies"], counts["forwarded"], counts["passed"]) == (1, 2, 0), counts
    # The pipeline, had the copy come up to it (before the handover), finds it
    # the connection's and gives it back to the program as a plain frame of
    # the connection: the same answer, and the connection stays the program's.
    actions = r.process(bytearray(copy), L.B, 0.5)
    assert [type(a) for a in actions] == [Replay]
    sent = _executed(obj, tables, r, actions, 0.5)
    assert [(a.port, bytes(a.frame)) for a in sent] == [(L.S, direct)], (
        "the pipeline sent the copy otherwise than the fast path"
    )
    counters = r.nat.table.counters
    assert (counters["fastpath-replayed"], counters["fastpath-taken-back"]) == (1, 0)
    assert r.cluster.chance.copies_forwarded == 1
    assert conn in r.nat.table.offloaded and conn not in (r.nat.table.to_offload or ())


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_a_copy_the_program_may_not_forward_goes_up_untouched(
    obj: BpfObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a port that takes no copies, or a FIN the tracker leaves to the
    pipeline: up, still a copy, for the pipeline to judge."""
    monkeypatch.setattr(conntrack, "TCP_OFFLOAD_AFTER", 0)
    r, tables, _, ack = balanced_and_offloaded(obj, False)
    copy = as_copy(ack(1001))
    verdict, up = run_program(obj, copy, L.S)  # the backends' side: no second chance
    assert verdict == XDP_PASS and up == copy, "the fast path took a copy on gw-s"
    fin = IP(src=L.CLIENT4, dst=L.VIP4) / TCP(sport=41000, dport=80, flags="FA", seq=1001, ack=5001)
    copy = as_copy(bytes(L.via_b(fin)))
    verdict, up = run_program(obj, copy, L.B)
    assert verdict == XDP_PASS and up == copy, "the fast path forwarded a copy of a FIN"
    counts = tables.counters(len(r.ports))
    assert counts[L.B]["copies"] == 0 and counts[L.B]["passed"] == 1, counts


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_a_segment_and_a_copy_of_no_connection_go_up_to_the_pipeline(
    obj: BpfObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conntrack, "TCP_OFFLOAD_AFTER", 0)
    r, _, _, _ = balanced_and_offloaded(obj, False)
    other = IP(src=L.CLIENT4, dst=L.VIP4) / TCP(sport=41001, dport=80, flags="A", seq=1, ack=1)
    # From the router: no flow in the program; the pipeline sends it to the
    # peer (its MAC asked for first: the copy waits for the answer).
    moved = bytes(L.via_b(other))
    verdict, up = run_program(obj, moved, L.B)
    assert verdict == XDP_PASS and up == moved, "the fast path took a segment of no connection"
    out = r.process(bytearray(up), L.B, 0.4)
    assert [a.reason for a in out if isinstance(a, Drop)] == [DropReason.SECOND_CHANCE_SENT]
    (ask,) = [Ether(bytes(a.frame)) for a in out if isinstance(a, Transmit)]
    assert ask.type == 0x0806 and ask.pdst == PEER4
    # A peer's copy of it: up to the pipeline too, which holds nothing for it.
    copy = as_copy(moved)
    verdict, up = run_program(obj, copy, L.B)
    assert verdict == XDP_PASS and up == copy
    out = r.process(bytearray(up), L.B, 0.5)
    assert [a for a in out if isinstance(a, Transmit)] == []
    assert [a.reason for a in out if isinstance(a, Drop)] == [DropReason.SECOND_CHANCE_MISS]
