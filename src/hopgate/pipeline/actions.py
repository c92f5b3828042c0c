"""What the pipeline asks the I/O layer to do, and why it dropped what it dropped."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from hopgate.packet.types import Buffer

if TYPE_CHECKING:
    from hopgate.pipeline.conntrack import Conn


class DropReason(StrEnum):
    """Why a frame went no further.  Every drop is counted under one of these."""

    # Layer 2
    FRAME_MALFORMED = "frame-malformed"
    FRAME_EXCEEDS_MTU = "frame-exceeds-mtu"  # e.g. a GRO super-frame: not a packet on the wire
    L2_NOT_FOR_US = "l2-not-for-us"
    UNKNOWN_ETHERTYPE = "unknown-ethertype"
    # ARP and Neighbor Discovery
    ARP_MALFORMED = "arp-malformed"
    ARP_NOT_FOR_US = "arp-not-for-us"
    ND_MALFORMED = "nd-malformed"
    ND_NOT_FOR_US = "nd-not-for-us"
    # IP header checks (the values match the packet layer's reason strings)
    IPV4_TRUNCATED = "ipv4-truncated"
    IPV4_BAD_VERSION = "ipv4-bad-version"
    IPV4_BAD_HEADER_LENGTH = "ipv4-bad-header-length"
    IPV4_BAD_TOTAL_LENGTH = "ipv4-bad-total-length"
    IPV4_BAD_CHECKSUM = "ipv4-bad-checksum"
    IPV6_TRUNCATED = "ipv6-truncated"
    IPV6_BAD_VERSION = "ipv6-bad-version"
    IPV6_BAD_PAYLOAD_LENGTH = "ipv6-bad-payload-length"
    IPV6_BAD_EXTENSION_HEADER = "ipv6-bad-extension-header"
    MARTIAN_SOURCE = "martian-source"
    MARTIAN_DESTINATION = "martian-destination"
    # Forwarding
    L2_BROADCAST_NOT_FORWARDED = "l2-broadcast-not-forwarded"
    MULTICAST_NOT_ROUTED = "multicast-not-routed"
    LINK_LOCAL_NOT_FORWARDED = "link-local-not-forwarded"
    SOURCE_BEYOND_SCOPE = "source-beyond-scope"
    NO_ROUTE = "no-route"
    TTL_EXCEEDED = "ttl-exceeded"
    MTU_EXCEEDED = "mtu-exceeded"
    NEIGHBOUR_UNREACHABLE = "neighbour-unreachable"
    NEIGHBOUR_QUEUE_FULL = "neighbour-queue-full"
    NEIGHBOUR_TABLE_FULL = "neighbour-table-full"
    LINK_DOWN = "link-down"  # the egress interface is down or gone
    # Delivery to the router's own addresses
    LOCAL_UDP_PORT_CLOSED = "local-udp-port-closed"
    LOCAL_TCP_RESET = "local-tcp-reset"
    LOCAL_TCP_RST_IGNORED = "local-tcp-rst-ignored"
    LOCAL_PROTOCOL_UNREACHABLE = "local-protocol-unreachable"
    LOCAL_BAD_CHECKSUM = "local-bad-checksum"
    LOCAL_TRUNCATED = "local-truncated"
    BROADCAST_IGNORED = "broadcast-ignored"
    ICMP_ERROR_TO_ROUTER = "icmp-error-to-router"
    ICMP_IGNORED = "icmp-ignored"
    NO_NEXT_HEADER = "no-next-header"
    REASSEMBLY_TIMEOUT = "reassembly-timeout"
    REASSEMBLY_INVALID = "reassembly-invalid"
    REASSEMBLY_TABLE_FULL = "reassembly-table-full"
    # NAT
    CONNTRACK_FULL = "conntrack-table-full"  # full of assured connections: none to evict
    CONNTRACK_SOURCE_LIMIT = "conntrack-source-limit"  # max_connections_per_source reached
    TCP_INVALID = "tcp-invalid"  # impossible in the connection's state (Linux: INVALID)
    TCP_OUT_OF_WINDOW = "tcp-out-of-window"  # outside the sequence window (tcp_be_liberal off)
    NAT_PORTS_EXHAUSTED = "nat-ports-exhausted"
    NAT_ICMP_UNMATCHED = "nat-icmp-unmatched"
    NAT_FRAGMENT_UNMATCHED = "nat-fragment-unmatched"
    NAT_INVALID = "nat-invalid"
    NAT_UNSOLICITED = "nat-unsolicited"  # from a translating interface to an inside prefix
    NAT_ICMP_REDIRECT = "nat-icmp-redirect"  # redirects are never translated
    NAT_BAD_MTU = "nat-bad-mtu"  # a PMTU error whose MTU cannot be right
    # Load balancer
    LB_NO_BACKEND = "lb-no-backend"
    # A segment of no connection here, sent to the cluster's peers instead (second chance)
    SECOND_CHANCE_SENT = "second-chance-sent"
    SECOND_CHANCE_MISS = "second-chance-miss"  # a peer's copy of no connection here
    # The host port (host_addresses; io/hostport.py)
    HOST_ADDRESS_NOT_ROUTED = "host-address-not-routed"  # to another interface's host address
    HOST_FRAME_MALFORMED = "host-frame-malformed"  # from the kernel: not an Ethernet frame
    HOST_FRAME_EXCEEDS_MTU = "host-frame-exceeds-mtu"  # from the kernel: too long for the link
    # The last resort: a bug, caught so that one packet cannot stop the router.
    INTERNAL_ERROR = "internal-error"


class Transmit(NamedTuple):
    """Send ``frame`` (a whole Ethernet frame) out of ``port``."""

    port: int
    frame: Buffer


class Drop(NamedTuple):
    """A frame that arrived on ``port`` went no further, for ``reason``."""

    port: int
    reason: DropReason


class ToHost(NamedTuple):
    """Pass ``frame``, as it arrived on ``port``, to the kernel's interface for
    that port's host addresses (io/hostport.py)."""

    port: int
    frame: Buffer


class Replay(NamedTuple):
    """Give ``frame``, as it arrived on ``port``, to the fast path: a segment of
    ``conn``, a TCP connection the XDP program holds, that it is the program's
    to judge (``ConnTable.held``).  The I/O layer runs the program on it and
    sends what it forwards; if the program passes it up, the pipeline takes
    the connection back and handles it (``Router.fast_path_passed``)."""

    port: int
    frame: bytearray | memoryview  # the pipeline's to handle again, if passed up
    conn: Conn


Action = Transmit | Drop | ToHost | Replay
