"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hopgate.xdp import tables as T
from hopgate.xdp.libbpf import BpfObject


@pytest.fixture
def obj() -> Iterator[BpfObject]:
    """The fast path's program and tables, loaded afresh (root only)."""
    assert T.OBJECT.exists(), f"{T.OBJECT} is not built: run scripts/bootstrap"
    with BpfObject(T.OBJECT) as o:
        yield o
