"""The XDP fast path as the daemon runs it (issue 11): the program loaded,
attached to every port through BPF links (they go when hopgate goes, however it
ends), its tables filled from the router and kept in step with it.

The pipeline stays sans-I/O: its neighbour tables note which entries were made,
changed or removed (``NeighbourTable.changed``); ``sync``, run by the loop at the
end of every turn, applies those notes to the maps, and once a second reads back
which neighbours the program sent through, as the pipeline's own sends would
have told it (a STALE neighbour in use is probed again, not forgotten as idle).
Link events arrive through ``link_down`` and ``link_up``.  A map update that
fails is counted and logged, never raised into the loop: the program passes up
what it has no entry for, so a missing entry costs speed, not a wrong answer.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopgate.pipeline.conntrack import FAST_PATH_GRACE
from hopgate.pipeline.router import Router
from hopgate.xdp import libbpf
from hopgate.xdp.libbpf import BpfError, BpfObject
from hopgate.xdp.tables import LAYOUT, OBJECT, PROGRAM, TAKEN_OVER, Settings, Tables

log = logging.getLogger(__name__)

# How often the neighbours' last use and the connections' packets are read
# back from the program (seconds): within the grace a connection the program
# holds gets past its deadline, and well within Linux's delay_first_probe_time
# (5 s), the wait before a STALE neighbour in use is probed.
READ_USE_EVERY = FAST_PATH_GRACE / 2
# Flows read back per loop turn: a table of many connections is read a slice a
# turn (about 5 ms each), between the turns' frames, not in one long pause.
FLOW_SLICE = 8192


class FastPathError(Exception):
    """``mode = "xdp"`` and the fast path cannot run: why."""


def start(
    mode: str,
    attach: str,
    router: Router,
    ifindex: Mapping[int, int],
    veths: Iterable[str] = (),
    handover: float = 0.0,
) -> FastPath | None:
    """The fast path ``[dataplane]`` asks for, or None for AF_PACKET alone.
    ``mode`` "xdp" raises ``FastPathError`` if it cannot start; "auto" logs why
    and goes on without it.  ``veths``: the ports that are veths (logged: what
    a native fast path needs of their peers).  ``handover``: see ``FastPath``."""
    if mode == "afpacket":
        log.info("data plane: AF_PACKET (the Python pipeline takes every frame)")
        remove_leftover(router, ifindex)
        return None
    try:
        fp = FastPath(router, ifindex, attach, handover=handover)
    except OSError as e:  # BpfError is one
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if mode == "xdp":
            raise FastPathError(f"the XDP fast path cannot start: {why}") from e
        log.warning("data plane: AF_PACKET, the XDP fast path cannot start: %s", why)
        remove_leftover(router, ifindex)
        return None
    log.info(
        "data plane: XDP (%s) on %s, the Python pipeline behind it",
        attach,
        ", ".join(p.name for p in router.ports),
    )
    if attach == "native":
        for name in veths:
            log.info(
                "%s is a veth: frames the fast path sends there reach its peer only if"
                " the peer has an XDP program attached or GRO on",
                name,
            )
    return fp


def _ours(found: libbpf.Attached) -> bool:
    """Whether a program found attached is hopgate's fast path."""
    return found.name == PROGRAM[:15]  # the kernel keeps 15 characters of a name


def _close(found: libbpf.Attached) -> None:
    os.close(found.fd)
    for fd in found.maps.values():
        os.close(fd)


def remove_leftover(router: Router, ifindex: Mapping[int, int]) -> None:
    """Detach the fast path a hopgate before this one left attached (for the
    next to take over), where this one will not run it."""
    for port, index in ifindex.items():
        try:
            found = libbpf.attached(index)
        except OSError as e:  # BpfError, or no libbpf on this machine: nothing of ours there
            log.debug("%s: cannot look at its XDP program: %s", router.ports[port].name, e)
            continue
        if found is None:
            continue
        _close(found)
        if _ours(found):
            log.info("%s: detaching the fast path the hopgate before left", router.ports[port].name)
            try:
                libbpf.detach(index, found.mode)
            except BpfError as e:
                log.warning("%s: %s", router.ports[port].name, e)


def _previous(ifindex: Mapping[int, int], mode: str) -> libbpf.Attached | None:
    """The fast path the hopgate before this one left attached to every port,
    in ``mode``, its tables laid out as this one's (``LAYOUT``): to take over.
    A fast path of hopgate's that cannot be taken over is detached."""
    found = {index: libbpf.attached(index) for index in ifindex.values()}
    ours = {index: f for index, f in found.items() if f is not None and _ours(f)}
    for f in found.values():
        if f is not None and not _ours(f):
            _close(f)  # another program: attaching fails, and says so
    if not ours:
        return None
    first = next(iter(ours.values()))
    settings = Settings()
    same = (
        len(ours) == len(ifindex)
        and len({f.id for f in ours.values()}) == 1
        and first.mode == mode
        and all(name in first.maps for name in TAKEN_OVER)
        and libbpf.map_lookup(first.maps["settings"], ctypes.c_uint32(0), settings)
        and settings.layout == LAYOUT
    )
    for f in ours.values():
        if f is not first or not same:
            _close(f)
    if same:
        return first
    for index, f in ours.items():
        log.info("interface %d: the fast path left there cannot be taken over; detached", index)
        libbpf.detach(index, f.mode)
    return None


@dataclass(frozen=True)
class Attached:
    ifindex: int
    # The BPF link's descriptor: closing it detaches the program.  None: the
    # program is attached for good (``handover``), and detached by name.
    link: int | None


class FastPath:
    def __init__(
        self,
        router: Router,
        ifindex: Mapping[int, int],
        mode: str,
        path: Path = OBJECT,
        *,
        handover: float = 0.0,
        now: float | None = None,
    ) -> None:
        """Load the program from ``path``, fill its tables from ``router`` and
        attach it in ``mode`` ("native" or "generic") to each port's interface
        (``ifindex``: port -> interface).  Raises ``BpfError`` with the reason
        if it cannot, having undone what it did.

        ``handover`` (seconds; ``[dataplane] handover``): above 0, the program
        stays attached when hopgate stops, however it stops, and forwards the
        established connections that long without it, for the next hopgate to
        take over: this one takes over what the one before left, if its tables
        are laid out alike.  0: the program goes when hopgate goes."""
        self.router = router
        self.mode = mode
        self.handover = handover
        self.sync_errors = 0
        self.taken_over: int | None = None  # connections found in the program at start
        self._next_read = 0.0
        # Reading the flows back: where the next slice starts, None for the first.
        self._reading = False
        self._token: int | None = None
        self._attached: dict[int, Attached] = {}
        previous = _previous(ifindex, mode)
        try:
            reuse = {n: previous.maps[n] for n in TAKEN_OVER} if previous else None
            self.obj = BpfObject(path, reuse)
        except BaseException:
            if previous is not None:
                _close(previous)
            raise
        self.tables = Tables(self.obj)
        try:
            if previous is not None:
                self.taken_over = self.tables.adopt(router, ifindex)
                log.info(
                    "fast path: taken over from the hopgate before; connections it went on"
                    " forwarding meanwhile: %d",
                    self.taken_over,
                )
            else:
                self.tables.fill(router, ifindex)
            self._renew(time.monotonic() if now is None else now)
            self._prog = self.obj.prog_fd(PROGRAM)
            for port, index in ifindex.items():
                self._attach(port, index, previous.fd if previous is not None else None)
        except BaseException:
            self.close(keep=False)
            raise
        finally:
            if previous is not None:
                _close(previous)

    def _renew(self, now: float) -> None:
        """Let the program forward a while longer: ``handover`` past the next
        renewal, or for good without a handover."""
        if self.handover > 0:
            self.tables.forward_until(now + READ_USE_EVERY + self.handover)
        else:
            self.tables.forward_until(None)

    def _attach(self, port: int, ifindex: int, replacing: int | None = None) -> None:
        name = self.router.ports[port].name
        try:
            if self.handover > 0:
                libbpf.attach_for_good(ifindex, self._prog, self.mode, replacing)
                self._attached[port] = Attached(ifindex, None)
                return
            if replacing is not None:
                libbpf.detach(ifindex, self.mode)
            fd = libbpf.link(ifindex, self._prog, self.mode)
        except BpfError as e:
            hint = ""
            if e.errno == errno.ERANGE:
                hint = " (its MTU is too large for native XDP: lower it, or xdp_attach = generic)"
            elif e.errno == errno.EBUSY:
                hint = " (another XDP program is attached to it)"
            elif e.errno == errno.EOPNOTSUPP:
                hint = " (its driver has no native XDP: xdp_attach = generic)"
            raise BpfError(e.errno, f"{name}: {e.strerror}{hint}") from e
        self._attached[port] = Attached(ifindex, fd)

    def _detach(self, port: int) -> None:
        a = self._attached.pop(port, None)
        if a is None:
            return
        if a.link is not None:
            os.close(a.link)
            return
        try:
            libbpf.detach(a.ifindex, self.mode)
        except BpfError as e:  # the interface is gone: so is the program
            log.debug("detaching from %d: %s", a.ifindex, e)

    # -- kept in step ----------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Apply the neighbour and connection changes the router noted since the
        last call; once every ``READ_USE_EVERY`` seconds, tell it which
        neighbours the program used and start telling it what the program
        forwarded on each connection (``FLOW_SLICE`` flows a call)."""
        for e in self.tables.sync(self.router):
            self._failed("neighbour", e)
        nat = self.router.nat
        if nat is not None:
            failed = self.tables.failed
            for e in failed:
                self._failed("connection taken back", e)
            failed.clear()
            for e in self.tables.sync_connections(nat.table):
                self._failed("connection", e)
        if now >= self._next_read:
            self._next_read = now + READ_USE_EVERY
            if self.handover > 0:
                try:
                    self._renew(now)
                except BpfError as err:
                    self._failed("renewal", err)
            for e in self.tables.read_use(self.router, now):
                self._failed("neighbour use", e)
            self._reading = nat is not None
            self._token = None
        if self._reading and nat is not None:
            try:
                self._token = self.tables.read_flows_from(nat.table, self._token, FLOW_SLICE)
            except BpfError as e:
                self._failed("connection use", e)
                self._token = None
            self._reading = self._token is not None

    def stop(self) -> bool:
        """At a stop, once the loop has ended, before the connections are
        written: what the program forwarded is read back.  Without a
        ``handover``, every TCP connection it holds is then the pipeline's
        again, its tracker exact (``hand_back``).  With one, the program is to
        go on forwarding while hopgate is down: what it holds stays there (a
        segment lost in a handover would cost the connection a retransmission
        timeout), a TCP connection it has marked taken back is taken back, and
        every connection it can take and does not hold is handed to it.  True
        if the trackers written are exact (with a handover, those the program
        holds are read again by the next hopgate)."""
        if self.handover <= 0:
            return self.hand_back()
        nat = self.router.nat
        if nat is None:
            return True
        if not self.hand_back(marked_only=True):
            return False
        table = nat.table
        pending = table.to_offload
        if pending is not None:
            for conn in table.connections():
                if conn not in table.offloaded and table.offloadable(conn):
                    pending.add(conn)
                    table.offloaded.add(conn)
        for failed in self.tables.sync_connections(table):
            self._failed("handover", failed)
        return False

    def hand_back(self, *, marked_only: bool = False) -> bool:
        """Before the connections are written at a stop: everything the
        program forwarded is read back, and every TCP connection it holds is
        the pipeline's again with its tracker (so what is written is exact);
        ``marked_only``: only those the program has marked taken back (the
        others stay the program's).  False if a read failed (the trackers
        written may then lag behind)."""
        nat = self.router.nat
        if nat is None:
            return True
        table = nat.table
        tables = self.tables
        try:
            tables.read_flows(table)
            for conn in list(table.offloaded):
                if marked_only and (conn.tcp is None or not tables.taken_back(conn)):
                    continue
                table.offloaded.discard(conn)
                if conn.tcp is not None:
                    tables.take_back(conn, table)
        except BpfError as e:
            self._failed("hand back", e)
            return False
        return True

    def replace(self, router: Router) -> None:
        """A reload: ``router``, which has taken over from the old one
        (pipeline/takeover.py), is the one the tables follow from now on."""
        self.router = router
        self._reading = False
        self._token = None
        self.tables.refill(router)

    def next_deadline(self) -> float:
        """When ``sync`` has work of its own: at once while the flows are being
        read back, else at the next read."""
        return 0.0 if self._reading else self._next_read

    def link_down(self, port: int) -> None:
        """``port``'s link is down or gone: the fast path neither takes frames
        from it nor sends any to it (the pipeline drops them as link-down)."""
        try:
            self.tables.drop_port(port)
        except BpfError as e:
            self._failed("link down", e)

    def link_up(self, port: int, ifindex: int) -> None:
        """``port`` is up on ``ifindex`` (a re-created interface has a new one,
        without the program: it is attached again)."""
        try:
            a = self._attached.get(port)
            if a is None or a.ifindex != ifindex:
                self._detach(port)
                self._attach(port, ifindex)
            self.tables.set_port(self.router, port, ifindex)
        except BpfError as e:
            # The port's frames all go to the pipeline's socket: slower, still right.
            self._failed(f"{self.router.ports[port].name} up", e)

    def replay(self, frame: bytes | bytearray | memoryview, port: int) -> tuple[int, bytes] | None:
        """A segment of a connection the program holds, that arrived on ``port``
        before the handover (the router's ``Replay``): run through the program.
        The port to send what it made of it by, and that frame; None if the
        program passed it up, or could not be run (the pipeline's then)."""
        a = self._attached.get(port)
        if a is None:
            return None
        try:
            return self.tables.replay(frame, a.ifindex)
        except BpfError as e:
            self._failed("replay", e)
            return None

    def _failed(self, what: str, e: BpfError) -> None:
        self.sync_errors += 1
        n = self.sync_errors
        if n <= 10 or n % 1000 == 0:
            log.warning("fast path: %s: %s (%d so far)", what, e, n)

    # -- for status ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What status shows of the fast path: its totals, and per interface
        (``ports``, in the router's port order) what it forwarded and passed up."""
        ports = self.router.ports
        try:
            per_port = self.tables.counters(len(ports))
        except BpfError as e:
            self._failed("counters", e)
            per_port = [{} for _ in ports]
        # Per interface, the verdicts; the copies it forwarded are the second
        # chance's (the daemon adds them to its counts).
        copies = sum(c.pop("copies", 0) for c in per_port)
        totals: dict[str, int] = {}
        for c in per_port:
            for k, v in c.items():
                totals[k] = totals.get(k, 0) + v
        return {
            "mode": "xdp",
            "attach": self.mode,
            "interfaces": sorted(ports[p].name for p in self._attached),
            "sync_errors": self.sync_errors,
            **totals,
            "copies_forwarded": copies,
            "ports": per_port,
        }

    def close(self, keep: bool = True) -> None:
        """Free the tables, and detach from every interface unless the program
        is to go on without hopgate (``handover``, and ``keep``): it then
        forwards the established connections ``handover`` seconds more."""
        if keep and self.handover > 0 and self._attached:
            try:
                self.tables.forward_until(time.monotonic() + self.handover)
            except BpfError as e:
                self._failed("handover", e)
            log.info(
                "fast path: left attached, forwarding the established connections"
                " for %g s for the next hopgate to take over",
                self.handover,
            )
            self._attached.clear()
        for port in list(self._attached):
            self._detach(port)
        self.obj.close()
