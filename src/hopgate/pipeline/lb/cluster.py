"""Several hopgate nodes behind one ECMP router: fragmentation needed and Packet Too
Big about a flow another node holds are relayed to the peers (``[relay]``).

The router asks ``offer`` for every ICMP error addressed to one of its
translated addresses (a VIP, a LIP, a NAT address) that matches no connection of
its own.  A fragmentation needed / Packet Too Big that passes the relay's checks
(pipeline/relay.py) is sent again, marked, to the peers: as a link-layer
broadcast out of the interface it came in on, or to each configured peer by
unicast.  The node that holds the flow translates the copy and delivers it to
the backend (``accepts`` lets a broadcast copy through the router's rule
against forwarding what came in a link-layer broadcast); the others count it
and drop it, and never relay a copy again.
"""

from __future__ import annotations

from typing import Protocol

from hopgate.packet import ethernet
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action
from hopgate.pipeline.emit import Emitter
from hopgate.pipeline.model import IPAddress, RelaySpec
from hopgate.pipeline.plans import ErrorAbout
from hopgate.pipeline.ports import Port
from hopgate.pipeline.relay import PmtuMessage, Relay, is_marked, relayed_copy
from hopgate.pipeline.state import RelayInterfaceState, RelayState


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
    ) -> None:
        self.spec = spec
        self._ports = ports
        self._index = {port_by_name[name]: i for i, name in enumerate(spec.interfaces)}
        self._emit = emit
        self._to_peer = to_peer
        self._mark = spec.settings.mark
        self.relay = Relay(spec.settings, len(spec.interfaces), now)
        self.sent_to_peers = 0

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

    def state(self) -> RelayState:
        return RelayState(
            peers=tuple(self.spec.peers),
            sent_to_peers=self.sent_to_peers,
            interfaces=tuple(
                RelayInterfaceState(name, c.seen, c.relayed, tuple(c.dropped.items()))
                for name, c in zip(self.spec.interfaces, self.relay.counters, strict=True)
            ),
        )
