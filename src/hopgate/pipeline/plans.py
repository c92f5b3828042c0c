"""How NAT or the load balancer will translate a packet that is not simply part of
a known connection: decided when it arrives (``Nat.inbound``) or once it is
routed (``Nat.outbound``), before the router's checks; carried out by
``Nat.apply`` after them.  One small record per case, matched with ``match``:

- ``NewFlow``: a new NAT connection (DNAT, hairpin, SNAT);
- ``NewService``: a new load-balanced connection, to the backend its service's
  scheduler chose (full NAT);
- ``ErrorAbout``: an ICMP error about a translated connection (RFC 5508);
- ``LaterFragment``: a fragment following a translated first fragment.

A packet of a known connection needs no plan: NAT hands the router the
connection's ``Side``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hopgate.packet import flows
from hopgate.pipeline.conntrack import Side, Translation, Tuple

if TYPE_CHECKING:
    from hopgate.pipeline.lb.service import Backend, Service
    from hopgate.pipeline.nat.translate import SnatRule


@dataclass(frozen=True, slots=True)
class NewFlow:
    """A new NAT connection, committed (and its source mapping chosen) in ``apply``."""

    flow: flows.Flow
    dst: int  # the destination the packet will have
    key: Tuple  # the connection's original tuple
    to: Translation | None  # its destination translation (DNAT, hairpin)
    snat: SnatRule | None  # its source translation's rule


@dataclass(frozen=True, slots=True)
class NewService:
    """A new load-balanced connection: to ``backend``, from a LIP (``lb.fnat``)."""

    flow: flows.Flow
    dst: int  # the backend's address
    key: Tuple
    to: Translation
    service: Service
    backend: Backend


@dataclass(frozen=True, slots=True)
class ErrorAbout:
    """An ICMP error quoting a packet of a translated connection."""

    flow: flows.Flow  # the error itself
    dst: int  # the destination the error will have
    side: Side  # the side the error travels on
    inner: int  # the offset of the quoted IP header
    iflow: flows.Flow  # the quoted packet's flow


@dataclass(frozen=True, slots=True)
class LaterFragment:
    """A fragment that follows a translated first fragment: translated as it was."""

    flow: flows.Flow
    dst: int
    side: Side  # its first fragment's


Plan = NewFlow | NewService | ErrorAbout | LaterFragment
