"""Immutable snapshots of collected values, and the store that swaps in a whole one at once.

The HTTP side only ever reads ``Store.current``: one attribute read, no lock, and
the object it gets never changes under it.
"""

from __future__ import annotations

import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping
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
class MessageTotals:
    """What a snapshot keeps of the message counter: the first ``size`` series keys (a list
    the counter shares and only appends to), a copy of their totals, and counting-since
    per (org, direction). No object per series: 200,000 series are 1.6 MB of totals."""

    keys: list[tuple[str, ...]]
    size: int
    totals: array[int]
    since: Mapping[tuple[str, str], float]


@dataclass(frozen=True)
class Rendered:
    """The data part of /metrics in each encoding (a convenience for reading it whole)."""

    text_gzip: GzipPrefix
    openmetrics_gzip: GzipPrefix
    """Without the closing ``# EOF``: the exporter's own metrics follow it."""

    @property
    def text(self) -> bytes:
        return self.text_gzip.decompressed()

    @property
    def openmetrics(self) -> bytes:
        return self.openmetrics_gzip.decompressed()


class Encodings:
    """A snapshot's data part in each format, each rendered at most once, when first asked
    for: by the render step that follows a collection, or by the first scrape that wants a
    format nobody asked for before. Concurrent askers wait for the one render."""

    def __init__(self) -> None:
        self._done: dict[bool, GzipPrefix] = {}
        self._lock = threading.Lock()

    def get(self, openmetrics: bool, render: Callable[[bool], GzipPrefix]) -> GzipPrefix:
        done = self._done.get(openmetrics)
        if done is not None:
            return done
        with self._lock:
            done = self._done.get(openmetrics)
            if done is None:
                done = self._done[openmetrics] = render(openmetrics)
            return done


@dataclass(frozen=True)
class Snapshot:
    metrics: Mapping[str, MetricData] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = 0.0
    messages: MessageTotals | None = None
    """None before the first count, or when the message counts are stale."""
    complete: bool = False
    """Every query's latest run succeeded and the whole table has been counted."""
    render: Callable[[Snapshot, bool], GzipPrefix] | None = field(default=None, compare=False)
    """Renders one format of a snapshot (None: an empty data part)."""
    encodings: Encodings = field(default_factory=Encodings, init=False, compare=False)

    def encoding(self, openmetrics: bool) -> GzipPrefix:
        return self.encodings.get(openmetrics, self._render)

    def _render(self, openmetrics: bool) -> GzipPrefix:
        return self.render(self, openmetrics) if self.render else GzipPrefix.of(b"")

    @property
    def rendered(self) -> Rendered:
        return Rendered(self.encoding(False), self.encoding(True))


WANTED_FOR = 900.0
"""A format scraped within this many seconds is rendered ahead of the next scrape."""


class Store:
    """Holds the newest snapshot, and the newest one rendered, which is what scrapes get;
    writers replace each whole, so readers need no lock.

    A collection publishes; the render step that follows (on the scheduler's worker)
    renders the formats scrapers asked for lately and only then serves the snapshot. So a
    scrape never renders (but for a format asked for the first time), and a collection
    never waits for rendering. Until then scrapes get the previous snapshot.
    """

    def __init__(self, ready: threading.Event | None = None) -> None:
        self._current = Snapshot()
        self._served = self._current
        self._wanted: dict[bool, float] = {}
        self._write = threading.Lock()
        self.ready = ready or threading.Event()
        """Set once a complete snapshot is served."""

    @property
    def current(self) -> Snapshot:
        """The newest published snapshot (rendered when read)."""
        return self._current

    @property
    def served(self) -> Snapshot:
        return self._served

    def publish(self, snapshot: Snapshot) -> None:
        """Runs are serialized by the scheduler, so the latest published is the newest."""
        with self._write:
            self._current = snapshot

    def want(self, openmetrics: bool) -> GzipPrefix:
        """What a scrape sends: the served snapshot in the format asked for."""
        self._wanted[openmetrics] = time.monotonic()
        return self._served.encoding(openmetrics)

    def render(self) -> Snapshot:
        """Render the newest snapshot in the formats scraped lately (both, before any
        scrape) and serve it."""
        snapshot = self._current
        now = time.monotonic()
        wanted = [om for om, at in list(self._wanted.items()) if now - at < WANTED_FOR]
        for openmetrics in wanted or (True, False):
            snapshot.encoding(openmetrics)
        self._served = snapshot
        if snapshot.complete:
            self.ready.set()
        return snapshot
