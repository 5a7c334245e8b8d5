"""Declarative value ranges of recipe keys, checked once when a recipe is loaded.

A stage lists its numeric keys in a table ``{"section.key": Limit(...)}``; :func:`check_limits` walks a
loaded recipe and raises one error naming the key, the value and the allowed range. ``None`` (an unset
optional key) is always allowed; a list value is checked element by element. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limit:
    """Allowed interval of a number: ``low``/``high`` (None = unbounded), each bound inclusive or not."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    length: int | None = None  # a list key: the number of elements it must have

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))

    def text(self) -> str:
        """The range as the README writes it: ``>= 1``, ``> 0``, ``[0, 1)``."""
        if self.low is not None and self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            rng = f"{left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            rng = f"{'>=' if self.low_inclusive else '>'} {_num(self.low)}"
        elif self.high is not None:
            rng = f"{'<=' if self.high_inclusive else '<'} {_num(self.high)}"
        else:
            rng = "finite"
        if self.length is not None:
            rng = f"{self.length} values, each {rng}"
        return rng


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# Shorthands for the tables.
AT_LEAST_0 = Limit(0)
AT_LEAST_1 = Limit(1)
POSITIVE = Limit(0, low_inclusive=False)
FINITE = Limit()
UNIT = Limit(0, 1)  # a probability or fraction
SEED = Limit(0, 2**32 - 1)  # numpy's seed range


def _get(recipe: Any, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(recipe, section), name)


def check_limits(recipe: Any, table: dict[str, Limit], error: type[Exception] = ValueError) -> None:
    """Raise ``error`` with one line ``KEY = VALUE is out of range: RANGE`` for the first bad key."""
    for key, limit in table.items():
        value = _get(recipe, key)
        if value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, list) else [value]
        bad_length = limit.length is not None and isinstance(value, list) and len(value) != limit.length
        if bad_length or not all(isinstance(v, (int, float)) and limit.contains(v) for v in values):
            raise error(f"{key} = {value!r} is out of range: {limit.text()}")


def range_column(table: dict[str, Limit], key: str, choices: dict[tuple[str, str], tuple[str, ...]]) -> str:
    """The README's range cell of ``key``: its interval, its allowed values, or empty."""
    if key in table:
        return table[key].text()
    allowed = choices.get(tuple(key.split(".", 1)))  # type: ignore[arg-type]
    return " / ".join(allowed) if allowed else ""
