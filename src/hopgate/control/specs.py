"""The settings an operator may give, read from the pipeline's spec dataclasses.

Each field of a spec (``pipeline/model.py``) is one setting: its default is the
field's, and its ``Annotated`` type may carry its ``Bounds``, its TOML ``Key``
(another name; a scale, as milliseconds for seconds), or ``INTERNAL``.  The
config builds its mechanical sections from these (``config._from_spec``), the
``hopgate relay`` options take their ranges from them, and
``tests/unit/test_settings_parity.py`` checks the hand-written sections against
them.  Standard library only: the CLI imports this at start-up.

The unit rule is here and only here: a key's value is the field's times
``scale`` (rounded: scaled keys take integers), a field's is the key's divided
by it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from hopgate.pipeline.model import Bounds, Internal, Key

MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Setting:
    field: str  # the spec field's name
    key: str  # its TOML key (or the option's name)
    scale: int  # the key's units in one of the field's (1000: milliseconds for seconds)
    type: Any  # the field's type, its annotations taken off
    default: Any  # MISSING when the field has none
    bounds: Bounds | None
    internal: bool  # not a config key

    def to_key(self, value: Any) -> Any:
        """A value in the field's unit, in the key's."""
        return value if self.scale == 1 or value is None else round(value * self.scale)

    def from_key(self, value: Any) -> Any:
        """A value in the key's unit, in the field's."""
        return value if self.scale == 1 or value is None else value / self.scale

    def key_bounds(self) -> dict[str, Any]:
        """The bounds in the key's unit, as keyword arguments (ge=, gt=, le=)."""
        if self.bounds is None:
            return {}
        given = dataclasses.asdict(self.bounds).items()
        return {name: self.to_key(v) for name, v in given if v is not None}


def settings(spec: type[Any]) -> list[Setting]:
    """The settings of a spec dataclass, in field order."""
    hints = typing.get_type_hints(spec, include_extras=True)
    out = []
    for f in dataclasses.fields(spec):
        hint = hints[f.name]
        extras: tuple[Any, ...] = ()
        if get_origin(hint) is typing.Annotated:
            hint, *rest = get_args(hint)
            extras = tuple(rest)
        key = next((x for x in extras if isinstance(x, Key)), None)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(
            Setting(
                field=f.name,
                key=key.name if key else f.name,
                scale=key.scale if key else 1,
                type=hint,
                default=default,
                bounds=next((x for x in extras if isinstance(x, Bounds)), None),
                internal=any(isinstance(x, Internal) for x in extras),
            )
        )
    return out


def setting(spec: type[Any], name: str) -> Setting:
    """One setting of a spec, by its field's name."""
    for s in settings(spec):
        if s.field == name:
            return s
    raise KeyError(f"{spec.__name__} has no field {name!r}")
