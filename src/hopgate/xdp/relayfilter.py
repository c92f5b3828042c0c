"""``hopgate relay``'s eBPF socket filter (relayfilter.c): its tables' one Python
definition, how the relay's settings fill them, and its counters.

One program serves all the relay's capture sockets (io/capture.py attaches it
to each), so that, as in pipeline/relay.py, a source has one bucket whatever
interface its messages come in on and each interface has its own.  The
program checks and meters exactly what ``Relay`` does, and refuses what
``Relay`` would not relay; the relay then only checks again what it is given
(``Relay.consider_admitted``) and reads the refusals from ``counters``.

The buckets count in integers (relayfilter.c): a rate in thousandths of a
message a second, a burst in 10^-12 of a message.  Settings those cannot hold
exactly (a rate or burst not a whole number of thousandths, a burst over a
million) are refused with the reason, and the relay keeps its classic filter
and its Python buckets.
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hopgate.pipeline.relay import RelayDrop, RelaySettings
from hopgate.xdp.libbpf import BpfError, BpfObject, CValue

OBJECT = Path(__file__).with_name("relayfilter.o")
PROGRAM = "hopgate_relay_filter"
MAX_IFACES = 64
MAX_SOURCES = 4096  # relayfilter.c's sources map
ONE = 10**12  # one message in a bucket
MAX_BURST = 10**6  # messages: twice this in 10^-12 fits a u64
MAX_RATE = 10**12  # messages a second

PASSED, NOT_PMTU = "passed", "not-pmtu"
# What the program counts, per interface, in the order of relayfilter.c's enum outcome.
OUTCOMES: tuple[str, ...] = (
    PASSED,
    NOT_PMTU,
    RelayDrop.RELAYED_COPY,
    RelayDrop.NO_QUOTE,
    RelayDrop.MTU_INSANE,
    RelayDrop.MTU_OUT_OF_RANGE,
    RelayDrop.PORT_FILTERED,
    RelayDrop.RATE_SOURCE,
    RelayDrop.RATE_INTERFACE,
)


class Config(ctypes.Structure):
    _fields_ = [
        ("src_rate", ctypes.c_uint64),  # thousandths of a message a second
        ("src_burst", ctypes.c_uint64),  # in 10^-12 of a message
        ("src_full_ns", ctypes.c_uint64),  # an empty bucket's time to fill
        ("iface_rate", ctypes.c_uint64),
        ("iface_burst", ctypes.c_uint64),
        ("iface_full_ns", ctypes.c_uint64),
        ("min_mtu", ctypes.c_uint32),  # 0: none
        ("max_mtu", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("ports", ctypes.c_uint32),  # 1: only the ports in port_bits
    ]


class Bucket(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_uint64), ("last", ctypes.c_uint64)]


class State(ctypes.Structure):
    _fields_ = [
        ("busy", ctypes.c_uint64),  # the buckets' lock
        ("iface", Bucket * MAX_IFACES),
    ]


class Source(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


LAYOUTS: dict[str, tuple[type[CValue], type[CValue]]] = {
    "config": (ctypes.c_uint32, Config),
    "state": (ctypes.c_uint32, State),
    "iface_index": (ctypes.c_uint32, ctypes.c_uint32),
    "port_bits": (ctypes.c_uint32, ctypes.c_uint64),
    "sources": (Source, Bucket),
    "counters": (ctypes.c_uint32, ctypes.c_uint64),
}


def refused(counts: dict[str, int]) -> Counter[str]:
    """Of an interface's ``counts``, the messages refused, by pipeline/relay.py's reason."""
    return Counter({k: v for k, v in counts.items() if k not in (PASSED, NOT_PMTU) and v})


class FilterUnavailableError(Exception):
    """The eBPF filter cannot do this relay's work here (the reason)."""


def _thousandths(x: float) -> int | None:
    m = round(x * 1000)
    return m if math.isclose(m, x * 1000, rel_tol=1e-12, abs_tol=1e-9) else None


def bucket_params(rate: float, burst: float) -> tuple[int, int, int] | str:
    """(rate, burst, time to fill) as the program counts them, or why it cannot."""
    r, b = _thousandths(rate), _thousandths(burst)
    if r is None or r < 1 or rate > MAX_RATE:
        return f"rate {rate:g}/s is not a whole number of thousandths up to {MAX_RATE:g}"
    if b is None or burst > MAX_BURST:
        return f"burst {burst:g} is not a whole number of thousandths up to {MAX_BURST:g}"
    units = b * (ONE // 1000)
    return r, units, -(-units // r)


def unsupported(settings: RelaySettings) -> str | None:
    """Why the program cannot enforce these settings exactly (None: it can)."""
    for name in ("src", "iface"):
        got = bucket_params(getattr(settings, f"{name}_rate"), getattr(settings, f"{name}_burst"))
        if isinstance(got, str):
            return f"--{name}-{got}"
    if settings.max_sources != MAX_SOURCES:
        return f"{settings.max_sources} sources' buckets (the program keeps {MAX_SOURCES})"
    return None


class RelayFilter:
    """The loaded program and its tables, filled from the relay's settings for
    its interfaces (``ifindexes``, in the relay's order)."""

    def __init__(self, settings: RelaySettings, ifindexes: Sequence[int], path: Path = OBJECT):
        why = unsupported(settings)
        if why is None and len(ifindexes) > MAX_IFACES:
            why = f"more than {MAX_IFACES} interfaces"
        if why is None and not path.exists():
            why = f"{path} is not built (scripts/bootstrap builds it)"
        if why is not None:
            raise FilterUnavailableError(why)
        try:
            self.obj = BpfObject(path)
        except OSError as e:  # BpfError, or no libbpf here
            raise FilterUnavailableError(str(e)) from None
        self.interfaces = len(ifindexes)
        try:
            self._fill(settings, ifindexes)
            self.prog_fd = self.obj.prog_fd(PROGRAM)
        except BpfError as e:
            self.close()
            raise FilterUnavailableError(str(e)) from None

    def _fill(self, settings: RelaySettings, ifindexes: Sequence[int]) -> None:
        src = bucket_params(settings.src_rate, settings.src_burst)
        iface = bucket_params(settings.iface_rate, settings.iface_burst)
        assert not isinstance(src, str) and not isinstance(iface, str)
        cfg = Config(
            *src,
            *iface,
            settings.min_mtu or 0,
            settings.max_mtu or 0,
            settings.mark,
            1 if settings.ports else 0,
        )
        zero = ctypes.c_uint32(0)
        self.obj.update("config", zero, cfg)
        state = State()
        for b in state.iface:
            # last 0: the first message finds the bucket full, as Python's starts
            b.tokens, b.last = iface[1], 0
        self.obj.update("state", zero, state)
        for i, ifindex in enumerate(ifindexes):
            self.obj.update("iface_index", ctypes.c_uint32(ifindex), ctypes.c_uint32(i))
        words: dict[int, int] = {}
        for p in settings.ports:
            words[p >> 6] = words.get(p >> 6, 0) | 1 << (p & 63)
        for w, bits in words.items():
            self.obj.update("port_bits", ctypes.c_uint32(w), ctypes.c_uint64(bits))

    def counts(self, iface: int) -> dict[str, int]:
        """What the program did with the frames of interface ``iface`` (the
        relay's index), by outcome, since it was loaded."""
        n = len(OUTCOMES)
        return dict(zip(OUTCOMES, self.obj.percpu_sums("counters", n, iface * n), strict=True))

    def close(self) -> None:
        self.obj.close()
