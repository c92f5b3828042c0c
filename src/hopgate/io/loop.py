"""The loop: frames from the packet sockets into the pipeline, actions out, timers run.

Single-threaded over the pipeline.  Other threads (the admin API) ask for work
to be done in the loop with ``call``; signals and those requests wake the loop
through one pipe.

Link events (io/links.py) arrive on an rtnetlink socket in the same epoll set:
a link that goes down or away has its packet socket closed (no wake-ups from a
dead socket) and the router told; one that comes back, or is re-created under
its name, is taken again (io/netprep.py) and its socket opened again.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from hopgate.io.afpacket import PacketSocket
from hopgate.io.links import Change, LinkMonitor
from hopgate.io.mailbox import Mailbox
from hopgate.pipeline.actions import DropReason, Transmit
from hopgate.pipeline.router import Router

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH = 64  # frames read from one socket before the others get their turn
CONTROL_BATCH = 64  # the same for a control socket (io/ctlpath.py), read first
MAX_SLEEP = 1.0


class Loop:
    def __init__(
        self,
        router: Router,
        sockets: list[PacketSocket],
        clock: Callable[[], float] = time.monotonic,
        links: LinkMonitor | None = None,
        prepare: Callable[[str], object] | None = None,
    ) -> None:
        """``links``: the link events to follow; ``prepare(name)``: take a
        re-created interface as at start (raises if it cannot)."""
        self.router = router
        self.sockets = sockets
        self.clock = clock
        self.links = links
        self.prepare = prepare
        self.internal_errors = 0
        self.mailbox = Mailbox()
        self._ep: select.epoll | None = None
        # fd -> (port, socket, whether it is the control socket)
        self._by_fd: dict[int, tuple[int, PacketSocket, bool]] = {}

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop between two batches of frames; its result arrives
        in the returned future."""
        return self.mailbox.call(fn)

    def install_signal_handlers(self) -> None:
        self.mailbox.install_signal_handlers()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        ep = self._ep = select.epoll()
        by_fd = self._by_fd
        for port in range(len(self.sockets)):
            self._register(port)
        mailbox = self.mailbox
        ep.register(mailbox.wake_fd, select.EPOLLIN)
        links = self.links
        links_fd = -1
        if links is not None:
            links_fd = links.fileno()
            ep.register(links_fd, select.EPOLLIN)
            # What changed between taking the interfaces and subscribing.
            self.apply_link_changes(links.resync())
        router = self.router
        try:
            while not mailbox.stopping:
                deadline = router.next_deadline()
                timeout = MAX_SLEEP
                if deadline is not None:
                    timeout = min(MAX_SLEEP, max(0.0, deadline - self.clock()))
                events = ep.poll(timeout)
                link_events = False
                data = []
                # Control sockets first (ARP, ND, answers to hopgate's own
                # packets): they never wait behind a batch of data frames.
                for fd, _ in events:
                    if fd == mailbox.wake_fd:
                        mailbox.drain()
                        continue
                    if fd == links_fd:
                        link_events = True
                        continue
                    got = by_fd.get(fd)
                    if got is None:
                        continue
                    if got[2]:
                        self._receive(got[0], got[1], control=True)
                    else:
                        data.append(got)
                for port, sock, _ in data:
                    self._receive(port, sock)
                # After the frames: closing or re-opening a socket changes the
                # descriptors this round's events name.
                if link_events and links is not None:
                    self.apply_link_changes(links.read())
                now = self.clock()
                deadline = router.next_deadline()
                if deadline is not None and deadline <= now:
                    self._execute(router.poll(now))
                # Logged before the admin API is answered: what a status shows
                # has been logged by then.
                news = router.events
                while news:
                    log.info("%s", news.popleft())
                mailbox.run_calls()
        finally:
            self._ep = None
            by_fd.clear()
            ep.close()

    # -- link events ------------------------------------------------------------------

    def _register(self, port: int) -> None:
        sock = self.sockets[port]
        if self._ep is None:
            return
        for fd, control in sock.filenos():
            self._ep.register(fd, select.EPOLLIN)
            self._by_fd[fd] = (port, sock, control)

    def _unregister(self, port: int) -> None:
        sock = self.sockets[port]
        for fd, _ in sock.filenos():
            if fd < 0 or self._by_fd.get(fd, (None,))[0] != port:
                continue
            del self._by_fd[fd]
            if self._ep is not None:
                try:
                    self._ep.unregister(fd)
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
                if note is not None:
                    log.warning("%s: %s; adopted", name, note)
                log.info("%s: %s, forwarding resumed", name, change.why)

    def link_status(self, port: int) -> dict[str, Any] | None:
        """The port's link as the events left it, for status (None without events)."""
        if self.links is None:
            return None
        st = self.links.watch.by_port(port)
        return st.snapshot() if st is not None else None

    def _receive(self, port: int, sock: PacketSocket, control: bool = False) -> None:
        router = self.router
        now = self.clock()
        receive = sock.receive_control if control else sock.receive
        for _ in range(CONTROL_BATCH if control else BATCH):
            frame = receive()
            if frame is None:
                return
            try:
                actions = router.process(frame, port, now)
            except Exception:  # noqa: BLE001 - no packet may stop the router
                self._internal_error(port)
                continue
            self._execute(actions)

    def _execute(self, actions: list[Any]) -> None:
        sockets = self.sockets
        for a in actions:
            if a.__class__ is Transmit:
                sockets[a.port].send(a.frame)

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
        self.mailbox.close()
        if self.links is not None:
            self.links.close()
