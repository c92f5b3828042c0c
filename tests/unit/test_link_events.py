"""Link events: the router told of a link going down and coming back (bytes and a
fake clock), the decisions taken from rtnetlink messages, and the loop and the
packet socket carrying them out with fakes (no socket raises out of the loop)."""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP, ifinfmsg
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hopgate.io.afpacket import IoCounters, PacketSocket
from hopgate.io.links import LinkInfo, LinkMonitor, LinkWatch, link_info
from hopgate.io.loop import Loop
from hopgate.packet import addr as A
from hopgate.pipeline.actions import DropReason
from tests.unit.frames import (
    ANSWER,
    CLIENT4,
    CLIENT6,
    GW_U4,
    GW_U_MAC,
    SERVER4,
    SERVER6,
    UPSTREAM4,
    UPSTREAM6,
    UPSTREAM_MAC,
    C,
    U,
    drops,
    from_client,
    mac,
    resolved_router,
    router,
    sent,
)

NEW_MAC = "02:00:00:00:02:99"


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# -- the pipeline --------------------------------------------------------------------


def test_link_down_forgets_its_neighbours_and_drops_what_waits_on_them() -> None:
    r = router()
    # Two packets wait for the upstream next hop (one per family), the client is known.
    r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=8)), C, 0.0)
    r.process(from_client(IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=7, dport=8)), C, 0.0)
    out: list[Any] = []
    r.arp.table.learn(C, _ip(CLIENT4), mac("02:00:00:00:01:0a"), ANSWER, 0.0, out)
    assert r.arp.table.get(U, _ip(UPSTREAM4)) is not None
    out = r.link_down(U)
    assert drops(out) == [DropReason.LINK_DOWN, DropReason.LINK_DOWN]
    assert r.counters.drops[(C, DropReason.LINK_DOWN)] == 2  # counted where they came in
    assert sent(out) == []  # dropped silently, as Linux's neigh_ifdown
    assert r.arp.table.get(U, _ip(UPSTREAM4)) is None
    assert r.nd.table.get(U, _ip(UPSTREAM6)) is None
    assert r.arp.table.get(C, _ip(CLIENT4)) is not None  # the other link keeps its own
    # The flushed entries' timers find nothing to do: no retries, no unreachables.
    assert r.poll(1.0) + r.poll(2.0) + r.poll(3.0) == []


def test_packets_routed_to_a_down_link_are_dropped_and_counted() -> None:
    r = resolved_router()
    r.link_down(U)
    for payload in (
        IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=8),
        IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=7, dport=8),
    ):
        out = r.process(from_client(payload), C, 1.0)
        assert drops(out) == [DropReason.LINK_DOWN]
        assert sent(out) == []  # no solicitation into a dead link, no error yet
    assert r.counters.drops[(C, DropReason.LINK_DOWN)] == 2
    assert len(r.arp.table) + len(r.nd.table) == 2  # only the client's entries


def test_forwarding_resumes_after_link_up() -> None:
    r = resolved_router()
    r.link_down(U)
    assert r.link_up(U, mac(GW_U_MAC)) is None  # same MAC: nothing to adopt
    out = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP(sport=7, dport=8)), C, 2.0)
    (req,) = sent(out, U)  # the neighbour was forgotten: resolved again
    assert req[ARP].op == 1 and req[ARP].pdst == UPSTREAM4
    reply = Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / ARP(
        op=2, hwsrc=UPSTREAM_MAC, psrc=UPSTREAM4, hwdst=GW_U_MAC, pdst=GW_U4
    )
    out = r.process(bytearray(bytes(reply)), U, 2.1)
    (fwd,) = sent(out, U)
    assert fwd[IP].dst == SERVER4 and fwd.src == GW_U_MAC


def test_a_recreated_link_with_a_new_mac_is_adopted() -> None:
    r = resolved_router()
    r.link_down(U)
    note = r.link_up(U, mac(NEW_MAC))
    new_ll = A.v6_link_local_from_mac(mac(NEW_MAC))
    assert note is not None and NEW_MAC in note and A.v6_str(new_ll) in note
    # Frames to the old MAC are no longer ours; ARP is answered from the new one.
    out = r.process(
        bytearray(
            bytes(
                Ether(src=UPSTREAM_MAC, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=UPSTREAM_MAC, psrc=UPSTREAM4, pdst=GW_U4)
            )
        ),
        U,
        1.0,
    )
    (reply,) = sent(out, U)
    assert reply.src == NEW_MAC and reply[ARP].hwsrc == NEW_MAC
    # Neighbor Solicitation for the new link-local, to its solicited-node group.
    ll = str(ipaddress.IPv6Address(new_ll))
    group = str(ipaddress.IPv6Address(A.v6_solicited_node(new_ll)))
    ns = (
        Ether(src=UPSTREAM_MAC, dst="33:33:ff:00:02:99")
        / IPv6(src=UPSTREAM6, dst=group, hlim=255)
        / ICMPv6ND_NS(tgt=ll)
        / ICMPv6NDOptSrcLLAddr(lladdr=UPSTREAM_MAC)
    )
    (na,) = sent(r.process(bytearray(bytes(ns)), U, 1.0), U)
    assert na[ICMPv6ND_NA].tgt == ll and na.src == NEW_MAC
    old = r.process(
        bytearray(bytes(Ether(src=UPSTREAM_MAC, dst=GW_U_MAC) / IP(src=SERVER4, dst=CLIENT4))),
        U,
        1.0,
    )
    assert drops(old) == [DropReason.L2_NOT_FOR_US]


def test_health_probes_to_a_down_link_are_not_counted_as_drops() -> None:
    r = resolved_router()
    r.link_down(U)
    out: list[Any] = []
    r.originate(4, _ip(GW_U4), _ip(SERVER4), 17, bytes(8), 1.0, out)
    assert out == []


# -- decisions from rtnetlink messages -------------------------------------------------


def _info(index: int, name: str = "gw-u", *, up: bool = True, carrier: bool = True) -> LinkInfo:
    return LinkInfo(index, name, up, carrier, mac(GW_U_MAC))


def _kinds(changes: list[Any]) -> list[tuple[str, str]]:
    return [(c.kind, c.why) for c in changes]


def test_watch_admin_down_then_up() -> None:
    w = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})
    assert w.update(_info(3)) == []  # as it was
    assert _kinds(w.update(_info(3, up=False, carrier=False))) == [("down", "link down")]
    assert w.update(_info(3, up=False, carrier=False)) == []  # said twice: once
    assert w.status["gw-u"].state == "admin-down"
    assert _kinds(w.update(_info(3, carrier=False))) == []  # up, no carrier yet
    assert w.status["gw-u"].state == "no-carrier"
    (up,) = w.update(_info(3))
    assert (up.kind, up.port, up.info.index) == ("up", 1, 3)
    st = w.status["gw-u"].snapshot()
    assert st["link_downs"] == 1 and st["link_ups"] == 1 and st["state"] == "up"
    assert w.status["gw-c"].snapshot()["link_downs"] == 0


def test_watch_carrier_loss() -> None:
    w = LinkWatch({"gw-u": (1, 3)})
    assert _kinds(w.update(_info(3, carrier=False))) == [("down", "carrier lost")]
    assert _kinds(w.update(_info(3))) == [("up", "link up")]


def test_watch_delete_and_recreate_under_the_same_name() -> None:
    w = LinkWatch({"gw-u": (1, 3)})
    gone = LinkInfo(3, "gw-u", False, False, deleted=True)
    assert _kinds(w.update(gone)) == [("down", "deleted")]
    assert w.status["gw-u"].state == "gone" and w.status["gw-u"].ifindex is None
    assert w.update(_info(5, "other")) == []  # not ours
    (prep,) = w.update(_info(9, up=False, carrier=False))  # appears, down
    assert prep.kind == "prepare" and prep.info.index == 9
    assert w.prepared(1, prep.info) == []  # taken; comes up later
    assert _kinds(w.update(_info(9))) == [("up", "link up")]
    st = w.status["gw-u"].snapshot()
    assert st == {
        "state": "up",
        "ifindex": 9,
        "link_downs": 1,
        "link_ups": 1,
        "recreated": 1,
    }


def test_watch_recreated_before_the_deletion_was_heard() -> None:
    w = LinkWatch({"gw-u": (1, 3)})
    changes = w.update(_info(9))
    assert _kinds(changes) == [("down", "replaced"), ("prepare", "re-created")]
    assert _kinds(w.prepared(1, changes[1].info)) == [("up", "link up")]


def test_watch_a_failed_take_is_tried_again_at_the_next_message() -> None:
    w = LinkWatch({"gw-u": (1, 3)})
    w.update(LinkInfo(3, "gw-u", False, False, deleted=True))
    assert [c.kind for c in w.update(_info(9))] == ["prepare"]
    # A second message before the loop took it: "up", after the prepare.
    assert [c.kind for c in w.update(_info(9))] == ["up"]
    # The loop could not take it: the next message asks again.
    w.failed(1, prepare=True)
    assert w.status["gw-u"].snapshot()["link_ups"] == 0
    assert [c.kind for c in w.update(_info(9))] == ["prepare"]


def test_watch_renamed_away_is_gone() -> None:
    w = LinkWatch({"gw-u": (1, 3)})
    assert _kinds(w.update(_info(3, "gw-x"))) == [("down", "renamed to gw-x")]


def test_watch_vanished_after_a_dump() -> None:
    w = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})
    assert _kinds(w.vanished({"lo", "gw-c"})) == [("down", "deleted")]


def _message(kind: int, index: int, name: str, flags: int) -> bytes:
    m = ifinfmsg()
    m["header"]["type"] = kind
    m["index"] = index
    m["flags"] = flags
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", NEW_MAC)]
    m.encode()
    return bytes(m.data)


def test_rtnetlink_messages_are_read_with_pyroute2() -> None:
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    (msg,) = MarshalRtnl().parse(_message(RTM_NEWLINK, 7, "gw-u", IFF_UP | IFF_LOWER_UP))
    assert link_info(msg) == LinkInfo(7, "gw-u", True, True, mac(NEW_MAC))
    (msg,) = MarshalRtnl().parse(_message(RTM_DELLINK, 7, "gw-u", 0))
    info = link_info(msg)
    assert info is not None and info.deleted and not info.ready
    # Several messages in one datagram, through the monitor's parser.
    monitor = LinkMonitor.__new__(LinkMonitor)
    monitor.watch = LinkWatch({"gw-u": (1, 7)})
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl as M

    monitor._marshal = M()
    data = _message(RTM_NEWLINK, 7, "gw-u", IFF_UP) + _message(RTM_NEWLINK, 7, "gw-u", 0)
    assert [c.kind for c in monitor.parse(data)] == ["down"]


# -- the socket and the loop, with fakes -------------------------------------------------


class _FailingSock:
    def __init__(self, err: int) -> None:
        self.err = err

    def recvmsg_into(self, *args: Any) -> Any:
        raise OSError(self.err, "link gone")

    def send(self, *args: Any) -> Any:
        raise OSError(self.err, "link gone")

    def close(self) -> None:
        pass

    def getsockopt(self, *args: Any) -> Any:
        raise OSError(errno.EBADF, "closed")


def _packet_socket(sock: Any) -> PacketSocket:
    ps = PacketSocket.__new__(PacketSocket)
    ps.ifname, ps.ifindex, ps.counters, ps._bufsize = "gw-u", 3, IoCounters(), 1519
    ps.sock, ps.ctl, ps.filters = sock, None, None
    return ps


def test_receive_and_send_on_a_dead_link_are_counted_not_raised() -> None:
    for err in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
        ps = _packet_socket(_FailingSock(err))
        assert ps.receive() is None
        assert ps.send(b"\0" * 60) is False
        assert ps.counters.rx_errors == 1 and ps.counters.tx_errors == 1
    ps.close()
    assert not ps.is_open and ps.receive() is None and ps.fileno() == -1
    assert ps.send(b"\0" * 60) is False and ps.counters.tx_link_down == 1


class _FakeSocket:
    def __init__(self, name: str) -> None:
        self.ifname = name
        self.opened: list[int] = []
        self.is_open = True
        self.sent: list[bytes] = []

    def filenos(self) -> list[tuple[int, bool]]:
        return []  # never registered: the loop is not running

    def open(self, ifindex: int) -> None:
        self.opened.append(ifindex)
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def send(self, frame: Any) -> bool:
        self.sent.append(bytes(frame))
        return self.is_open


class _FakeMonitor:
    def __init__(self, watch: LinkWatch) -> None:
        self.watch = watch

    def close(self) -> None:
        pass


def test_loop_parks_prepares_and_resumes_a_recreated_link() -> None:
    r = resolved_router()
    socks = [_FakeSocket("gw-c"), _FakeSocket("gw-u")]
    watch = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})
    taken: list[str] = []
    loop = Loop(r, socks, links=_FakeMonitor(watch), prepare=taken.append)  # type: ignore[arg-type]
    try:
        loop.apply_link_changes(watch.update(LinkInfo(3, "gw-u", False, False, deleted=True)))
        assert not socks[1].is_open and U in r.down_ports
        loop.apply_link_changes(watch.update(LinkInfo(9, "gw-u", True, True, mac(NEW_MAC))))
        assert taken == ["gw-u"] and socks[1].opened == [9]
        assert U not in r.down_ports and r.ports[U].mac == mac(NEW_MAC)
        assert loop.link_status(U) == {
            "state": "up",
            "ifindex": 9,
            "link_downs": 1,
            "link_ups": 1,
            "recreated": 1,
        }
    finally:
        loop.close()


def test_loop_keeps_a_link_down_when_taking_it_fails() -> None:
    r = resolved_router()
    socks = [_FakeSocket("gw-c"), _FakeSocket("gw-u")]
    watch = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})

    def refuse(name: str) -> None:
        raise RuntimeError(f"{name}: the kernel holds 198.18.2.7/24 on it")

    loop = Loop(r, socks, links=_FakeMonitor(watch), prepare=refuse)  # type: ignore[arg-type]
    try:
        loop.apply_link_changes(watch.update(LinkInfo(9, "gw-u", True, True)))
        assert not socks[1].is_open and socks[1].opened == [] and U in r.down_ports
        out = r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, 1.0)
        assert drops(out) == [DropReason.LINK_DOWN]
    finally:
        loop.close()


def test_status_and_metrics_show_the_link_events() -> None:
    from rich.console import Console

    from hopgate.control import metrics
    from hopgate.control.status import render
    from hopgate.daemon import snapshot

    r = resolved_router()
    socks = [_packet_socket(None), _packet_socket(None)]
    socks[0].ifname = "gw-c"
    watch = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})
    loop = Loop(r, socks, links=_FakeMonitor(watch))  # type: ignore[arg-type]
    try:
        loop.apply_link_changes(watch.update(LinkInfo(3, "gw-u", False, False)))
        state = snapshot(r, loop, socks, 0.0, "gateway.toml")
        gw_u = state["interfaces"][U]
        assert gw_u["link"] == {
            "state": "admin-down",
            "ifindex": 3,
            "link_downs": 1,
            "link_ups": 0,
            "recreated": 0,
        }
        assert gw_u["io"]["rx_errors"] == 0
        text = metrics.render(state).decode()
        assert 'hopgate_link_up{interface="gw-u"} 0.0' in text
        assert 'hopgate_link_up{interface="gw-c"} 1.0' in text
        assert 'hopgate_link_events_total{event="down",interface="gw-u"} 1.0' in text
        console = Console(record=True, width=200)
        render(state, console)
        assert "gw-u (admin-down)" in console.export_text()
    finally:
        loop.close()


def test_a_recreated_links_control_path_takes_its_new_link_local() -> None:
    from hopgate.io import ctlpath

    r = resolved_router()
    got = ctlpath.filters_for(r.ports, U)
    assert got is not None
    filters = got
    programs: list[Any] = []

    class Recording(_FakeSocket):
        def open(self, ifindex: int) -> None:
            super().open(ifindex)
            programs.append(filters())  # as PacketSocket.open builds them

    socks = [_FakeSocket("gw-c"), Recording("gw-u")]
    watch = LinkWatch({"gw-c": (0, 2), "gw-u": (1, 3)})
    loop = Loop(r, socks, links=_FakeMonitor(watch), prepare=lambda name: None)  # type: ignore[arg-type]
    try:
        loop.apply_link_changes(watch.update(LinkInfo(3, "gw-u", False, False, deleted=True)))
        loop.apply_link_changes(watch.update(LinkInfo(9, "gw-u", True, True, mac(NEW_MAC))))
        ((ctl, _),) = programs
        new_ll = A.v6_link_local_from_mac(mac(NEW_MAC))
        words = {(new_ll >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)}
        assert words <= {k for _, _, _, k in ctl}  # compared against, word by word
    finally:
        loop.close()
