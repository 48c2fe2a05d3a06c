"""Exposition: the snapshot as metric families, rendered once per collection; the
exporter's own health metrics, rendered per scrape (they are few and cheap).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client import exposition as text_format
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector

from . import __version__
from .mapping import (
    MESSAGES_HELP,
    MESSAGES_METRIC,
    ORG_INFO_HELP,
    ORG_INFO_METRIC,
    SINCE_HELP,
    SINCE_METRIC,
    Specs,
)
from .memory import gc_paused
from .snapshot import GzipPrefix, MessageTotals, Series, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


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
    """The organization metrics of a snapshot, in exposition order."""
    data = snapshot.metrics

    def series(key: str) -> tuple[Series, ...]:
        metric = data.get(key)
        return metric.series if metric else ()

    orgs = series("organizations")
    out = [Family(ORG_INFO_METRIC, "gauge", ORG_INFO_HELP, ("org", "name"), orgs)]
    out += [
        Family(g.metric, "gauge", g.help, ("org", *g.labels), series(g.key)) for g in specs.gauges
    ]
    totals, since = _messages(snapshot.messages, orgs)
    labels = ("org", *specs.messages.labels)
    out.append(Family(MESSAGES_METRIC, "counter", MESSAGES_HELP, labels, counts=totals))
    out.append(Family(SINCE_METRIC, "gauge", SINCE_HELP, ("org", "direction"), since))
    return out


def _messages(
    messages: MessageTotals | None, orgs: tuple[Series, ...]
) -> tuple[Counts | None, list[Series]]:
    """The message totals (those above 0), each with its counting-since as created time, and
    counting-since per (org, direction) that has any; an organization's own
    counting-since, where the mapping reads one, comes first."""
    if messages is None:
        return None, []
    own = {s.labels[0]: s.created for s in orgs if s.created is not None}
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
        with gc_paused():
            return self._render(specs, snapshot, openmetrics)

    def _render(self, specs: Specs, snapshot: Snapshot, openmetrics: bool) -> GzipPrefix:
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


class ThresholdCollector:
    """The alert thresholds from the configuration, for the rules to compare against:
    per organization where set, and the defaults (the rules fall back to them)."""

    def __init__(self, defaults: dict[str, float], per_org: dict[str, dict[str, float]]) -> None:
        self.defaults = defaults
        self.per_org = per_org

    def update(self, defaults: dict[str, float], per_org: dict[str, dict[str, float]]) -> None:
        self.defaults, self.per_org = defaults, per_org  # each swapped whole: readers see one

    def collect(self) -> Iterator[Metric]:
        default = GaugeMetricFamily(
            "convrs_alert_threshold_default",
            "Alert threshold for organizations that set none, by threshold.",
            labels=["threshold"],
        )
        for name, value in sorted(self.defaults.items()):
            default.add_metric([name], value)
        yield default
        own = GaugeMetricFamily(
            "convrs_alert_threshold",
            "Alert threshold an organization sets for itself, by threshold.",
            labels=["org", "threshold"],
        )
        for org, values in sorted(self.per_org.items()):
            for name, value in sorted(values.items()):
                own.add_metric([org, name], value)
        yield own


class Health:
    """The exporter's own metrics (spec: "The exporter's own health"), plus process metrics."""

    def __init__(
        self,
        query_names: list[str],
        thresholds: ThresholdCollector | None = None,
        interval: float = 0.0,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.thresholds = thresholds or ThresholdCollector({}, {})
        r.register(self.thresholds)
        self.interval = Gauge(
            "convrs_exporter_collection_interval_seconds",
            "The configured collection interval (the rules' staleness alert uses it).",
            registry=r,
        )
        self.interval.set(interval)
        for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(default)
        self.up = Gauge("convrs_up", "1 if the latest collection succeeded, else 0.", registry=r)
        self.last_success = Gauge(
            "convrs_exporter_last_success_timestamp_seconds",
            "End of the latest successful collection.",
            registry=r,
        )
        self.duration = Histogram(
            "convrs_exporter_collection_duration_seconds",
            "Wall time of each collection.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.collections = Counter(
            "convrs_exporter_collections", "Collections run, by result.", ["result"], registry=r
        )
        self.query_errors = Counter(
            "convrs_exporter_query_errors", "Failed queries, by metric.", ["query"], registry=r
        )
        self.query_success = Gauge(
            "convrs_exporter_query_success",
            "1 if the metric's latest query succeeded, else 0.",
            ["query"],
            registry=r,
        )
        self.query_duration = Gauge(
            "convrs_exporter_query_duration_seconds",
            "Wall time of the metric's latest query.",
            ["query"],
            registry=r,
        )
        self.reconciled = Counter(
            "convrs_exporter_messages_reconciled",
            "Messages the periodic reconciliation found uncounted and added.",
            registry=r,
        )
        self.render_duration = Gauge(
            "convrs_exporter_render_duration_seconds",
            "Wall time of the latest render of the exposition (after each collection, in the "
            "formats scraped lately).",
            registry=r,
        )
        self.recounted = Gauge(
            "convrs_exporter_messages_recounted_rows",
            "Messages above the settled watermark: counted, checked again before they settle.",
            registry=r,
        )
        Gauge(
            "convrs_exporter_build_info",
            "Build information, always 1.",
            ["version", "python_version"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        for result in ("success", "error"):
            self.collections.labels(result)
        for name in query_names:
            self.query_errors.labels(name)

    def render(self, openmetrics: bool) -> bytes:
        if openmetrics:
            return _openmetrics(self.registry)
        return text_format.generate_latest(self.registry)


def _openmetrics(collector: Collector) -> bytes:
    out: bytes = openmetrics_format.generate_latest(collector)  # type: ignore[no-untyped-call]
    return out
