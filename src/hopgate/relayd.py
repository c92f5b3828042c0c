"""``hopgate relay``: the standalone path MTU discovery relay for Linux servers that
share an address behind ECMP (the job of Cloudflare's pmtud).

It runs next to the kernel's stack, which keeps every frame: the relay captures
copies of fragmentation needed / Packet Too Big arriving on its interfaces
(io/capture.py), checks and rate limits them (pipeline/relay.py), and sends each
again as a link-layer broadcast on the interface it came in on, or to the MAC
of each configured peer (io/peers.py); io/relayloop.py does that on the reactor
``hopgate run`` shares.  The kernel of the server that holds the flow learns
the path MTU from the copy; the others find no socket for it and ignore it.

This module is the daemon's wiring: the options the CLI gives it, the admin
socket and metrics, the start-up and status.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from hopgate import __version__
from hopgate.control.admin import AdminServer
from hopgate.io.capture import FilterError, InterfaceError, interface_mac
from hopgate.io.peers import PeerTable
from hopgate.io.relayloop import RelayLoop
from hopgate.pipeline.model import IPAddress
from hopgate.pipeline.relay import Relay, RelaySettings

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/hopgate/relay.sock"
PEER_ANSWER_WAIT = 0.3  # seconds given at start to the answers of the peers' pings


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
    filter_mode: str = "auto"  # the capture filter: "auto", "ebpf", "classic" (io/relayloop.py)


class RelayDaemon:
    def __init__(self, opts: RelayOptions) -> None:
        if not opts.interfaces:
            raise RelayError("give at least one interface (--iface)")
        self.opts = opts
        try:
            macs = [interface_mac(n) for n in opts.interfaces]
        except InterfaceError as e:
            raise RelayError(str(e)) from None
        self.started = time.monotonic()
        self.relay = Relay(opts.settings, len(opts.interfaces), self.started)
        self.peers = PeerTable(opts.peers, opts.interfaces)
        self.loop = RelayLoop(
            self.relay,
            opts.interfaces,
            macs,
            self.peers,
            opts.settings.mark,
            dry_run=opts.dry_run,
            verbose=opts.verbose,
            filter_mode=opts.filter_mode,
        )

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
            # "ebpf": checks and limits in the kernel; "classic": here (and why)
            "filter": self.loop.filter_name,
            "filter_note": self.loop.filter_note,
            "interfaces": self.loop.interfaces_state(),
            "peers": self.peers.describe(),
            "send_errors": self.loop.send_errors,
        }

    def run(self) -> None:
        opts = self.opts
        loop = self.loop
        admin = AdminServer(
            opts.socket_path, lambda: loop.mailbox.call(self.snapshot), opts.metrics
        )
        try:
            try:
                loop.open()
            except (InterfaceError, FilterError) as e:
                raise RelayError(str(e)) from None
            admin.start()
            loop.mailbox.install_signal_handlers()
            if self.peers.peers and not self.peers.refresh():
                time.sleep(PEER_ANSWER_WAIT)
                self.peers.refresh()
            log.info(
                "hopgate relay %s on %s: %s%s; %s; admin socket %s",
                __version__,
                ", ".join(opts.interfaces),
                self.mode
                + (
                    " to " + ", ".join(str(p.address) for p in self.peers.peers)
                    if self.peers.peers
                    else ""
                ),
                " (dry run: nothing is sent)" if opts.dry_run else "",
                "checks and limits in the kernel (eBPF filter)"
                if loop.filter_name == "ebpf"
                else "classic filter, limits here",
                opts.socket_path,
            )
            loop.run()
        finally:
            admin.stop()
            loop.close()
            loop.summary(final=True)


def run(opts: RelayOptions) -> None:
    RelayDaemon(opts).run()
