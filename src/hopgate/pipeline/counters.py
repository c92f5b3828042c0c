"""What the pipeline counts: per-port traffic, drops by reason, ICMP by type and code."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Any

from hopgate.pipeline.actions import DropReason


class NotSent(StrEnum):
    """Why an ICMP error was not sent although its case arose (docs/behaviour.md,
    "Every ICMP error hopgate sends")."""

    ABOUT_ICMP_ERROR = "about-an-icmp-error"
    TO_BROADCAST = "packet-was-to-broadcast-or-multicast"
    LINK_LAYER_BROADCAST = "link-layer-broadcast"
    LATER_FRAGMENT = "non-first-fragment"
    SOURCE_NOT_A_HOST = "source-not-one-host"
    NO_SOURCE_ADDRESS = "no-address-to-send-from"


class Counters:
    def __init__(self, port_names: list[str], host_ports: frozenset[int] = frozenset()) -> None:
        """``host_ports``: the ports with a host port (``host_addresses``),
        whose frames to and from the host the snapshot shows."""
        n = len(port_names)
        self.port_names = port_names
        self.host_ports = host_ports
        self.rx_packets = [0] * n
        self.rx_bytes = [0] * n
        self.tx_packets = [0] * n
        self.tx_bytes = [0] * n
        self.forwarded = [0] * n  # by ingress port
        # Frames passed up to the host's interface, and taken from it (to send).
        self.to_host = [0] * n
        self.from_host = [0] * n
        self.drops: Counter[tuple[int, DropReason]] = Counter()
        # (family, type, code) -> count
        self.icmp_sent: Counter[tuple[int, int, int]] = Counter()
        # (family, type, code, which limit) -> count
        self.icmp_rate_limited: Counter[tuple[int, int, int, str]] = Counter()
        self.icmp_not_sent: Counter[NotSent] = Counter()
        self.tcp_resets_sent = 0
        self.arp_sent: Counter[str] = Counter()  # "request", "reply"
        self.nd_sent: Counter[str] = Counter()  # "solicitation", "advertisement"
        self.fragments_created = 0
        self.reassembled = 0

    def drops_by_reason(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for (_, reason), n in self.drops.items():
            total[reason.value] += n
        return total

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the admin API and ``hopgate status``."""
        ports = []
        for i, name in enumerate(self.port_names):
            port = {
                "name": name,
                "rx_packets": self.rx_packets[i],
                "rx_bytes": self.rx_bytes[i],
                "tx_packets": self.tx_packets[i],
                "tx_bytes": self.tx_bytes[i],
                "forwarded": self.forwarded[i],
                "drops": {r.value: n for (p, r), n in sorted(self.drops.items()) if p == i},
            }
            if i in self.host_ports:
                port["to_host"] = self.to_host[i]
                port["from_host"] = self.from_host[i]
            ports.append(port)
        return {
            "ports": ports,
            "drops": dict(sorted(self.drops_by_reason().items())),
            "icmp_sent": [
                {"family": f, "type": t, "code": c, "count": n}
                for (f, t, c), n in sorted(self.icmp_sent.items())
            ],
            "icmp_rate_limited": [
                {"family": f, "type": t, "code": c, "limit": lim, "count": n}
                for (f, t, c, lim), n in sorted(self.icmp_rate_limited.items())
            ],
            "icmp_not_sent": {k.value: n for k, n in sorted(self.icmp_not_sent.items())},
            "tcp_resets_sent": self.tcp_resets_sent,
            "arp_sent": dict(self.arp_sent),
            "nd_sent": dict(self.nd_sent),
            "fragments_created": self.fragments_created,
            "reassembled": self.reassembled,
        }
