"""The message counter's state in a file, so that a restart resumes instead of counting the
whole table again (and Prometheus sees no counter reset).

Written atomically (a temporary file, fsync, rename) after a collection at most every
``collection.state_every``, and at stop. Read at start only if it was written for the
same database, mapping and shard (a fingerprint); a corrupt, truncated, foreign or
future-version file is logged and ignored, and the whole table is counted as without
one. A state is a consistent picture of the counter at one moment: whatever was counted
after it was written is counted again from the table, once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..db import Database
from ..mapping import MessagesSpec, Shard
from .counter import Batch, MessageCounter

log = logging.getLogger("convrs_exporter.state")

VERSION = 1


def fingerprint(db: Database, spec: MessagesSpec, shard: Shard) -> str:
    """What a state belongs to: the database (dialect, host, port, name), the statements
    and labels that count messages, and the shard."""
    url = db.engine.url
    parts = [
        db.dialect.name,
        url.host or "",
        str(url.port or ""),
        url.database or "",
        *spec.statements(),
        *spec.labels,
        f"{shard.index}/{shard.total}",
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _pack(values: array[int] | list[int]) -> str:
    """Integers as base64 of 64-bit little-endian words: a first count's batches hold
    hundreds of thousands of them, which JSON lists made slow to read back."""
    packed = array("q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _unpack(text: str) -> array[int]:
    """``_pack`` undone; ValueError for what it did not write."""
    out = array("q")
    out.frombytes(base64.b64decode(text, validate=True))  # ValueError: not whole words
    if sys.byteorder == "big":
        out.byteswap()
    return out


class _Batch(_Model):
    upper: int
    at: float
    """Wall-clock time of the count (a batch's age survives the restart)."""
    fence: Any
    series: str
    counts: str
    """Packed (``_pack``)."""
    rows: int
    checksum: int


class _State(_Model):
    version: int
    fingerprint: str
    written_at: float
    watermark: int
    keys: list[list[str]]
    totals: str
    gone: str
    """Packed (``_pack``)."""
    since: list[tuple[str, str, float]]
    pending: list[tuple[str, str]]
    batches: list[_Batch]


class StateFile:
    def __init__(
        self,
        path: Path,
        fingerprint: str,
        db: Database,
        every: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.dialect = db.dialect
        self.every = every
        self.clock = clock
        self.monotonic = monotonic
        self._saved_at: float | None = None
        self._failing = False

    # --- reading ---------------------------------------------------------------------

    def load(self, counter: MessageCounter) -> bool:
        """Fill a new ``counter`` from the file; False (logged) if there is none usable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            return self._ignored(f"cannot read it: {exc.strerror}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return self._ignored("not JSON (corrupt or truncated)")
        if not isinstance(data, dict):
            return self._ignored("not a state file")
        version = data.get("version")
        if version != VERSION:
            return self._ignored(f"version {version!r}, this exporter reads {VERSION}")
        if data.get("fingerprint") != self.fingerprint:
            return self._ignored("written for another database, mapping or shard")
        try:
            state = _State.model_validate_json(raw)  # strict, as JSON: arrays are tuples
            self._restore(state, counter)
        except (ValidationError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return self._ignored(f"inconsistent: {first}")
        log.info(
            "message counts resumed from the state file",
            extra={
                "path": str(self.path),
                "series": len(counter.keys),
                "age_seconds": round(self.clock() - state.written_at),
            },
        )
        return True

    def _ignored(self, why: str) -> bool:
        log.warning(
            "state file ignored; counting the whole table",
            extra={"path": str(self.path), "reason": why},
        )
        return False

    def _restore(self, state: _State, counter: MessageCounter) -> None:
        """Checked whole before anything is set: a bad file leaves ``counter`` new."""
        width = 1 + len(counter.labels)
        n = len(state.keys)
        totals, gone = _unpack(state.totals), _unpack(state.gone)
        if len(totals) != n or len(gone) != n:
            raise ValueError("keys, totals and gone differ in length")
        if any(len(key) != width for key in state.keys) or len(set(map(tuple, state.keys))) != n:
            raise ValueError("series keys of the wrong width, or repeated")
        if n and (min(totals) < 0 or min(gone) < 0):
            raise ValueError("negative counts")
        now_wall, now = self.clock(), self.monotonic()
        batches: deque[Batch] = deque()
        upper = state.watermark
        for b in state.batches:
            series, counts = _unpack(b.series), _unpack(b.counts)
            if b.upper <= upper or len(series) != len(counts):
                raise ValueError("batches out of order or malformed")
            if (series and (min(series) < 0 or max(series) >= n)) or sum(counts) != b.rows:
                raise ValueError("a batch counts series or rows it does not have")
            upper = b.upper
            fence = self.dialect.fence_from_json(b.fence)
            at = now - max(0.0, now_wall - b.at)
            batches.append(
                Batch(
                    b.upper,
                    at,
                    fence,
                    series,
                    counts,
                    b.rows,
                    b.checksum,
                )
            )
        counter.restore(
            state.watermark,
            state.keys,
            totals,
            gone,
            {(org, direction): ts for org, direction, ts in state.since},
            {(org, direction) for org, direction in state.pending},
            batches,
        )

    # --- writing ---------------------------------------------------------------------

    def due(self) -> bool:
        now = self.monotonic()
        return self._saved_at is None or now - self._saved_at >= self.every

    def save(self, counter: MessageCounter) -> None:
        """Write the state (once the whole table is counted); failures are logged once."""
        if not counter.ready:
            return
        self._saved_at = self.monotonic()
        now_wall, now = self.clock(), self._saved_at
        data = {
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "written_at": now_wall,
            "watermark": counter.watermark,
            "keys": counter.keys,
            "totals": _pack(counter.totals),
            "gone": _pack(counter.gone),
            "since": [[org, d, ts] for (org, d), ts in counter.since.items()],
            "pending": [list(pair) for pair in counter.pending],
            "batches": [
                {
                    "upper": b.upper,
                    "at": now_wall - (now - b.at),
                    "fence": self.dialect.fence_to_json(b.fence),
                    "series": _pack(list(b.series)),
                    "counts": _pack(list(b.counts)),
                    "rows": b.rows,
                    "checksum": b.checksum,
                }
                for b in counter.batches
            ],
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with tmp.open("w") as out:
                json.dump(data, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            self._sync_dir()
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot write the state file",
                    extra={"path": str(self.path), "err": exc.strerror or str(exc)},
                )
            self._failing = True
            return
        if self._failing:
            log.info("state file written again", extra={"path": str(self.path)})
        self._failing = False

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
