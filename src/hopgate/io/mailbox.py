"""How other threads and signals reach a single-threaded loop: a queue of calls
and a pipe that wakes the loop's epoll.

The admin API's threads ask for a snapshot with ``call``; the loop runs it
between two batches of frames, so the state it reads never changes under it.
Work that grows with a table (listing or deleting connections) is a ``Job``
started with ``start``: a generator the loop advances a slice at a time, for at
most ``JOB_BUDGET`` seconds a turn, so forwarding never waits on it for long;
what it yields is streamed to the thread that waits for it.
SIGINT and SIGTERM set ``stopping`` and wake the loop the same way.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
JOB_BUDGET = 0.0005  # seconds of job slices the loop runs a turn, between batches of frames
JOB_BACKLOG = 32  # chunks a job may have waiting for its reader before it is paused


Steps = Generator[bytes, None, None]


class JobStalledError(Exception):
    """A job made no progress for the time its reader was willing to wait."""


_DONE = object()


class Job:
    """Work done in the loop a slice at a time: ``steps`` is a generator whose
    every ``next`` is one bounded slice; the bytes it yields (``b""`` for none)
    are handed to the reader, in order, by ``chunks``.  A job whose reader falls
    ``JOB_BACKLOG`` chunks behind is paused until it catches up."""

    def __init__(self, steps: Steps, wake: Callable[[], None]) -> None:
        self._steps = steps
        self._wake = wake
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        # slices run so far: the reader tells a slow job from a stuck one by it
        self.slices = 0
        self.cancelled = False
        self._paused = False

    # -- the reader's side (another thread) ------------------------------------------

    def chunks(self, stall_timeout: float) -> Steps:
        """What the job yields, as it comes.  Raises ``JobStalledError`` if no slice ran
        for ``stall_timeout`` seconds (a job that keeps going is never cut off),
        and whatever the job raised.  Abandoning the iterator cancels the job."""
        try:
            seen = self.slices
            while True:
                try:
                    item = self._out.get(timeout=stall_timeout)
                except queue.Empty:
                    if self.slices == seen:
                        raise JobStalledError(f"no progress for {stall_timeout:g}s") from None
                    seen = self.slices
                    continue
                if self._paused:
                    self._paused = False
                    self._wake()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.cancelled = True

    # -- the loop's side ---------------------------------------------------------------

    def _ready(self) -> bool:
        self._paused = self._out.qsize() >= JOB_BACKLOG
        return not self._paused

    def _step(self) -> bool:
        """Run one slice; False once the job is over."""
        try:
            chunk = next(self._steps)
        except StopIteration:
            self._out.put(_DONE)
            return False
        except Exception as e:  # handed to the reader
            log.exception("admin job failed")
            self._out.put(e)
            return False
        self.slices += 1
        if chunk:
            self._out.put(chunk)
        return True

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._steps.close()


class Mailbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.stopping = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._new_jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._jobs: collections.deque[Job] = collections.deque()
        self._clock = clock
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- from other threads, and from signal handlers ---------------------------------

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the loop; its result arrives in the returned future."""
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._wake()
        return future

    def start(self, steps: Steps) -> Job:
        """Run the generator ``steps`` in the loop, a slice at a time (see ``Job``).
        Nothing of it runs in the calling thread."""
        job = Job(steps, self._wake)
        self._new_jobs.put(job)
        self._wake()
        return job

    def stop(self) -> None:
        """Stop the loop, as SIGTERM does (from any thread)."""
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        # A full pipe means the loop is awake already.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def install_signal_handlers(
        self, others: dict[signal.Signals, Callable[[], None]] | None = None
    ) -> None:
        """SIGINT and SIGTERM stop the loop cleanly; each signal of ``others``
        runs its function (in the main thread, between two bytecodes: it must
        only set a flag or an event).  Call from the main thread."""

        def handler(signum: int, frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        for sig, fn in (others or {}).items():
            signal.signal(sig, _runs(fn))
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
                break
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)
        if self._jobs or not self._new_jobs.empty():
            self._run_jobs()

    def _run_jobs(self) -> None:
        """Slices of the jobs in turn, for ``JOB_BUDGET`` seconds at most (and at
        least one slice of each job that is not paused).  If work is left, the
        loop is woken again at once, after it has read its sockets."""
        jobs = self._jobs
        with contextlib.suppress(queue.Empty):
            while True:
                jobs.append(self._new_jobs.get_nowait())
        end = self._clock() + JOB_BUDGET
        while True:
            ran = False
            for job in list(jobs):
                if job.cancelled:
                    jobs.remove(job)
                    job._close()
                elif job._ready():
                    ran = True
                    if not job._step():
                        jobs.remove(job)
            if not ran or self._clock() >= end:
                break
        if any(not job._paused for job in jobs):
            self._wake()

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        os.close(self.wake_fd)
        os.close(self._wake_w)


def _runs(fn: Callable[[], None]) -> Callable[[int, object], None]:
    """A signal handler that runs ``fn``."""

    def handler(signum: int, frame: object) -> None:
        fn()

    return handler
