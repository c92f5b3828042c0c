"""What the operator changed at run time (``hopgate backend``; docs/behaviour.md,
"Runtime backend control"), kept in one place.

Each backend's admin state (enabled, drained, disabled) and the weight the
operator gave it are an ``Override``, held by ``Overrides`` under the backend's
identity in the config (``BackendKey``: its service's protocol, VIP and port, its
own address and port), not by the ``Backend`` object: services built again from
a config (a reload, once there is one) are given the same ``Overrides`` and find
each backend's record again.  A record lives until the daemon stops or its
backend leaves the config (``Overrides.keep``): the operator's change wins over
the file for every backend the file still has, whatever weight the file gives it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from hopgate.pipeline.model import AdminState

# (family, protocol, VIP, service port, backend address, backend port)
BackendKey = tuple[int, int, int, int, int, int]


@dataclass(slots=True)
class Override:
    """One backend's runtime settings: its admin state, and its weight when the
    operator set one (None: the config's)."""

    admin: AdminState = AdminState.ENABLED
    weight: int | None = None


class Overrides:
    """Every backend's ``Override``, by ``BackendKey``."""

    def __init__(self) -> None:
        self._by_key: dict[BackendKey, Override] = {}

    def of(self, key: BackendKey) -> Override:
        """The record of the backend ``key`` (a new one, at the defaults, the first
        time it is asked for)."""
        record = self._by_key.get(key)
        if record is None:
            record = self._by_key[key] = Override()
        return record

    def keep(self, keys: Collection[BackendKey]) -> None:
        """Forget the records of backends the config no longer has."""
        for key in [k for k in self._by_key if k not in keys]:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)

    def changed(self) -> list[tuple[BackendKey, Override]]:
        """The records the operator changed from the defaults (what a restart
        must keep: nat/persist.py)."""
        return [
            (key, o)
            for key, o in self._by_key.items()
            if o.admin is not AdminState.ENABLED or o.weight is not None
        ]
