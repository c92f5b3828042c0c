"""``hopgate backend SERVICE ADDRESS drain | disable | enable | weight N``: a
backend's admin state or weight changed at run time, as ``ipvsadm -e`` and
HAProxy's runtime API (docs/behaviour.md, "Runtime backend control").

The admin socket's ``POST /backend?service=&address=&action=[&weight=]`` reaches
here: the query is checked in the admin thread (``parse``: ValueError naming the
key), the change is made in the loop thread between two batches of frames
(``apply``, through ``Loop.call``), where the pipeline does what a health verdict
does (``BackendVerdicts``: scheduling, connections, a Maglev table asked of the
control plane, an event the loop logs).  What the operator set is kept in the
services' ``Overrides`` (pipeline/lb/runtime.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hopgate.control import views
from hopgate.control.specs import setting
from hopgate.pipeline.model import AdminState, BackendSpec

if TYPE_CHECKING:
    from hopgate.pipeline.router import Router

JSON = dict[str, Any]
# What each action makes of a backend; "weight" changes its weight instead.
ACTIONS: dict[str, AdminState | None] = {
    "drain": AdminState.DRAINED,
    "disable": AdminState.DISABLED,
    "enable": AdminState.ENABLED,
    "weight": None,
}
_WEIGHT = setting(BackendSpec, "weight").bounds  # the config's bounds for a weight
KEYS = ("service", "address", "action", "weight")


@dataclass(frozen=True)
class Change:
    """A parsed request: the backends of ``service`` at ``address`` (and
    ``port``, if given), and what to do to them."""

    service: str
    family: int
    address: int
    port: int | None
    action: str
    weight: int | None = None  # for "weight"


def weight_range() -> tuple[int, int]:
    """The weights a backend may be given: the config's bounds."""
    assert _WEIGHT is not None and _WEIGHT.ge is not None and _WEIGHT.le is not None
    return int(_WEIGHT.ge), int(_WEIGHT.le)


def parse_address(text: str) -> tuple[int, int, int | None]:
    """(family, address, port or None) of ``198.18.0.1``, ``198.18.0.1:80``,
    ``2001:2::1`` or ``[2001:2::1]:80``.  Raises ValueError."""
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"address: {text!r} is not an address or [address]:port")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"address: {text!r} is not an IP address (or address:port)") from None
    if port is None:
        return ip.version, int(ip), None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"address: the port of {text!r} is not a number from 1 to 65535")
    return ip.version, int(ip), int(port)


def parse(query: dict[str, str]) -> Change:
    """The change a query asks for.  Raises ValueError naming the key at fault."""
    unknown = sorted(set(query) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(unknown)} (the keys: {', '.join(KEYS)})")
    for key in ("service", "address", "action"):
        if not query.get(key):
            raise ValueError(f"{key}: missing")
    action = query["action"]
    if action not in ACTIONS:
        raise ValueError(f"action: one of {', '.join(ACTIONS)}, not {action!r}")
    family, address, port = parse_address(query["address"])
    weight = None
    if action == "weight":
        low, high = weight_range()
        text = query.get("weight", "")
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"weight: a number from {low} to {high}, not {text!r}")
        weight = int(text)
    elif "weight" in query:
        raise ValueError(f"weight: only with the action weight, not {action}")
    return Change(query["service"], family, address, port, action, weight)


def apply(router: Router, change: Change) -> JSON:
    """Make ``change`` (in the loop thread): every backend it names, as status
    shows it afterwards, with what became of its connections and the log line.
    Raises LookupError naming what there is when the service or the backend is
    not."""
    if router.nat is None:
        raise LookupError("no services are configured")
    selected = router.nat.services.select(
        change.service, change.family, change.address, change.port
    )
    verdicts = router.verdicts
    changed = []
    for b in selected:
        state = ACTIONS[change.action]
        if state is None:
            assert change.weight is not None
            event = verdicts.set_weight(b, change.weight)
        else:
            event = verdicts.set_admin(b, state)
        row = {"service": b.service.name, **views.backend(b.describe())}
        row["closed"] = event.closed
        row["message"] = str(event)
        changed.append(row)
    return {"changed": changed}


Call = Callable[[Callable[[], JSON]], "Future[JSON]"]


def requests(
    current: Callable[[], Router], call: Call, logged: Callable[[], None]
) -> Callable[[dict[str, str]], Future[JSON]]:
    """The admin server's handler of ``POST /backend``: parses a query (in the
    caller's thread) and has ``call`` run the change in the loop; ``logged``,
    run there after it, logs the events, so that the log has the change before
    the operator has the answer.  ``current``: the router running (a reload
    replaces it)."""

    def start(query: dict[str, str]) -> Future[JSON]:
        change = parse(query)

        def run() -> JSON:
            out = apply(current(), change)
            logged()
            return out

        return call(run)

    return start
