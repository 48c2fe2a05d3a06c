"""A count of a long key range in ranges, each its own statement well within the statement
timeout, spread over as many collections as it takes: the first count and reconciliation.

Each range's size adapts to what the last one cost (a quarter of the timeout is the aim);
a range that fails (cut by the timeout, a lost connection) is retried, smaller, not the
whole count. Progress (rows, an estimate of the total, an ETA) is logged after the
first range and then every ``LOG_EVERY`` seconds, and kept for the metrics and
``/readyz``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from .sql import KeyRange

log = logging.getLogger("convrs_exporter.messages")

TARGET = 0.4
"""A range's statement should take this share of the statement timeout (well within it:
a range cut by it is read again, smaller)."""
FIRST_STEP = 100_000
"""Keys in the first range (the density of keys is not known yet)."""
GROWTH = 4.0
"""A range grows or shrinks by at most this factor from one to the next."""
LOG_EVERY = 10.0
RETRIES = 6
"""Failures in a row (each halving the range) before a collection gives up for now."""


@dataclass
class Scan:
    phase: str
    """``first count`` or ``reconciliation``."""
    start: int
    end: int
    started: float
    """Monotonic time it began."""
    done_to: int = 0
    """Keys in (``start``, ``done_to``] are counted."""
    step: int = 0
    """Keys in the next range (FIRST_STEP to begin with)."""
    rows: int = 0
    failures: int = 0
    logged_at: float = 0.0
    work: float = 0.0
    """Seconds spent reading and folding ranges (not waiting between collections)."""

    def __post_init__(self) -> None:
        self.step = self.step or FIRST_STEP
        self.done_to = self.start
        self.logged_at = -math.inf  # the first range is logged: a count under way shows

    @property
    def finished(self) -> bool:
        return self.done_to >= self.end

    def next_range(self) -> KeyRange:
        return KeyRange(self.done_to, min(self.end, self.done_to + max(1, self.step)))

    def done(self, keys: KeyRange, rows: int, seconds: float, timeout: float, spent: float) -> None:
        """A range counted, its statement in ``seconds`` (``spent`` in all, its rows folded
        too): the next one sized for its statement to take TARGET of the timeout."""
        self.done_to, self.rows, self.failures = keys.upto, self.rows + rows, 0
        self.work += spent
        span = keys.upto - keys.after
        wanted = span * TARGET * timeout / max(seconds, 1e-3)
        self.step = int(max(span / GROWTH, min(span * GROWTH, wanted), 1))

    def failed(self) -> bool:
        """A range failed: half as many keys next time. False once it failed too often."""
        self.failures += 1
        self.step = max(1, self.step // 2)
        return self.failures < RETRIES

    @property
    def estimated_rows(self) -> int:
        """Rows in the whole range, from the density of keys so far."""
        counted = self.done_to - self.start
        if counted <= 0:
            return 0
        return max(self.rows, round(self.rows * (self.end - self.start) / counted))

    def eta(self) -> float | None:
        """Seconds of reading left, at the rate so far."""
        if self.finished:
            return 0.0
        if self.rows == 0 or self.work <= 0:
            return None
        return max(0.0, (self.estimated_rows - self.rows) * self.work / self.rows)

    def describe(self) -> str:
        total = self.estimated_rows
        share = f" ({100 * self.rows / total:.0f}%)" if total else ""
        eta = self.eta()
        left = f", about {eta:.0f}s left" if eta is not None else ""
        return f"{self.phase} of messages: {self.rows:,} of about {total:,} rows{share}{left}"

    def report(self, now: float) -> None:
        if now - self.logged_at >= LOG_EVERY:
            self.logged_at = now
            eta = self.eta()
            log.info(
                f"counting messages: {self.phase}",
                extra={
                    "rows": self.rows,
                    "estimated_rows": self.estimated_rows,
                    "eta_seconds": round(eta) if eta is not None else "unknown",
                },
            )


@dataclass
class Reconciliation:
    """A reconciliation under way: what was settled when it began, what it found so far."""

    scan: Scan
    settled: list[int]
    found: dict[int, int] = field(default_factory=dict)
