"""The router's configuration as the pipeline sees it: plain, validated, frozen data.

The control layer turns a TOML file and what the kernel says about each
interface (its MAC, its MTU) into a ``RouterSpec``; tests build one directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hopgate.pipeline.conntrack import Timeouts
from hopgate.pipeline.lb import ServiceSpec
from hopgate.pipeline.ratelimit import IcmpRateSettings
from hopgate.pipeline.relay import RelaySettings

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PortSpec:
    name: str
    mac: bytes
    mtu: int = 1500
    addresses: tuple[IPInterface, ...] = ()
    # The largest IP packet accepted from the link: the link's own MTU, which may
    # be above the configured ``mtu`` (hopgate may send less than the link takes).
    link_mtu: int | None = None


@dataclass(frozen=True)
class NextHopSpec:
    address: IPAddress
    # Needed for link-local next hops ("fe80::1%gw-u"); found from the connected
    # subnets otherwise.
    interface: str | None = None


@dataclass(frozen=True)
class RouteSpec:
    prefix: IPNetwork
    via: tuple[NextHopSpec, ...]


@dataclass(frozen=True)
class NeighbourSettings:
    """ARP and Neighbor Discovery timing, with Linux's defaults (net.ipv4.neigh.*)."""

    reachable_time: float = 30.0  # base_reachable_time_ms
    retrans_time: float = 1.0  # retrans_time_ms
    delay_first_probe: float = 5.0  # delay_first_probe_time
    multicast_solicit: int = 3  # mcast_solicit
    unicast_solicit: int = 3  # ucast_solicit
    queue_len: int = 64  # packets held per unresolved neighbour (unres_qlen)
    max_entries: int = 4096  # gc_thresh3 (Linux's default is 1024)
    # An ARP message changes a known neighbour's MAC only if the entry has not
    # changed for this long (locktime; gratuitous ARP excepted), as Linux's arp_process.
    locktime: float = 1.0


@dataclass(frozen=True)
class ReassemblySettings:
    """Reassembly of fragments addressed to the router itself (net.ipv4.ipfrag_*)."""

    timeout: float = 30.0  # ipfrag_time
    max_datagrams: int = 1024
    max_bytes: int = 4 * 1024 * 1024  # ipfrag_high_thresh


@dataclass(frozen=True)
class SnatSpec:
    """Packets from ``inside`` leaving by ``interface`` take an address of
    ``pool``, or of the interface itself when the pool is empty (masquerade)."""

    inside: tuple[IPNetwork, ...]
    interface: str
    pool: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class DnatSpec:
    """Packets to ``published`` (and ``published_port``, if given) go to
    ``inside`` (and ``inside_port``; the same port if not given)."""

    protocol: str  # "tcp", "udp", or "all" (no ports: TCP, UDP and ICMP echo)
    published: IPAddress
    inside: IPAddress
    published_port: int | None = None
    inside_port: int | None = None


@dataclass(frozen=True)
class NatSpec:
    snat: tuple[SnatSpec, ...] = ()
    dnat: tuple[DnatSpec, ...] = ()
    max_connections: int = 65536  # net.netfilter.nf_conntrack_max
    # New connections one source address may hold at once (0: no limit), as
    # nftables' "ct count over N".
    max_connections_per_source: int = 0
    # Accept TCP segments outside the sequence window (not RSTs), as
    # net.netfilter.nf_conntrack_tcp_be_liberal.
    tcp_be_liberal: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    seed: int = 0  # for port choice: tests pass a fixed one
    # Route new flows from a translating interface to its inside prefixes rather
    # than drop them (nat-unsolicited): the NAT then no longer filters.
    forward_unsolicited: bool = False


@dataclass(frozen=True)
class RelaySpec:
    """``[relay]``: PMTU errors about flows another node holds go to the peers."""

    interfaces: tuple[str, ...]
    peers: tuple[IPAddress, ...] = ()  # none: link-layer broadcast
    settings: RelaySettings = field(default_factory=RelaySettings)


@dataclass(frozen=True)
class RouterSpec:
    ports: tuple[PortSpec, ...]
    routes: tuple[RouteSpec, ...] = ()
    icmp: IcmpRateSettings = field(default_factory=IcmpRateSettings)
    neighbour: NeighbourSettings = field(default_factory=NeighbourSettings)
    reassembly: ReassemblySettings = field(default_factory=ReassemblySettings)
    nat: NatSpec | None = None
    services: tuple[ServiceSpec, ...] = ()
    relay: RelaySpec | None = None
