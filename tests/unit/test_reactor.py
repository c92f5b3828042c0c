"""The reactor both daemons run on (io/reactor.py), driven in a thread over
socketpairs: readers are called lowest order first, one removed earlier in the
turn is not called, the deadline's callback runs when it has come, and the
mailbox's calls run and stop it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from hopgate.io.reactor import Reactor

WAIT = 5.0


def _in_thread(reactor: Reactor, **hooks: Callable[..., object]) -> threading.Thread:
    thread = threading.Thread(target=reactor.run, kwargs=hooks, daemon=True)
    thread.start()
    return thread


def _stop(reactor: Reactor, thread: threading.Thread) -> None:
    reactor.mailbox.call(lambda: setattr(reactor.mailbox, "stopping", True))
    thread.join(WAIT)
    alive = thread.is_alive()
    reactor.close()
    assert not alive, "the reactor did not stop when asked"


def test_readers_in_order_and_one_removed_in_the_turn_is_not_called() -> None:
    reactor = Reactor()
    pairs = [socket.socketpair() for _ in range(3)]
    seen: list[str] = []
    done = threading.Event()

    def reader(
        name: str, sock: socket.socket, then: Callable[[], None] = lambda: None
    ) -> Callable[[], None]:
        def read() -> None:
            sock.recv(100)
            seen.append(name)
            then()

        return read

    ours = [p[0] for p in pairs]
    for s in ours:
        s.setblocking(False)
    # "late" (order 2) removes "data" (order 1) when it runs first: it must not,
    # so the order is kept: control (0), data (1), late (2).
    reactor.add_reader(ours[2].fileno(), reader("late", ours[2], done.set), order=2)
    reactor.add_reader(ours[1].fileno(), reader("data", ours[1]), order=1)
    reactor.add_reader(
        ours[0].fileno(),
        reader("control", ours[0], lambda: reactor.remove_reader(ours[1].fileno())),
        order=0,
    )
    for _, theirs in pairs:
        theirs.send(b"x")
    thread = _in_thread(reactor)
    try:
        assert done.wait(WAIT), "the readers were not called"
        got = reactor.mailbox.call(lambda: list(seen)).result(WAIT)
    finally:
        _stop(reactor, thread)
        for a, b in pairs:
            a.close()
            b.close()
    assert got == ["control", "late"]


def test_the_deadline_comes_by_the_clock() -> None:
    now = [100.0]
    reactor = Reactor(clock=lambda: now[0])
    fired: list[float] = []
    done = threading.Event()

    def on_deadline(t: float) -> None:
        fired.append(t)
        done.set()

    turns = [0]

    def end_of_turn() -> None:
        turns[0] += 1

    thread = _in_thread(
        reactor,
        next_deadline=lambda: 101.0 if not fired else None,
        on_deadline=on_deadline,
        end_of_turn=end_of_turn,
    )
    try:
        # Not before the clock says so, however many turns run.
        reactor.mailbox.call(lambda: None).result(WAIT)
        assert reactor.mailbox.call(lambda: list(fired)).result(WAIT) == []
        now[0] = 101.5
        reactor.mailbox.call(lambda: None).result(WAIT)
        assert done.wait(WAIT), "the deadline's callback did not run"
    finally:
        _stop(reactor, thread)
    assert fired == [101.5]
    assert turns[0] >= 2
