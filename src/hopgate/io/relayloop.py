"""The relay's loop: frames from the capture sockets (io/capture.py) into the
relay's checks (pipeline/relay.py), the copies sent, the peers looked up again,
a summary logged now and then.  On the reactor that ``hopgate run``'s loop
shares (io/reactor.py); ``hopgate relay``'s wiring is relayd.py.

A copy goes out as a link-layer broadcast on the interface the message came in
on, or, with peers configured (io/peers.py), to the MAC of each peer.

The capture sockets' filter is the eBPF program xdp/relayfilter.c when it can
be loaded and attached (``filter_mode`` "auto"; "ebpf": it must be, "classic":
never): it does the relay's checks and rate limits in the kernel, so the relay
only checks again what it admitted, and reads its refusals from its counters.
Otherwise the classic filter, with the limits applied here (pipeline/relay.py).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from hopgate.io.capture import CaptureSocket, FilterError, InterfaceError
from hopgate.io.peers import PeerTable
from hopgate.io.reactor import Reactor
from hopgate.packet import ethernet
from hopgate.pipeline.relay import PmtuMessage, Relay, relayed_copy
from hopgate.xdp.relayfilter import PASSED, FilterUnavailableError, RelayFilter, refused

# The relay's log lines keep the name they have always had (operators filter on it).
log = logging.getLogger("hopgate.relayd")

PEER_REFRESH = 5.0  # seconds between looks at the kernel's neighbour table
PEER_RETRY = 0.5  # the same while a peer is unresolved (after its ping)
SUMMARY_EVERY = 60.0  # seconds between summary lines in the log, when anything changed
BATCH = 64  # frames read from one socket before the others get their turn


class RelayLoop:
    def __init__(
        self,
        relay: Relay,
        interfaces: tuple[str, ...],
        macs: list[bytes],
        peers: PeerTable,
        mark: int,
        *,
        dry_run: bool = False,
        verbose: bool = False,
        filter_mode: str = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay = relay
        self.interfaces = interfaces
        self.macs = macs
        self.peers = peers
        self.mark = mark
        self.dry_run = dry_run
        self.verbose = verbose
        self.clock = clock
        self.reactor = Reactor(clock)
        self.mailbox = self.reactor.mailbox
        self.sockets: list[CaptureSocket] = []
        self.filter_mode = filter_mode
        self.kernel: RelayFilter | None = None  # the eBPF filter, when it is the filter
        self.filter_name = "classic"  # or "ebpf", once open
        self.filter_note = ""  # why the classic filter, when it is
        self.send_errors = 0
        self._last_seen = [0] * len(interfaces)
        self._next_refresh = self._next_summary = 0.0

    def open(self) -> None:
        """A capture socket on every interface (raises InterfaceError naming the
        one that cannot be captured on), with the eBPF filter if it can be had
        and is wanted (FilterError if it cannot be and must)."""
        if self.filter_mode == "classic":
            self.filter_note = "asked for"
        else:
            try:
                self.kernel = RelayFilter(self.relay.settings, self._ifindexes())
                self._open_sockets(self.kernel.prog_fd)
            except (FilterUnavailableError, FilterError) as e:
                self._close_sockets_and_filter()
                if self.filter_mode == "ebpf":
                    raise FilterError(f"the eBPF filter: {e}") from None
                self.filter_note = str(e)
                log.warning(
                    "the eBPF filter cannot be used (%s): the classic filter, limits in Python", e
                )
        if self.kernel is None:
            self._open_sockets(None)
        else:
            self.filter_name = "ebpf"

    def _ifindexes(self) -> list[int]:
        out = []
        for name in self.interfaces:
            try:
                out.append(socket.if_nametoindex(name))
            except OSError as e:
                raise InterfaceError(f"{name}: cannot capture ({e.strerror})") from None
        return out

    def _open_sockets(self, program: int | None) -> None:
        for name in self.interfaces:
            try:
                self.sockets.append(CaptureSocket(name, program))
            except OSError as e:
                raise InterfaceError(f"{name}: cannot capture ({e.strerror})") from None

    def _close_sockets_and_filter(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def run(self) -> None:
        for i, sock in enumerate(self.sockets):
            self.reactor.add_reader(sock.fileno(), functools.partial(self._receive, i))
        now = self.clock()
        self._next_refresh = now + PEER_REFRESH
        self._next_summary = now + SUMMARY_EVERY
        self.reactor.run(next_deadline=self._next_deadline, on_deadline=self._on_deadline)

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        if self.kernel is not None:
            self._read_kernel()  # its last counts, for the final summary
            self.kernel.close()  # (the sockets held the program: it went with them)
            self.kernel = None
        self.reactor.close()

    def interfaces_state(self) -> list[dict[str, Any]]:
        """Each interface's counters, for status (the kernel's drops folded in;
        with the eBPF filter, also what it admitted: relayed, unless missed)."""
        admitted = self._read_kernel()
        rows = self.relay.snapshot(list(self.interfaces))
        for row, sock in zip(rows, self.sockets, strict=False):
            row["missed"] = sock.update_stats()
        for row, n in zip(rows, admitted, strict=False):
            row["admitted"] = n
        return rows

    # -- timers ------------------------------------------------------------------------

    def _next_deadline(self) -> float:
        if self.peers.peers:
            return min(self._next_refresh, self._next_summary)
        return self._next_summary

    def _on_deadline(self, now: float) -> None:
        if self.peers.peers and now >= self._next_refresh:
            # unresolved peers are looked at again soon, after their ping
            self._next_refresh = now + (PEER_REFRESH if self.peers.refresh() else PEER_RETRY)
        if now >= self._next_summary:
            self.summary()
            self._next_summary = now + SUMMARY_EVERY

    def _read_kernel(self) -> list[int]:
        """The eBPF filter's refusals into the relay's counters; what it
        admitted, per interface (none without it)."""
        admitted = []
        if self.kernel is not None:
            for i, c in enumerate(self.relay.counters):
                counts = self.kernel.counts(i)
                c.kernel_dropped = refused(counts)
                admitted.append(counts[PASSED])
        return admitted

    def summary(self, final: bool = False) -> None:
        """A line in the log for what changed since the last (everything, at exit)."""
        self._read_kernel()
        parts = []
        for i, (c, name) in enumerate(zip(self.relay.counters, self.interfaces, strict=True)):
            seen, drops = c.totals()
            changed = seen != self._last_seen[i]
            self._last_seen[i] = seen
            if changed or final:
                dropped = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
                parts.append(f"{name}: seen {seen}, relayed {c.relayed}, not relayed: {dropped}")
        if parts:
            log.info("relay%s: %s", " (final)" if final else "", "; ".join(parts))

    # -- frames ------------------------------------------------------------------------

    def _receive(self, i: int) -> None:
        sock = self.sockets[i]
        for _ in range(BATCH):
            frame = sock.receive()
            if frame is None:
                return
            if self.kernel is not None:
                got = self.relay.consider_admitted(frame, i)
            else:
                got = self.relay.consider(frame, i, self.clock())
            if not isinstance(got, PmtuMessage):
                if self.verbose:
                    log.info("%s: not relayed (%s): %s", sock.ifname, got, _describe_frame(frame))
                continue
            if self.verbose or self.dry_run:
                log.info(
                    "%s: %s %s", sock.ifname,
                    "would relay" if self.dry_run else "relaying", _describe(got),
                )  # fmt: skip
            if not self.dry_run:
                self._send(frame, i, got)

    def _send(self, frame: bytes, i: int, msg: PmtuMessage) -> None:
        mark = self.mark
        if not self.peers.peers:
            copy = relayed_copy(frame, msg.l3, ethernet.BROADCAST, self.macs[i], mark)
            if not self.sockets[i].send(copy):
                self.send_errors += 1
            return
        for peer in self.peers.peers:
            if peer.iface is None or peer.mac is None:
                peer.unresolved += 1  # not known yet: this copy is lost to it
                continue
            copy = relayed_copy(frame, msg.l3, peer.mac, self.macs[peer.iface], mark)
            if self.sockets[peer.iface].send(copy):
                peer.sent += 1
            else:
                self.send_errors += 1


def _describe(msg: PmtuMessage) -> str:
    kind = "fragmentation needed" if msg.family == 4 else "packet too big"
    addr = ipaddress.IPv4Address if msg.family == 4 else ipaddress.IPv6Address
    port = f" port {msg.quoted_sport}" if msg.quoted_sport is not None else ""
    return (
        f"{kind} mtu {msg.mtu} from {addr(msg.source)}"
        f" about a packet from {addr(msg.quoted_src)}{port}"
    )


def _describe_frame(frame: bytes) -> str:
    return f"{len(frame)} bytes to {ethernet.format_mac(frame[:6])}"
