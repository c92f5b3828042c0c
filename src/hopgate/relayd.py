"""``hopgate relay``: the standalone path MTU discovery relay for Linux servers that
share an address behind ECMP (the job of Cloudflare's pmtud).

It runs next to the kernel's stack, which keeps every frame: the relay captures
copies of fragmentation needed / Packet Too Big arriving on its interfaces
(io/capture.py), checks and rate limits them (pipeline/relay.py), and sends each
again as a link-layer broadcast on the interface it came in on, or to the MAC
of each configured peer.  The kernel of the server that holds the flow learns
the path MTU from the copy; the others find no socket for it and ignore it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopgate import __version__
from hopgate.control.admin import AdminServer
from hopgate.io.capture import CaptureSocket
from hopgate.io.mailbox import Mailbox
from hopgate.packet import checksum as cs
from hopgate.packet import ethernet
from hopgate.pipeline.model import IPAddress
from hopgate.pipeline.relay import PmtuMessage, Relay, RelaySettings, relayed_copy

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/hopgate/relay.sock"
PEER_REFRESH = 5.0  # seconds between looks at the kernel's neighbour table
SUMMARY_EVERY = 60.0  # seconds between summary lines in the log, when anything changed
BATCH = 64


class RelayError(Exception):
    pass


@dataclass(frozen=True)
class RelayOptions:
    interfaces: tuple[str, ...]
    settings: RelaySettings = field(default_factory=RelaySettings)
    peers: tuple[IPAddress, ...] = ()  # given: unicast to them; none: broadcast
    dry_run: bool = False
    verbose: bool = False
    socket_path: str = DEFAULT_SOCKET
    metrics: tuple[str, int] | None = None


@dataclass
class Peer:
    address: IPAddress
    iface: int | None = None  # index into the relay's interfaces
    mac: bytes | None = None
    sent: int = 0
    unresolved: int = 0  # copies not sent: no route to it, or no MAC known yet


def interface_mac(ifname: str) -> bytes:
    try:
        text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    except OSError:
        raise RelayError(f"no interface named {ifname!r} here") from None
    mac = ethernet.parse_mac(text)
    if len(mac) != 6:
        raise RelayError(f"{ifname} is not an Ethernet interface (address {text!r})")
    return mac


class PeerTable:
    """Where each peer is: the interface the kernel routes it by and its MAC in the
    kernel's neighbour table.  A peer with no entry yet is pinged once, which
    makes the kernel resolve it (as ping itself would)."""

    def __init__(self, peers: tuple[IPAddress, ...], interfaces: tuple[str, ...]) -> None:
        self.peers = [Peer(a) for a in peers]
        self._names = interfaces
        self._indexes = {socket.if_nametoindex(n): i for i, n in enumerate(interfaces)}

    def refresh(self) -> bool:
        """Look again; True if every peer has a MAC."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.ndmsg import NUD_FAILED

        with IPRoute() as ipr:
            for peer in self.peers:
                family = socket.AF_INET6 if peer.address.version == 6 else socket.AF_INET
                try:
                    route = ipr.route("get", dst=str(peer.address), family=family)[0]
                except Exception:  # noqa: BLE001 - no route: the peer stays unresolved
                    peer.iface = peer.mac = None
                    continue
                oif = route.get_attr("RTA_OIF")
                peer.iface = self._indexes.get(oif)
                peer.mac = None
                if peer.iface is None:
                    continue
                for n in ipr.get_neighbours(family=family, ifindex=oif):
                    if n.get_attr("NDA_DST") == str(peer.address) and n.get_attr("NDA_LLADDR"):
                        state = n["state"]
                        if state & NUD_FAILED == 0:
                            peer.mac = ethernet.parse_mac(n.get_attr("NDA_LLADDR"))
                if peer.mac is None:
                    _ping(peer.address)
        return all(p.mac is not None for p in self.peers)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "address": str(p.address),
                "interface": self._names[p.iface] if p.iface is not None else None,
                "mac": ethernet.format_mac(p.mac) if p.mac else None,
                "sent": p.sent,
                "unresolved": p.unresolved,
            }
            for p in self.peers
        ]


def _ping(address: IPAddress) -> None:
    """One echo request, for the kernel to resolve the peer's MAC on the way."""
    if address.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = bytearray(b"\x08\x00\x00\x00hg\x00\x01")  # echo request, id "hg", seq 1
        body[2:4] = cs.checksum(body).to_bytes(2, "big")
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        body = bytearray(b"\x80\x00\x00\x00hg\x00\x01")  # the kernel sums ICMPv6
    with contextlib.closing(s):
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.sendto(body, (str(address), 0))


class RelayDaemon:
    def __init__(self, opts: RelayOptions) -> None:
        if not opts.interfaces:
            raise RelayError("give at least one interface (--iface)")
        self.opts = opts
        self.macs = [interface_mac(n) for n in opts.interfaces]
        self.started = time.monotonic()
        self.relay = Relay(opts.settings, len(opts.interfaces), self.started)
        self.peers = PeerTable(opts.peers, opts.interfaces)
        self.sockets: list[CaptureSocket] = []
        self.mailbox = Mailbox()
        self.send_errors = 0
        self._last_seen = [0] * len(opts.interfaces)

    @property
    def mode(self) -> str:
        return "unicast" if self.opts.peers else "broadcast"

    def snapshot(self) -> dict[str, Any]:
        s = self.opts.settings
        return {
            "kind": "relay",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "mode": self.mode,
            "dry_run": self.opts.dry_run,
            "settings": {
                "src_rate": s.src_rate,
                "src_burst": s.src_burst,
                "iface_rate": s.iface_rate,
                "iface_burst": s.iface_burst,
                "min_mtu": s.min_mtu,
                "max_mtu": s.max_mtu,
                "ports": sorted(s.ports),
                "mark": s.mark,
            },
            "interfaces": self._interfaces(),
            "peers": self.peers.describe(),
            "send_errors": self.send_errors,
        }

    def _interfaces(self) -> list[dict[str, Any]]:
        rows = self.relay.snapshot(list(self.opts.interfaces))
        for row, sock in zip(rows, self.sockets, strict=False):
            row["missed"] = sock.update_stats()
        return rows

    def run(self) -> None:
        opts = self.opts
        admin = AdminServer(
            opts.socket_path, lambda: self.mailbox.call(self.snapshot), opts.metrics
        )
        try:
            for name in opts.interfaces:
                try:
                    self.sockets.append(CaptureSocket(name))
                except OSError as e:
                    raise RelayError(f"{name}: cannot capture ({e.strerror})") from None
            admin.start()
            self.mailbox.install_signal_handlers()
            if self.peers.peers and not self.peers.refresh():
                time.sleep(0.3)  # the pings' answers
                self.peers.refresh()
            log.info(
                "hopgate relay %s on %s: %s%s; admin socket %s",
                __version__,
                ", ".join(opts.interfaces),
                self.mode
                + (
                    " to " + ", ".join(str(p.address) for p in self.peers.peers)
                    if self.peers.peers
                    else ""
                ),
                " (dry run: nothing is sent)" if opts.dry_run else "",
                opts.socket_path,
            )
            self._loop()
        finally:
            admin.stop()
            for s in self.sockets:
                s.close()
            self.mailbox.close()
            self._summary(final=True)

    def _loop(self) -> None:
        ep = select.epoll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.sockets)}
        for fd in by_fd:
            ep.register(fd, select.EPOLLIN)
        mailbox = self.mailbox
        ep.register(mailbox.wake_fd, select.EPOLLIN)
        next_refresh = time.monotonic() + PEER_REFRESH
        next_summary = time.monotonic() + SUMMARY_EVERY
        try:
            while not mailbox.stopping:
                for fd, _ in ep.poll(1.0):
                    if fd == mailbox.wake_fd:
                        mailbox.drain()
                    else:
                        self._receive(by_fd[fd])
                mailbox.run_calls()
                now = time.monotonic()
                if self.peers.peers and now >= next_refresh:
                    # unresolved peers are looked at again soon, after their ping
                    next_refresh = now + (PEER_REFRESH if self.peers.refresh() else 0.5)
                if now >= next_summary:
                    self._summary()
                    next_summary = now + SUMMARY_EVERY
        finally:
            ep.close()

    def _receive(self, i: int) -> None:
        sock = self.sockets[i]
        for _ in range(BATCH):
            frame = sock.receive()
            if frame is None:
                return
            now = time.monotonic()
            got = self.relay.consider(frame, i, now)
            if not isinstance(got, PmtuMessage):
                if self.opts.verbose:
                    log.info("%s: not relayed (%s): %s", sock.ifname, got, _describe_frame(frame))
                continue
            if self.opts.verbose or self.opts.dry_run:
                log.info(
                    "%s: %s %s", sock.ifname,
                    "would relay" if self.opts.dry_run else "relaying", _describe(got),
                )  # fmt: skip
            if not self.opts.dry_run:
                self._send(frame, i, got)

    def _send(self, frame: bytes, i: int, msg: PmtuMessage) -> None:
        mark = self.opts.settings.mark
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

    def _summary(self, final: bool = False) -> None:
        """A line in the log for what changed since the last (everything, at exit)."""
        parts = []
        for i, (c, name) in enumerate(zip(self.relay.counters, self.opts.interfaces, strict=True)):
            changed = c.seen != self._last_seen[i]
            self._last_seen[i] = c.seen
            if changed or final:
                dropped = ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items())) or "none"
                parts.append(f"{name}: seen {c.seen}, relayed {c.relayed}, not relayed: {dropped}")
        if parts:
            log.info("relay%s: %s", " (final)" if final else "", "; ".join(parts))


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


def run(opts: RelayOptions) -> None:
    RelayDaemon(opts).run()
