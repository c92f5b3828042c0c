"""Two load-balancer nodes of a cluster, end to end on the wire
(tests/unit/wire.py): the ECMP router hands a client's connection to node 1
and the PMTU error about it to node 2, which does not hold the flow; node 2's
``[relay]`` sends it to its peer, and node 1 delivers it to the backend.

    ECMP router ── front ── (gw-f) n1 (gw-b) ── back ── be1, be2
    (the test)          └── (gw-f) n2 (gw-b) ──┘        (the test)

The nodes share a VIP (Maglev) and each has its own local address on the back
LAN, as in the lab (lab/ecmplab.py); the copy crosses the front segment as a
link-layer broadcast, or as unicast to a configured peer that node 2 first
resolves over the wire.  docs/behaviour.md, "Path MTU discovery behind ECMP".
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6, IPv6
from scapy.packet import Packet, Raw

from hopgate.control import config
from hopgate.pipeline.model import RouterSpec
from tests.unit.frames import mac
from tests.unit.nat_frames import checksums_ok
from tests.unit.wire import Host, Wire

ECMP_MAC = "02:00:00:00:52:01"
NODE_F_MACS = ("02:00:00:00:52:11", "02:00:00:00:52:12")
NODE_B_MACS = ("02:00:00:00:53:01", "02:00:00:00:53:02")
BE_MACS = ("02:00:00:00:53:15", "02:00:00:00:53:16")
MARK = 63

ECMP4, ECMP6 = "198.18.52.1", "2001:2:0:52::1"
R1_4, R1_6 = "198.18.51.1", "2001:2:0:51::1"  # the router with the smaller MTU
CLIENT4, CLIENT6 = "198.18.50.10", "2001:2:0:50::10"
FRONT4, FRONT6 = ("198.18.52.11", "198.18.52.12"), ("2001:2:0:52::11", "2001:2:0:52::12")
BACK4, BACK6 = ("198.18.53.1", "198.18.53.2"), ("2001:2:0:53::1", "2001:2:0:53::2")
LIPS4, LIPS6 = ("198.18.53.101", "198.18.53.102"), ("2001:2:0:53::101", "2001:2:0:53::102")
BE4, BE6 = ("198.18.53.21", "198.18.53.22"), ("2001:2:0:53::21", "2001:2:0:53::22")
VIP4, VIP6 = "198.18.60.1", "2001:2:0:60::1"


def node_config(i: int, peers: tuple[str, ...]) -> str:
    """Node ``i``'s config file, as the lab writes it (lab/ecmplab.py)."""
    listed = ", ".join(f'"{p}"' for p in peers)
    return f"""
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

[[service]]
name = "web"
vip = "{VIP4}"
port = 80
protocol = "tcp"
scheduler = "maglev"
local_addresses = ["{LIPS4[i]}"]
backend = [{{ address = "{BE4[0]}" }}, {{ address = "{BE4[1]}" }}]
health = {{ kind = "none" }}

[[service]]
name = "web6"
vip = "{VIP6}"
port = 80
protocol = "tcp"
scheduler = "maglev"
local_addresses = ["{LIPS6[i]}"]
backend = [{{ address = "{BE6[0]}" }}, {{ address = "{BE6[1]}" }}]
health = {{ kind = "none" }}

[relay]
interfaces = ["gw-f"]
peers = [{listed}]
mark = {MARK}
"""


def node_spec(i: int, peers: tuple[str, ...]) -> RouterSpec:
    links = {"gw-f": (mac(NODE_F_MACS[i]), 1500), "gw-b": (mac(NODE_B_MACS[i]), 1500)}
    return config.parse(node_config(i, peers), f"n{i + 1}.toml").router_spec(links)


def cluster(unicast: bool, v6: bool) -> tuple[Wire, Host, tuple[Host, Host]]:
    """Two nodes; with ``unicast``, each names the other as its peer, by its
    address of the family ``v6`` says (resolved by ARP or Neighbor Discovery).
    Every copy goes to every peer address listed, whatever its family."""
    wire = Wire()
    for i in (0, 1):
        peers = ((FRONT6 if v6 else FRONT4)[1 - i],) if unicast else ()
        wire.router(f"n{i + 1}", node_spec(i, peers))
        wire.plug("front", f"n{i + 1}", "gw-f")
        wire.plug("back", f"n{i + 1}", "gw-b")
    ecmp = wire.host("front", "ecmp", ECMP_MAC, ECMP4, ECMP6)
    backends = (
        wire.host("back", "be1", BE_MACS[0], BE4[0], BE6[0]),
        wire.host("back", "be2", BE_MACS[1], BE4[1], BE6[1]),
    )
    return wire, ecmp, backends


def ip(v6: bool, src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)


def connect(v6: bool, ecmp: Host, backends: tuple[Host, Host], sport: int) -> tuple[Host, Packet]:
    """The client's handshake through node 1; the backend and the SYN it got."""
    client, vip = (CLIENT6, VIP6) if v6 else (CLIENT4, VIP4)
    syn = TCP(sport=sport, dport=80, flags="S", seq=1000)
    ecmp.send(ip(v6, client, vip) / syn, NODE_F_MACS[0])
    got = [(b, f) for b in backends for f in b.take()]
    assert len(got) == 1, f"n1 sent the SYN to no backend or several: {got}"
    backend, fwd = got[0]
    assert fwd.src == NODE_B_MACS[0], "the SYN did not come from n1"
    assert fwd.payload.src == (LIPS6 if v6 else LIPS4)[0], "n1 did not use its own LIP"
    synack = TCP(sport=80, dport=fwd[TCP].sport, flags="SA", seq=5000, ack=fwd[TCP].seq + 1)
    backend.send(ip(v6, fwd.payload.dst, fwd.payload.src) / synack, fwd.src)
    (back,) = ecmp.take()
    assert back.dst == ECMP_MAC and back.src == NODE_F_MACS[0], "n1 did not answer the client"
    assert (back.payload.src, back.payload.dst, back[TCP].dport) == (vip, client, sport)
    return backend, fwd


def pmtu_error(v6: bool, sport: int) -> Packet:
    """r1's error about a full-size segment of the VIP's reply to the client."""
    if v6:
        big6 = IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=sport, flags="A") / (b"d" * 1400)
        return IPv6(src=R1_6, dst=VIP6) / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(big6)[:1232])
    big = (
        IP(src=VIP4, dst=CLIENT4, flags="DF")
        / TCP(sport=80, dport=sport, flags="A")
        / (b"d" * 1400)
    )
    return IP(src=R1_4, dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(big)[:28])


@pytest.mark.parametrize("unicast", [False, True], ids=["broadcast", "unicast-peers"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_pmtu_error_at_the_other_node_reaches_the_backend(v6: bool, unicast: bool) -> None:
    wire, ecmp, backends = cluster(unicast, v6)
    backend, fwd = connect(v6, ecmp, backends, sport=45000)
    # The ECMP router hashes the error on its outer addresses: node 2.
    ecmp.send(pmtu_error(v6, 45000), NODE_F_MACS[1])

    kind = ICMPv6PacketTooBig if v6 else ICMP
    copies = [f for f in wire.segments["front"].seen("n2") if kind in f]
    assert len(copies) == 1, f"n2 relayed {len(copies)} copies"
    (copy,) = copies
    tos = copy[IPv6].tc if v6 else copy[IP].tos
    assert tos == MARK << 2, "n2's copy is not marked"
    if unicast:
        assert copy.dst == NODE_F_MACS[0], "n2 did not send its copy to n1"
        assert ecmp.take() == [], "a unicast copy reached the ECMP router"
    else:
        assert copy.dst == "ff:ff:ff:ff:ff:ff", "n2 did not broadcast its copy"
        (seen,) = ecmp.take()  # on the segment: the ECMP router sees it too
        assert bytes(seen) == bytes(copy)

    err = backend.take()
    assert len(err) == 1, f"n1 delivered {len(err)} errors to {backend.name}"
    (got,) = err
    assert got.src == NODE_B_MACS[0] and got.dst == backend.mac, "not delivered by n1"
    lip = (LIPS6 if v6 else LIPS4)[0]
    assert got.payload.dst == fwd.payload.dst and checksums_ok(got.payload)
    if v6:
        assert got[ICMPv6PacketTooBig].mtu == 1280
        quote = got[IPerror6]
    else:
        assert (got[ICMP].type, got[ICMP].code, got[ICMP].nexthopmtu) == (3, 4, 1400)
        quote = got[IPerror]
    # The quote reads as the backend's own segment to n1's local address.
    assert (quote.src, quote.dst) == (fwd.payload.dst, lip), "the quote was not translated"
    assert (quote[TCPerror].sport, quote[TCPerror].dport) == (80, fwd[TCP].sport)
    other = backends[1] if backend is backends[0] else backends[0]
    assert other.take() == []
    # n1 took the copy (a broadcast one too: it is marked); n2 dropped nothing
    # on its front link (on the back it sees n1's ARP and ND for the backends).
    assert wire.drops["n1"] == [], f"n1 dropped {wire.drops['n1']}"
    assert [port for port, _ in wire.drops["n2"]] in ([], [1]), f"n2 dropped {wire.drops['n2']}"
