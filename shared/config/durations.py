"""The one duration type of the configuration.

Every duration setting is a :class:`Seconds`: a number of seconds (``2``, ``0.5``) or a string with a unit
(``500ms``, ``2s``, ``1m``, ``1h``), finite and never negative. A duration that must be strictly positive
is declared :data:`PositiveSeconds` (the same type, marked): the schema's base Struct refuses 0 for it
with ``FIELD: must be > 0``, once for every such field (:func:`positive_fields`).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Any, Final, get_args, get_origin, get_type_hints

import msgspec


class Seconds(float):
    """A duration in seconds: a number (``2``, ``0.5``) or a string with a unit (``500ms``, ``2s``, ``1m``)."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    _RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")

    @classmethod
    def parse(cls, value: object) -> Seconds:
        if isinstance(value, bool):
            raise ValueError("expected a duration (seconds, or a string like '500ms', '2s')")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and (m := cls._RE.match(value)):
            number = float(m.group(1)) * cls._UNITS[m.group(2) or "s"]
        else:
            raise ValueError(f"expected a duration (seconds, or a string like '500ms', '2s'), got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"a duration must be a finite number of seconds (got {value!r})")
        if number < 0:
            raise ValueError(f"a duration cannot be negative (got {value!r})")
        return cls(number)


class _Positive:
    """The mark of a duration that must be > 0 (msgspec ignores it; :func:`positive_fields` reads it)."""

    def __repr__(self) -> str:
        return "POSITIVE"


POSITIVE: Final = _Positive()
PositiveSeconds = Annotated[Seconds, POSITIVE]


def is_positive(hint: Any) -> bool:
    """Whether a type hint is :data:`PositiveSeconds` (or carries its mark)."""
    return get_origin(hint) is Annotated and any(arg is POSITIVE for arg in get_args(hint)[1:])


@functools.cache
def positive_fields(tp: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of ``tp`` declared :data:`PositiveSeconds`."""
    hints = get_type_hints(tp, include_extras=True)
    return tuple(name for name in tp.__struct_fields__ if is_positive(hints[name]))


def dec_hook(tp: type, obj: object) -> object:
    """msgspec's hook for the types it does not know: :class:`Seconds`."""
    if tp is Seconds:
        return Seconds.parse(obj)
    raise NotImplementedError(f"cannot decode {tp!r}")


def enc_hook(obj: object) -> object:
    """msgspec's hook for encoding what it does not know: a :class:`Seconds` is its number."""
    if isinstance(obj, Seconds):
        return float(obj)
    raise NotImplementedError(f"cannot encode {type(obj)!r}")
