"""The reactor both daemons run on (``hopgate run``'s loop.py, ``hopgate relay``'s
relayloop.py): one epoll over the descriptors they read, the mailbox's wake-up
pipe (signals and the admin API's threads), timers from a deadline provider, and
the stop flag.  Single-threaded: every callback runs in the thread that called
``run``.

A turn of the loop:
1. wait in epoll until a descriptor is readable, the mailbox is woken, or the
   next deadline comes (never longer than ``MAX_SLEEP``);
2. call the readers of the descriptors that are ready, lowest ``order`` first
   (in the order epoll named them within one order); a reader removed by an
   earlier one in the same turn is not called;
3. if the deadline has come, ``on_deadline(now)``;
4. ``end_of_turn()``;
5. the mailbox's calls and job slices.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from dataclasses import dataclass

from hopgate.io.mailbox import Mailbox

MAX_SLEEP = 1.0  # seconds the reactor waits at most with nothing to do


@dataclass(frozen=True, slots=True)
class _Reader:
    callback: Callable[[], None]
    order: int


def _no_deadline() -> float | None:
    return None


def _nothing(*_args: object) -> None:
    return None


class Reactor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.mailbox = Mailbox()
        self._readers: dict[int, _Reader] = {}
        self._ep: select.epoll | None = None

    @property
    def stopping(self) -> bool:
        return self.mailbox.stopping

    def add_reader(self, fd: int, callback: Callable[[], None], order: int = 0) -> None:
        """Call ``callback`` when ``fd`` is readable (once a turn, however much is
        waiting: it reads what it wants)."""
        known = fd in self._readers
        self._readers[fd] = _Reader(callback, order)
        if self._ep is not None:
            if known:
                self._ep.modify(fd, select.EPOLLIN)
            else:
                self._ep.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        """Stop reading ``fd`` (before it is closed).  Raises OSError if epoll
        refuses; the reader is forgotten either way."""
        if self._readers.pop(fd, None) is not None and self._ep is not None:
            self._ep.unregister(fd)

    def run(
        self,
        next_deadline: Callable[[], float | None] = _no_deadline,
        on_deadline: Callable[[float], None] = _nothing,
        end_of_turn: Callable[[], None] = _nothing,
    ) -> None:
        """Turn until ``mailbox.stopping`` (see the module's docstring).  The
        readers are forgotten when it returns."""
        ep = self._ep = select.epoll()
        readers = self._readers
        mailbox = self.mailbox
        clock = self.clock
        wake_fd = mailbox.wake_fd
        try:
            for fd in readers:
                ep.register(fd, select.EPOLLIN)
            ep.register(wake_fd, select.EPOLLIN)
            while not mailbox.stopping:
                deadline = next_deadline()
                timeout = MAX_SLEEP
                if deadline is not None:
                    timeout = min(MAX_SLEEP, max(0.0, deadline - clock()))
                ready: list[tuple[int, int, _Reader]] = []
                for fd, _ in ep.poll(timeout):
                    if fd == wake_fd:
                        mailbox.drain()
                        continue
                    reader = readers.get(fd)
                    if reader is not None:
                        ready.append((reader.order, fd, reader))
                if ready:
                    if len(ready) > 1:
                        ready.sort(key=_order)  # stable: epoll's order within an order
                    for _, fd, reader in ready:
                        if readers.get(fd) is reader:
                            reader.callback()
                now = clock()
                deadline = next_deadline()
                if deadline is not None and deadline <= now:
                    on_deadline(now)
                end_of_turn()
                mailbox.run_calls()
        finally:
            self._ep = None
            readers.clear()
            ep.close()

    def close(self) -> None:
        self.mailbox.close()


def _order(item: tuple[int, int, _Reader]) -> int:
    return item[0]
