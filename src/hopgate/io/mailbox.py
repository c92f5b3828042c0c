"""How other threads and signals reach a single-threaded loop: a queue of calls
and a pipe that wakes the loop's epoll.

The admin API's threads ask for a snapshot with ``call``; the loop runs it
between two batches of frames, so the state it reads never changes under it.
SIGINT and SIGTERM set ``stopping`` and wake the loop the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Mailbox:
    def __init__(self) -> None:
        self.stopping = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- from other threads, and from signal handlers ---------------------------------

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop; its result arrives in the returned future."""
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._wake()
        return future

    def _wake(self) -> None:
        # A full pipe means the loop is awake already.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the loop cleanly (call from the main thread)."""

        def handler(signum: int, frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    # -- in the loop -------------------------------------------------------------------

    def drain(self) -> None:
        """Empty the wake-up pipe (its fd was readable)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def run_calls(self) -> None:
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
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        os.close(self.wake_fd)
        os.close(self._wake_w)
