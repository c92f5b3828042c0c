"""Health checks of load-balancer backends, sent by hopgate itself from its data plane.

hopgate has no kernel stack on its interfaces, so it speaks the probes itself:
- ``tcp``: SYN; a SYN-ACK is healthy (answered with RST), a RST or silence is not;
- ``icmp``: echo request; an echo reply is healthy;
- ``http``: a minimal TCP client: SYN, then ``GET path`` on the SYN-ACK, the
  status line read from the in-order data, RST; a status in the configured
  range is healthy.
A probe that gets no answer within the timeout fails.  A backend goes down
after ``fall`` failures in a row and comes back after ``rise`` successes: the
checker keeps that verdict (``Backend.healthy``) and reports each change to
``changed``; what the service does with it (``Backend.up``) is the router's
and service.py's business.
"""

from __future__ import annotations

import random
from struct import Struct
from typing import Protocol

from hopgate.packet import addr as A
from hopgate.packet import checksum as cs
from hopgate.packet import icmp4, icmp6, l4
from hopgate.packet.proto import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP
from hopgate.packet.types import Buffer
from hopgate.pipeline.actions import Action
from hopgate.pipeline.context import Packet
from hopgate.pipeline.lb.service import Backend, Service, Services
from hopgate.pipeline.timers import Timers

_SEQ_ACK = Struct("!II")
_ECHO_ID_SEQ = Struct("!HH")
MAX_RESPONSE = 4096  # bytes of an HTTP answer read before giving up on its status line
LINGER = 5.0  # seconds a finished TCP probe's late segments are still recognised


class Send(Protocol):
    """Route and send a packet hopgate makes itself (``Router.originate``)."""

    def __call__(
        self,
        version: int,
        src: int,
        dst: int,
        proto: int,
        l4: bytes,
        now: float,
        out: list[Action],
        /,
    ) -> None: ...


class SourceFor(Protocol):
    """The address hopgate speaks from to ``dst`` (None: no route there)."""

    def __call__(self, version: int, dst: int, /) -> int | None: ...


class Changed(Protocol):
    """The checks changed their verdict on a backend (``Backend.healthy``)."""

    def __call__(self, backend: Backend, now: float, /) -> None: ...


class Probe:
    __slots__ = ("backend", "buffer", "done", "expect", "key", "next_seq", "seq", "sport", "src")

    def __init__(self, backend: Backend, src: int, sport: int, seq: int) -> None:
        self.backend = backend
        self.src = src
        self.sport = sport
        self.seq = seq  # our initial sequence number (TCP), or echo sequence
        self.next_seq = (seq + 1) & 0xFFFFFFFF  # after the SYN
        self.expect: int | None = None  # the next byte of the answer we want (HTTP)
        self.buffer = bytearray()
        self.done = False
        self.key: tuple[int, ...] = ()


class HealthChecker:
    # What the probes' answers come back as: the local listener table's keys.
    protocols = (PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6)

    def __init__(
        self,
        services: Services,
        timers: Timers,
        send: Send,
        source_for: SourceFor,
        changed: Changed,
        seed: int | None = None,
    ) -> None:
        self._services = services
        self._timers = timers
        self._send = send
        self._source_for = source_for
        self._changed = changed
        self._rng = random.Random(seed)
        self._probes: dict[tuple[int, ...], Probe] = {}
        # Finished TCP probes, until when their late segments (the rest of an
        # HTTP answer, a FIN crossing our RST) are taken quietly rather than
        # answered with resets and counted as drops.
        self._closed: dict[tuple[int, ...], float] = {}
        self._stopped = False

    def stop(self) -> None:
        """No more checks (a reload replaced this checker): its armed timers,
        which fire in the new router's heap, do nothing."""
        self._stopped = True

    def start(self, now: float) -> None:
        for service in self._services.all:
            if service.spec.health.kind != "none":
                self._arm(service, now)

    def _arm(self, service: Service, at: float) -> None:
        def run(now: float, out: list[Action]) -> None:
            if self._stopped:
                return
            for backend in service.backends:
                self._probe(backend, now, out)
            self._arm(service, now + service.spec.health.interval)

        self._timers.call_at(at, run)

    # -- sending -------------------------------------------------------------------------

    def _probe(self, backend: Backend, now: float, out: list[Action]) -> None:
        service = backend.service
        health = service.spec.health
        version = backend.family
        src = self._source_for(version, backend.address)
        if src is None:
            self._result(backend, False, now)
            return
        sport = self._rng.randint(32768, 60999)
        if health.kind == "icmp":
            probe = Probe(backend, src, sport, self._rng.randint(0, 0xFFFF))
            # the identifier plays the source port; the reply carries it back
            probe.key = (
                version,
                PROTO_ICMP if version == A.V4 else PROTO_ICMPV6,
                backend.address,
                sport,
                src,
            )
            self._probes[probe.key] = probe
            self._send_echo(probe, now, out)
        else:
            probe = Probe(backend, src, sport, self._rng.randint(0, 0xFFFFFFFF))
            probe.key = (version, PROTO_TCP, backend.address, backend.port, src, sport)
            self._probes[probe.key] = probe
            self._send_tcp(probe, probe.seq, 0, l4.TCP_SYN, b"", now, out)

        def timeout(now: float, out: list[Action]) -> None:
            if not probe.done and not self._stopped:
                self._finish(probe, False, now, out)

        self._timers.call_at(now + health.timeout, timeout)

    def _send_tcp(
        self, p: Probe, seq: int, ack: int, flags: int, data: bytes, now: float, out: list[Action]
    ) -> None:
        b = p.backend
        header = l4.TCP_HEADER.pack(
            p.sport, b.port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (5 << 12) | flags, 65535, 0, 0
        )
        segment = bytearray(header) + data
        if b.family == A.V4:
            pseudo = cs.pseudo_sum_v4(p.src, b.address, PROTO_TCP, len(segment))
        else:
            pseudo = cs.pseudo_sum_v6(p.src, b.address, PROTO_TCP, len(segment))
        l4.fill_checksum(segment, 0, len(segment), l4.TCP_OFF_CSUM, pseudo, udp=False)
        self._send(b.family, p.src, b.address, PROTO_TCP, bytes(segment), now, out)

    def _send_echo(self, p: Probe, now: float, out: list[Action]) -> None:
        b = p.backend
        data = b"hopgate health check"
        rest = (p.sport << 16) | p.seq
        if b.family == A.V4:
            msg = icmp4.build(icmp4.ECHO_REQUEST, 0, rest, data)
            self._send(A.V4, p.src, b.address, PROTO_ICMP, bytes(msg), now, out)
        else:
            msg = icmp6.build(p.src, b.address, icmp6.ECHO_REQUEST, 0, rest, data)
            self._send(A.V6, p.src, b.address, PROTO_ICMPV6, bytes(msg), now, out)

    # -- receiving -----------------------------------------------------------------------

    def receive(self, pkt: Packet) -> bool:
        """Take a packet addressed to the router if it answers a probe."""
        frame, at, end, proto = pkt.frame, pkt.at, pkt.end, pkt.proto
        if not (self._probes or self._closed) or end - at < 8:
            return False
        version, now, out = pkt.fam.version, pkt.now, pkt.out
        if proto == PROTO_TCP:
            key = pkt.key()
            probe = self._probes.get(key)
            if probe is None:
                return self._closed.get(key, 0.0) > now
            if end - at < l4.TCP_HEADER_LEN:
                return False
            self._tcp(probe, frame, at, end, now, out)
            return True
        reply = icmp4.ECHO_REPLY if version == A.V4 else icmp6.ECHO_REPLY
        if proto in (PROTO_ICMP, PROTO_ICMPV6) and frame[at] == reply:
            ident, seq = _ECHO_ID_SEQ.unpack_from(frame, at + 4)
            probe = self._probes.get((version, proto, pkt.src, ident, pkt.dst))
            if probe is None or seq != probe.seq:
                return False
            self._finish(probe, True, now, out)
            return True
        return False

    def _tcp(
        self, p: Probe, frame: Buffer, at: int, end: int, now: float, out: list[Action]
    ) -> None:
        flags = l4.tcp_flags(frame, at)
        seq, ack = _SEQ_ACK.unpack_from(frame, at + 4)
        if flags & l4.TCP_RST:
            self._finish(p, False, now, out, reset=False)
            return
        kind = p.backend.service.spec.health.kind
        if flags & l4.TCP_SYN and flags & l4.TCP_ACK:
            if ack != (p.seq + 1) & 0xFFFFFFFF:
                return
            if kind == "tcp":
                self._finish(p, True, now, out)
                return
            # A repeated SYN-ACK (our ACK was lost) gets the request again, from
            # the same sequence number and without losing what has arrived since.
            if p.expect is None:
                p.expect = (seq + 1) & 0xFFFFFFFF
            request = _request(p.backend)
            start = (p.seq + 1) & 0xFFFFFFFF
            self._send_tcp(p, start, p.expect, l4.TCP_ACK | l4.TCP_PSH, request, now, out)
            p.next_seq = (start + len(request)) & 0xFFFFFFFF
            return
        if kind != "http" or p.expect is None:
            return
        data = memoryview(frame)[at + l4.tcp_header_len(frame, at) : end]
        if seq == p.expect and data:
            p.buffer += data
            p.expect = (p.expect + len(data)) & 0xFFFFFFFF
        line_end = p.buffer.find(b"\r\n")
        if line_end >= 0:
            parts = bytes(p.buffer[:line_end]).split()
            ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit()
            if ok:
                low, high = p.backend.service.spec.health.http_status
                ok = low <= int(parts[1]) <= high
            self._finish(p, ok, now, out)
        elif flags & l4.TCP_FIN or len(p.buffer) > MAX_RESPONSE:
            self._finish(p, False, now, out)

    def _finish(
        self, p: Probe, ok: bool, now: float, out: list[Action], *, reset: bool = True
    ) -> None:
        if p.done:
            return
        p.done = True
        self._probes.pop(p.key, None)
        if p.key[1] == PROTO_TCP:
            if reset:
                # Close whatever the probe opened: the server forgets it at once.
                self._send_tcp(p, p.next_seq, 0, l4.TCP_RST, b"", now, out)
            closed = self._closed
            for key in [k for k, until in closed.items() if until <= now]:
                del closed[key]
            closed[p.key] = now + LINGER
        self._result(p.backend, ok, now)

    def _result(self, b: Backend, ok: bool, now: float) -> None:
        health = b.service.spec.health
        if ok:
            b.checks["ok"] += 1
            b.successes += 1
            b.failures = 0
            if not b.healthy and b.successes >= health.rise:
                b.healthy = True
                self._changed(b, now)
        else:
            b.checks["failed"] += 1
            b.failures += 1
            b.successes = 0
            if b.healthy and b.failures >= health.fall:
                b.healthy = False
                self._changed(b, now)


def _request(b: Backend) -> bytes:
    return (
        f"GET {b.service.spec.health.http_path} HTTP/1.0\r\n"
        f"Host: {A.ip_str(b.family, b.address)}\r\n"
        "User-Agent: hopgate-health-check\r\nConnection: close\r\n\r\n"
    ).encode()
