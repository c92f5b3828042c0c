"""Neighbour resolution for ARP and Neighbor Discovery: one state machine, two families.

The states and timers are Linux's (net/core/neighbour.c): INCOMPLETE while
resolving with a queue of waiting packets; REACHABLE for ``reachable_time``
after a confirmation; STALE afterwards, still used; DELAY then PROBE (unicast
solicitations) once a STALE entry is used again.  An INCOMPLETE entry that
gets no answer after ``multicast_solicit`` tries fails: its packets are
dropped, each answered with host/address unreachable by the router.

A known entry's MAC changes as Linux's neigh_update decides: an ARP message
only if the entry has not changed for ``locktime`` (the first of several
answers wins; gratuitous ARP and requests addressed to us always change it); a
Neighbor Advertisement only with the Override flag — without it, a different
address turns a REACHABLE entry STALE and is otherwise ignored (RFC 4861 7.2.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Protocol

from hopgate.pipeline.actions import Action, DropReason
from hopgate.pipeline.model import NeighbourSettings
from hopgate.pipeline.timers import Timers

# How long an unused STALE entry is kept (Linux's gc_stale_time).
GC_STALE_TIME = 60.0


class State(IntEnum):
    INCOMPLETE = 1
    REACHABLE = 2
    STALE = 3
    DELAY = 4
    PROBE = 5


class Undo(Protocol):
    """Undoes the translation NAT made on a packet (a copy of it, its IP header at ``l3``)."""

    def __call__(self, frame: bytearray, l3: int, /) -> None: ...


# For the per-packet path: a module global is read faster than an enum's member.
_REACHABLE = State.REACHABLE
_STALE = State.STALE


class Pending(NamedTuple):
    """A packet waiting for its next hop's link-layer address."""

    frame: bytearray | memoryview  # ready to send but for the destination MAC
    l3: int  # offset of the IP header in ``frame``
    in_port: int  # where it came from, so an error can go back the same way
    in_mac: bytes
    # Undoes the translation NAT made on it, if it made one (on a copy): an
    # error about it must quote what its sender sent.
    undo: Undo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heard:
    """What an ARP or Neighbor Discovery message says of its sender's MAC, and
    how far that may change a known entry (the flags of Linux's neigh_update)."""

    # An answer to our solicitation: makes the entry REACHABLE.
    solicited: bool
    # Make an entry if there is none (for solicitations addressed to us, as
    # Linux does; never for unsolicited replies).
    create: bool
    # A changed MAC replaces the known one (the NA O flag), but not within
    # ``locktime`` of the entry's last change (ARP: the first of several answers wins).
    override: bool = True
    # Without ``override``, a changed MAC turns a REACHABLE entry STALE (a
    # Neighbor Advertisement without the O flag).
    weak_override: bool = False
    # Seconds after an entry's last change during which ``override`` does not
    # apply (ARP's locktime; 0: none).
    locktime: float = 0.0


class NeighbourHooks(Protocol):
    """What the table asks of the router: to speak ARP/ND, and to answer for the
    packets it could not deliver."""

    def solicit(self, port: int, addr: int, unicast_mac: bytes | None, out: list[Action]) -> None:
        """Send an ARP request / Neighbor Solicitation for ``addr`` on ``port``
        (broadcast or multicast, or unicast to ``unicast_mac`` when probing)."""

    def unresolved(self, item: Pending, now: float, out: list[Action]) -> None:
        """``item`` is dropped: its next hop never answered."""

    def flush(self, port: int, item: Pending, mac: bytes, out: list[Action]) -> None:
        """Send ``item`` now that its next hop's address is known."""


class Entry:
    __slots__ = (
        "addr",
        "gen",
        "mac",
        "port",
        "probes",
        "queue",
        "state",
        "until",
        "updated",
        "used",
    )

    def __init__(self, port: int, addr: int, state: State, now: float) -> None:
        self.port = port
        self.addr = addr
        self.state = state
        self.mac: bytes | None = None
        self.queue: list[Pending] = []
        self.probes = 0
        self.gen = 0
        self.until = now  # end of REACHABLE
        self.used = now
        self.updated = now  # last change of state or MAC (Linux's neigh->updated)


class NeighbourTable:
    def __init__(
        self,
        version: int,
        settings: NeighbourSettings,
        timers: Timers,
        hooks: NeighbourHooks,
    ) -> None:
        self.version = version
        self.settings = settings
        self._timers = timers
        self._hooks = hooks
        self._entries: dict[tuple[int, int], Entry] = {}
        # The (port, address) of every entry made, changed or gone since the
        # fast path's tables were last brought in step (xdp/tables.py); None
        # when there is no fast path.
        self.changed: set[tuple[int, int]] | None = None

    # -- the per-packet path ------------------------------------------------

    def mac_for(self, port: int, addr: int, now: float) -> bytes | None:
        """The next hop's MAC if known (a STALE entry starts its re-probe here)."""
        e = self._entries.get((port, addr))
        if e is None or e.mac is None:
            return None
        e.used = now
        state = e.state
        if state is _REACHABLE:
            if now < e.until:
                return e.mac
            e.state = state = State.STALE
            e.updated = e.until
        if state is _STALE:
            e.state = State.DELAY
            e.updated = now
            self._arm(e, now + self.settings.delay_first_probe)
        return e.mac

    def enqueue(
        self, port: int, addr: int, item: Pending, now: float, out: list[Action]
    ) -> DropReason | None:
        """Hold ``item`` until ``addr`` resolves.  Returns the reason a packet was
        dropped to make room (the oldest goes, as Linux does), if one was."""
        key = (port, addr)
        e = self._entries.get(key)
        if e is None:
            if len(self._entries) >= self.settings.max_entries and not self._evict_one():
                return DropReason.NEIGHBOUR_TABLE_FULL
            e = Entry(port, addr, State.INCOMPLETE, now)
            self._entries[key] = e
            e.probes = 1
            self._arm(e, now + self.settings.retrans_time)
            self._arm_gc(e, now)
            self._hooks.solicit(port, addr, None, out)
        dropped = None
        if len(e.queue) >= self.settings.queue_len:
            e.queue.pop(0)
            dropped = DropReason.NEIGHBOUR_QUEUE_FULL
        e.queue.append(item)
        return dropped

    # -- what ARP and ND tell us ---------------------------------------------

    def learn(
        self, port: int, addr: int, mac: bytes, heard: Heard, now: float, out: list[Action]
    ) -> None:
        """Record that ``addr`` on ``port`` is at ``mac``, as far as what was
        ``heard`` (see ``Heard``) lets a message change what the table knows."""
        solicited, override = heard.solicited, heard.override
        key = (port, addr)
        e = self._entries.get(key)
        if e is None:
            if not heard.create or (
                len(self._entries) >= self.settings.max_entries and not self._evict_one()
            ):
                return
            e = Entry(port, addr, State.STALE, now)
            e.mac = mac
            self._entries[key] = e
            self._arm_gc(e, now)
            self._mark(e)
            return
        if e.state == State.INCOMPLETE:
            e.mac = mac
            e.updated = now
            self._confirm(e, now) if solicited else self._make_stale(e, now)
            queue, e.queue = e.queue, []
            for item in queue:
                self._hooks.flush(port, item, mac, out)
            return
        if e.state == State.REACHABLE and now >= e.until:
            # What Linux's timer would have done by now.
            e.state = State.STALE
            e.updated = e.until
        if mac != e.mac:
            if override and heard.locktime and now < e.updated + heard.locktime:
                override = False  # the first of several answers wins
            if not override and e.mac is not None:
                if heard.weak_override and e.state == State.REACHABLE:
                    self._make_stale(e, now)
                return
            e.mac = mac
            e.updated = now
            if not solicited:
                self._make_stale(e, now)
                return
        if solicited:
            self._confirm(e, now)

    # -- state changes and timers --------------------------------------------

    def _confirm(self, e: Entry, now: float) -> None:
        if e.state != State.REACHABLE:
            e.updated = now
        e.state = State.REACHABLE
        e.probes = 0
        e.until = now + self.settings.reachable_time
        e.gen += 1  # cancels a pending probe timer
        self._mark(e)

    def _make_stale(self, e: Entry, now: float) -> None:
        if e.state != State.STALE:
            e.updated = now
        e.state = State.STALE
        e.probes = 0
        e.gen += 1
        self._mark(e)

    def _mark(self, e: Entry) -> None:
        """``e`` was made, changed its MAC or state, or went: the fast path's
        copy (its MAC) follows."""
        if self.changed is not None:
            self.changed.add((e.port, e.addr))

    def _remove(self, e: Entry) -> None:
        del self._entries[(e.port, e.addr)]
        self._mark(e)

    def _arm(self, e: Entry, deadline: float) -> None:
        e.gen += 1
        gen = e.gen

        def fire(now: float, out: list[Action]) -> None:
            if e.gen == gen and self._entries.get((e.port, e.addr)) is e:
                self._timer(e, now, out)

        self._timers.call_at(deadline, fire)

    def _arm_gc(self, e: Entry, now: float) -> None:
        """Once per entry: remove it when it has been stale and unused for
        GC_STALE_TIME; the check re-arms itself until then."""

        def collect(now: float, out: list[Action]) -> None:
            if self._entries.get((e.port, e.addr)) is not e:
                return
            idle_since = max(e.until, e.used)
            if (
                e.state in (State.STALE, State.REACHABLE)
                and now >= e.until
                and now - idle_since >= GC_STALE_TIME
            ):
                self._remove(e)
                return
            self._timers.call_at(max(idle_since, now) + GC_STALE_TIME, collect)

        self._timers.call_at(now + GC_STALE_TIME, collect)

    def _timer(self, e: Entry, now: float, out: list[Action]) -> None:
        s = self.settings
        if e.state == State.INCOMPLETE:
            if e.probes >= s.multicast_solicit:
                self._fail(e, now, out)
                return
            e.probes += 1
            self._hooks.solicit(e.port, e.addr, None, out)
            self._arm(e, now + s.retrans_time)
        elif e.state == State.DELAY:
            e.state = State.PROBE
            e.updated = now
            e.probes = 1
            self._hooks.solicit(e.port, e.addr, e.mac, out)
            self._arm(e, now + s.retrans_time)
        elif e.state == State.PROBE:
            if e.probes >= s.unicast_solicit:
                self._remove(e)
                return
            e.probes += 1
            self._hooks.solicit(e.port, e.addr, e.mac, out)
            self._arm(e, now + s.retrans_time)

    def _fail(self, e: Entry, now: float, out: list[Action]) -> None:
        del self._entries[(e.port, e.addr)]
        for item in e.queue:
            self._hooks.unresolved(item, now, out)
        e.queue = []

    def _evict_one(self) -> bool:
        """Make room in a full table by dropping one entry nobody waits on."""
        for e in self._entries.values():
            if e.state in (State.STALE, State.REACHABLE) and not e.queue:
                self._remove(e)
                return True
        return False

    def flush_port(self, port: int) -> list[Pending]:
        """Forget every entry of ``port`` (its link went down or away, as Linux's
        neigh_ifdown); returns the packets that were waiting on them."""
        dropped: list[Pending] = []
        for key in [k for k in self._entries if k[0] == port]:
            e = self._entries.pop(key)
            self._mark(e)
            e.gen += 1  # its timers find it gone and do nothing
            dropped += e.queue
            e.queue = []
        return dropped

    def adopt(self, other: Entry, now: float) -> bool:
        """Take over what ``other`` (an entry of the table a reload replaces)
        knows: a REACHABLE entry stays so until its time is up; one being
        probed is STALE here, probed again at its next use.  One still
        resolving is not taken (its next packet asks again).  False if it was
        not taken."""
        key = (other.port, other.addr)
        if (
            other.mac is None
            or key in self._entries
            or len(self._entries) >= (self.settings.max_entries)
        ):
            return False
        reachable = other.state == State.REACHABLE and now < other.until
        e = Entry(other.port, other.addr, State.REACHABLE if reachable else State.STALE, now)
        e.mac = other.mac
        e.until = other.until
        e.used = other.used
        e.updated = other.updated
        self._entries[key] = e
        self._arm_gc(e, now)
        self._mark(e)
        return True

    def clear(self) -> None:
        """Forget every entry (a reload replaced this table, and its new one
        adopted them): their armed timers find them gone and do nothing."""
        self._entries.clear()

    def used_by_fast_path(self, port: int, addr: int, when: float) -> None:
        """The fast path sent a packet through the entry at ``when`` (read back
        from its table): what the pipeline's own use would have done then (a
        STALE entry starts its re-probe; the entry is not idle)."""
        e = self._entries.get((port, addr))
        if e is not None and e.mac is not None and when > e.used:
            self.mac_for(port, addr, when)

    # -- for status and tests -------------------------------------------------

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def get(self, port: int, addr: int) -> Entry | None:
        return self._entries.get((port, addr))

    def __len__(self) -> int:
        return len(self._entries)
