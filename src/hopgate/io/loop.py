"""The loop: frames from the packet sockets into the pipeline, actions out, timers run.

Single-threaded over the pipeline.  Other threads (the admin API) ask for work
to be done in the loop with ``call``; signals and those requests wake the loop
through one pipe.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from hopgate.io.afpacket import PacketSocket
from hopgate.io.mailbox import Mailbox
from hopgate.pipeline.actions import DropReason, Transmit
from hopgate.pipeline.router import Router

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH = 64  # frames read from one socket before the others get their turn
MAX_SLEEP = 1.0


class Loop:
    def __init__(
        self,
        router: Router,
        sockets: list[PacketSocket],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.sockets = sockets
        self.clock = clock
        self.internal_errors = 0
        self.mailbox = Mailbox()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop between two batches of frames; its result arrives
        in the returned future."""
        return self.mailbox.call(fn)

    def install_signal_handlers(self) -> None:
        self.mailbox.install_signal_handlers()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        ep = select.epoll()
        by_fd = {}
        for port, sock in enumerate(self.sockets):
            ep.register(sock.fileno(), select.EPOLLIN)
            by_fd[sock.fileno()] = (port, sock)
        mailbox = self.mailbox
        ep.register(mailbox.wake_fd, select.EPOLLIN)
        router = self.router
        try:
            while not mailbox.stopping:
                deadline = router.next_deadline()
                timeout = MAX_SLEEP
                if deadline is not None:
                    timeout = min(MAX_SLEEP, max(0.0, deadline - self.clock()))
                events = ep.poll(timeout)
                for fd, _ in events:
                    if fd == mailbox.wake_fd:
                        mailbox.drain()
                        continue
                    port, sock = by_fd[fd]
                    self._receive(port, sock)
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
            ep.close()

    def _receive(self, port: int, sock: PacketSocket) -> None:
        router = self.router
        now = self.clock()
        for _ in range(BATCH):
            frame = sock.receive()
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
