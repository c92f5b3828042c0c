"""``hopgate reload`` and SIGHUP: the config file read again and its difference
applied while hopgate runs (docs/operations.md, "Reload").

The work is split so that forwarding waits only for the swap:

1. In the caller's thread (the admin server's, or a thread of its own for
   SIGHUP): the file is read and checked as at start; what only a restart can
   change (the interfaces, in order, and their host ports; ``[admin]``,
   ``[dataplane]``, ``[state]``)
   is refused with its key path; the interfaces are inspected again (their
   MACs, and whether a new ``mtu`` fits the link); the new router is built
   beside the running one (``Router(before=...)``: counters, backends' health and
   the operator's settings go on; a Maglev table is the old one if its
   backends are the same, else computed in a worker process).  An error
   anywhere here leaves hopgate as it was.
2. In the loop, between two batches of frames (``_swap``): the new router takes
   over the connection table, neighbours and timers (pipeline/takeover.py),
   becomes the loop's, the packet sockets take the control path's programs
   for the new addresses, the fast path's tables are made the new router's
   (its flows stay), and Maglev tables are asked of the worker for it.
   Nothing here grows with the connections.  How long it took is the reply's
   ``stall_ms``.
3. Then each connection is checked against the new configuration, a slice at
   a time between the loop's batches (``takeover.sweep``); the reply waits for
   it, to say how many were kept and ended.

One reload at a time: a second waits for the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hopgate.control.config import Config, ConfigError, ConfigIssue, load
from hopgate.io import ctlpath
from hopgate.io.netprep import PrepareError, link_now
from hopgate.pipeline.lb import maglev
from hopgate.pipeline.lb.service import RingRequest, Services
from hopgate.pipeline.router import Router
from hopgate.pipeline.takeover import TakenOver, sweep, take_over

if TYPE_CHECKING:
    from hopgate.control.lbcontrol import RingWorker
    from hopgate.io.loop import Loop
    from hopgate.xdp.dataplane import FastPath

log = logging.getLogger(__name__)

# The sections only a restart can change.
RESTART_ONLY = ("admin", "dataplane", "state")
# How long a reload waits for the loop to run the swap.
SWAP_TIMEOUT = 30.0
# How much of its work the thread building a reload does before it gives the
# CPU up (seconds).
YIELD_EVERY = 0.00005

JSON = dict[str, Any]


class ReloadError(ValueError):
    """The file cannot be applied: hopgate runs on as it was.  ``issues``: what is
    wrong, each with its key path."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(str(ConfigError(source, issues)))


@dataclass
class Outcome:
    """What a reload did: the changes, the connections kept and ended (by
    reason), and how long the loop was held."""

    changes: list[str]
    kept: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    stall: float = 0.0  # seconds

    def to_json(self) -> JSON:
        return {
            "changes": self.changes,
            "connections": {"kept": self.kept, "ended": dict(sorted(self.ended.items()))},
            "stall_ms": round(self.stall * 1000, 3),
        }

    def lines(self) -> list[str]:
        out = list(self.changes) or ["nothing changed"]
        ended = sum(self.ended.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.ended.items()))
        out.append(f"connections: {self.kept} kept, {ended} ended" + (f" ({why})" if why else ""))
        return out


class Reloader:
    def __init__(
        self,
        config_path: str,
        cfg: Config,
        loop: Loop,
        rings: RingWorker,
        fastpath: FastPath | None = None,
        applied: Callable[[Config], None] | None = None,
    ) -> None:
        """``cfg``: the configuration running now; ``applied``: told of each
        configuration a reload puts in place."""
        self.config_path = config_path
        self.cfg = cfg
        self.loop = loop
        self.rings = rings
        self.fastpath = fastpath
        self.applied = applied
        self._lock = threading.Lock()
        self.reloads = 0
        self.failures = 0

    def __call__(self) -> Outcome:
        """Reload (in a thread other than the loop's).  Raises ReloadError."""
        with self._lock:
            try:
                out = self._reload()
            except ReloadError:
                self.failures += 1
                raise
            self.reloads += 1
            return out

    def _reload(self) -> Outcome:
        with yielding(YIELD_EVERY):
            router, old, new, changes = self._build()
        taken, stall = self.loop.call(lambda: self._swap(router, old)).result(SWAP_TIMEOUT)
        self.cfg = new
        if self.applied is not None:
            self.applied(new)
        if router.nat is not None:
            # Each connection checked against the new rules, a slice at a time.
            for _ in self.loop.mailbox.start(sweep(router.nat, taken)).chunks(SWAP_TIMEOUT):
                pass
        return Outcome(changes, taken.kept, taken.ended, stall)

    def _build(self) -> tuple[Router, Router, Config, list[str]]:
        """The new configuration read and checked, and its router built beside
        the running one (in this thread): (new router, running one, new
        configuration, changes).  Raises ReloadError."""
        source = self.config_path
        started = time.perf_counter()
        try:
            new = load(source)
        except ConfigError as e:
            raise ReloadError(e.source, e.issues) from None
        issues = restart_only(self.cfg, new)
        if issues:
            raise ReloadError(source, issues)
        read = time.perf_counter()
        links: dict[str, tuple[bytes, int]] = {}
        problems = []
        for i, iface in enumerate(new.interface):
            try:
                links[iface.name] = link_now(iface.name)
                mtu = links[iface.name][1]
            except PrepareError as e:
                problems.append(ConfigIssue(f"interface[{i}]", str(e)))
                continue
            if iface.mtu is not None and iface.mtu > mtu:
                problems.append(
                    ConfigIssue(
                        f"interface[{i}].mtu",
                        f"{iface.mtu} is above the link's MTU {mtu} (raise it with:"
                        f" ip link set {iface.name} mtu {iface.mtu})",
                    )
                )
        if problems:
            raise ReloadError(source, problems)
        inspected = time.perf_counter()
        old = self.loop.router
        try:
            spec = new.router_spec(links)
            router = Router(
                spec,
                now=time.monotonic(),
                on_ring=self.rings.wake,
                before=old,
                ring_for=ring_source(old, self.rings.ring_for),
            )
        except ValueError as e:
            raise ReloadError(source, [ConfigIssue("", str(e))]) from None
        log.debug(
            "reload: file read and checked in %.1f ms, interfaces in %.1f ms,"
            " router built in %.1f ms",
            (read - started) * 1000,
            (inspected - read) * 1000,
            (time.perf_counter() - inspected) * 1000,
        )
        return router, old, new, describe(self.cfg, new)

    def _swap(self, new: Router, old: Router) -> tuple[TakenOver, float]:
        """In the loop: ``new`` takes over from ``old`` and replaces it; what it
        took, and how long that held the loop."""
        started = time.perf_counter()
        loop = self.loop
        if loop.router is not old:
            raise RuntimeError("the router changed while the new one was built")
        taken = take_over(new, old, time.monotonic())
        loop.router = new
        for port in new.ports:
            i = port.index
            sock = loop.sockets[i]
            if (
                ctlpath.own_addresses(new.ports, i) == ctlpath.own_addresses(old.ports, i)
                and port.max_frame == old.ports[i].max_frame
            ):
                # The sockets' programs stand; what builds them again (a link
                # coming back) reads the new router's ports from now on.
                if sock.filters is not None:
                    sock.filters = ctlpath.filters_for(new.ports, i, check=False)
                continue
            filters = ctlpath.filters_for(new.ports, i)
            try:
                loop.refilter(i, filters, port.max_frame)
            except OSError as e:  # its frames still arrive, by the one socket left open
                log.error("reload: %s: cannot change its control path: %s", port.name, e)
        if self.fastpath is not None:
            self.fastpath.replace(new)
        if new.nat is not None and any(s.uses_maglev for s in new.nat.services.all):
            self.rings.serve(new.maglev, loop.call)
        loop.log_events()
        return taken, time.perf_counter() - started


@contextlib.contextmanager
def yielding(every: float) -> Iterator[None]:
    """While in the block, this thread gives the CPU up (``sched_yield``) every
    ``every`` seconds of its work.  The loop, on the same CPU when hopgate is
    pinned to one, otherwise waits for the scheduler to end this thread's
    slice (3 ms on Linux 6.6 and after): measured by bench/reload.py, a 5 ms
    gap in forwarding at each reload.  Watched by a profile hook, at every call
    and return of this thread only (its build takes about twice as long)."""
    clock = time.perf_counter
    last = [clock()]

    def hook(frame: object, event: str, arg: object) -> None:
        now = clock()
        if now - last[0] > every:
            os.sched_yield()
            last[0] = clock()

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)


def ring_source(
    old: Router, compute: Callable[[RingRequest], maglev.Ring]
) -> Callable[[RingRequest], maglev.Ring]:
    """Where the new services' Maglev tables come from: the table of one of
    ``old``'s services when it was built of the same backends, weights and
    size; else ``compute`` (a worker process: the building thread waits, the
    loop does not)."""
    built: dict[tuple[tuple[str, ...], tuple[int, ...], int], maglev.Ring] = {}
    services: Services | None = old.nat.services if old.nat is not None else None
    for s in services.all if services is not None else ():
        if s.ring is not None and s.ring_of is not None:
            built[s.ring_of] = s.ring

    def ring_for(request: RingRequest) -> maglev.Ring:
        ring = built.get(request.built_of)
        return ring if ring is not None else compute(request)

    return ring_for


def restart_only(old: Config, new: Config) -> list[ConfigIssue]:
    """What ``new`` changes that only a restart can."""
    issues = []
    was = [i.name for i in old.interface]
    now = [i.name for i in new.interface]
    if was != now:
        issues.append(
            ConfigIssue(
                "interface",
                f"the interfaces change only by a restart (running on {', '.join(was)};"
                f" the file has {', '.join(now)})",
            )
        )
    for section in RESTART_ONLY:
        if getattr(old, section) != getattr(new, section):
            issues.append(ConfigIssue(section, "changes only by a restart"))
    if was == now:
        # The host ports are kernel interfaces made at start (io/hostport.py).
        for i, (o, n) in enumerate(zip(old.interface, new.interface, strict=True)):
            if [str(a) for a in o.host_interfaces()] != [str(a) for a in n.host_interfaces()]:
                issues.append(
                    ConfigIssue(f"interface[{i}].host_addresses", "changes only by a restart")
                )
            if o.host_port() != n.host_port():
                issues.append(ConfigIssue(f"interface[{i}].host_name", "changes only by a restart"))
    if (old.bgp is None) != (new.bgp is None):
        # A reload changes what BIRD does; starting or stopping it is a restart's.
        issues.append(
            ConfigIssue("bgp", f"is {'added' if old.bgp is None else 'removed'} only by a restart")
        )
    return issues


# -- what changed, as the operator wrote it ---------------------------------------

# Lists of tables, each element named by what identifies it rather than its place.
_IDENTITY: dict[str, Callable[[dict[str, Any]], str]] = {
    "interface": lambda t: str(t["name"]),
    "route": lambda t: str(t["prefix"]),
    "service": lambda t: (
        f"{t['name'] + ' ' if t.get('name') else ''}{t['protocol']} {t['vip']} port {t['port']}"
    ),
    "backend": lambda t: str(t["address"]) + (f" port {t['port']}" if t.get("port") else ""),
    "snat": lambda t: f"{', '.join(t['inside'])} by {t['interface']}",
    "dnat": lambda t: f"{t['protocol']} {t['published']}",
    "neighbor": lambda t: str(t["address"]),
}


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        out[path] = "{...}"  # the table itself: present
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else k, out)
        return
    name = path.rsplit(".", 1)[-1]
    ident = _IDENTITY.get(name)
    if isinstance(value, list) and ident is not None and all(isinstance(v, dict) for v in value):
        for v in value:
            _flatten(v, f"{path}[{ident(v)}]", out)
        return
    out[path] = value


def describe(old: Config, new: Config) -> list[str]:
    """One line per change from ``old`` to ``new``: a table added or removed
    (``route[198.18.9.0/24] removed``), a setting changed (``service[web tcp
    198.18.1.1 port 80].backend[198.18.2.2].weight: 1 -> 3``)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old.model_dump(mode="json", exclude_none=True), "", before)
    _flatten(new.model_dump(mode="json", exclude_none=True), "", after)
    lines = []
    gone = [p for p in before if p not in after and p]
    came = [p for p in after if p not in before and p]
    for paths, verb in ((gone, "removed"), (came, "added")):
        for p in paths:
            # Only the outermost: "service[x] removed", not each of its keys.
            if not any(p.startswith(q + ".") or p.startswith(q + "[") for q in paths if q != p):
                value = (before if verb == "removed" else after)[p]
                shown = "" if value == "{...}" else f" = {value}"
                lines.append(f"{p}{shown} {verb}")
    for p, v in after.items():
        if p in before and before[p] != v:
            lines.append(f"{p}: {before[p]} -> {v}")
    return lines
