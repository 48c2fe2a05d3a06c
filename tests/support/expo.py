"""Reading what the exporter serves back into numbers, with prometheus-client's parsers."""

from __future__ import annotations

from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import contract
from exporter.assembly import Running, assemble, open_database
from exporter.collection import Collection
from exporter.config import Config, load_config
from exporter.exposition import Exposition, Rendered

ORG_METRICS = contract.sample_names()

Counts = dict[str, dict[tuple[str, ...], float]]


def parse(body: str, openmetrics: bool = False) -> Counts:
    """Samples of the organization metrics, keyed by metric then label values."""
    out: Counts = {name: {} for name in ORG_METRICS}
    families = parse_om(body) if openmetrics else parse_text(body)
    for family in families:
        for sample in family.samples:
            if sample.name in ORG_METRICS:
                key = tuple(sample.labels.get(lb, "") for lb in ORG_METRICS[sample.name])
                assert key not in out[sample.name], f"duplicate series {sample.name}{key}"
                out[sample.name][key] = sample.value
    return out


def sample(body: str, name: str, **labels: str) -> float | None:
    for family in parse_text(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def in_process(url: str, raw: dict[str, Any] | None = None) -> tuple[Collection, Config]:
    """A Collection wired as the CLI wires it, against a real database, no HTTP."""
    running = assembled(url, raw)
    return running.collection, running.config


def assembled(url: str, raw: dict[str, Any] | None = None) -> Running:
    """The running parts (collection, job, exposition) as the CLI wires them, not started."""
    env = {"CONVRS_EXPORTER_DATABASE_URL": url}
    config = (
        load_config(None, env)
        if raw is None
        else Config.model_validate(
            {
                **raw,
                "mapping": {**_reference(), **raw.get("mapping", {})},
                "database": {"url": url, **raw.get("database", {})},
            }
        )
    )
    return assemble(config, open_database(url, config))


def _reference() -> dict[str, Any]:
    from exporter.config import reference_mapping

    return reference_mapping()


def render_current(collection: Collection) -> Rendered:
    """The latest published snapshot, rendered as a scrape would get it once served."""
    return Exposition(collection.specs).rendered(collection.store.current)


def rendered_text(collection: Collection) -> str:
    return render_current(collection).text.decode()


def served(collection: Collection) -> Counts:
    return parse(rendered_text(collection))


def assert_counts(got: Counts, want: Counts) -> None:
    """Every metric's series equal (timestamps to the microsecond), none missing or extra."""
    import pytest

    assert set(got) >= set(want)
    for metric, series in want.items():
        assert got[metric] == pytest.approx(series, rel=1e-12), metric
