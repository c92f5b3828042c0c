"""One packet on its way through the pipeline: read once, handed from step to step.

``Router.process`` makes a ``Packet`` for each IP frame and its family
(pipeline/family.py) fills in the header fields and the flow: addresses,
protocol, where the transport header starts, the kind of flow and its ports.
Every later step (NAT, local delivery, forwarding, the ICMP errors) reads them
here instead of parsing the frame again, and takes the packet instead of a row
of loose arguments.

The fields describe the packet as it arrived: NAT rewrites the frame, not
them, so an ICMP error about the packet sees what its sender sent.  ``now`` and
``out`` are the turn it is handled in; a packet kept for later (waiting on a
neighbour, or a datagram's first fragment) is described again when it is
picked up (``Family.packet``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hopgate.packet import flows
from hopgate.pipeline.actions import Action

if TYPE_CHECKING:
    from hopgate.pipeline.family import Family

Frame = bytearray | memoryview

# ``Packet.fragment``: where the packet stands among its datagram's fragments.
WHOLE = 0  # not a fragment
FIRST = 1  # a first fragment: it carries the transport header
LATER = 2  # a later fragment: no transport header to read


class Packet:
    """A parsed packet: the frame and where it came from, its IP header's fields
    and its flow (packet/flows.py's vocabulary)."""

    # The flow's fields are slots; what few packets have (a kept packet's MAC,
    # a fragment, an IPv6 extension-header chain) lives in the instance's
    # dict, set only when it is not the class's default.
    __slots__ = (
        "__dict__",
        "at",
        "dport",
        "dst",
        "end",
        "fam",
        "frame",
        "kind",
        "l3",
        "now",
        "out",
        "port",
        "proto",
        "sport",
        "src",
    )

    # The MAC of the neighbour it came from, when the frame no longer holds it
    # (a packet kept while its next hop is resolved); None: ``frame[6:12]``.
    in_mac: bytes | None = None
    fragment: int = WHOLE
    # Offset of the byte naming ``proto`` when extension headers come first
    # (IPv6 Parameter Problem's pointer); -1: the fixed header's own.
    nh_field: int = -1
    bad_chain: bool = False  # an IPv6 extension-header chain that cannot be followed

    def __init__(
        self, frame: Frame, port: int, l3: int, fam: Family, now: float, out: list[Action]
    ) -> None:
        self.frame = frame
        self.port = port  # the port it came in on; -1 for hopgate's own packets
        self.l3 = l3  # offset of the IP header
        self.fam = fam
        self.now = now
        self.out = out
        # The flow, filled in by the family (``Family.admit`` or ``describe``),
        # which every packet goes through before any other step reads it:
        self.src: int
        self.dst: int
        self.end: int  # end of the IP packet in ``frame`` (Ethernet padding excluded)
        self.proto: int  # the upper-layer protocol (after IPv6 extension headers)
        self.at: int  # offset of the upper-layer header
        self.kind: flows.FlowKind
        self.sport: int  # ports, or an echo's identifier (flows.py)
        self.dport: int

    def source_mac(self) -> bytes | memoryview | bytearray:
        """The neighbour this packet came from (where an answer goes)."""
        return self.in_mac if self.in_mac is not None else self.frame[6:12]

    def flow(self) -> flows.Flow:
        """The flow as packet/flows.py's record (kept by a NAT plan)."""
        return flows.Flow(self.kind, self.proto, self.sport, self.dport, self.at, self.end)

    def key(self) -> tuple[int, int, int, int, int, int]:
        """The connection-tracking tuple this packet travels on."""
        return (self.fam.version, self.proto, self.src, self.sport, self.dst, self.dport)
