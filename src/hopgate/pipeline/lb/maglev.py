"""Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
Network Load Balancer", NSDI 2016, section 3.4).

Each backend has a permutation of the table's M slots, from two hashes of its
name: offset = h1 mod M, skip = h2 mod (M - 1) + 1, the j-th slot being
(offset + j * skip) mod M.  Backends take turns claiming their next free slot
until the table is full; a backend of weight w takes w slots a turn.  Because
everything derives from the names, every node with the same backends builds the
same table, and a backend leaving moves only about 1/N of the flows.

The hashes are BLAKE2b, not Python's hash(): nodes must agree whatever their
Python or PYTHONHASHSEED.

Building a table is control-plane work (tens of milliseconds for 65,537 slots): ``ring``
runs wherever the control plane runs it (the daemon: a worker process) and
returns plain values that cross to the packet loop, where installing the result
is one assignment (service.py, ``MaglevControl``).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

from hopgate.pipeline.model import ServiceSpec

DEFAULT_TABLE_SIZE = ServiceSpec.maglev_table_size  # 65537: prime, as the paper asks


def _h(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


def flow_hash(key: bytes) -> int:
    """The hash that picks a flow's slot: the same on every node."""
    return _h(key, b"hopgate-flow")


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def build(
    names: Sequence[str], weights: Sequence[int], size: int = DEFAULT_TABLE_SIZE
) -> list[int]:
    """The lookup table: for each of ``size`` slots, the index of a backend.
    Empty when there are no backends (or none with a weight)."""
    if not is_prime(size):
        raise ValueError(f"the Maglev table size must be prime, not {size}")
    # Turns go in the order of the names, not of the config, so nodes that list
    # the same backends differently still build the same table.
    live = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: names[i])
    if not live:
        return []
    g = 0
    for i in live:
        g = gcd(g, weights[i])
    turns = {i: weights[i] // g for i in live}
    offset = {}
    skip = {}
    for i in live:
        name = names[i].encode()
        offset[i] = _h(name, b"hopgate-offset") % size
        skip[i] = _h(name, b"hopgate-skip") % (size - 1) + 1
    following = dict.fromkeys(live, 0)
    table = [-1] * size
    filled = 0
    while True:
        for i in live:
            o, s, j = offset[i], skip[i], following[i]
            for _ in range(turns[i]):
                c = (o + j * s) % size
                while table[c] >= 0:
                    j += 1
                    c = (o + j * s) % size
                table[c] = i
                j += 1
                filled += 1
                if filled == size:
                    return table
            following[i] = j


@dataclass(frozen=True, slots=True)
class Ring:
    """A built table as the data path uses it: ``table[slot]`` is a backend's
    index; ``members`` the indexes that hold at least one slot (a backend whose
    turn never came in a small table holds none)."""

    table: Sequence[int]
    members: frozenset[int]


def ring(names: Sequence[str], weights: Sequence[int], size: int = DEFAULT_TABLE_SIZE) -> Ring:
    """``build``, packed for the data path: the slots in a compact array (4 bytes
    each; it pickles as one block of bytes, so it crosses from a worker process
    cheaply) and the backends that hold any."""
    table = build(names, weights, size)
    return Ring(array("I", table), frozenset(table))
