"""Database values as label values and timestamps, for every metric's rows."""

from __future__ import annotations

import datetime as dt
import re
import sys
import zoneinfo
from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import call
from typing import Any


def to_unix(value: Any, tz: dt.tzinfo = dt.UTC) -> float | None:
    """A timestamp from any driver (aware or naive datetime, ISO text, epoch) in Unix seconds;
    a naive one is taken in ``tz`` (``database.timezone``). Raises ValueError or TypeError
    for what is none."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return float(value.timestamp())
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=tz).timestamp()
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        return to_unix(dt.datetime.fromisoformat(value.strip()), tz)
    raise TypeError(f"not a timestamp: {type(value).__name__}")


_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def zone(name: str) -> dt.tzinfo:
    """``database.timezone``: ``UTC``, an offset (``+05:30``) or an IANA name
    (``Europe/Berlin``). ValueError for what is none of these."""
    if name == "UTC":
        return dt.UTC
    if m := _OFFSET.match(name):
        sign, hours, minutes = m.groups()
        offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
        if offset >= dt.timedelta(hours=14):
            raise ValueError(f"not a time zone offset: {name}")
        return dt.timezone(-offset if sign == "-" else offset)
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (UTC, an offset such as +05:30, or an IANA name "
            "such as Europe/Berlin)"
        ) from None


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
