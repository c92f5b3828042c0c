"""IP protocol numbers (IANA's "Assigned Internet Protocol Numbers"), defined once.

They fill the IPv4 Protocol field and the IPv6 Next Header field alike: the
upper-layer protocols, and the IPv6 extension headers, which are numbered from
the same registry (RFC 8200 section 4).  The names follow Linux's ``IPPROTO_*``.
"""

from __future__ import annotations

from typing import Final

PROTO_HOPOPTS: Final = 0  # IPv6 Hop-by-Hop Options
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ROUTING: Final = 43  # IPv6 Routing header
PROTO_FRAGMENT: Final = 44  # IPv6 Fragment header
PROTO_GRE: Final = 47
PROTO_ESP: Final = 50
PROTO_AH: Final = 51
PROTO_ICMPV6: Final = 58
PROTO_NONE: Final = 59  # IPv6 No Next Header
PROTO_DSTOPTS: Final = 60  # IPv6 Destination Options
PROTO_MH: Final = 135  # IPv6 Mobility header

# The transport protocols whose headers begin with a source and a destination port.
PORT_PROTOCOLS: Final = (PROTO_TCP, PROTO_UDP)
