"""Exposition: a snapshot as metric families, rendered to both formats once per
collection (kept gzip-compressed), and what scrapes are served; content negotiation.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice

from . import contract
from .mapping import Specs
from .snapshot import MessageTotals, Series, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


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


@dataclass(frozen=True)
class Family:
    name: str
    """The family's name; a counter's samples are ``<name>_total`` and ``<name>_created``."""
    kind: str
    help: str
    labels: tuple[str, ...]
    series: Iterable[Series] = ()
    """A gauge's series."""
    counts: Counts | None = None
    """A counter's series."""


@dataclass(frozen=True)
class Counts:
    """A counter's series as the message counter keeps them: label values ``keys[i]`` and
    count ``totals[i]`` for each ``i`` in ``counted``; the created time (Unix seconds) by
    the first two label values (org, direction)."""

    keys: Sequence[tuple[str, ...]]
    totals: Sequence[int]
    counted: Sequence[int]
    created: Mapping[tuple[str, str], float]


def families(specs: Specs, snapshot: Snapshot) -> list[Family]:
    """The organization metrics of a snapshot, in exposition order (the contract's)."""
    data = snapshot.metrics

    def series(key: str) -> tuple[Series, ...]:
        metric = data.get(key)
        return metric.series if metric else ()

    out = [_family(contract.ORG_INFO, contract.ORG_INFO.labels, series("organizations"))]
    out += [_family(g.metric, g.labels, series(g.key)) for g in specs.gauges]
    totals, since = _messages(snapshot.messages, snapshot.org_since)
    out.append(_family(contract.MESSAGES, specs.messages.labels, (), totals))
    out.append(_family(contract.COUNTING_SINCE, contract.COUNTING_SINCE.labels, since))
    return out


def _family(
    metric: contract.Metric,
    labels: tuple[str, ...],
    series: Iterable[Series],
    counts: Counts | None = None,
) -> Family:
    return Family(metric.name, metric.kind, metric.help, ("org", *labels), series, counts)


def _messages(
    messages: MessageTotals | None, own: Mapping[str, float]
) -> tuple[Counts | None, list[Series]]:
    """The message totals (those above 0), each with its counting-since as created time, and
    counting-since per (org, direction) that has any; an organization's own
    counting-since, where the mapping reads one, comes first."""
    if messages is None:
        return None, []
    since = {od: own.get(od[0], ts) for od, ts in messages.since.items()}
    keys, totals = messages.keys, messages.totals
    counted = [i for i in range(messages.size) if totals[i]]
    # in the counter's order (first seen), not sorted: sorting 200,000 keys held the GIL
    # for long enough to delay scrapes; the exposition formats do not ask for an order
    seen = {keys[i][:2] for i in counted}
    pairs = [Series(od, ts) for od, ts in since.items() if od in seen]
    return Counts(keys, totals, counted, since), pairs


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def format_value(value: float) -> str:
    if value.is_integer() and -1e15 < value < 1e15:  # counts: the common case, first
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Renderer:
    """Renders snapshots to the text format and OpenMetrics by plain string formatting.

    prometheus-client's generate_latest costs about 7 us a sample; here each family's
    line is one %-format, escaped label values and formatted values are remembered (they
    repeat: a few thousand orgs, a handful of channels, small counts) in dicts that are
    read in C (``__getitem__``; only a value not seen before calls Python), and lines go
    straight into byte buffers, so no list of hundreds of thousands of strings is ever
    held.

    A counter's ``_created`` sample is rendered in OpenMetrics, where it belongs to the
    counter. The text format has no such notion (prometheus-client emits it as a separate
    gauge, doubling the series); here the text format carries only ``_total``, and the
    counting-since time is also ``convrs_messages_counting_since_timestamp_seconds``.
    """

    def __init__(self) -> None:
        self._escaped = _Escaped()

    def render(self, specs: Specs, snapshot: Snapshot, openmetrics: bool) -> GzipPrefix:
        """One format of a snapshot's data part (OpenMetrics without its ``# EOF``)."""
        out = _Sink()
        esc = self._escaped.__getitem__
        fmt = _Formatted().__getitem__  # per render: as many entries as distinct values
        for fam in families(specs, snapshot):
            labels = ",".join(f'{n}="%s"' for n in fam.labels)
            if fam.kind == "counter":
                total, made = fam.name + "_total", fam.name + "_created"
                total_fmt = f"{total}{{{labels}}} %d\n"
                c = fam.counts
                keys, totals, counted = (
                    (c.keys, c.totals, c.counted) if c is not None else ((), (), ())
                )
                if not openmetrics:
                    out.add(f"# HELP {total} {_help(fam.help, False)}\n# TYPE {total} counter\n")
                    out.extend(total_fmt % (*map(esc, keys[i]), totals[i]) for i in counted)
                    continue
                out.add(f"# TYPE {fam.name} counter\n# HELP {fam.name} {_help(fam.help, True)}\n")
                pair_fmt = f"{total_fmt}{made}{{{labels}}} %s\n"
                made_at = {od: fmt(ts) for od, ts in c.created.items()} if c is not None else {}
                out.extend(
                    pair_fmt % (*values, totals[i], *values, made_at.get((key[0], key[1]), "0"))
                    for i in counted
                    for key in (keys[i],)
                    for values in (tuple(map(esc, key)),)
                )
                continue
            kind, text = f"# TYPE {fam.name} {fam.kind}\n", _help(fam.help, openmetrics)
            help_line = f"# HELP {fam.name} {text}\n"
            out.add(kind + help_line if openmetrics else help_line + kind)
            line_fmt = f"{fam.name}{{{labels}}} %s\n"
            out.extend(line_fmt % (*map(esc, s.labels), fmt(s.value)) for s in fam.series)
        return out.close()


class _Formatted(dict[float, str]):
    """Values as text, each formatted once (counts repeat; an org's series share one
    created time)."""

    def __missing__(self, value: float) -> str:
        text = self[value] = format_value(value)
        return text


class _Escaped(dict[str, str]):
    """Label values escaped, each once (a few thousand orgs, a handful of channels)."""

    def __missing__(self, value: str) -> str:
        if len(self) > 1_000_000:  # label values churned: start over
            self.clear()
        text = self[value] = escape_label_value(value)
        return text


class _Sink:
    """Lines into a GzipPrefix, a few thousand at a time."""

    def __init__(self) -> None:
        self.gzip = GzipPrefix()
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= 4096:
            self.flush()

    def extend(self, lines: Iterable[str]) -> None:
        it = iter(lines)
        while chunk := list(islice(it, 4096)):
            self.lines += chunk
            self.flush()

    def flush(self) -> None:
        self.gzip.write("".join(self.lines).encode())
        self.lines.clear()

    def close(self) -> GzipPrefix:
        self.flush()
        self.gzip.seal()
        return self.gzip


class Encodings:
    """A snapshot's data part in each format, each rendered at most once, when first asked
    for: by the render step that follows a collection, or by the first scrape that wants a
    format nobody asked for before. Concurrent askers wait for the one render."""

    def __init__(self, render: Callable[[bool], GzipPrefix]) -> None:
        self._render = render
        self._done: dict[bool, GzipPrefix] = {}
        self._lock = threading.Lock()

    def get(self, openmetrics: bool) -> GzipPrefix:
        done = self._done.get(openmetrics)
        if done is not None:
            return done
        with self._lock:
            done = self._done.get(openmetrics)
            if done is None:
                done = self._done[openmetrics] = self._render(openmetrics)
            return done


WANTED_FOR = 900.0
"""A format scraped within this many seconds is rendered ahead of the next scrape."""


class Exposition:
    """What scrapes get: the newest snapshot rendered, in the formats scrapers asked for
    lately. The render step that follows each collection (on the scheduler's worker)
    renders those formats and only then serves the snapshot; so a scrape never renders
    (but for a format asked for the first time), and a collection never waits for
    rendering. Until then scrapes get the previous snapshot. The served snapshot is
    replaced whole, so readers need no lock."""

    def __init__(self, specs: Specs, ready: threading.Event | None = None) -> None:
        self.specs = specs
        """Replaced on reload: what the next snapshots are rendered with."""
        self.renderer = Renderer()
        self._served = self._encodings(Snapshot())
        self._served_snapshot = Snapshot()
        self._wanted: dict[bool, float] = {}
        self.ready = ready or threading.Event()
        """Set once a complete snapshot is served."""

    def _encodings(self, snapshot: Snapshot) -> Encodings:
        return Encodings(partial(self.renderer.render, self.specs, snapshot))

    @property
    def served(self) -> Snapshot:
        return self._served_snapshot

    def want(self, openmetrics: bool) -> GzipPrefix:
        """What a scrape sends: the served snapshot in the format asked for."""
        self._wanted[openmetrics] = time.monotonic()
        return self._served.get(openmetrics)

    def serve(self, snapshot: Snapshot) -> None:
        """Render ``snapshot`` in the formats scraped lately (both, before any scrape) and
        serve it."""
        encodings = self._encodings(snapshot)
        now = time.monotonic()
        wanted = [om for om, at in list(self._wanted.items()) if now - at < WANTED_FOR]
        for openmetrics in wanted or (True, False):
            encodings.get(openmetrics)
        self._served, self._served_snapshot = encodings, snapshot
        if snapshot.complete:
            self.ready.set()

    def rendered(self, snapshot: Snapshot) -> Rendered:
        """Both formats of a snapshot, whether served or not (for reading it whole)."""
        encodings = self._encodings(snapshot)
        return Rendered(encodings.get(False), encodings.get(True))


def accepts(header: str | None, token: str) -> bool:
    """Whether an Accept or Accept-Encoding header lists ``token`` with a q above 0."""
    for part in (header or "").split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if name.lower() != token:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def wants_openmetrics(accept: str | None) -> bool:
    return accepts(accept, "application/openmetrics-text")
