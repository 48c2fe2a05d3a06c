"""Database values as label values and timestamps, for every metric's rows."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import call
from typing import Any


def to_unix(value: Any) -> float | None:
    """A timestamp from any driver (aware or naive datetime, ISO text, epoch) in Unix seconds.
    Raises ValueError or TypeError for what is none."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return float(value.timestamp())
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        return to_unix(dt.datetime.fromisoformat(value.strip()))
    raise TypeError(f"not a timestamp: {type(value).__name__}")


NULL = "unknown"
"""What a NULL label value reads as (a NULL org skips its row instead)."""


def label_value(value: Any) -> str:
    """Any database value as a label value: ints plainly, bytes decoded leniently, NULL as
    ``NULL``."""
    if type(value) is str:  # the common case, first
        return sys.intern(value)
    if value is None:
        return NULL
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    # interned: the same few org ids and channel names repeat across thousands of series
    return sys.intern(text)


class LabelValues(dict[Any, str]):
    """One column's database values as label values, each converted once (org ids and
    channel names repeat in every collection), read in C (``__getitem__``). One per column:
    a column's values are of one type, so values that compare equal read the same (a JSON
    column holding both 1 and true would show the first one's text for both)."""

    LIMIT = 250_000
    """Values remembered at most; past it (values that churn) the cache starts over."""

    def __missing__(self, value: Any) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[value] = label_value(value)
        return text


Columns = tuple[Callable[[Any], str], ...]
"""Per leading column of a row: its values as label values (``LabelValues.__getitem__``)."""


def columns(width: int) -> Columns:
    return tuple(LabelValues().__getitem__ for _ in range(width))


def labels_of(cols: Sequence[Callable[[Any], str]], row: Sequence[Any]) -> tuple[str, ...]:
    """A row's first values as label values, each through its column (LabelValues)."""
    try:
        return tuple(map(call, cols, row))
    except TypeError:  # a value that cannot be a dict key (an array, a JSON object)
        return tuple(map(label_value, row[: len(cols)]))
