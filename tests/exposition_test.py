"""The pre-rendered exposition: label values of any content survive both formats, as read
back by prometheus-client's parsers and checked by promtool."""

from __future__ import annotations

import subprocess
from array import array
from dataclasses import replace
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import load_config
from exporter.exposition import Exposition, GzipPrefix, Rendered, Renderer, format_value
from exporter.mapping import Specs, build_specs
from exporter.snapshot import MessageTotals, MetricData, Series, Snapshot, Store
from tests.support.expo import parse

SPECS = build_specs(load_config(None, {}))

# any text but surrogates (not encodable as UTF-8); control characters included
label_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=300)


def snapshot(names: list[str], channels: list[str]) -> Snapshot:
    orgs = tuple(Series((str(i), n), 1.0) for i, n in enumerate(names))
    bots = tuple(Series((str(i), ch), float(i + 1)) for i, ch in enumerate(channels))
    keys = [(str(i), "inbound", ch, "user") for i, ch in enumerate(channels)]
    totals = array("q", (10 * i + 7 for i in range(len(channels))))
    since = {(str(i), "inbound"): 1_700_000_000.25 + i for i in range(len(channels))}
    data = {
        "organizations": MetricData("organizations", orgs, 0),
        "bots": MetricData("bots", bots, 0),
    }
    return Snapshot(MappingProxyType(data), 0, MessageTotals(keys, len(keys), totals, since))


def render(renderer: Renderer, snap: Snapshot) -> Rendered:
    return Rendered(renderer.render(SPECS, snap, False), renderer.render(SPECS, snap, True))


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(label_text, min_size=1, max_size=5, unique=True),
    channels=st.lists(label_text, min_size=1, max_size=5, unique=True),
)
def test_any_label_value_round_trips_in_both_formats(names: list[str], channels: list[str]) -> None:
    rendered = render(Renderer(), snapshot(names, channels))
    for got in (
        parse(rendered.text.decode()),
        parse(rendered.openmetrics.decode() + "# EOF\n", openmetrics=True),
    ):
        assert got["convrs_org_info"] == {(str(i), n): 1.0 for i, n in enumerate(names)}
        assert got["convrs_bots"] == {(str(i), c): float(i + 1) for i, c in enumerate(channels)}
        assert got["convrs_messages_total"] == {
            (str(i), "inbound", c, "user"): float(10 * i + 7) for i, c in enumerate(channels)
        }


def test_promtool_accepts_hostile_labels_and_created_matches() -> None:
    names = ['quote " here', "back\\slash", "new\nline", "Zürich 東京 🚀", "x" * 5000, "\t\r\x01"]
    rendered = render(Renderer(), snapshot(names, ["sms", 'we"ird\\\n']))
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=rendered.text, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    om = rendered.openmetrics.decode()
    assert (
        'convrs_messages_created{org="0",direction="inbound",channel="sms",sender="user"} '
        "1700000000.25" in om
    )
    # the renderer's label cache must not leak one collection's values into the next
    renderer = Renderer()
    render(renderer, snapshot(["a"], ["sms"]))
    again = render(renderer, snapshot(["b"], ["line"]))
    assert parse(again.text.decode())["convrs_org_info"] == {("0", "b"): 1.0}


def test_value_formatting() -> None:
    assert [format_value(v) for v in (3.0, 0.5, float("inf"), float("-inf"), 2.0**60)] == [
        "3",
        "0.5",
        "+Inf",
        "-Inf",
        "1.152921504606847e+18",
    ]
    assert format_value(float("nan")) == "NaN"


def test_the_render_step_renders_the_formats_scraped_lately_and_serves_once_done() -> None:
    """Before any scrape both formats are rendered; after scrapes of one format only that
    one is; a format asked for later is rendered once, by the first scrape that asks; the
    store turns ready only when a complete snapshot is served."""
    renders: list[bool] = []
    store, exposition = Store(), Exposition(SPECS)
    renderer = exposition.renderer

    class Counted(Renderer):
        def render(self, specs: Specs, snap: Snapshot, openmetrics: bool) -> GzipPrefix:
            renders.append(openmetrics)
            return renderer.render(specs, snap, openmetrics)

    exposition.renderer = Counted()

    def published(complete: bool, names: list[str]) -> Snapshot:
        return replace(snapshot(names, ["sms"]), complete=complete)

    store.publish(published(False, ["a"]))
    assert not renders and exposition.served is not store.current  # published, not yet served
    exposition.serve(store.current)
    assert sorted(renders) == [False, True] and not exposition.ready.is_set()
    body = exposition.want(True).decompressed().decode()  # a scrape, served the rendered bytes
    assert 'convrs_org_info{org="0",name="a"} 1' in body and sorted(renders) == [False, True]
    renders.clear()
    store.publish(published(True, ["b"]))
    # the previous, until served
    assert 'name="a"' in exposition.want(True).decompressed().decode()
    exposition.serve(store.current)
    assert renders == [True] and exposition.ready.is_set()  # only OpenMetrics scraped lately
    for _ in range(3):
        text = exposition.want(False).decompressed().decode()  # first asked now: rendered once
    assert 'convrs_org_info{org="0",name="b"} 1' in text and renders == [True, False]
