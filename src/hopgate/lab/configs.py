"""The labs' hopgate configs as objects: each lab builds a dict shaped as the
config file (control/config.py's schema: tables, arrays of tables, strings,
numbers, booleans, lists), a test may merge TOML of its own into it, and
``dumps`` writes it out.

The writer covers what the configs need, no more: a table's keys, then its
sub-tables, then its arrays of tables; a list of tables is always written as an
array of tables (``[[service.backend]]``), never inline.  It raises on anything
else (a date, a set, a list mixing tables and values), and
``tests/unit/test_lab_configs.py`` checks that what it writes reads back the
same with ``tomllib``.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

Table = dict[str, Any]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(doc: Mapping[str, Any], comment: str = "") -> str:
    """``doc`` as TOML, after ``comment`` (each of its lines a ``#`` comment)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    _table(lines, (), doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def merge(base: Mapping[str, Any], extra: str | Mapping[str, Any]) -> Table:
    """``base`` with ``extra`` (TOML text, or a dict) merged in: tables merged
    key by key, arrays of tables extended; a value given in both raises
    ValueError, as a key given twice in one TOML file would."""
    more = tomllib.loads(extra) if isinstance(extra, str) else extra
    return _merge(copy.deepcopy(dict(base)), more, ())


def _merge(out: Table, more: Mapping[str, Any], path: tuple[str, ...]) -> Table:
    for key, value in more.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, Mapping):
            _merge(out[key], value, (*path, key))
        elif _is_tables(out[key]) and _is_tables(value):
            out[key] = out[key] + copy.deepcopy(list(value))
        else:
            raise ValueError(f"{'.'.join((*path, key))} is given twice")
    return out


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    subtables = []
    arrays = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        elif _is_tables(value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value, (*path, key))}")
    for key, value in subtables:
        lines += ["", f"[{_dotted((*path, key))}]"]
        _table(lines, (*path, key), value)
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_dotted((*path, key))}]]"]
            _table(lines, (*path, key), item)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(k) for k in path)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters
    (DEL too) as ``\\uXXXX``, the rest as it is (the file is UTF-8)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(value: Any, path: tuple[str, ...]) -> str:
    # bool before int: a bool is an int
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        if any(isinstance(v, Mapping) for v in value):
            raise TypeError(f"{_dotted(path)}: a list mixing tables and values")
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    raise TypeError(f"{_dotted(path)}: cannot write a {type(value).__name__} as TOML")
