"""The exporter's own metrics (docs: "The exporter's own health"), rendered per scrape
(they are few and cheap), and the alert thresholds from the configuration."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import exposition as text_format
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector

from . import __version__


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
        # no *_created series for the exporter's own counters, in either format (the
        # README says the text format has none; convrs_messages keeps its own in OpenMetrics)
        cast(Callable[[], None], disable_created_metrics)()  # untyped in some versions
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
        self.scan_rows = Gauge(
            "convrs_exporter_messages_scan_rows",
            "Messages read so far by the count in key ranges under way (or the latest), by "
            "phase (first count, reconciliation).",
            ["phase"],
            registry=r,
        )
        self.scan_estimated_rows = Gauge(
            "convrs_exporter_messages_scan_estimated_rows",
            "Messages the count in key ranges will read in all, estimated from the keys "
            "read so far, by phase.",
            ["phase"],
            registry=r,
        )
        self.scan_eta = Gauge(
            "convrs_exporter_messages_scan_eta_seconds",
            "Seconds of reading the count in key ranges still needs, at its rate so far "
            "(0 when done, -1 before it can tell), by phase.",
            ["phase"],
            registry=r,
        )
        self.unexpected_seen: set[tuple[str, str, str]] = set()
        """(query, label, value) already counted in ``unexpected_labels`` and logged."""
        self.unexpected_labels = Counter(
            "convrs_exporter_unexpected_label_values",
            "Label values outside the contract's closed sets (direction, sender, status), by "
            "query and label: each distinct value once, when first seen (and logged once).",
            ["query", "label"],
            registry=r,
        )
        self.rows_skipped = Counter(
            "convrs_exporter_rows_skipped",
            "Rows a query returned that were not counted, by query and reason (null_org: "
            "a NULL org, the row belongs to no organization).",
            ["query", "reason"],
            registry=r,
        )
        self.standby = Gauge(
            "convrs_exporter_database_standby",
            "1 if the database read is a read replica (a hot standby), else 0.",
            registry=r,
        )
        self.replication_lag = Gauge(
            "convrs_exporter_replication_lag_seconds",
            "How far the read replica is behind its primary: 0 when it has replayed all it "
            "received, else the seconds since the last transaction it replayed; 0 on a primary.",
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
