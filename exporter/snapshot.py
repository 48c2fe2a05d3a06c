"""Immutable snapshots of collected values, and the store that swaps in a whole one at once.

The HTTP side only ever reads ``Store.current``: one attribute read, no lock, and
the object it gets never changes under it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Series:
    labels: tuple[str, ...]
    value: float
    created: float | None = None


@dataclass(frozen=True)
class MetricData:
    """One metric's series as last read, and when."""

    key: str
    series: tuple[Series, ...]
    collected_at: float
    """Monotonic time of the read (for staleness)."""


class GzipPrefix:
    """One encoding of the data part, kept only compressed: the open start of a gzip stream.

    Written once per collection, a chunk at a time (the whole uncompressed text is never
    held). A scrape sends ``prefix`` as it is, then ``closing(tail)``: its own lines,
    compressed onto a copy of the compressor's saved state, and the stream's end. So a
    scrape compresses only those few lines, and the client gets one ordinary gzip stream
    (curl reads only the first of several members).
    ``chunks()`` streams it back uncompressed for clients that do not accept gzip.
    """

    def __init__(self, level: int = 1) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip wrapper
        self._parts: list[bytes] = []
        self.length = 0
        """Uncompressed bytes written."""
        self.prefix = b""

    @classmethod
    def of(cls, data: bytes) -> GzipPrefix:
        out = cls()
        out.write(data)
        out.seal()
        return out

    def write(self, data: bytes | bytearray) -> None:
        self.length += len(data)
        if out := self._compressor.compress(data):
            self._parts.append(out)

    def seal(self) -> None:
        self._parts.append(self._compressor.flush(zlib.Z_SYNC_FLUSH))
        self.prefix = b"".join(self._parts)
        self._parts = []

    def closing(self, tail: bytes) -> bytes:
        """What follows ``prefix`` to append ``tail`` and close the stream."""
        c = self._compressor.copy()
        return c.compress(tail) + c.flush()

    def chunks(self, size: int = 1 << 18) -> Iterator[bytes]:
        d = zlib.decompressobj(31)
        view = memoryview(self.prefix)
        for start in range(0, len(view), size):
            if out := d.decompress(view[start : start + size]):
                yield out

    def decompressed(self) -> bytes:
        return b"".join(self.chunks())


@dataclass(frozen=True)
class Rendered:
    """The data part of /metrics, rendered once per collection, in each encoding."""

    text_gzip: GzipPrefix = field(default_factory=lambda: GzipPrefix.of(b""))
    openmetrics_gzip: GzipPrefix = field(default_factory=lambda: GzipPrefix.of(b""))
    """Without the closing ``# EOF``: the exporter's own metrics follow it."""

    @property
    def text(self) -> bytes:
        return self.text_gzip.decompressed()

    @property
    def openmetrics(self) -> bytes:
        return self.openmetrics_gzip.decompressed()


@dataclass(frozen=True)
class Snapshot:
    metrics: Mapping[str, MetricData] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = 0.0
    rendered: Rendered = Rendered()


class Store:
    """Holds the latest snapshot; writers replace it whole."""

    def __init__(self) -> None:
        self._current = Snapshot()
        self._write = threading.Lock()

    @property
    def current(self) -> Snapshot:
        return self._current

    def publish(self, snapshot: Snapshot) -> None:
        """Runs are serialized by the scheduler, so the latest published is the newest."""
        with self._write:
            self._current = snapshot
