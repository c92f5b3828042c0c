"""Several hopgate nodes behind one ECMP router (``[relay]``): what one node
receives about a flow another node holds is sent on to the peers.

Fragmentation needed and Packet Too Big.  The router asks ``offer`` for every
ICMP error addressed to one of its translated addresses (a VIP, a LIP, a NAT
address) that matches no connection of its own.  A fragmentation needed /
Packet Too Big that passes the relay's checks (pipeline/relay.py) is sent
again, marked, to the peers: as a link-layer broadcast out of the interface it
came in on, or to each configured peer by unicast.  The node that holds the
flow translates the copy and delivers it to the backend (``accepts`` lets a
broadcast copy through the router's rule against forwarding what came in a
link-layer broadcast); the others count it and drop it, and never relay a copy
again.

Second chance (as Unimog's, GLB's, Beamer's).  When the ECMP router's set of
next hops changes, it moves flows between nodes, which hold no state of each
other's.  A TCP segment without SYN to a service, arriving on one of the
relay's interfaces, that matches no connection here (NAT says
``second-chance-sent``) is copied to each configured peer (``second_chance``)
and not scheduled here: the copy is the IP packet unchanged (no mark in it, no
hop spent) under EtherType ``SECOND_CHANCE_ETHERTYPE`` in place of IP's, sent
by unicast to the peer's MAC, resolved as for any packet (``Router._to_peer``).
A node that receives one (``copy_in``) makes it a plain IP frame again and
handles it as the original: a segment of a connection it holds goes to the
backend translated, byte for byte as the original would have; any other is
dropped (``second-chance-miss``), never scheduled, never sent on.  The
EtherType is what tells a copy from the router's packets: no router, host or
switch sends it, it costs no byte (a full-size segment still fits the link),
and it needs no state (a peer's MAC would have to be resolved before its copies
could be told apart).  A SYN is always scheduled where it arrives; UDP and
ICMP are left as they are.  docs/behaviour.md, "A cluster behind ECMP: second
chance".
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Protocol

from hopgate.packet import ethernet
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action
from hopgate.pipeline.context import Packet
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.model import IPAddress, RelaySpec
from hopgate.pipeline.plans import ErrorAbout
from hopgate.pipeline.ports import Port
from hopgate.pipeline.relay import (
    PmtuMessage,
    Relay,
    is_marked,
    relayed_copy,
    second_chance_copy,
    second_chance_family,
)
from hopgate.pipeline.state import RelayInterfaceState, RelayState, SecondChanceState


@dataclass
class SecondChanceCounters:
    segments_sent: int = 0  # segments of no connection here, sent to the peers
    copies_sent: int = 0  # their copies (one per peer)
    copies_received: int = 0  # the peers' copies taken in
    copies_forwarded: int = 0  # ... that matched a connection held here
    copies_missed: int = 0  # ... that matched none: dropped


# (frame, l3, peer address, now, out): route a copy to a peer and send it there
class ToPeer(Protocol):
    """Send a relayed copy (its IP header at ``l3``) to a peer node, resolving
    its MAC as for any packet (``Router._to_peer``)."""

    def __call__(
        self, frame: bytearray, l3: int, peer: IPAddress, now: float, out: list[Action], /
    ) -> None: ...


class ClusterRelay:
    def __init__(
        self,
        spec: RelaySpec,
        ports: list[Port],
        port_by_name: dict[str, int],
        emit: Emitter,
        to_peer: ToPeer,
        now: float = 0.0,
        *,
        balancing: bool = False,
    ) -> None:
        """``balancing``: the node has services (second chance is theirs)."""
        self.spec = spec
        self._ports = ports
        self._index = {port_by_name[name]: i for i, name in enumerate(spec.interfaces)}
        self._emit = emit
        self._to_peer = to_peer
        self._mark = spec.settings.mark
        self.relay = Relay(spec.settings, len(spec.interfaces), now)
        self.sent_to_peers = 0
        # The ports whose segments of no connection go to the peers, and on
        # which the peers' copies are taken: the relay's interfaces, with
        # second chance on.
        self.second_chance: frozenset[int] = (
            frozenset(self._index) if balancing and spec.second_chance_on else frozenset()
        )
        self.chance = SecondChanceCounters()

    def accepts(self, frame: Buffer, l3: int, plan: object) -> bool:
        """Whether a frame that came in a link-layer broadcast is a peer's relayed
        copy of an error about a connection held here (to be translated and
        delivered like any error)."""
        return isinstance(plan, ErrorAbout) and is_marked(frame, l3, self._mark)

    def offer(self, frame: Buffer, port: int, now: float, out: list[Action]) -> bool:
        """An ICMP error about no connection of ours came in on ``port``: relay it
        if it is a PMTU message the checks and rate limits let through.  True if
        relayed (the frame is then consumed)."""
        i = self._index.get(port)
        if i is None:
            return False
        msg = self.relay.consider(frame, i, now)
        if not isinstance(msg, PmtuMessage):
            return False
        if not self.spec.peers:
            mac = self._ports[port].mac
            copy = relayed_copy(frame, msg.l3, ethernet.BROADCAST, mac, self._mark)
            self._emit.transmit(port, copy, out)
            return True
        for peer in self.spec.peers:
            # The MACs are the neighbour resolution's to fill in.
            copy = relayed_copy(frame, msg.l3, ethernet.ZERO_MAC, ethernet.ZERO_MAC, self._mark)
            self._to_peer(copy, msg.l3, peer, now, out)
            self.sent_to_peers += 1
        return True

    # -- second chance --------------------------------------------------------------

    def send_second_chance(self, pkt: Packet) -> None:
        """A TCP segment of no connection here (NAT's ``second-chance-sent``):
        a copy to each peer, one of which may hold its connection."""
        c = self.chance
        c.segments_sent += 1
        frame, l3, end = pkt.frame, pkt.l3, pkt.end
        for peer in self.spec.peers:
            self._to_peer(second_chance_copy(frame, l3, end), l3, peer, pkt.now, pkt.out)
            c.copies_sent += 1

    def copy_in(self, frame: bytearray | memoryview, port: int, l3: int) -> int:
        """A frame of EtherType ``SECOND_CHANCE_ETHERTYPE`` came in on ``port``:
        a peer's copy, if second chance is on there, made a plain IP frame again
        (in place); its EtherType returned, or 0 if it is not taken."""
        if port not in self.second_chance:
            return 0
        ethertype = second_chance_family(frame, l3)
        if ethertype:
            self.chance.copies_received += 1
        return ethertype

    def copy_held(self, held: bool) -> None:
        """Whether a copy taken in matched a connection held here (it goes on
        as that connection's packet) or not (it is dropped)."""
        if held:
            self.chance.copies_forwarded += 1
        else:
            self.chance.copies_missed += 1

    def state(self) -> RelayState:
        return RelayState(
            peers=tuple(self.spec.peers),
            sent_to_peers=self.sent_to_peers,
            second_chance=(
                SecondChanceState(*astuple(self.chance)) if self.second_chance else None
            ),
            interfaces=tuple(
                RelayInterfaceState(name, c.seen, c.relayed, tuple(c.dropped.items()))
                for name, c in zip(self.spec.interfaces, self.relay.counters, strict=True)
            ),
        )
