"""The router's configuration as the pipeline sees it: plain, validated, frozen data.

The control layer turns a TOML file and what the kernel says about each
interface (its MAC, its MTU) into a ``RouterSpec``; tests build one directly.

Every setting's default lives here, in its spec field, and nowhere else: the
TOML schema (``control/config.py``) and the ``hopgate relay`` options take
theirs from these fields.  A field's ``Annotated`` type may say more about it:
the values it may take (``Bounds``: the config refuses others, the pipeline
trusts them), its TOML key and unit when not its own name in its own unit
(``Key``), or that it is no config key at all (``INTERNAL``).  Sections whose
mapping is mechanical (``[icmp]``, ``[neighbour]``, ``[nat.timeouts]``) are
generated from their spec; ``tests/unit/test_settings_parity.py`` checks the
others agree.  This module imports nothing from the rest of the pipeline.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Annotated

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- how a setting is offered to the operator --------------------------------------


@dataclass(frozen=True)
class Bounds:
    """The values a setting may take, in the field's unit (each element's, for a
    collection)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None


@dataclass(frozen=True)
class Key:
    """A setting's TOML key when it is not the field's name.  ``scale`` is how
    many of the key's unit make one of the field's: 1000 for a field in seconds
    set in milliseconds (such a key takes an integer)."""

    name: str
    scale: int = 1


@dataclass(frozen=True)
class Internal:
    """Not a config key: fixed, or set only by tests (a seed)."""


INTERNAL = Internal()

Seconds = Annotated[float, Bounds(gt=0)]


# -- policies: one vocabulary for the config and the pipeline ------------------------


class Scheduler(StrEnum):
    """How a service picks the backend of a new connection."""

    RR = "rr"  # round robin
    WRR = "wrr"  # smooth weighted round robin
    LC = "lc"  # weighted least connections
    MAGLEV = "maglev"  # consistent hashing: the same choice on every node


class HealthKind(StrEnum):
    """How a backend is checked."""

    TCP = "tcp"  # a connection is accepted
    ICMP = "icmp"  # an echo is answered
    HTTP = "http"  # a GET is answered with a status in range
    NONE = "none"  # not checked: always up


class EchoPolicy(StrEnum):
    """Who answers a ping to a service's VIP."""

    ANSWER = "answer"  # the VIP itself
    FORWARD = "forward"  # a backend, chosen as a connection's


class BackendDown(StrEnum):
    """What becomes of a failed backend's connections."""

    KEEP = "keep"
    CLOSE = "close"


class AdminState(StrEnum):
    """What the operator made of a backend at run time (``hopgate backend``), apart
    from its health: not a config key (every backend starts enabled)."""

    ENABLED = "enabled"  # scheduled as its health and weight say
    DRAINED = "drained"  # no new connections; its open ones go on until they end
    # No new connections; its open ones closed if the service closes a failed
    # backend's (``on_backend_down = "close"``), kept otherwise.
    DISABLED = "disabled"


@dataclass(frozen=True)
class PortSpec:
    name: str
    mac: bytes
    mtu: int = 1500
    addresses: tuple[IPInterface, ...] = ()
    # The largest IP packet accepted from the link: the link's own MTU, which may
    # be above the configured ``mtu`` (hopgate may send less than the link takes).
    link_mtu: int | None = None
    # Addresses of the host's kernel on this link (``host_addresses``): not
    # hopgate's; what is for them is passed to the kernel's interface (io/hostport.py).
    host_addresses: tuple[IPInterface, ...] = ()


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
class IcmpRateSettings:
    """``[icmp]``: limits on the ICMP errors sent, named after Linux's sysctls
    (net.ipv4.icmp_*), with Linux's defaults; 0 turns the corresponding limit off."""

    # Per destination: one message per interval, in bursts of up to this many.
    ratelimit_interval_ms: Annotated[int, Bounds(ge=0)] = 1000
    ratelimit_burst: Annotated[int, Bounds(ge=1)] = 6
    # Globally (icmp_msgs_per_sec, icmp_msgs_burst).
    msgs_per_second: Annotated[int, Bounds(ge=0)] = 1000
    msgs_burst: Annotated[int, Bounds(ge=1)] = 50
    # How many destinations keep their own bucket; the least recently created go first.
    max_destinations: Annotated[int, INTERNAL] = 65536


@dataclass(frozen=True)
class NeighbourSettings:
    """``[neighbour]``: ARP and Neighbor Discovery timing, named after
    net.ipv4.neigh.default.*, with Linux's defaults.  Seconds here; the config's
    ``*_ms`` keys are milliseconds."""

    reachable_time: Annotated[float, Key("base_reachable_time_ms", 1000), Bounds(ge=1)] = 30.0
    retrans_time: Annotated[float, Key("retrans_time_ms", 1000), Bounds(ge=0.1)] = 1.0
    delay_first_probe: Annotated[float, Key("delay_first_probe_time_ms", 1000), Bounds(ge=0)] = 5.0
    multicast_solicit: Annotated[int, Key("mcast_solicit"), Bounds(ge=1, le=32)] = 3
    unicast_solicit: Annotated[int, Key("ucast_solicit"), Bounds(ge=1, le=32)] = 3
    # Packets held per unresolved neighbour.
    queue_len: Annotated[int, Key("unres_qlen"), Bounds(ge=1, le=4096)] = 64
    max_entries: Annotated[int, Bounds(ge=16)] = 4096  # gc_thresh3 (Linux's default is 1024)
    # ARP only (as Linux's arp_process): a reply or request changes a known
    # neighbour's MAC only once the entry is this old; gratuitous ARP always does.
    locktime: Annotated[float, Key("locktime_ms", 1000), Bounds(ge=0)] = 1.0


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
class Timeouts:
    """``[nat.timeouts]``: seconds, named after net.netfilter.nf_conntrack_*_timeout,
    with Linux's defaults."""

    tcp_syn_sent: Seconds = 120
    tcp_syn_recv: Seconds = 60
    tcp_established: Seconds = 432000
    tcp_fin_wait: Seconds = 120
    tcp_close_wait: Seconds = 60
    tcp_last_ack: Seconds = 30
    tcp_time_wait: Seconds = 120
    tcp_close: Seconds = 10
    # A connection with data in flight not yet acknowledged, or picked up in
    # mid-stream and not yet answered, never waits longer than this.
    tcp_unacknowledged: Seconds = 300
    udp: Seconds = 30  # unreplied, or replied within its first 2 s
    udp_stream: Seconds = 120  # still replied to after 2 s
    icmp: Seconds = 30
    generic: Seconds = 600

    @cached_property
    def _tcp_by_state(self) -> tuple[float, ...]:
        # Built once: tcp() runs for every TCP packet of every tracked connection.
        # Indexed by tcptrack.TcpState.
        return (
            self.generic,  # NONE
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_close_wait,
            self.tcp_last_ack,
            self.tcp_time_wait,
            self.tcp_close,
            self.tcp_syn_sent,  # SYN_SENT2
        )

    def tcp(self, state: int) -> float:
        """The timeout of a TCP connection in ``state`` (a ``tcptrack.TcpState``)."""
        return self._tcp_by_state[state]


@dataclass(frozen=True)
class NatSpec:
    """``[nat]``."""

    snat: tuple[SnatSpec, ...] = ()
    dnat: tuple[DnatSpec, ...] = ()
    max_connections: Annotated[int, Bounds(ge=1)] = 65536  # net.netfilter.nf_conntrack_max
    # New connections one source address may hold at once (0: no limit), as
    # nftables' "ct count over N".
    max_connections_per_source: Annotated[int, Bounds(ge=0)] = 0
    # Accept TCP segments outside the sequence window (not RSTs), as
    # net.netfilter.nf_conntrack_tcp_be_liberal.
    tcp_be_liberal: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    seed: Annotated[int, INTERNAL] = 0  # for port choice: tests pass a fixed one
    # Route new flows from a translating interface to its inside prefixes rather
    # than drop them (nat-unsolicited): the NAT then no longer filters.
    forward_unsolicited: bool = False


@dataclass(frozen=True)
class HealthSpec:
    """``[service.health]``: how a service's backends are checked."""

    # The config's default depends on the service: tcp, or icmp for UDP.
    kind: HealthKind = HealthKind.TCP
    interval: Annotated[float, Key("interval_ms", 1000), Bounds(ge=0.1)] = 2.0
    timeout: Annotated[float, Key("timeout_ms", 1000), Bounds(ge=0.05)] = 1.0
    rise: Annotated[int, Bounds(ge=1, le=100)] = 2  # successes in a row to come up
    fall: Annotated[int, Bounds(ge=1, le=100)] = 3  # failures in a row to go down
    http_path: str = "/"
    # A status in this range is healthy.
    http_status: Annotated[tuple[int, int], Bounds(ge=100, le=599)] = (200, 399)


@dataclass(frozen=True)
class BackendSpec:
    """``[[service.backend]]``."""

    address: int
    port: int
    weight: Annotated[int, Bounds(ge=0, le=1000)] = 1  # 0: no new connections


@dataclass(frozen=True)
class ServiceSpec:
    """``[[service]]``: a VIP, port and protocol balanced over backends."""

    name: str
    family: int
    protocol: int  # PROTO_TCP or PROTO_UDP
    vip: int
    port: int
    backends: tuple[BackendSpec, ...]
    local_addresses: tuple[int, ...]
    scheduler: Scheduler = Scheduler.WRR
    echo: EchoPolicy = EchoPolicy.ANSWER
    on_backend_down: BackendDown = BackendDown.KEEP
    # Prime, as the Maglev paper asks; what DPVS uses.
    maglev_table_size: Annotated[int, Bounds(ge=7)] = 65537
    health: HealthSpec = field(default_factory=HealthSpec)


@dataclass(frozen=True)
class RelaySettings:
    """The PMTU relay's settings: ``[relay]`` and ``hopgate relay``'s options."""

    # Messages a second relayed from one source address (the router that sent
    # them), and at once; bursts are filled in by burst_for() when not given.
    src_rate: Annotated[float, Bounds(gt=0)] = 10.0
    src_burst: Annotated[float, Bounds(ge=1)] = src_rate
    iface_rate: Annotated[float, Bounds(gt=0)] = 100.0  # ... and from one interface
    iface_burst: Annotated[float, Bounds(ge=1)] = iface_rate
    # A stricter range than the sanity check's (68 / 1280 up to 65535).
    min_mtu: Annotated[int | None, Bounds(ge=68, le=65535)] = None
    max_mtu: Annotated[int | None, Bounds(ge=68, le=65535)] = None
    # Only errors about these source ports (empty: all).
    ports: Annotated[frozenset[int], Bounds(ge=1, le=65535)] = frozenset()
    # DSCP 63 (0b111111): RFC 2474's Pool 2 (xxxxx1... xxxx11) is for experimental
    # and local use, so no router sets it on the errors it sends.
    mark: Annotated[int, Bounds(ge=0, le=63)] = 63
    # Sources with a bucket of their own; the oldest go first.
    max_sources: Annotated[int, INTERNAL] = 4096


def burst_for(rate: float, burst: float | None) -> float:
    """A bucket's burst when none is given: the rate, never below one message."""
    return max(1.0, rate) if burst is None else burst


@dataclass(frozen=True)
class RelaySpec:
    """``[relay]``: PMTU errors about flows another node holds go to the peers."""

    interfaces: tuple[str, ...]
    peers: tuple[IPAddress, ...] = ()  # none: link-layer broadcast
    settings: RelaySettings = field(default_factory=RelaySettings)
    # Second chance (pipeline/lb/cluster.py): a TCP segment without SYN to a
    # service that matches no connection here, arriving on one of
    # ``interfaces``, is sent to the peers (one of which may hold it) instead
    # of being scheduled.  None: on when there are peers (it needs them).
    second_chance: bool | None = None

    @property
    def second_chance_on(self) -> bool:
        return (
            bool(self.peers)
            if self.second_chance is None
            else self.second_chance and bool(self.peers)
        )


@dataclass(frozen=True)
class RouterSpec:
    ports: tuple[PortSpec, ...]
    routes: Annotated[tuple[RouteSpec, ...], Key("route")] = ()
    icmp: IcmpRateSettings = field(default_factory=IcmpRateSettings)
    neighbour: NeighbourSettings = field(default_factory=NeighbourSettings)
    # Not configurable: Linux's defaults.
    reassembly: Annotated[ReassemblySettings, INTERNAL] = field(default_factory=ReassemblySettings)
    nat: NatSpec | None = None
    services: Annotated[tuple[ServiceSpec, ...], Key("service")] = ()
    relay: RelaySpec | None = None
