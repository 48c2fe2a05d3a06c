"""Exposition: the snapshot as metric families, rendered once per collection; the
exporter's own health metrics, rendered per scrape (they are few and cheap).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
from .snapshot import GzipPrefix, Rendered, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_EOF = b"# EOF\n"


class SnapshotCollector:
    """Yields the organization metrics of one snapshot; label names come from the specs."""

    def __init__(self, specs: Specs, snapshot: Snapshot):
        self._specs = specs
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return self._families(Snapshot())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshot)

    def _families(self, snapshot: Snapshot) -> Iterator[Metric]:
        data = snapshot.metrics
        orgs = data.get("organizations")
        info = GaugeMetricFamily(ORG_INFO_METRIC, ORG_INFO_HELP, labels=["org", "name"])
        for s in orgs.series if orgs else ():
            info.add_metric(list(s.labels), 1)
        yield info
        for spec in self._specs.gauges:
            family = GaugeMetricFamily(spec.metric, spec.help, labels=["org", *spec.labels])
            metric = data.get(spec.key)
            for s in metric.series if metric else ():
                family.add_metric(list(s.labels), s.value)
            yield family
        labels = ["org", *self._specs.messages.labels]
        messages = CounterMetricFamily(MESSAGES_METRIC, MESSAGES_HELP, labels=labels)
        metric = data.get("messages")
        for s in metric.series if metric else ():
            messages.add_metric(list(s.labels), s.value, created=s.created)
        yield messages
        since = GaugeMetricFamily(SINCE_METRIC, SINCE_HELP, labels=["org", "direction"])
        metric = data.get("counting_since")
        for s in metric.series if metric else ():
            since.add_metric(list(s.labels), s.value)
        yield since


def render(specs: Specs, snapshot: Snapshot) -> Rendered:
    """Both encodings of the snapshot's data and their gzip, done once per collection."""
    collector = SnapshotCollector(specs, snapshot)
    text = text_format.generate_latest(collector)
    om = _openmetrics(collector).removesuffix(_EOF)
    return Rendered(
        text=text,
        openmetrics=om,
        text_gzip=GzipPrefix(text),
        openmetrics_gzip=GzipPrefix(om),
    )


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
        interval: float | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if thresholds is not None:
            r.register(thresholds)
        if interval is not None:
            Gauge(
                "convrs_exporter_collection_interval_seconds",
                "The configured collection interval (the rules' staleness alert uses it).",
                registry=r,
            ).set(interval)
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
        self.unsettled = Gauge(
            "convrs_exporter_messages_recounted_rows",
            "Messages above the settled watermark, recounted each collection.",
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
