"""Maglev's lookup table (NSDI 2016, section 3.4): even, weighted, the same on every
node, and disturbed little when a backend leaves."""

from __future__ import annotations

from collections import Counter

import pytest

from hopgate.pipeline.lb import maglev

SMALL = 5003  # prime; keeps the tests quick while leaving room for 100 slots a backend
NAMES = [f"198.18.20.{i}:80" for i in range(11, 21)]


def test_every_slot_goes_to_a_backend_and_the_split_is_even() -> None:
    table = maglev.build(NAMES, [1] * len(NAMES), SMALL)
    assert len(table) == SMALL and min(table) == 0
    share = Counter(table)
    assert len(share) == len(NAMES)
    # the paper's construction gives each backend floor or ceil of M/N slots
    assert max(share.values()) - min(share.values()) <= 1


def test_weights_shape_the_shares() -> None:
    share = Counter(maglev.build(NAMES[:2], [1, 3], SMALL))
    assert abs(share[1] / share[0] - 3) < 0.01


def test_a_weight_of_zero_takes_no_slots_and_none_at_all_gives_an_empty_table() -> None:
    assert 1 not in maglev.build(NAMES[:3], [1, 0, 1], SMALL)
    assert maglev.build(NAMES[:3], [0, 0, 0], SMALL) == []


def test_two_nodes_with_the_same_backends_build_the_same_table() -> None:
    # listed in another order: the slots belong to the same names
    a = maglev.build(NAMES, [1] * 10, SMALL)
    reordered = list(reversed(NAMES))
    b = maglev.build(reordered, [1] * 10, SMALL)
    assert [NAMES[i] for i in a] == [reordered[i] for i in b]


def test_removing_one_of_n_moves_its_flows_and_few_others() -> None:
    before = maglev.build(NAMES, [1] * 10, maglev.DEFAULT_TABLE_SIZE)
    weights = [1] * 10
    weights[3] = 0
    after = maglev.build(NAMES, weights, maglev.DEFAULT_TABLE_SIZE)
    flows = [maglev.flow_hash(n.to_bytes(4, "big")) % len(before) for n in range(20000)]
    moved = [f for f in flows if before[f] != after[f]]
    were_on_it = [f for f in flows if before[f] == 3]
    assert set(were_on_it) <= set(moved)
    others_moved = len(moved) - len(were_on_it)
    assert others_moved / len(flows) < 0.03, others_moved


def test_the_flow_hash_is_pinned() -> None:
    # not Python's hash(): nodes on other Python builds, hash seeds or hopgate
    # versions must agree, so a change to this value breaks mixed clusters
    assert maglev.flow_hash(b"hopgate") == 187053051261536024


def test_the_table_size_must_be_prime() -> None:
    with pytest.raises(ValueError, match="prime"):
        maglev.build(NAMES, [1] * 10, 5000)
    assert maglev.is_prime(65537) and not maglev.is_prime(65535) and not maglev.is_prime(1)
