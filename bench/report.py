"""docs/benchmarks.md holds one section per benchmark, each between markers, so
that each benchmark rewrites its own and leaves the others as they were."""

from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmarks\n"


def publish(path: Path, name: str, text: str, *, no_write: bool) -> None:
    """A report: printed (``no_write``), or written as section ``name`` of
    ``path`` (``replace_section``)."""
    if no_write:
        print(text)
        return
    replace_section(path, name, text)
    print(f"wrote {path}")


def replace_section(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    doc = path.read_text() if path.exists() else HEADER
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = head + block + tail.lstrip("\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)
