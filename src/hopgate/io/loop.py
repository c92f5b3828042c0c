"""The loop: frames from the packet sockets into the pipeline, actions out, timers run.

Single-threaded over the pipeline.  Other threads (the admin API) ask for work
to be done in the loop with ``call``; signals and those requests wake the loop
through one pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from hopgate.io.afpacket import PacketSocket
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
        self._stopping = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- from other threads, and from signal handlers ---------------------------------

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop between two batches of frames; its result arrives
        in the returned future."""
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._wake()
        return future

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        # A full pipe means the loop is awake already.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the loop cleanly (call from the main thread)."""

        def handler(signum: int, frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self._stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        ep = select.epoll()
        by_fd = {}
        for port, sock in enumerate(self.sockets):
            ep.register(sock.fileno(), select.EPOLLIN)
            by_fd[sock.fileno()] = (port, sock)
        ep.register(self._wake_r, select.EPOLLIN)
        router = self.router
        try:
            while not self._stopping:
                deadline = router.next_deadline()
                timeout = MAX_SLEEP
                if deadline is not None:
                    timeout = min(MAX_SLEEP, max(0.0, deadline - self.clock()))
                events = ep.poll(timeout)
                for fd, _ in events:
                    if fd == self._wake_r:
                        self._drain_wake()
                        continue
                    port, sock = by_fd[fd]
                    self._receive(port, sock)
                now = self.clock()
                deadline = router.next_deadline()
                if deadline is not None and deadline <= now:
                    self._execute(router.poll(now))
                self._run_calls()
                news = router.events
                while news:
                    log.info("%s", news.popleft())
        finally:
            ep.close()
            signal.set_wakeup_fd(-1)

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

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
