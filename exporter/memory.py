"""Keeping resident memory close to what the exporter holds (glibc, Linux; no-ops elsewhere),
and the cyclic garbage collector off the long-lived state.

Rendering 200,000 series allocates and frees tens of megabytes per collection, and each
scrape runs in its own thread. glibc keeps freed memory, and gives threads arenas of their
own (up to eight per core), so resident memory grew with scrapes, not with data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

M_ARENA_MAX = -8


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def limit_arenas(arenas: int = 2) -> None:
    """At start: few malloc arenas for many short-lived scrape threads."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_ARENA_MAX, arenas)


def trim_heap() -> None:
    """After a collection: hand the freed memory of its rendering back to the system."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def freeze_heap() -> None:
    """Once the first count has built the long-lived state (hundreds of thousands of series):
    move every object alive now out of the cyclic collector's reach. Otherwise each full
    collection walks them all, holding the GIL for tens of milliseconds (a scrape or a
    collection waits). What dies later is still freed by reference counting."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Before a reload replaces the long-lived state: let the collector see it again, so
    that the old state's reference cycles are collected, not kept."""
    gc.unfreeze()
