"""Lab fixtures: each lab has a unique name and is torn down even when a test fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from hopgate.lab.topologies import RouterLab

NEEDED_TOOLS = ("ip", "ping", "traceroute", "tracepath", "mtr", "curl", "iperf3", "ethtool", "ss")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _lab_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"lab tools missing: {', '.join(missing)} (run scripts/bootstrap)")


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def hopgate_lab(request: pytest.FixtureRequest) -> Iterator[RouterLab]:
    """hopgate as the RouterLab's gw, on each data plane: the Python pipeline
    alone, and behind the XDP fast path."""
    with RouterLab("hopgate", dataplane=request.param) as lab:
        yield lab


@pytest.fixture(scope="module")
def kernel_lab() -> Iterator[RouterLab]:
    with RouterLab("kernel") as lab:
        yield lab
