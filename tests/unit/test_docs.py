"""What the docs promise users about counters matches the code."""

from __future__ import annotations

import re
from pathlib import Path

from hopgate.pipeline.actions import DropReason

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_drop_reason_is_listed_in_the_behaviour_doc() -> None:
    text = (DOCS / "behaviour.md").read_text().split("## Drop reasons", 1)[1]
    listed = set(re.findall(r"`([a-z0-9-]+)`", text))
    assert listed == {r.value for r in DropReason}
