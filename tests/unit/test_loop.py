"""The loop (io/loop.py) as the daemon runs it, in a thread, with a socketpair
standing in for each interface's packet socket and a fake clock: a frame written
into the wire end of one is processed, and the pipeline's transmit comes out of
another's; a timer due is run when the clock says so; a frame that makes the
pipeline raise is counted and the loop goes on."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether

from hopgate.io.afpacket import Insn, PacketSocket
from hopgate.io.loop import FastPath, Loop
from hopgate.pipeline.actions import Action, Replay
from hopgate.pipeline.router import Router
from tests.unit.frames import (
    CLIENT4,
    CLIENT_MAC,
    GW_C4,
    GW_C_MAC,
    GW_U_MAC,
    SERVER4,
    UPSTREAM4,
    UPSTREAM_MAC,
    from_client,
    resolved_router,
    router,
)

WAIT = 5.0  # seconds a frame may take to come out of the loop (a thread on a busy machine)
PACKET_HOST = 0


class _PacketEnd(socket.socket):
    """The loop's end of a socketpair, answering as an AF_PACKET socket does:
    ``recvmsg_into`` gives a packet socket's address (interface, protocol,
    packet type, hardware type, address)."""

    ifname = ""

    def recvmsg_into(self, *args: Any, **kwargs: Any) -> Any:
        n, anc, flags, _ = super().recvmsg_into(*args, **kwargs)
        return n, anc, flags, (self.ifname, 3, PACKET_HOST, 1, b"")


class PairSocket(PacketSocket):
    """A PacketSocket (its receive and send code, counters, reopening) over one
    end of a socketpair; ``wire`` is the other end, the test's."""

    def __init__(self, ifname: str) -> None:
        self.wire: socket.socket | None = None
        super().__init__(ifname, 3, 1514)

    def _socket(self, ifindex: int, program: list[Insn] | None) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        end = _PacketEnd(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=ours.detach())
        end.ifname = self.ifname
        end.setblocking(False)
        theirs.settimeout(WAIT)
        if self.wire is not None:
            self.wire.close()
        self.wire = theirs
        return end

    def put(self, frame: bytes | bytearray) -> None:
        """A frame arrives from the link."""
        assert self.wire is not None
        self.wire.send(bytes(frame))

    def get(self) -> Ether:
        """The next frame the loop sent to the link (fails after ``WAIT`` seconds)."""
        assert self.wire is not None
        try:
            return Ether(self.wire.recv(65536))
        except TimeoutError:
            raise AssertionError(f"{self.ifname}: nothing sent within {WAIT}s") from None

    def nothing_sent(self) -> bool:
        """No frame is waiting at the wire end now."""
        assert self.wire is not None
        readable, _, _ = select.select([self.wire], [], [], 0)
        return not readable


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def running(
    r: Router, clock: FakeClock, fastpath: FastPath | None = None
) -> Iterator[tuple[Loop, PairSocket, PairSocket]]:
    """The loop over the router's two ports (gw-c, gw-u), running in a thread."""
    socks = [PairSocket("gw-c"), PairSocket("gw-u")]
    loop = Loop(r, list[PacketSocket](socks), clock=clock, fastpath=fastpath)
    thread = threading.Thread(target=loop.run, name="hopgate-loop", daemon=True)
    thread.start()
    try:
        yield loop, socks[0], socks[1]
    finally:
        loop.call(lambda: setattr(loop.mailbox, "stopping", True))
        thread.join(WAIT)
        alive = thread.is_alive()
        loop.close()
        for s in socks:
            s.close()
            if s.wire is not None:
                s.wire.close()
        assert not alive, "the loop did not stop when asked"


def udp_to_server(ttl: int = 64) -> bytearray:
    return from_client(IP(src=CLIENT4, dst=SERVER4, ttl=ttl) / UDP(sport=7000, dport=53) / b"q")


def test_a_frame_in_one_socket_comes_out_of_the_other_forwarded() -> None:
    clock = FakeClock(1.0)
    with running(resolved_router(), clock) as (_, gw_c, gw_u):
        gw_c.put(udp_to_server())
        out = gw_u.get()
        assert (out.src, out.dst) == (GW_U_MAC, UPSTREAM_MAC)
        assert out[IP].dst == SERVER4 and out[IP].ttl == 63 and bytes(out[UDP].payload) == b"q"
        assert gw_c.nothing_sent()
        assert gw_c.counters.rx_data == 1


def test_an_answer_leaves_by_the_socket_the_frame_came_in_by() -> None:
    clock = FakeClock(1.0)
    with running(resolved_router(), clock) as (_, gw_c, gw_u):
        gw_c.put(udp_to_server(ttl=1))
        err = gw_c.get()
        assert (err.src, err.dst) == (GW_C_MAC, CLIENT_MAC)
        assert err[IP].src == GW_C4 and (err[ICMP].type, err[ICMP].code) == (11, 0)
        assert err[IPerror].dst == SERVER4 and err[UDPerror].dport == 53
        assert gw_u.nothing_sent()


def test_timers_run_when_the_clock_says_they_are_due() -> None:
    """The upstream neighbour is unknown: one solicitation at once, the next two
    a second apart (Linux's retrans_time), then host unreachable for the packet
    that waited.  Nothing is sent before the fake clock reaches each deadline."""
    clock = FakeClock(1.0)
    with running(router(), clock) as (loop, gw_c, gw_u):
        gw_c.put(udp_to_server())
        for n in range(3):
            req = gw_u.get()
            assert req[ARP].op == 1 and req[ARP].pdst == UPSTREAM4, f"solicitation {n + 1}"
            # However long the real time, the next one waits for the fake clock.
            loop.call(lambda: None).result(WAIT)
            assert gw_u.nothing_sent() and gw_c.nothing_sent(), f"early after solicitation {n + 1}"
            clock.now += 1.0
            loop.call(lambda: None)  # wakes the loop, which finds the timer due
        err = gw_c.get()
        assert err[IP].dst == CLIENT4 and (err[ICMP].type, err[ICMP].code) == (3, 1)
        assert err[IPerror].dst == SERVER4 and err[UDPerror].sport == 7000


def test_a_frame_that_makes_the_pipeline_raise_is_counted_and_the_loop_goes_on() -> None:
    r = resolved_router()
    process = r.process
    seen: list[int] = []

    def flaky(frame: Any, port: int, now: float, again: bool = False) -> Any:
        seen.append(port)
        if len(seen) == 1:
            raise RuntimeError("a bug met a packet")
        return process(frame, port, now, again)

    r.process = flaky  # type: ignore[method-assign]
    with running(r, FakeClock(1.0)) as (loop, gw_c, gw_u):
        gw_c.put(udp_to_server())
        gw_c.put(udp_to_server())
        assert gw_u.get()[IP].dst == SERVER4  # the second frame
        assert loop.call(lambda: loop.internal_errors).result(WAIT) == 1
        assert gw_u.nothing_sent()


class Replaying:
    """A fast path whose program answers every replay with ``answer``."""

    def __init__(self, answer: tuple[int, bytes] | None) -> None:
        self.answer = answer
        self.given: list[tuple[bytes, int]] = []

    def sync(self, now: float) -> None:
        pass

    def next_deadline(self) -> float:
        return 1e9

    def link_down(self, port: int) -> None:
        pass

    def link_up(self, port: int, ifindex: int) -> None:
        pass

    def replay(self, frame: bytes | bytearray | memoryview, port: int) -> tuple[int, bytes] | None:
        self.given.append((bytes(frame), port))
        return self.answer


def replaying_router() -> Router:
    """A router whose pipeline gives every frame it reads to the fast path
    (as it does a held connection's segment from before the handover)."""
    r = resolved_router()
    process = r.process

    def replay_first(frame: Any, port: int, now: float, again: bool = False) -> list[Action]:
        if again:
            return process(frame, port, now, again)
        r.counters.rx_packets[port] += 1
        return [Replay(port, frame, None)]  # type: ignore[arg-type]  # no NAT: no connection

    r.process = replay_first  # type: ignore[method-assign]
    return r


def test_what_the_program_makes_of_a_replayed_frame_leaves_by_its_port() -> None:
    made = bytes(Ether(src=GW_U_MAC, dst=UPSTREAM_MAC) / IP(src=CLIENT4, dst=SERVER4) / UDP())
    fast = Replaying((1, made))
    with running(replaying_router(), FakeClock(1.0), fast) as (_, gw_c, gw_u):
        frame = udp_to_server()
        gw_c.put(frame)
        assert bytes(gw_u.get()) == made
        assert fast.given == [(bytes(frame), 0)]
        assert gw_c.nothing_sent()


def test_a_replayed_frame_the_program_passes_up_goes_through_the_pipeline_once() -> None:
    fast = Replaying(None)
    r = replaying_router()
    with running(r, FakeClock(1.0), fast) as (_, gw_c, gw_u):
        gw_c.put(udp_to_server())
        out = gw_u.get()
        assert out[IP].dst == SERVER4 and out[IP].ttl == 63, "the pipeline did not forward it"
        assert len(fast.given) == 1
        assert r.counters.rx_packets[0] == 1, "the frame was counted twice"
