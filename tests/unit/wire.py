"""Several pipelines joined by wires, with one fake clock: end-to-end tests of
what one router's transmits do at the next.

A ``Wire`` holds routers and link-layer segments.  A segment joins router
ports and hosts the test plays; a frame one member transmits reaches every
other member whose MAC it is addressed to, or all of them for a broadcast or
multicast (a switch that knows every MAC; never back out of the port it came
in by).  Each router gets its own copy of the frame: the pipeline owns what it
is given.  ``Host.send`` puts a frame on a segment and carries it, and every
frame it causes, until the segments are quiet; ``Wire.advance`` moves the
clock, running each router's timers when they are due (and what they send).

Hosts answer ARP requests and Neighbor Solicitations for their own addresses
by themselves, so routers resolve them as on a real link; every other frame
addressed to a host (or broadcast) is kept, decoded by scapy, for the test.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from hopgate.pipeline.actions import Action, Drop, DropReason, Transmit
from hopgate.pipeline.model import RouterSpec
from hopgate.pipeline.router import Router

MAX_FRAMES = 10_000  # frames carried for one send or timer: more is a loop between routers


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _is_group(frame: bytes) -> bool:
    return bool(frame[0] & 1)


@dataclass
class Segment:
    """A link-layer segment; ``frames``: every frame put on it, as (sender, bytes)."""

    name: str
    members: list[_RouterPort | Host] = field(default_factory=list)
    frames: list[tuple[str, bytes]] = field(default_factory=list)

    def seen(self, sender: str | None = None) -> list[Ether]:
        """The frames put on the segment (by ``sender`` if given), decoded."""
        return [Ether(f) for s, f in self.frames if sender is None or s == sender]


@dataclass
class _RouterPort:
    name: str  # the router's
    router: Router
    port: int
    mac: bytes


@dataclass
class Host:
    """A host the test plays on one segment."""

    name: str
    mac: str
    addresses: tuple[str, ...]
    segment: Segment
    wire: Wire
    received: list[Ether] = field(default_factory=list)

    def send(self, payload: Packet, to: str) -> None:
        """Put ``payload`` in a frame to the MAC ``to`` on the segment, and carry
        everything it causes."""
        frame = bytes(Ether(src=self.mac, dst=to) / payload)
        self.wire._carry(deque([(self.segment, self.name, frame)]))

    def take(self) -> list[Ether]:
        """What the host received since the last ``take``."""
        got, self.received = self.received, []
        return got

    def _answer(self, frame: bytes) -> bytes | None:
        """The answer to an ARP request or Neighbor Solicitation for one of the
        host's addresses; None for anything else (kept in ``received``)."""
        pkt = Ether(frame)
        if ARP in pkt:
            arp = pkt[ARP]
            if arp.op == 1 and arp.pdst in self.addresses:
                reply = Ether(src=self.mac, dst=arp.hwsrc) / ARP(
                    op=2, hwsrc=self.mac, psrc=arp.pdst, hwdst=arp.hwsrc, pdst=arp.psrc
                )
                return bytes(reply)
            return b""  # not for this host: ignored
        if ICMPv6ND_NS in pkt:
            target = str(ipaddress.ip_address(pkt[ICMPv6ND_NS].tgt))
            if target in self.addresses and pkt[IPv6].src != "::":
                reply = (
                    Ether(src=self.mac, dst=pkt.src)
                    / IPv6(src=target, dst=pkt[IPv6].src, hlim=255)
                    / ICMPv6ND_NA(tgt=target, R=0, S=1, O=1)
                    / ICMPv6NDOptDstLLAddr(lladdr=self.mac)
                )
                return bytes(reply)
            return b""
        self.received.append(pkt)
        return None


class Wire:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.routers: dict[str, Router] = {}
        self.segments: dict[str, Segment] = {}
        self._where: dict[tuple[str, int], Segment] = {}
        # Every Drop action, by router: (ingress port, reason).
        self.drops: dict[str, list[tuple[int, DropReason]]] = {}
        # Frames sent on a port joined to no segment: (router, port, bytes).
        self.unplugged: list[tuple[str, int, bytes]] = []

    # -- building ---------------------------------------------------------------------

    def router(self, name: str, spec: RouterSpec) -> Router:
        r = Router(spec, now=self.now)
        self.routers[name] = r
        self.drops[name] = []
        return r

    def segment(self, name: str) -> Segment:
        if name not in self.segments:
            self.segments[name] = Segment(name)
        return self.segments[name]

    def plug(self, segment: str, router: str, port: str) -> None:
        """Join the router's port (by name) to the segment."""
        r = self.routers[router]
        index = r.port_by_name[port]
        seg = self.segment(segment)
        seg.members.append(_RouterPort(router, r, index, r.ports[index].mac))
        self._where[(router, index)] = seg

    def host(self, segment: str, name: str, mac: str, *addresses: str) -> Host:
        seg = self.segment(segment)
        h = Host(name, mac, addresses, seg, self)
        seg.members.append(h)
        return h

    # -- running ----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, running the routers' timers as they fall due."""
        end = self.now + seconds
        for _ in range(MAX_FRAMES):
            due = [
                (d, name)
                for name, r in self.routers.items()
                if (d := r.next_deadline()) is not None and d <= end
            ]
            if not due:
                break
            deadline, name = min(due)
            self.now = max(self.now, deadline)
            pending: deque[tuple[Segment, str, bytes]] = deque()
            self._actions(name, self.routers[name].poll(self.now), pending)
            self._carry(pending)
        else:
            raise AssertionError(f"timers still due after {MAX_FRAMES} rounds")
        self.now = end

    def all_drops(self) -> list[tuple[str, int, DropReason]]:
        return [(name, port, reason) for name, ds in self.drops.items() for port, reason in ds]

    def _actions(
        self, name: str, actions: list[Action], pending: deque[tuple[Segment, str, bytes]]
    ) -> None:
        for a in actions:
            if isinstance(a, Drop):
                self.drops[name].append((a.port, a.reason))
                continue
            if not isinstance(a, Transmit):
                continue  # to a host port (io/hostport.py): none on these wires
            frame = bytes(a.frame)
            seg = self._where.get((name, a.port))
            if seg is None:
                self.unplugged.append((name, a.port, frame))
            else:
                pending.append((seg, name, frame))

    def _carry(self, pending: deque[tuple[Segment, str, bytes]]) -> None:
        for _ in range(MAX_FRAMES):
            if not pending:
                return
            seg, sender, frame = pending.popleft()
            seg.frames.append((sender, frame))
            dst = frame[:6]
            for m in seg.members:
                if m.name == sender:
                    continue
                if isinstance(m, Host):
                    if _is_group(frame) or dst == _mac(m.mac):
                        answer = m._answer(frame)
                        if answer:
                            pending.append((seg, m.name, answer))
                elif _is_group(frame) or dst == m.mac:
                    actions = m.router.process(bytearray(frame), m.port, self.now)
                    self._actions(m.name, actions, pending)
        raise AssertionError(f"frames still moving after {MAX_FRAMES}: a loop between routers?")
