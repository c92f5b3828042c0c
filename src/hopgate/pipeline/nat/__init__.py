"""Source and destination NAT for IPv4 and IPv6 (docs/behaviour.md, "NAT").

``Nat`` (engine.py) is the facade the router uses; translate.py, errors.py and
fragments.py do its work by concern.
"""

from hopgate.pipeline.nat.engine import Nat
from hopgate.pipeline.nat.fragments import FRAGMENT_TIMEOUT, MAX_FRAGMENT_FLOWS
from hopgate.pipeline.nat.translate import DnatRule, Mapping, SnatRule
from hopgate.pipeline.plans import Plan

__all__ = [
    "FRAGMENT_TIMEOUT",
    "MAX_FRAGMENT_FLOWS",
    "DnatRule",
    "Mapping",
    "Nat",
    "Plan",
    "SnatRule",
]
