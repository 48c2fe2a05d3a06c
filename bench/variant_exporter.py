"""convrs-exporter with one of its performance tricks undone, for bench/tricks.py.

    BENCH_VARIANT=gc-off .venv/bin/python bench/variant_exporter.py --config.file ...

Takes the exporter's own command line. BENCH_VARIANT is one of:

- ``baseline``: as shipped;
- ``gc-off``: ``MemoryPolicy.working()`` is a ``contextlib.nullcontext()``, so the cyclic GC
  is not paused around collections and renders;
- ``arenas-env``: ``limit_arenas()`` does nothing; ``MALLOC_ARENA_MAX=2`` must be in the
  environment (as a Docker image could set it), so glibc reads it at start;
- ``arenas-none``: ``limit_arenas()`` does nothing, and no ``MALLOC_ARENA_MAX``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager

from exporter import cli, memory

VARIANTS = ("baseline", "gc-off", "arenas-env", "arenas-none")
ARENA_ENV = "MALLOC_ARENA_MAX"


def _no_pause(self: memory.MemoryPolicy) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _no_arena_limit(arenas: int = 2) -> None:
    return None


@contextlib.contextmanager
def patched(variant: str) -> Iterator[None]:
    """The exporter's module state with ``variant`` applied; restored on the way out (the
    counting part of tricks.py applies it in process, one variant after another)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    working, limit = memory.MemoryPolicy.working, memory.limit_arenas
    try:
        if variant == "gc-off":
            memory.MemoryPolicy.working = _no_pause  # type: ignore[method-assign]
        elif variant in ("arenas-env", "arenas-none"):
            memory.limit_arenas = _no_arena_limit
        yield
    finally:
        memory.MemoryPolicy.working = working  # type: ignore[method-assign]
        memory.limit_arenas = limit


def main() -> int:
    variant = os.environ.get("BENCH_VARIANT", "baseline")
    if variant not in VARIANTS:
        print(f"variant_exporter: BENCH_VARIANT is one of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    arenas = os.environ.get(ARENA_ENV)
    wanted = "2" if variant == "arenas-env" else None
    if arenas != wanted:  # the variant would not be what it says
        print(
            f"variant_exporter: {variant} needs {ARENA_ENV}={wanted or '(unset)'}, "
            f"found {arenas or '(unset)'}",
            file=sys.stderr,
        )
        return 2
    with patched(variant):
        return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
