"""The loop: frames from the packet sockets into the pipeline, actions out, timers run.

Single-threaded over the pipeline, on the reactor (io/reactor.py) that the relay
shares.  Other threads (the admin API) ask for work to be done in the loop with
``call``; signals and those requests wake the loop through one pipe.

Link events (io/links.py) arrive on an rtnetlink socket in the same epoll set:
a link that goes down or away has its packet socket closed (no wake-ups from a
dead socket) and the router told; one that comes back, or is re-created under
its name, is taken again (io/netprep.py) and its socket opened again.

A port with host addresses has a host port (io/hostport.py): what the router
passes up (``ToHost``) is written to it, what the host sends there is read
as the control sockets are and goes through ``Router.from_host``; its carrier
follows the port's link.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from hopgate.io.afpacket import Filters, PacketSocket
from hopgate.io.links import Change, LinkMonitor
from hopgate.io.reactor import Reactor
from hopgate.pipeline.actions import DropReason, Replay, ToHost, Transmit
from hopgate.pipeline.router import Router

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH = 64  # frames read from one socket before the others get their turn
CONTROL_BATCH = 64  # the same for a control socket (io/ctlpath.py), read first
# The order in which a turn reads what is ready (io/reactor.py).
_CONTROL, _DATA, _LINKS = 0, 1, 2


class FastPath(Protocol):
    """What the loop keeps in step with the router (xdp/dataplane.py)."""

    def sync(self, now: float) -> None:
        """Apply what the router noted since the last call."""

    def next_deadline(self) -> float:
        """When ``sync`` must run again, whether frames come or not."""

    def link_down(self, port: int) -> None: ...

    def link_up(self, port: int, ifindex: int) -> None: ...

    def replay(self, frame: bytes | bytearray | memoryview, port: int) -> tuple[int, bytes] | None:
        """Run a frame the router gives back to the program (``Replay``) through
        it: the port and frame to send, or None if the program passed it up."""


class HostSide(Protocol):
    """A port's host port (io/hostport.py): the kernel's interface for the
    host's addresses on that link."""

    name: str
    gone: bool  # deleted under hopgate: read no more

    def fileno(self) -> int: ...

    def read(self) -> bytes | None: ...

    def write(self, frame: bytes | bytearray | memoryview) -> bool: ...

    def set_carrier(self, on: bool) -> None: ...

    def set_mac(self, mac: bytes) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Loop:
    def __init__(
        self,
        router: Router,
        sockets: list[PacketSocket],
        clock: Callable[[], float] = time.monotonic,
        links: LinkMonitor | None = None,
        prepare: Callable[[str], object] | None = None,
        fastpath: FastPath | None = None,
        hosts: Mapping[int, HostSide] | None = None,
    ) -> None:
        """``links``: the link events to follow; ``prepare(name)``: take a
        re-created interface as at start (raises if it cannot); ``fastpath``:
        the XDP program's tables, brought in step with the router at the end of
        every turn; ``hosts``: the host ports, by port (frames the router
        passes up are written there, what the host sends is read like the
        control sockets, first in a turn)."""
        self.router = router
        self.fastpath = fastpath
        self.hosts: dict[int, HostSide] = dict(hosts or {})
        self.sockets = sockets
        self.clock = clock
        self.links = links
        self.prepare = prepare
        self.internal_errors = 0
        self.reactor = Reactor(clock)
        self.mailbox = self.reactor.mailbox
        self._active = False  # running: sockets opened are read
        self._by_fd: dict[int, int] = {}  # fd -> port

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop between two batches of frames; its result arrives
        in the returned future."""
        return self.mailbox.call(fn)

    def install_signal_handlers(
        self, others: dict[signal.Signals, Callable[[], None]] | None = None
    ) -> None:
        self.mailbox.install_signal_handlers(others)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Turn until stopped (io/reactor.py): each turn the control sockets are
        read first (ARP, ND, answers to hopgate's own packets: they never wait
        behind a batch of data frames), then the data sockets, then the link
        events (they close and open sockets, whose descriptors this turn's events
        name), then the pipeline's timers, the router's events logged and the
        admin API's calls."""
        self._active = True
        try:
            for port in range(len(self.sockets)):
                self._register(port)
            for port, host in self.hosts.items():
                self.reactor.add_reader(
                    host.fileno(), functools.partial(self._from_host, port, host), order=_CONTROL
                )
            links = self.links
            if links is not None:
                self.reactor.add_reader(
                    links.fileno(), lambda: self.apply_link_changes(links.read()), order=_LINKS
                )
                # What changed between taking the interfaces and subscribing.
                self.apply_link_changes(links.resync())
            self.reactor.run(
                next_deadline=self._next_deadline,
                # self.router, not a local: a reload replaces it
                on_deadline=lambda now: self._execute(self.router.poll(now)),
                end_of_turn=self._end_of_turn,
            )
        finally:
            self._active = False
            self._by_fd.clear()

    def _next_deadline(self) -> float | None:
        """The router's timers' next deadline, or the fast path's if sooner."""
        deadline = self.router.next_deadline()
        fast = self.fastpath
        if fast is not None:
            mine = fast.next_deadline()
            if deadline is None or mine < deadline:
                return mine
        return deadline

    def _end_of_turn(self) -> None:
        if self.fastpath is not None:
            self._fast("sync", self.fastpath.sync, self.clock())
        # Logged before the admin API is answered: what a status shows has been
        # logged by then.
        self.log_events()

    def log_events(self) -> None:
        """Log what the router recorded (pipeline/events.py) since the last call:
        at the end of every turn, and after an admin call that changes things."""
        news = self.router.events
        while news:
            log.info("%s", news.popleft())

    # -- link events ------------------------------------------------------------------

    def _register(self, port: int) -> None:
        if not self._active:
            return
        sock = self.sockets[port]
        for fd, control in sock.filenos():
            self.reactor.add_reader(
                fd,
                functools.partial(self._receive, port, sock, control),
                order=_CONTROL if control else _DATA,
            )
            self._by_fd[fd] = port

    def _unregister(self, port: int) -> None:
        sock = self.sockets[port]
        for fd, _ in sock.filenos():
            if fd < 0 or self._by_fd.get(fd) != port:
                continue
            del self._by_fd[fd]
            try:
                self.reactor.remove_reader(fd)
            except OSError as e:
                log.debug("%s: %s", sock.ifname, e)

    def apply_link_changes(self, changes: list[Change]) -> None:
        """Carry out what the link events decided (one log line each)."""
        pending = list(changes)
        while pending:
            change = pending.pop(0)
            port, info = change.port, change.info
            sock = self.sockets[port]
            name = sock.ifname
            if change.kind == "down":
                self._unregister(port)
                sock.close()
                self._execute(self.router.link_down(port))
                if self.fastpath is not None:
                    self._fast(f"{name} down", self.fastpath.link_down, port)
                host = self.hosts.get(port)
                if host is not None:
                    host.set_carrier(False)
                log.warning("%s: %s, not forwarding there", name, change.why)
            elif change.kind == "prepare":
                log.info("%s: re-created (index %d), taking it", name, info.index)
                try:
                    if self.prepare is not None:
                        self.prepare(name)
                except Exception as e:  # noqa: BLE001 - no link event may stop the router
                    log.error("%s: cannot take the re-created interface: %s", name, e)
                    pending = [c for c in pending if c.port != port]
                    if self.links is not None:
                        self.links.watch.failed(port, prepare=True)
                    continue
                if self.links is not None:
                    pending[0:0] = self.links.watch.prepared(port, info)
            elif change.kind == "up":
                # The router first: the control path's programs are built, when
                # the socket opens, from the port's addresses (a new MAC's link-local).
                note = self.router.link_up(port, info.mac)
                try:
                    sock.open(info.index)
                except OSError as e:
                    log.error("%s: cannot open its socket again: %s", name, e)
                    self._execute(self.router.link_down(port))
                    if self.links is not None:
                        self.links.watch.failed(port)
                    continue
                self._register(port)
                if self.fastpath is not None:
                    self._fast(f"{name} up", self.fastpath.link_up, port, info.index)
                host = self.hosts.get(port)
                if host is not None:
                    if note is not None:  # a new MAC: the host's frames leave with it
                        host.set_mac(self.router.ports[port].mac)
                    host.set_carrier(True)
                if note is not None:
                    log.warning("%s: %s; adopted", name, note)
                log.info("%s: %s, forwarding resumed", name, change.why)

    def refilter(self, port: int, filters: Filters | None, max_frame: int) -> None:
        """A reload: ``port``'s sockets take the control path's programs for its
        new addresses, in place if they can, else opened again."""
        sock = self.sockets[port]
        if sock.refilter(filters, max_frame):
            return
        self._unregister(port)
        sock.open(sock.ifindex)
        self._register(port)

    def _fast(self, what: str, step: Callable[..., None], *args: Any) -> None:
        """A step of the fast path's upkeep; a bug there is logged and counted,
        never stops the router (the program passes up what it has no entry for)."""
        try:
            step(*args)
        except Exception:  # no link event or timer may stop the router
            self.internal_errors += 1
            if self.internal_errors <= 10 or self.internal_errors % 1000 == 0:
                log.exception("internal error in the fast path's upkeep (%s)", what)

    def host_status(self, port: int) -> dict[str, Any] | None:
        """The port's host port, for status (None if it has none)."""
        host = self.hosts.get(port)
        return host.snapshot() if host is not None else None

    def link_status(self, port: int) -> dict[str, Any] | None:
        """The port's link as the events left it, for status (None without events)."""
        if self.links is None:
            return None
        st = self.links.watch.by_port(port)
        return st.snapshot() if st is not None else None

    def _receive(self, port: int, sock: PacketSocket, control: bool = False) -> None:
        process = self.router.process
        sockets = self.sockets
        now = self.clock()
        read = sock.read
        for _ in range(CONTROL_BATCH if control else BATCH):
            frame = read(control)
            if frame is None:
                return
            try:
                actions = process(frame, port, now)
            except Exception:  # noqa: BLE001 - no packet may stop the router
                self._internal_error(port)
                continue
            for a in actions:  # _execute's loop, written out: it runs for every frame
                if a.__class__ is Transmit:
                    sockets[a.port].send(a.frame)
                elif a.__class__ is ToHost:
                    self._to_host(a.port, a.frame)
                elif a.__class__ is Replay:
                    self._replay(a, now)

    def _replay(self, replay: Replay, now: float) -> None:
        """A segment the router gives back to the fast path: what the program
        forwards is sent; what it passes up goes through the pipeline, which
        takes its connection back."""
        fast = self.fastpath
        try:
            got = fast.replay(replay.frame, replay.port) if fast is not None else None
            if got is None:
                self._execute(self.router.fast_path_passed(replay, now))
            elif got[0] < len(self.sockets):
                self.sockets[got[0]].send(got[1])
        except Exception:  # noqa: BLE001 - no packet may stop the router
            self._internal_error(replay.port)

    def _to_host(self, port: int, frame: bytes | bytearray | memoryview) -> None:
        host = self.hosts.get(port)
        if host is not None:
            host.write(frame)

    def _from_host(self, port: int, host: HostSide) -> None:
        """What the host sent on its port's host interface: out of the port."""
        now = self.clock()
        for _ in range(CONTROL_BATCH):
            frame = host.read()
            if frame is None:
                break
            try:
                self._execute(self.router.from_host(frame, port, now))
            except Exception:  # noqa: BLE001 - no frame may stop the router
                self._internal_error(port)
        if host.gone:  # deleted under hopgate: its descriptor would wake every turn
            try:
                self.reactor.remove_reader(host.fileno())
            except OSError as e:
                log.debug("%s: %s", host.name, e)
            log.error(
                "%s: the host port of %s was deleted; the host is cut off there until"
                " hopgate restarts",
                host.name,
                self.sockets[port].ifname,
            )

    def drain(self, budget: float = 0.05) -> int:
        """At a stop, once the loop has ended: the frames already waiting in
        the sockets go through the pipeline rather than being lost with them
        (for at most ``budget`` seconds); how many there were.  A connection's
        segments queued at the stop would otherwise cost it a retransmission
        timeout."""
        done = 0
        until = self.clock() + budget
        # What the host had sent (a routing daemon's last words, stopping).
        for port, host in self.hosts.items():
            while self.clock() < until:
                sent = host.read()
                if sent is None:
                    break
                done += 1
                try:
                    self._execute(self.router.from_host(sent, port, self.clock()))
                except Exception:  # noqa: BLE001 - no frame may stop the router
                    self._internal_error(port)
        for port, sock in enumerate(self.sockets):
            for control in (True, False):
                while self.clock() < until:
                    frame = sock.read(control)
                    if frame is None:
                        break
                    done += 1
                    try:
                        self._execute(self.router.process(frame, port, self.clock()))
                    except Exception:  # noqa: BLE001 - no packet may stop the router
                        self._internal_error(port)
        return done

    def _execute(self, actions: list[Any]) -> None:
        sockets = self.sockets
        for a in actions:
            if a.__class__ is Transmit:
                sockets[a.port].send(a.frame)
            elif a.__class__ is ToHost:
                self._to_host(a.port, a.frame)
            elif a.__class__ is Replay:
                self._replay(a, self.clock())

    def _internal_error(self, port: int) -> None:
        """A bug met a packet.  Count it, log it (not every time), keep forwarding."""
        self.internal_errors += 1
        self.router.emit.drop(port, DropReason.INTERNAL_ERROR, [])
        n = self.internal_errors
        if n <= 10 or n % 1000 == 0:
            log.exception(
                "internal error handling a frame on %s (%d so far)", self.sockets[port].ifname, n
            )

    def close(self) -> None:
        self.reactor.close()
        if self.links is not None:
            self.links.close()
