"""Docstrings that cite the behaviour contract (docs/behaviour.md, "Section") name
a section it has, and nothing cites the design brief that is not in the
repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r'docs/behaviour\.md,((?:\s*(?:and\s+)?"[^"]+")+)')


def _sources() -> list[Path]:
    """Every Python file of the package and the tests, but this one."""
    files = [*(ROOT / "src" / "hopgate").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    return sorted(p for p in files if p != Path(__file__).resolve())


def _headings() -> set[str]:
    text = (ROOT / "docs" / "behaviour.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_cited_sections_exist() -> None:
    headings = _headings()
    cited: dict[str, list[str]] = {}
    for path in _sources():
        for group in CITATION.findall(path.read_text()):
            for quoted in re.findall(r'"([^"]+)"', group):
                title = " ".join(quoted.split())  # a title may be wrapped over two lines
                cited.setdefault(title, []).append(str(path.relative_to(ROOT)))
    assert cited, "no docstring cites docs/behaviour.md"
    missing = {t: where for t, where in cited.items() if t not in headings}
    assert missing == {}, f"cited but not a section of docs/behaviour.md: {missing}"


def test_no_citation_of_the_brief_outside_the_repository() -> None:
    stale = [
        str(p.relative_to(ROOT)) for p in _sources() if "ICMP-BEHAVIOUR section" in p.read_text()
    ]
    assert stale == []
