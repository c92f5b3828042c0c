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

import errno
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopgate.pipeline.conntrack import FAST_PATH_GRACE
from hopgate.pipeline.router import Router
from hopgate.xdp import libbpf
from hopgate.xdp.libbpf import BpfError, BpfObject
from hopgate.xdp.tables import OBJECT, PROGRAM, Tables

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
    mode: str, attach: str, router: Router, ifindex: Mapping[int, int], veths: Iterable[str] = ()
) -> FastPath | None:
    """The fast path ``[dataplane]`` asks for, or None for AF_PACKET alone.
    ``mode`` "xdp" raises ``FastPathError`` if it cannot start; "auto" logs why
    and goes on without it.  ``veths``: the ports that are veths (logged: what
    a native fast path needs of their peers)."""
    if mode == "afpacket":
        log.info("data plane: AF_PACKET (the Python pipeline takes every frame)")
        return None
    try:
        fp = FastPath(router, ifindex, attach)
    except OSError as e:  # BpfError is one
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if mode == "xdp":
            raise FastPathError(f"the XDP fast path cannot start: {why}") from e
        log.warning("data plane: AF_PACKET, the XDP fast path cannot start: %s", why)
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


@dataclass(frozen=True)
class Attached:
    ifindex: int
    link: int  # the BPF link's descriptor: closing it detaches the program


class FastPath:
    def __init__(
        self, router: Router, ifindex: Mapping[int, int], mode: str, path: Path = OBJECT
    ) -> None:
        """Load the program from ``path``, fill its tables from ``router`` and
        attach it in ``mode`` ("native" or "generic") to each port's interface
        (``ifindex``: port -> interface).  Raises ``BpfError`` with the reason
        if it cannot, having undone what it did."""
        self.router = router
        self.mode = mode
        self.sync_errors = 0
        self._next_read = 0.0
        # Reading the flows back: where the next slice starts, None for the first.
        self._reading = False
        self._token: int | None = None
        self._attached: dict[int, Attached] = {}
        self.obj = BpfObject(path)
        self.tables = Tables(self.obj)
        try:
            self.tables.fill(router, ifindex)
            self._prog = self.obj.prog_fd(PROGRAM)
            for port, index in ifindex.items():
                self._attach(port, index)
        except BaseException:
            self.close()
            raise

    def _attach(self, port: int, ifindex: int) -> None:
        name = self.router.ports[port].name
        try:
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
        if a is not None:
            os.close(a.link)

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

    def hand_back(self) -> bool:
        """Before the connections are written at a stop: everything the
        program forwarded is read back, and every TCP connection it holds is
        the pipeline's again with its tracker (so what is written is exact).
        False if a read failed (the trackers written may then lag behind)."""
        nat = self.router.nat
        if nat is None:
            return True
        table = nat.table
        try:
            self.tables.read_flows(table)
            for conn in list(table.offloaded):
                table.offloaded.discard(conn)
                if conn.tcp is not None:
                    self.tables.take_back(conn, table)
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
            "ports": per_port,
        }

    def close(self) -> None:
        """Detach from every interface and free the tables."""
        for port in list(self._attached):
            self._detach(port)
        self.obj.close()
