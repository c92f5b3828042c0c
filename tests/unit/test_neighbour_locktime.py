"""When an ARP or Neighbor Discovery message may change a known neighbour's MAC:
Linux's rules (arp_process's locktime, neigh_update's override and weak
override), on exact bytes with a fake clock."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from hopgate.control.config import ConfigError, parse
from hopgate.pipeline.model import NeighbourSettings
from hopgate.pipeline.neighbours import State
from hopgate.pipeline.router import Router
from tests.unit.frames import (
    CLIENT4,
    GW_U4,
    GW_U6,
    GW_U_MAC,
    SERVER4,
    UPSTREAM4,
    UPSTREAM6,
    UPSTREAM_MAC,
    C,
    U,
    from_client,
    router,
    sent,
)

OTHER_MAC = "02:00:00:00:02:77"
THIRD_MAC = "02:00:00:00:02:88"


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _arp(
    op: int,
    hwsrc: str,
    *,
    psrc: str = UPSTREAM4,
    pdst: str = GW_U4,
    hwdst: str = GW_U_MAC,
    eth_dst: str = GW_U_MAC,
) -> bytearray:
    frame = Ether(src=hwsrc, dst=eth_dst) / ARP(
        op=op, hwsrc=hwsrc, psrc=psrc, hwdst=hwdst, pdst=pdst
    )
    return bytearray(bytes(frame))


def _v4_entry(r: Router) -> tuple[str | None, State]:
    e = r.arp.table.get(U, _ip(UPSTREAM4))
    assert e is not None
    return (":".join(f"{b:02x}" for b in e.mac) if e.mac else None), e.state


def _resolved_v4(at: float = 0.0, **kw: object) -> Router:
    """The upstream next hop resolved by an answer to hopgate's request at ``at``."""
    r = router(**kw)
    r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, at)
    r.process(_arp(2, UPSTREAM_MAC), U, at)
    assert _v4_entry(r) == (UPSTREAM_MAC, State.REACHABLE)
    return r


def test_a_second_arp_reply_within_locktime_does_not_replace_the_first() -> None:
    r = _resolved_v4()
    r.process(_arp(2, OTHER_MAC), U, 0.5)  # a second answerer (a proxy), 0.5 s later
    assert _v4_entry(r) == (UPSTREAM_MAC, State.REACHABLE)
    # and forwarding still goes to the first
    (fwd,) = sent(r.process(from_client(IP(src=CLIENT4, dst=SERVER4) / UDP()), C, 0.6), U)
    assert fwd.dst == UPSTREAM_MAC


def test_an_arp_reply_after_locktime_replaces_the_mac() -> None:
    r = _resolved_v4()
    r.process(_arp(2, OTHER_MAC), U, 1.5)
    assert _v4_entry(r) == (OTHER_MAC, State.REACHABLE)  # a unicast reply confirms


def test_confirmations_do_not_move_the_lock() -> None:
    """``updated`` moves with a change of state or MAC only (Linux's neigh_update):
    a REACHABLE entry confirmed again stays open to a change 1 s after it became so."""
    r = _resolved_v4()
    r.process(_arp(2, UPSTREAM_MAC), U, 0.9)
    r.process(_arp(2, OTHER_MAC), U, 1.1)
    assert _v4_entry(r) == (OTHER_MAC, State.REACHABLE)


def test_a_change_locks_the_entry_again() -> None:
    r = _resolved_v4()
    r.process(_arp(2, OTHER_MAC), U, 2.0)
    r.process(_arp(2, THIRD_MAC), U, 2.5)
    assert _v4_entry(r)[0] == OTHER_MAC
    r.process(_arp(2, THIRD_MAC), U, 3.1)
    assert _v4_entry(r)[0] == THIRD_MAC


def test_gratuitous_arp_replaces_at_once() -> None:
    r = _resolved_v4()
    garp = _arp(
        1, OTHER_MAC, pdst=UPSTREAM4, hwdst="00:00:00:00:00:00", eth_dst="ff:ff:ff:ff:ff:ff"
    )
    r.process(garp, U, 0.1)
    assert _v4_entry(r) == (OTHER_MAC, State.STALE)  # a broadcast does not confirm
    # A gratuitous reply (target hardware address = sender's), broadcast, too.
    reply = _arp(2, THIRD_MAC, pdst=UPSTREAM4, hwdst=THIRD_MAC, eth_dst="ff:ff:ff:ff:ff:ff")
    r.process(reply, U, 0.2)
    assert _v4_entry(r) == (THIRD_MAC, State.STALE)


def test_a_reply_claiming_the_same_address_is_not_gratuitous_without_matching_tha() -> None:
    r = _resolved_v4()
    reply = _arp(2, OTHER_MAC, pdst=UPSTREAM4, hwdst=GW_U_MAC, eth_dst="ff:ff:ff:ff:ff:ff")
    r.process(reply, U, 0.1)
    assert _v4_entry(r) == (UPSTREAM_MAC, State.REACHABLE)


def test_a_request_to_us_from_a_new_mac_replaces_at_once() -> None:
    r = _resolved_v4()
    req = _arp(1, OTHER_MAC, hwdst="00:00:00:00:00:00", eth_dst="ff:ff:ff:ff:ff:ff")
    (reply,) = sent(r.process(req, U, 0.1), U)
    assert reply[ARP].hwdst == OTHER_MAC
    assert _v4_entry(r) == (OTHER_MAC, State.STALE)


def test_a_request_for_another_host_within_locktime_changes_nothing() -> None:
    r = _resolved_v4()
    req = _arp(
        1, OTHER_MAC, pdst="198.18.2.50", hwdst="00:00:00:00:00:00", eth_dst="ff:ff:ff:ff:ff:ff"
    )
    r.process(req, U, 0.1)
    assert _v4_entry(r) == (UPSTREAM_MAC, State.REACHABLE)
    r.process(req, U, 1.2)
    assert _v4_entry(r) == (OTHER_MAC, State.STALE)


def test_a_broadcast_reply_with_the_same_mac_does_not_confirm() -> None:
    r = _resolved_v4()
    r.process(_arp(2, UPSTREAM_MAC), U, 40.0)  # REACHABLE has run out: STALE
    assert _v4_entry(r) == (UPSTREAM_MAC, State.REACHABLE)
    r.process(_arp(2, UPSTREAM_MAC, eth_dst="ff:ff:ff:ff:ff:ff"), U, 80.0)
    assert _v4_entry(r) == (UPSTREAM_MAC, State.STALE)


def test_locktime_zero_lets_every_reply_replace() -> None:
    r = _resolved_v4(neighbour=NeighbourSettings(locktime=0.0))
    r.process(_arp(2, OTHER_MAC), U, 0.0)
    assert _v4_entry(r) == (OTHER_MAC, State.REACHABLE)


def test_locktime_ms_is_a_neighbour_setting() -> None:
    base = '[[interface]]\nname = "a"\naddresses = ["198.18.0.1/24"]\n'
    macs = {"a": (b"\x02" * 6, 1500)}
    assert parse(base).router_spec(macs).neighbour.locktime == NeighbourSettings().locktime
    spec = parse(base + "[neighbour]\nlocktime_ms = 250\n").router_spec(macs)
    assert spec.neighbour.locktime == 0.25
    with pytest.raises(ConfigError) as e:
        parse(base + "[neighbour]\nlocktime_ms = -1\n", "t.toml")
    assert [i.path for i in e.value.issues] == ["neighbour.locktime_ms"]


# -- Neighbor Discovery: the Override flag, no locktime ----------------------------------


def _na(lladdr: str, *, solicited: bool, override: bool) -> bytearray:
    frame = (
        Ether(src=lladdr, dst=GW_U_MAC)
        / IPv6(hlim=255, src=UPSTREAM6, dst=GW_U6)
        / ICMPv6ND_NA(tgt=UPSTREAM6, S=int(solicited), O=int(override), R=1)
        / ICMPv6NDOptDstLLAddr(lladdr=lladdr)
    )
    return bytearray(bytes(frame))


def _v6_entry(r: Router) -> tuple[str | None, State]:
    e = r.nd.table.get(U, _ip(UPSTREAM6))
    assert e is not None
    return (":".join(f"{b:02x}" for b in e.mac) if e.mac else None), e.state


def _resolved_v6() -> Router:
    r = router()
    ns = (
        Ether(src=UPSTREAM_MAC, dst=GW_U_MAC)
        / IPv6(hlim=255, src=UPSTREAM6, dst=GW_U6)
        / ICMPv6ND_NS(tgt=GW_U6)
        / ICMPv6NDOptSrcLLAddr(lladdr=UPSTREAM_MAC)
    )
    r.process(bytearray(bytes(ns)), U, 0.0)  # learnt STALE
    r.process(_na(UPSTREAM_MAC, solicited=True, override=True), U, 0.0)
    assert _v6_entry(r) == (UPSTREAM_MAC, State.REACHABLE)
    return r


def test_na_without_override_turns_a_reachable_entry_stale_and_keeps_its_mac() -> None:
    for solicited in (True, False):
        r = _resolved_v6()
        r.process(_na(OTHER_MAC, solicited=solicited, override=False), U, 5.0)
        assert _v6_entry(r) == (UPSTREAM_MAC, State.STALE)
        # then, the entry not REACHABLE, another such NA is ignored
        r.process(_na(THIRD_MAC, solicited=True, override=False), U, 6.0)
        assert _v6_entry(r) == (UPSTREAM_MAC, State.STALE)


def test_na_with_override_replaces_at_once() -> None:
    r = _resolved_v6()
    r.process(_na(OTHER_MAC, solicited=False, override=True), U, 0.1)
    assert _v6_entry(r) == (OTHER_MAC, State.STALE)
    r.process(_na(THIRD_MAC, solicited=True, override=True), U, 0.2)
    assert _v6_entry(r) == (THIRD_MAC, State.REACHABLE)
