"""The load balancer's control plane: Maglev tables computed off the packet loop.

A backend's checks are decided in the pipeline (pipeline/lb/health.py); when the
verdict changes, its service needs a new Maglev table: 65,537 slots, 25 to
110 ms of Python (bench/control_stall.py).  Computed in the loop, that time
would be a stall of every packet.  The router is built with
``RingWorker.wake`` as its ``on_ring``; the worker takes the pending requests
(``MaglevControl.pending``) in the loop thread, computes them in a worker
process, and hands each result back through the loop's mailbox, where
installing it is one assignment.  Meanwhile the data path stays consistent on
its own (lb/service.py: a backend that is down is skipped).

A process rather than a thread: a thread computing a table holds the GIL, and
the loop, which gives the GIL up at every system call, would wait up to the
switch interval (5 ms) to get it back each time: gaps of 5 to 10 ms and a
fraction of its rate while the table is computed (``bench/control_stall.py``
measures both).  One request at a time is
computed; requests that arrive meanwhile are coalesced, so a burst of flips
costs one table per service, of its backends as they are when it starts.
If the worker process cannot compute a table, the loop does (a stall, as
before, and an error in the log) and a new worker is started for the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from hopgate.pipeline.lb import MaglevControl, RingRequest, maglev

log = logging.getLogger(__name__)

# Run a function in the loop thread, between two batches of frames (Loop.call).
Call = Callable[[Callable[[], None]], Any]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_start(parent: int) -> None:
    """In the worker process, first.  It never outlives the daemon: it is sent
    SIGTERM when the daemon dies, however it dies (without that, a worker holds
    its own end of the request queue and would wait on it forever).  SIGTERM to
    the process group (the lab's stop, systemd's) ends it with the rest; SIGINT
    (a Ctrl-C) is left to the daemon, which shuts the worker down on its way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # gone before prctl took effect
        os._exit(0)


def process_executor() -> Executor:
    """One worker process, started afresh (spawn: nothing of the daemon's sockets,
    threads or state is copied into it)."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_start,
        initargs=(os.getpid(),),
    )


class RingWorker:
    def __init__(self, executor: Callable[[], Executor] = process_executor) -> None:
        """``executor``: makes the executor the tables are computed in (tests
        pass a thread pool, or one that fails)."""
        self._make_executor = executor
        self._executor: Executor | None = None
        self._control: MaglevControl | None = None
        self._call: Call | None = None
        self._scheduled = False  # a look at the pending requests is queued in the loop
        self._busy = False  # a request is being computed
        self.computed = 0  # tables installed from the worker
        self.failed = 0  # tables the worker could not compute (the loop did)

    # -- in the loop thread ------------------------------------------------------------

    def start(self, control: MaglevControl, call: Call, *, warm: bool = True) -> None:
        """Serve ``control`` (the router's ``maglev``), handing results to the
        loop with ``call``.  ``warm``: start the worker process now, so that the
        first flip does not wait for it to start."""
        self._control = control
        self._call = call
        self._executor = self._make_executor()
        if warm:
            self._executor.submit(int)
        self.wake()  # whatever changed before the start

    def serve(self, control: MaglevControl, call: Call) -> None:
        """A reload: compute the tables of ``control`` (the new router's) from
        now on; started now if it was not (the old router had no Maglev)."""
        if self._executor is None:
            self.start(control, call)
            return
        self._control = control
        self.wake()

    def ring_for(self, request: RingRequest) -> maglev.Ring:
        """A table computed now, in a worker process, for the caller to wait on
        (a thread other than the loop's: a reload building its services).  The
        loop's own requests wait meanwhile; they are coalesced as ever."""
        executor = self._executor
        try:
            if executor is not None:
                return executor.submit(maglev.ring, *request.built_of).result()
            with self._make_executor() as once:
                return once.submit(maglev.ring, *request.built_of).result()
        except Exception as e:  # noqa: BLE001 - a broken pool: this thread computes it
            log.error(
                "service %s: the Maglev table was not computed in a worker (%s); computing it here",
                request.service.name,
                e,
            )
            return request.compute()

    def wake(self) -> None:
        """The router's ``on_ring``: a service needs a table.  Called inside the
        pipeline; the pending requests are taken after the call, in the loop."""
        if self._call is None or self._scheduled or self._busy:
            return  # not started yet (start wakes), or a look is coming anyway
        self._scheduled = True
        self._call(self._next)

    def _next(self) -> None:
        self._scheduled = False
        if self._control is None or self._busy:
            return
        requests = self._control.pending()
        if not requests:
            return
        self._busy = True
        self._compute(requests, 0)

    def _compute(self, requests: list[RingRequest], i: int) -> None:
        r = requests[i]
        try:
            if self._executor is None:
                raise RuntimeError("no worker process")
            future = self._executor.submit(maglev.ring, r.names, r.weights, r.size)
        except Exception as e:  # noqa: BLE001 - a broken pool: the loop computes it
            self._failed(requests, i, e)
            return
        call = self._call
        assert call is not None

        def done(f: Future[maglev.Ring]) -> None:  # in the executor's thread
            # OSError: the loop is closed, nothing to install into.
            with contextlib.suppress(OSError):
                call(lambda: self._done(requests, i, f))

        future.add_done_callback(done)

    def _done(self, requests: list[RingRequest], i: int, future: Future[maglev.Ring]) -> None:
        try:
            ring = future.result()
        except Exception as e:  # noqa: BLE001 - the worker failed: the loop computes it
            self._failed(requests, i, e)
            return
        self.computed += 1
        self._install(requests[i], ring)
        self._then(requests, i)

    def _failed(self, requests: list[RingRequest], i: int, error: BaseException) -> None:
        self.failed += 1
        log.error(
            "service %s: the Maglev table was not computed in the worker (%s); computing it here",
            requests[i].service.name,
            error,
        )
        self._install(requests[i], requests[i].compute())
        self._restart()
        self._then(requests, i)

    def _install(self, request: RingRequest, ring: maglev.Ring) -> None:
        assert self._control is not None
        try:
            self._control.install(request, ring)
        except Exception:  # run by the mailbox, which would keep it quiet
            log.exception("service %s: installing a Maglev table", request.service.name)

    def _then(self, requests: list[RingRequest], i: int) -> None:
        if i + 1 < len(requests):
            self._compute(requests, i + 1)
            return
        self._busy = False
        self._next()  # what changed meanwhile

    def _restart(self) -> None:
        old = self._executor
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        try:
            self._executor = self._make_executor()
        except Exception as e:  # noqa: BLE001 - next time, then
            log.error("cannot start the Maglev worker again: %s", e)

    def close(self) -> None:
        """Stop the worker process (a table being computed is abandoned)."""
        executor, self._executor = self._executor, None
        self._call = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
