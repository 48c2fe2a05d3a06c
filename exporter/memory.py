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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


FULL_COLLECTION_EVERY = 3600.0
"""Seconds between the full collections the cyclic collector no longer starts by itself."""

DEFAULT_FULL_THRESHOLD = gc.get_threshold()[2]
_NEVER = 1 << 30
"""A generation-2 threshold no count of generation-1 collections reaches."""


def freeze_heap() -> None:
    """Once the first count has built the long-lived state (hundreds of thousands of series):
    move every object alive now out of the cyclic collector's reach, and stop it from
    starting full (generation 2) collections by itself. Each collection builds a few
    hundred thousand objects that live until the next (the gauges' series), so a full
    collection came due several times per collection, each walking them all while holding
    the GIL: 45 to 120 ms here, during which no scrape was answered (measured with
    ``gc.callbacks`` at 290,000 series; none of them found anything to free). What dies is
    still freed by reference counting; young cycles are still collected (generations 0 and
    1); ``full_collection`` runs the rest at a time of our choosing."""
    gc.collect()
    gc.freeze()
    _full_threshold(_NEVER)


def full_collection() -> None:
    """The safety net for reference cycles that outlived generation 1: one full collection
    (of what is not frozen), run by the collection every ``FULL_COLLECTION_EVERY``."""
    gc.collect()


def thaw_heap() -> None:
    """Before a reload replaces the long-lived state: let the collector see it again, and
    start full collections by itself again, so that the old state's cycles are collected,
    not kept. The new state's first count freezes again."""
    gc.unfreeze()
    _full_threshold(DEFAULT_FULL_THRESHOLD)


def _full_threshold(threshold: int) -> None:
    """Set the generation-2 threshold, keeping those of the young generations."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, threshold)


_pause_lock = threading.Lock()
_pauses = 0
_resume = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while a collection reads its rows or a render formats its
    lines. Both allocate tens of thousands of short-lived tuples, which reference counting
    frees; every 700 of them started a young collection all the same (8 of 49 ms of a
    steady count at 10M messages, measured). Nestable and safe across threads: the
    collector is back on, as it was found, when the last pause ends. A pause lasts the
    whole collection, database waits included (a first count: seconds); cyclic garbage
    that other threads make meanwhile waits for the next young collection after it."""
    global _pauses, _resume
    with _pause_lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()


class MemoryPolicy:
    """Everything the exporter does to the interpreter's memory, in one place, applied by
    the scheduler's jobs around collections and renders (nothing else touches the GC):
    the cyclic GC paused while they run, the heap frozen once the first count has built
    the long-lived state, a full collection every ``FULL_COLLECTION_EVERY`` after that,
    and freed memory trimmed back to the system after each render."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self._full_gc_at: float | None = None
        """When the long-lived state was frozen, or last fully collected (monotonic);
        None before the first count."""

    def working(self) -> AbstractContextManager[None]:
        """Around a collection or a render."""
        return gc_paused()

    def after_collection(self, built: bool) -> None:
        """``built``: the first count has built the state that lives from now on."""
        now = self.monotonic()
        if self._full_gc_at is None:
            if built:
                freeze_heap()
                self._full_gc_at = now
        elif now - self._full_gc_at >= FULL_COLLECTION_EVERY:
            full_collection()
            self._full_gc_at = now

    def after_render(self) -> None:
        trim_heap()  # what the collection and the render freed, back to the system

    def release(self) -> None:
        """Before a reload replaces the long-lived state (``thaw_heap``)."""
        thaw_heap()
        self._full_gc_at = None
