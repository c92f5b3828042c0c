"""NAT's and the load balancer's connections across a restart (issue 12,
pipeline/nat/persist.py): written by one router, read back by a new one built
from the same configuration, they go on exactly as in the first: the same
bytes out of the same port for their next packets, the same trackers, mappings
and counters, their deadlines less the time hopgate was down."""

from __future__ import annotations

import ipaddress
import json

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet

from hopgate.pipeline.actions import Transmit
from hopgate.pipeline.conntrack import Conn, TcpState
from hopgate.pipeline.nat import persist
from hopgate.pipeline.router import Router
from tests.unit import lb_frames as L
from tests.unit import nat_frames as N
from tests.unit.frames import C, U

DOWN = 3.0  # seconds hopgate was down between the two routers


def _sent(r: Router, frame: bytes, port: int, now: float) -> list[tuple[int, bytes]]:
    return [
        (a.port, bytes(a.frame))
        for a in r.process(bytearray(frame), port, now)
        if isinstance(a, Transmit)
    ]


def _conns(r: Router) -> dict[tuple[int, ...], Conn]:
    assert r.nat is not None
    return {c.key_orig: c for c in r.nat.table.connections()}


def _carry(old: Router, new: Router, now: float, then: float) -> persist.Restored:
    """What ``old`` has at ``now`` (wall clock 1000), read by ``new`` at
    ``then`` (wall clock 1000 + DOWN)."""
    assert old.nat is not None and new.nat is not None
    text = b"".join(persist.lines(old.nat, now, 1000.0, exact=True))
    return persist.restore(new.nat, text.splitlines(), then, 1000.0 + DOWN)


def _tcp(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int) -> Packet:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)


def _nat_traffic(r: Router) -> tuple[int, int]:
    """Through ``r``: an inside host's TCP connection (handshake done), its
    UDP stream, and an outside client's connection to the published port.
    Returns the ports the NAT gave the inside host's TCP and UDP."""
    a, srv, out = N.A4, N.SERVER4, N.OUT4
    assert _sent(r, bytes(N.inside(_tcp(a, srv, 40000, 80, "S", 100, 0))), C, 0.0)
    tport = _conns(r)[(4, 6, int(ipaddress.IPv4Address(a)), 40000,
                       int(ipaddress.IPv4Address(srv)), 80)].key_reply[5]  # fmt: skip
    assert _sent(r, bytes(N.outside(_tcp(srv, out, 80, tport, "SA", 500, 101))), U, 0.1)
    assert _sent(r, bytes(N.inside(_tcp(a, srv, 40000, 80, "A", 101, 501))), C, 0.2)
    udp = IP(src=a, dst=srv) / UDP(sport=40001, dport=53) / b"q"
    assert _sent(r, bytes(N.inside(udp)), C, 0.3)
    uport = next(c for c in _conns(r).values() if c.key_orig[3] == 40001).key_reply[5]
    assert _sent(
        r, bytes(N.outside(IP(src=srv, dst=out) / UDP(sport=53, dport=uport) / b"a")), U, 0.4
    )
    # From outside, to the published port 8080 (DNAT to the inside host's 80).
    client = "198.18.3.20"
    assert _sent(r, bytes(N.outside(_tcp(client, out, 50000, 8080, "S", 7, 0))), U, 0.5)
    assert _sent(r, bytes(N.inside(_tcp(a, client, 80, 50000, "SA", 900, 8))), C, 0.6)
    assert _sent(r, bytes(N.outside(_tcp(client, out, 50000, 8080, "A", 8, 901))), U, 0.7)
    return tport, uport


def test_nat_and_dnat_connections_go_on_after_a_restart() -> None:
    old, new = N.nat_router(), N.nat_router()
    tport, uport = _nat_traffic(old)
    done = _carry(old, new, 10.0, 5.0)
    assert done.restored == 3 and not done.skipped, done.summary()
    olds, news = _conns(old), _conns(new)
    for key, o in olds.items():
        # The deadline: what was left of it, less the time hopgate was down.
        assert news[key].expires - 5.0 == pytest.approx(o.expires - 10.0 - DOWN, abs=0.01)
    a, srv, out, client = N.A4, N.SERVER4, N.OUT4, "198.18.3.20"
    nexts = [
        (bytes(N.inside(_tcp(a, srv, 40000, 80, "PA", 101, 501) / b"GET")), C),
        (bytes(N.outside(_tcp(srv, out, 80, tport, "A", 501, 104))), U),
        (bytes(N.inside(IP(src=a, dst=srv) / UDP(sport=40001, dport=53) / b"q2")), C),
        (bytes(N.outside(IP(src=srv, dst=out) / UDP(sport=53, dport=uport) / b"a2")), U),
        # The inside host speaks first after the restart: from the published port.
        (bytes(N.inside(_tcp(a, client, 80, 50000, "PA", 901, 8) / b"hello")), C),
        (bytes(N.outside(_tcp(client, out, 50000, 8080, "A", 8, 906))), U),
    ]
    for frame, port in nexts:
        got = _sent(new, frame, port, 5.5)
        assert got and got == _sent(old, frame, port, 10.5), (
            "hopgate after a restart sent otherwise than before it"
        )
    olds, news = _conns(old), _conns(new)
    assert olds.keys() == news.keys()
    for key, o in olds.items():
        n = news[key]
        assert (n.key_reply, n.state, n.assured, n.seen_reply) == (
            o.key_reply, o.state, o.assured, o.seen_reply,
        )  # fmt: skip
        assert (n.tcp is None and o.tcp is None) or list(n.tcp) == list(o.tcp)  # type: ignore[arg-type]
        assert (n.packets_orig, n.bytes_reply) == (o.packets_orig, o.bytes_reply)
        assert n.expires - 5.5 == pytest.approx(o.expires - 10.5, abs=0.01)
        assert (n.mapping is None) == (o.mapping is None)
        if n.mapping is not None and o.mapping is not None:
            assert (n.mapping.inside, n.mapping.outside) == (o.mapping.inside, o.mapping.outside)


def test_a_balanced_connection_keeps_its_backend_local_port_and_way_back() -> None:
    svc = L.service()
    old, new = L.lb_router(svc), L.lb_router(svc)
    ask = _tcp(L.CLIENT4, L.VIP4, 33333, 80, "S", 1, 0)
    assert _sent(old, bytes(L.via_b(ask)), L.B, 0.0)
    (conn,) = _conns(old).values()
    be, lip, lport = conn.key_reply[2], conn.key_reply[4], conn.key_reply[5]
    be_text, lip_text = str(ipaddress.IPv4Address(be)), str(ipaddress.IPv4Address(lip))
    be_mac = L.BE1_MAC if be_text == L.BE1 else L.BE2_MAC
    synack = _tcp(be_text, lip_text, 80, lport, "SA", 50, 2)
    assert _sent(old, bytes(L.from_backend(synack, be_mac)), L.S, 0.1)
    ack = _tcp(L.CLIENT4, L.VIP4, 33333, 80, "A", 2, 51)
    assert _sent(old, bytes(L.via_b(ack)), L.B, 0.2)
    done = _carry(old, new, 1.0, 1.0)
    assert done.restored == 1, done.summary()
    data = _tcp(L.CLIENT4, L.VIP4, 33333, 80, "PA", 2, 51) / b"GET"
    answer = _tcp(be_text, lip_text, 80, lport, "PA", 51, 5) / b"200"
    for frame, port in ((bytes(L.via_b(data)), L.B), (bytes(L.from_backend(answer, be_mac)), L.S)):
        got = _sent(new, frame, port, 1.5)
        assert got and got == _sent(old, frame, port, 1.5 + DOWN)
    # Source in, source out: the answer left by uplink B, to router B.
    assert got[0][0] == L.B and got[0][1][:6] == bytes.fromhex(L.RB_MAC.replace(":", ""))
    (restored,) = _conns(new).values()
    assert restored.backend is not None and restored.backend.address == be
    assert restored in restored.backend.conns


def test_a_connection_the_new_configuration_does_not_make_is_left_out() -> None:
    old = N.nat_router()
    _nat_traffic(old)
    # No SNAT rule, and the published port gone: nothing of the old stands.
    new = N.nat_router(snat=(), dnat=())
    done = _carry(old, new, 1.0, 1.0)
    assert done.restored == 0 and done.skipped == {"rule gone": 3}
    svc = L.service()
    lb_old, lb_new = L.lb_router(svc), L.lb_router(L.service(name="other"))
    assert _sent(lb_old, bytes(L.via_b(_tcp(L.CLIENT4, L.VIP4, 3, 80, "S", 1, 0))), L.B, 0.0)
    done = _carry(lb_old, lb_new, 1.0, 1.0)
    assert done.skipped == {"service or backend gone": 1}


def test_a_connection_whose_time_ran_out_while_down_is_left_out() -> None:
    old, new = N.nat_router(), N.nat_router()
    assert _sent(old, bytes(N.inside(_tcp(N.A4, N.SERVER4, 40000, 80, "S", 1, 0))), C, 0.0)
    (conn,) = _conns(old).values()
    assert old.nat is not None
    text = b"".join(persist.lines(old.nat, 0.0, 1000.0)).splitlines()
    left = conn.expires  # a SYN_SENT connection's two minutes
    done = persist.restore(new.nat, text, 0.0, 1000.0 + left + 1)  # type: ignore[arg-type]
    assert done.skipped == {"expired": 1}


def test_unreadable_lines_are_counted_and_a_foreign_file_refused() -> None:
    old, new = N.nat_router(), N.nat_router()
    _nat_traffic(old)
    assert old.nat is not None and new.nat is not None
    text = b"".join(persist.lines(old.nat, 1.0, 1000.0)).splitlines()
    text.insert(2, b'{"orig": [4, 6, 1]}')
    text.insert(3, b"not json")
    done = persist.restore(new.nat, text, 1.0, 1000.0)
    assert done.restored == 3 and done.skipped == {"unreadable": 2}
    with pytest.raises(ValueError, match="not a hopgate state file"):
        persist.restore(new.nat, [b'{"something": "else"}'], 1.0, 1000.0)
    with pytest.raises(ValueError, match="not a hopgate state file"):
        persist.restore(new.nat, [b"\x00\x01"], 1.0, 1000.0)


def test_the_state_is_made_a_slice_at_a_time() -> None:
    """Each step of ``lines`` is one slice (the daemon runs it in its loop,
    between batches of frames)."""
    r = N.nat_router()
    _nat_traffic(r)
    assert r.nat is not None
    steps = list(persist.lines(r.nat, 1.0, 1000.0, per_slice=2))
    assert len(steps) == 1 + 2  # the header, then 3 connections 2 a slice
    assert json.loads(steps[0]) == {
        "hopgate_state": persist.VERSION,
        "written": 1000.0,
        "exact": False,
    }
    assert sum(s.count(b"\n") for s in steps[1:]) == 3


def test_closing_and_assured_connections_are_restored_as_such() -> None:
    """Early drop sees them as before: an assured connection stays spared."""
    old, new = N.nat_router(), N.nat_router()
    _nat_traffic(old)
    _carry(old, new, 1.0, 1.0)
    assert new.nat is not None and old.nat is not None
    assert new.nat.table.unassured() == old.nat.table.unassured()
    assert {c.state for c in _conns(new).values()} >= {TcpState.ESTABLISHED}


def test_from_a_checkpoint_tcp_is_tracked_liberally() -> None:
    """A checkpoint's trackers may lag behind the endpoints: the restored
    connection takes segments beyond the windows it knows (never a RST)."""
    old, new = N.nat_router(), N.nat_router()
    tport, _ = _nat_traffic(old)
    assert old.nat is not None and new.nat is not None
    text = b"".join(persist.lines(old.nat, 1.0, 1000.0)).splitlines()  # a checkpoint
    assert persist.restore(new.nat, text, 1.0, 1000.0).restored == 3
    # A megabyte later than the checkpoint knows, both ways.
    later = [
        (bytes(N.inside(_tcp(N.A4, N.SERVER4, 40000, 80, "PA", 101 + 2**20, 501) / b"x")), C),
        (bytes(N.outside(_tcp(N.SERVER4, N.OUT4, 80, tport, "A", 501, 101 + 2**20))), U),
    ]
    for frame, port in later:
        assert _sent(new, frame, port, 2.0), "hopgate dropped a segment after a crash"
    rst = bytes(N.outside(_tcp(N.SERVER4, N.OUT4, 80, tport, "R", 501 + 2**24, 0)))
    assert not _sent(new, rst, U, 2.0)


def test_what_the_operator_made_of_the_backends_is_kept_across_a_restart() -> None:
    """A drained backend stays drained, a weight stays as set: the new router's
    services are built with them, before any connection comes."""
    from hopgate.pipeline.model import AdminState

    svc = L.service()
    old = L.lb_router(svc)
    (be1, be2) = old.nat.services.all[0].backends  # type: ignore[union-attr]
    old.verdicts.set_admin(be1, AdminState.DRAINED)
    old.verdicts.set_weight(be2, 5)
    assert old.nat is not None
    first = next(persist.lines(old.nat, 1.0, 1000.0))
    store = persist.overrides(first)
    new = L.lb_router(svc, overrides=store)
    assert new.nat is not None
    n1, n2 = new.nat.services.all[0].backends
    assert (n1.admin, n1.up, n2.weight) == (AdminState.DRAINED, False, 5)
    assert n2.spec.weight != 5  # the config says otherwise: the operator wins
    # New connections avoid the drained one.
    for sport in range(1000, 1010):
        syn = _tcp(L.CLIENT4, L.VIP4, sport, 80, "S", 1, 0)
        sent = _sent(new, bytes(L.via_b(syn)), L.B, 2.0)
        assert sent and sent[0][1][30:34] == ipaddress.IPv4Address(L.BE2).packed
    # Nothing changed, nothing written; garbage read as nothing.
    untouched = L.lb_router(svc).nat
    assert untouched is not None
    assert b"backends" not in next(persist.lines(untouched, 1.0, 1.0))
    assert persist.overrides(b"not json").changed() == []
    assert persist.overrides(None).changed() == []
