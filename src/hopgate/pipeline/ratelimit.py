"""Token buckets for ICMP errors, with the semantics and defaults of Linux.

Linux (net/ipv4/icmp.c, net/ipv6/icmp.c) limits the error types in its
``icmp_ratemask`` per destination (``icmp_ratelimit`` ms per message, a burst
of 6) and globally (``icmp_msgs_per_sec``, ``icmp_msgs_burst``), and exempts
fragmentation needed / Packet Too Big from both so that path MTU discovery is
never starved.  Echo replies are not errors and are not limited.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

from hopgate.packet import icmp4, icmp6
from hopgate.pipeline.model import IcmpRateSettings

# IcmpRateSettings is defined with the other specs (model.py), and importable from here.
__all__ = [
    "V4_LIMITED_TYPES",
    "IcmpRateLimiter",
    "IcmpRateSettings",
    "Limit",
    "TokenBucket",
    "is_limited_type",
]

# Linux's default icmp_ratemask 0x1818: Destination Unreachable, Source Quench,
# Time Exceeded, Parameter Problem.
V4_LIMITED_TYPES = frozenset(
    {icmp4.DEST_UNREACH, icmp4.SOURCE_QUENCH, icmp4.TIME_EXCEEDED, icmp4.PARAMETER_PROBLEM}
)


class Limit(StrEnum):
    GLOBAL = "global"
    PER_DESTINATION = "per-destination"


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def refill(self, now: float) -> None:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.last = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def is_limited_type(version: int, icmp_type: int, code: int) -> bool:
    """Whether Linux's ratemask covers this message (fragmentation needed and PTB never are)."""
    if version == 4:
        if icmp_type == icmp4.DEST_UNREACH and code == icmp4.FRAG_NEEDED_CODE:
            return False
        return icmp_type in V4_LIMITED_TYPES
    # ICMPv6 default ratemask "0-1,3-127": every error but Packet Too Big.
    return icmp_type < 128 and icmp_type != icmp6.PACKET_TOO_BIG


class IcmpRateLimiter:
    def __init__(self, settings: IcmpRateSettings, now: float = 0.0) -> None:
        self.settings = settings
        self._global = (
            TokenBucket(settings.msgs_per_second, settings.msgs_burst, now)
            if settings.msgs_per_second > 0
            else None
        )
        self._per_dest_rate = (
            1000.0 / settings.ratelimit_interval_ms if settings.ratelimit_interval_ms > 0 else 0.0
        )
        self._peers: OrderedDict[tuple[int, int], TokenBucket] = OrderedDict()

    def check(self, version: int, dst: int, icmp_type: int, code: int, now: float) -> Limit | None:
        """None if the message may be sent (and its tokens are spent), else the limit hit."""
        if not is_limited_type(version, icmp_type, code):
            return None
        glob = self._global
        if glob is not None:
            glob.refill(now)
            if glob.tokens < 1.0:
                return Limit.GLOBAL
        if self._per_dest_rate:
            key = (version, dst)
            bucket = self._peers.get(key)
            if bucket is None:
                bucket = TokenBucket(self._per_dest_rate, self.settings.ratelimit_burst, now)
                self._peers[key] = bucket
                if len(self._peers) > self.settings.max_destinations:
                    self._peers.popitem(last=False)
            if not bucket.take(now):
                return Limit.PER_DESTINATION
        if glob is not None:
            glob.tokens -= 1.0
        return None

    def __len__(self) -> int:
        return len(self._peers)
