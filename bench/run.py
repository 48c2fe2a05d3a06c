"""Benchmark: convrs-exporter against query-exporter on the same PostgreSQL data.

    .venv/bin/python bench/run.py [--sizes 1M,10M] [--scrapes 300] [--soak 60] [--skip-qe] [--keep]

Prints one table on stdout (progress on stderr); asserts nothing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import bench_data as data
import bench_qe as qe
import yaml
from bench_load import GZIP, IDENTITY, LoadResult, scrape
from bench_procs import (
    Proc,
    environ_with,
    free_port,
    git_describe,
    http_get,
    log,
    memory_mb,
    sample_sum,
    series_count,
    wait_until,
)
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql

from exporter.assembly import assemble, open_database
from exporter.config import Config, reference_mapping
from exporter.messages.sql import FLOOR, KeyRange

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
COUNT_DB = "convrs_bench"
SCRAPE_DB = "convrs_bench_10k"
COUNT_ORGS = 1000
COUNT_CHANNELS = 7  # every channel: 28 (direction, channel, sender) combinations per org
NEW_MESSAGES = 10_000
WARMUP_RUNS = 3  # the watermark moves only from the third collection on
MAX_WARMUP = 13
"""Warm-up collections at most: more than WARMUP_RUNS while the first count still settles."""
MEASURED_RUNS = 5


# --- arguments ------------------------------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes",
        default="1M,10M",
        help="message counts for the counting part, ascending; the table grows one table "
        "(default 1M,10M)",
    )
    p.add_argument(
        "--scrape-orgs", type=int, default=10_000, help="organizations for the /metrics part"
    )
    p.add_argument(
        "--scrape-messages",
        default="1M",
        help="messages for the /metrics part (spread over every series; default 1M)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=5,
        help="channels in the /metrics part: 4 series per channel and org (default 5: 200k)",
    )
    p.add_argument(
        "--scrapes", type=int, default=300, help="scrapes per count-limited setting (default 300)"
    )
    p.add_argument(
        "--soak",
        type=float,
        default=60,
        help="seconds of continuous scraping by 8 clients, over which the 8-client latency "
        "and the collection schedule are measured (default 60)",
    )
    p.add_argument(
        "--interval", type=int, default=15, help="collection interval of both exporters (s)"
    )
    p.add_argument(
        "--qe-cap",
        type=float,
        default=60,
        help="at most this many seconds for query-exporter's 1-client setting (default 60)",
    )
    p.add_argument("--skip-qe", action="store_true", help="run convrs-exporter only")
    p.add_argument("--skip-counting", action="store_true", help="skip the counting part (1M/10M)")
    p.add_argument("--skip-scrape", action="store_true", help="skip the /metrics part")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = p.parse_args(argv)
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.size_list != sorted(args.size_list) or len(set(args.size_list)) != len(args.size_list):
        p.error("--sizes must be ascending")
    args.scrape_message_count = parse_size(args.scrape_messages)
    return args


# --- counting: in process, with the package's own classes ----------------------------


@dataclass
class Timing:
    wall: float
    """Seconds for Job.run(["messages"]): SQL, fold into the totals, publish the
    snapshot. Rendering it is the scheduler job's next step, timed as ``render``."""
    query: float
    """SQL and fold (convrs_exporter_query_duration_seconds{query="messages"})."""
    sql: float
    """The messages statement alone: execute and receive its rows (as query-exporter times)."""
    recounted: int = 0
    render: float = 0.0
    """The render step that follows: both formats and their gzip (not part of ``wall``)."""


@dataclass
class CountResult:
    size: int
    full: Timing
    steady: Timing
    exact: bool
    floor: Floor
    qe_query: float | None = None
    """query-exporter's mean query latency: a full GROUP BY every collection."""


@dataclass
class Floor:
    """The database's own time (EXPLAIN ANALYZE, server side: no client, no transfer) for
    the statements of a steady collection and for the full count they replace: what any
    exporter that counts with a GROUP BY in the database cannot go below."""

    steady: float
    """The summary (it re-reads the batch that settles) plus the grouped count of the
    new rows; median of five."""
    full: float
    """The full-shape GROUP BY over the whole table; the faster of two."""


class Counting:
    """A Collection wired as the CLI wires it (as tests/support/expo.py in_process does),
    with the messages statement timed at the driver."""

    def __init__(self, url: str) -> None:
        config = Config.model_validate(
            {
                "database": {"url": url, "statement_timeout": 300},
                "collection": {"interval": 600, "settle_after": "1ms"},
                "mapping": reference_mapping(),
            }
        )
        db = open_database(url, config)
        self.running = assemble(config, db)
        self.collection = self.running.collection
        self.sql: list[float] = []

        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            conn.info["bench_started"] = time.perf_counter()

        def after(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            began = conn.info.pop("bench_started", None)
            # the messages statements (summary, counts, full shape, since) all bound :after
            if began is not None and isinstance(parameters, dict) and "after" in parameters:
                self.sql.append(time.perf_counter() - began)

        event.listen(db.engine, "before_cursor_execute", before)
        event.listen(db.engine, "after_cursor_execute", after)

    def run(self) -> Timing:
        self.sql.clear()
        started = time.perf_counter()
        ok = self.running.job.run(["messages"])
        wall = time.perf_counter() - started
        if not ok:
            raise RuntimeError("the messages collection failed")
        query = self.collection.health.registry.get_sample_value(
            "convrs_exporter_query_duration_seconds", {"query": "messages"}
        )
        started = time.perf_counter()
        self.running.job.render()  # what the scheduler's job does next: both formats
        render = time.perf_counter() - started
        return Timing(
            wall, float(query or 0.0), sum(self.sql), self.collection.counter.unsettled_rows, render
        )

    def close(self) -> None:
        self.collection.db.close()


def median_timing(timings: list[Timing]) -> Timing:
    return Timing(
        statistics.median(t.wall for t in timings),
        statistics.median(t.query for t in timings),
        statistics.median(t.sql for t in timings),
        int(statistics.median(t.recounted for t in timings)),
        statistics.median(t.render for t in timings),
    )


def describe_timing(t: Timing) -> str:
    return (
        f"{t.wall * 1000:.1f} ms (SQL {t.sql * 1000:.1f} ms, SQL+fold {t.query * 1000:.1f} ms, "
        f"{t.recounted:,} rows recounted; then render {t.render * 1000:.1f} ms)"
    )


def explain_seconds(conn: Any, sql: str, params: dict[str, int]) -> float:
    """Server-side execution time of one statement, its bound values inlined as literals
    (as the exporter's first executions of a statement are planned for its values)."""
    named = postgresql.dialect(paramstyle="named")  # no %-escaping: run as it prints
    literal = (
        text(sql)
        .bindparams(**params)
        .compile(dialect=named, compile_kwargs={"literal_binds": True})
    )
    row = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {literal}").fetchone()
    return float(row[0][0]["Execution Time"]) / 1000


def measure_floor(conn: Any, counting: Counting) -> Floor:
    """The database floor of the steady state, on the collection's own statements: one more
    batch of new messages, checked and counted as the next collection would."""
    sql = counting.collection.specs.messages.sql
    assert sql.summary is not None and sql.by_labels is not None
    before = data.max_id(conn)
    data.add_messages(conn, NEW_MESSAGES, COUNT_ORGS, COUNT_CHANNELS)
    upper = data.max_id(conn)
    settling = KeyRange(before - NEW_MESSAGES, before).params()
    fresh = KeyRange(before, upper).params()
    steady = statistics.median(
        explain_seconds(conn, sql.summary, settling) + explain_seconds(conn, sql.by_labels, fresh)
        for _ in range(5)
    )
    whole = KeyRange(FLOOR, upper).params()
    full = min(explain_seconds(conn, sql.full, whole) for _ in range(2))
    return Floor(steady, full)


def measure_counting(size: int) -> CountResult:
    url = data.url(COUNT_DB)
    fulls: list[Timing] = []
    counting = None
    for _ in range(2):  # two fresh exporters; the faster (warmer) full count is reported
        if counting is not None:
            counting.close()
        counting = Counting(url)
        fulls.append(counting.run())
        log(f"  full count: {describe_timing(fulls[-1])}")
    assert counting is not None
    steady: list[Timing] = []
    with data.connect(COUNT_DB) as conn:
        i = warmed = 0
        while len(steady) < MEASURED_RUNS:
            i += 1
            data.add_messages(conn, NEW_MESSAGES, COUNT_ORGS, COUNT_CHANNELS)
            time.sleep(0.2)  # past settle_after (1 ms)
            t = counting.run()
            # steady only once no more than this batch is above the watermark: the first
            # count's ranges settle over the first few collections
            if warmed < WARMUP_RUNS or (t.recounted > NEW_MESSAGES and warmed < MAX_WARMUP):
                warmed += 1
            else:
                steady.append(t)
            log(f"  +{NEW_MESSAGES:,} messages, collection {i}: {describe_timing(t)}")
        total = sum(counting.collection.counter.totals_by_key().values())
        exact = total == data.count_messages(conn)
        floor = measure_floor(conn, counting)
        log(f"  database alone: steady {ms(floor.steady)}, full {ms(floor.full)}")
    counting.close()
    full = min(fulls, key=lambda t: t.wall)
    return CountResult(size, full, median_timing(steady), exact, floor)


def qe_counting(tmp: Path, full_wall: float) -> float:
    """query-exporter's mean latency for the messages GROUP BY, over its 2nd..4th runs."""
    interval = max(5, math.ceil(3 * full_wall))
    exporter = qe.QueryExporter(tmp, COUNT_DB, interval, [qe.MESSAGES_QUERY])
    try:
        body = exporter.wait_ready(timeout=120 + 4 * interval)
        count0 = sample_sum(body, "query_latency_count", query=qe.MESSAGES_QUERY) or 0
        sum0 = sample_sum(body, "query_latency_sum", query=qe.MESSAGES_QUERY) or 0

        def more() -> bytes | None:
            b = exporter.metrics()
            c = sample_sum(b, "query_latency_count", query=qe.MESSAGES_QUERY) or 0
            return b if c >= count0 + 3 else None

        body = wait_until(more, 60 + 5 * interval, "three more query-exporter runs", every=1.0)
        count1 = sample_sum(body, "query_latency_count", query=qe.MESSAGES_QUERY) or 0
        sum1 = sample_sum(body, "query_latency_sum", query=qe.MESSAGES_QUERY) or 0
        return (sum1 - sum0) / (count1 - count0)
    finally:
        exporter.stop()


def counting_part(args: argparse.Namespace, tmp: Path) -> list[CountResult]:
    log(f"counting: building {COUNT_DB} ({COUNT_ORGS:,} orgs)")
    data.create_database(COUNT_DB)
    results: list[CountResult] = []
    loaded = 0
    try:
        with data.connect(COUNT_DB) as conn:
            data.fill_organizations(conn, COUNT_ORGS, COUNT_CHANNELS, resources=False)
        for size in args.size_list:
            # grow the same table (the steady-state runs added some rows through the sequence)
            with data.connect(COUNT_DB) as conn:
                have = data.count_messages(conn)
                if size > have:
                    log(f"counting: growing messages to {size_label(size)}")
                    first = data.max_id(conn) + 1
                    data.fill_messages(
                        conn, first, first + size - have - 1, COUNT_ORGS, COUNT_CHANNELS
                    )
                    data.finish_load(conn)
                loaded = data.count_messages(conn)
            log(f"counting: convrs-exporter at {loaded:,} messages")
            result = measure_counting(size)
            if not args.skip_qe:
                log(f"counting: query-exporter at {size_label(size)} messages")
                result.qe_query = qe_counting(tmp, result.full.wall)
                log(f"  query-exporter messages query: {result.qe_query * 1000:.0f} ms")
            results.append(result)
    finally:
        if not args.keep:
            data.drop_database(COUNT_DB)
    return results


# --- /metrics: both exporters as real processes -------------------------------------


@dataclass
class Schedule:
    interval: float
    seen: int
    """Collections that completed between the reads before and after the load."""
    due: int
    """Collections that an undisturbed schedule completes in that time."""
    idle_duration: float | None
    load_duration: float | None
    """Mean wall time of a collection (convrs-exporter) or of its messages query
    (query-exporter), before and during the load."""

    @property
    def on_time(self) -> bool:
        return self.seen > 0 and self.seen >= self.due

    def describe(self) -> str:
        took = f", {ms(self.load_duration)} each" if self.load_duration is not None else ""
        return f"{self.seen} of {self.due} due ran{took}"


@dataclass
class ScrapeResult:
    series: int = 0
    gzip_bytes: int | None = None
    identity_bytes: int = 0
    loads: dict[str, LoadResult] = field(default_factory=dict)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(VmRSS, VmHWM) in MB: "idle" after the first collections, "gzip" after the gzip
    scraping (as Prometheus scrapes), "identity" after the uncompressed scraping."""
    schedule: Schedule | None = None


@dataclass
class Marks:
    """What an exporter says about its own collections, read from one /metrics body."""

    at: float
    count: float
    last: float
    duration_sum: float
    duration_count: float


def convrs_marks(port: int) -> Marks:
    at = time.time()
    _, _, body = http_get(port, "/metrics")
    return Marks(
        at,
        sample_sum(body, "convrs_exporter_collections_total", result="success") or 0,
        sample_sum(body, "convrs_exporter_last_success_timestamp_seconds") or 0,
        sample_sum(body, "convrs_exporter_collection_duration_seconds_sum") or 0,
        sample_sum(body, "convrs_exporter_collection_duration_seconds_count") or 0,
    )


def qe_marks(exporter: qe.QueryExporter) -> Marks:
    at = time.time()
    body = exporter.metrics()
    name = qe.MESSAGES_QUERY
    return Marks(
        at,
        exporter.successes(body, name),
        sample_sum(body, "query_timestamp", query=name) or 0,
        sample_sum(body, "query_latency_sum", query=name) or 0,
        sample_sum(body, "query_latency_count", query=name) or 0,
    )


def soak(
    port: int, seconds: float, interval: float, read: Callable[[], Marks], baseline: Marks
) -> tuple[LoadResult, Schedule]:
    """8 clients scraping without pause for ``seconds``; the collections seen meanwhile.

    An undisturbed schedule ticks every ``interval`` after the tick of the last collection
    before the load (which ended at ``before.last``, taken to have lasted the lesser of the
    mean durations before and during the load); a
    tick is due if, taking the duration seen under load, it completes between the reads
    before and after the load. The second read waits a little after the load, so that a
    collection slowed by it is counted. The duration before the load is the mean of the
    collections since ``baseline`` (read once the exporter was ready), else of all."""
    before: Marks = read()
    load = scrape(port, GZIP, 8, duration=seconds)
    base = baseline if before.duration_count > baseline.duration_count else None
    count = before.duration_count - (base.duration_count if base else 0)
    total = before.duration_sum - (base.duration_sum if base else 0)
    idle = total / count if count else 0.0
    time.sleep(min(interval / 3, 1 + 2 * idle))
    after: Marks = read()
    runs = after.duration_count - before.duration_count
    loaded = (after.duration_sum - before.duration_sum) / runs if runs else idle
    anchor = before.last - min(idle, loaded)
    first = max(1, math.floor((before.at - anchor - loaded) / interval) + 1)
    last = math.floor((after.at - anchor - loaded) / interval)
    seen = int(after.count - before.count)
    return load, Schedule(interval, seen, max(0, last - first + 1), idle, loaded if runs else None)


def describe_load(name: str, load: LoadResult) -> None:
    log(
        f"  {name}: {load.n} scrapes in {load.wall:.1f}s, median {load.median_ms:.1f} ms, "
        f"p99 {load.p99_ms:.1f} ms, {load.body_bytes / 1e6:.1f} MB "
        f"({'/'.join(sorted(load.encodings))}), {load.errors} errors"
    )


def scrape_convrs(args: argparse.Namespace, tmp: Path) -> ScrapeResult:
    port = free_port()
    config_path = tmp / "convrs-exporter.yml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "collection": {"interval": f"{args.interval}s"},
                "database": {"statement_timeout": f"{min(10, args.interval / 2):g}s"},
                "log": {"level": "warn"},
            }
        )
    )
    proc = Proc(
        "convrs-exporter",
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "--config.file",
            str(config_path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        environ_with(CONVRS_EXPORTER_DATABASE_URL=data.url(SCRAPE_DB)),
        tmp / "convrs-exporter.log",
    )
    out = ScrapeResult()
    try:

        def ready() -> bool:
            proc.check_alive()
            return http_get(port, "/readyz")[0] == 200

        wait_until(ready, 180, "convrs-exporter /readyz")

        def published() -> bytes | None:
            # /readyz can answer 200 a moment before the first snapshot is published
            body = http_get(port, "/metrics")[2]
            return body if b"\nconvrs_messages_total{" in body else None

        body = wait_until(published, 60, "convrs-exporter's first snapshot")
        log("/metrics: convrs-exporter ready")
        out.series = series_count(body)
        log(f"  {out.series:,} series, {len(body) / 1e6:.1f} MB as text")
        out.memory["idle"] = memory_mb(proc.pid)
        baseline = convrs_marks(port)
        n = args.scrapes
        # spread over two collection intervals, so that some scrapes meet a collection
        pace = 2 * args.interval / n
        out.loads["1 gzip"] = scrape(port, GZIP, 1, count=n, cap=300, pace=pace)
        describe_load("1 client, gzip", out.loads["1 gzip"])
        log(f"  8 clients, gzip, {args.soak:g}s without pause")
        out.loads["8 gzip"], out.schedule = soak(
            port, args.soak, args.interval, lambda: convrs_marks(port), baseline
        )
        describe_load("8 clients, gzip", out.loads["8 gzip"])
        log(f"  schedule: {out.schedule.describe()}")
        out.memory["gzip"] = memory_mb(proc.pid)
        out.loads["1 identity"] = scrape(
            port, IDENTITY, 1, count=max(1, n // 3), cap=120, pace=3 * pace
        )
        describe_load("1 client, identity", out.loads["1 identity"])
        out.loads["8 identity"] = scrape(port, IDENTITY, 8, count=n, cap=120)
        describe_load("8 clients, identity", out.loads["8 identity"])
        out.memory["identity"] = memory_mb(proc.pid)
        out.gzip_bytes = out.loads["8 gzip"].body_bytes
        out.identity_bytes = out.loads["1 identity"].body_bytes
        log(f"  memory (RSS, peak) in MB: {out.memory}")
        proc.check_alive()
    finally:
        proc.stop()
    return out


def scrape_qe(args: argparse.Namespace, tmp: Path) -> ScrapeResult:
    exporter = qe.QueryExporter(tmp, SCRAPE_DB, args.interval, list(qe.QUERIES))
    out = ScrapeResult()
    try:
        body = exporter.wait_ready(timeout=600)
        log("/metrics: query-exporter ready")
        out.series = series_count(body)
        out.identity_bytes = len(body)
        log(f"  {out.series:,} series, {len(body) / 1e6:.1f} MB as text")
        out.memory["idle"] = memory_mb(exporter.proc.pid)
        baseline = qe_marks(exporter)
        out.loads["1 gzip"] = scrape(exporter.port, GZIP, 1, count=args.scrapes, cap=args.qe_cap)
        describe_load("1 client, gzip asked", out.loads["1 gzip"])
        log(f"  8 clients, gzip asked, {args.soak:g}s without pause")
        out.loads["8 gzip"], out.schedule = soak(
            exporter.port, args.soak, args.interval, lambda: qe_marks(exporter), baseline
        )
        describe_load("8 clients, gzip asked", out.loads["8 gzip"])
        log(f"  schedule: {out.schedule.describe()}")
        if "gzip" not in out.loads["8 gzip"].encodings:
            out.gzip_bytes = None
        out.memory["gzip"] = memory_mb(exporter.proc.pid)
        log(f"  memory (RSS, peak) in MB: {out.memory}")
        exporter.proc.check_alive()
    finally:
        exporter.stop()
    return out


def scrape_part(
    args: argparse.Namespace, tmp: Path
) -> tuple[ScrapeResult | None, ScrapeResult | None]:
    orgs, channels = args.scrape_orgs, args.channels
    log(
        f"/metrics: building {SCRAPE_DB} ({orgs:,} orgs x {4 * channels} message series, "
        f"{args.scrape_message_count:,} messages)"
    )
    data.create_database(SCRAPE_DB)
    convrs = qe_result = None
    try:
        with data.connect(SCRAPE_DB) as conn:
            data.fill_organizations(conn, orgs, channels, resources=True)
            data.fill_messages(conn, 1, args.scrape_message_count, orgs, channels)
            data.finish_load(conn)
        convrs = scrape_convrs(args, tmp)
        if not args.skip_qe:
            qe_result = scrape_qe(args, tmp)
    finally:
        if not args.keep:
            data.drop_database(SCRAPE_DB)
    return convrs, qe_result


# --- the table -----------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    x = seconds * 1000
    if x >= 10_000:
        return f"{seconds:.1f} s"
    if x >= 100:
        return f"{x:.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms"


def times(x: float | None) -> str:
    if x is None or math.isnan(x) or math.isinf(x):
        return "-"
    return f"{x:.0f}x" if x >= 10 else f"{x:.2f}x"


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def fraction(part: float, whole: float) -> str:
    return f"1/{whole / part:.0f}" if part > 0 else "-"


Row = tuple[str, str, str, str, str, str]


def counting_rows(results: list[CountResult]) -> list[Row]:
    rows: list[Row] = []
    for r in results:
        s = size_label(r.size)
        qe_cell = f"SQL {ms(r.qe_query)}, every time" if r.qe_query is not None else "skipped"
        rows.append(
            (
                f"{s} msgs: full count (first collection)",
                f"{ms(r.full.wall)} (SQL {ms(r.full.sql)})",
                qe_cell,
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                f"{s} msgs: steady state, +{NEW_MESSAGES // 1000}k msgs",
                f"{ms(r.steady.wall)} (SQL {ms(r.steady.sql)})",
                qe_cell,
                f"SQL {times(r.qe_query / r.steady.sql)}" if r.qe_query and r.steady.sql else "",
                "",
                "",
            )
        )
        rows.append(
            (
                f"{s} msgs: then render, both formats + gzip",
                f"{ms(r.steady.render)} (not in the above)",
                "",
                "",
                "",
                "",
            )
        )
        last = r is results[-1]
        rows.append(
            (
                f"{s} msgs: steady / full",
                f"{fraction(r.steady.wall, r.full.wall)} "
                f"(SQL {fraction(r.steady.sql, r.full.sql)})",
                "1/1" if r.qe_query is not None else "",
                "",
                "<= 1/100" if last else "",
                f"{verdict(r.steady.wall * 100 <= r.full.wall)} "
                f"(SQL: {verdict(r.steady.sql * 100 <= r.full.sql)})"
                if last
                else "",
            )
        )
        rows.append(
            (
                f"{s} msgs: database alone, steady / full",
                f"{fraction(r.floor.steady, r.floor.full)} "
                f"({ms(r.floor.steady)} / {ms(r.floor.full)})",
                "",
                "",
                "",
                "(what any design must add to)" if last else "",
            )
        )
        rows.append(
            (
                f"{s} msgs: rows recounted / totals exact",
                f"{r.steady.recounted:,} / {'yes' if r.exact else 'NO'}",
                "",
                "",
                "",
                "",
            )
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = b.steady.wall / a.steady.wall
        sql_growth = b.steady.sql / a.steady.sql
        qe_growth = b.qe_query / a.qe_query if a.qe_query and b.qe_query else None
        rows.append(
            (
                f"steady-state growth {size_label(a.size)} -> {size_label(b.size)}",
                f"{times(growth)} (SQL {times(sql_growth)})",
                f"SQL {times(qe_growth)}" if qe_growth else "",
                "",
                "< 1.5x",
                f"{verdict(growth < 1.5)} (SQL: {verdict(sql_growth < 1.5)})",
            )
        )
    return rows


def latency_cell(load: LoadResult | None, which: str) -> str:
    if load is None or not load.n:
        return "-"
    value = load.median_ms if which == "median" else load.p99_ms
    return f"{ms(value / 1000)} (n={load.n})"


def scrape_rows(
    args: argparse.Namespace, c: ScrapeResult | None, q: ScrapeResult | None
) -> list[Row]:
    rows: list[Row] = []
    if c is None:
        return rows
    rows.append(
        (
            "series served (text, without _created)",
            f"{c.series:,}",
            f"{q.series:,}" if q else "",
            "",
            "",
            "",
        )
    )
    rows.append(
        (
            "/metrics body, gzip / identity",
            f"{(c.gzip_bytes or 0) / 1e6:.1f} MB / {c.identity_bytes / 1e6:.1f} MB",
            (f"never gzips / {q.identity_bytes / 1e6:.1f} MB" if q and q.gzip_bytes is None else "")
            if q
            else "",
            "",
            "",
            "",
        )
    )

    def latency_rows(key: str, label: str, targets: dict[str, float] | None) -> None:
        cl = c.loads.get(key)
        ql = q.loads.get(key) if q else None
        # query-exporter answers identity whatever is asked: its gzip rows say it all
        same = q is not None and ql is None and q.gzip_bytes is None
        for which in ("median", "p99"):
            cv = (cl.median_ms if which == "median" else cl.p99_ms) if cl and cl.n else math.nan
            qv = (ql.median_ms if which == "median" else ql.p99_ms) if ql and ql.n else math.nan
            ratio = qv / cv if cv and not math.isnan(qv) else math.nan
            target = result = ""
            if targets is not None:
                limit = targets[which]
                target = f"< {limit:.0f} ms, >= 30x"
                result = verdict(cv < limit) + (
                    ", " + verdict(ratio >= 30) if not math.isnan(ratio) else ", no QE"
                )
            rows.append(
                (
                    f"/metrics {label}: {which}",
                    latency_cell(cl, which),
                    "(never gzips: as above)" if same else latency_cell(ql, which),
                    times(ratio),
                    target,
                    result,
                )
            )

    latency_rows("1 gzip", "1 client, gzip", None)
    latency_rows("8 gzip", f"8 clients, gzip ({args.soak:g} s)", {"median": 50, "p99": 200})
    latency_rows("1 identity", "1 client, identity", None)
    latency_rows("8 identity", "8 clients, identity", None)

    def mem(r: ScrapeResult | None, key: str) -> str:
        if r is None or key not in r.memory:
            return "-" if r is not None else ""
        rss, peak = r.memory[key]
        return f"{rss:.0f} MB (peak so far {peak:.0f})"

    rows.append(("resident memory, before scraping", mem(c, "idle"), mem(q, "idle"), "", "", ""))
    gzip_rss = c.memory.get("gzip", (math.nan, math.nan))[0]
    rows.append(
        (
            "resident memory, after the gzip scraping",
            mem(c, "gzip"),
            mem(q, "gzip"),
            "",
            "< 200 MB",
            verdict(gzip_rss < 200),
        )
    )
    rows.append(("resident memory, after identity scraping", mem(c, "identity"), "", "", "", ""))
    if c.schedule is not None:
        rows.append(
            (
                f"collections during {args.soak:g} s of 8-client scraping",
                c.schedule.describe(),
                q.schedule.describe() if q and q.schedule else "",
                "",
                f"every {args.interval} s, on time",
                verdict(c.schedule.on_time)
                + (f" (QE: {verdict(q.schedule.on_time)})" if q and q.schedule else ""),
            )
        )
    return rows


def render_table(rows: list[Row], sections: dict[int, str]) -> str:
    header: Row = ("measurement", "convrs-exporter", "query-exporter", "QE / convrs", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    rule = "-+-".join("-" * w for w in widths)

    def line(r: Row) -> str:
        return " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()

    out = [line(header), rule]
    for i, r in enumerate(rows):
        if i in sections:
            out.append(f"-- {sections[i]} " + "-" * max(0, len(rule) - len(sections[i]) - 4))
        out.append(line(r))
    return "\n".join(out)


# --- main ------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: ignored in background jobs
        signal.signal(sig, _interrupted)
    started = time.monotonic()
    counting: list[CountResult] = []
    convrs = qe_result = None
    qe_version = "skipped"
    try:
        with tempfile.TemporaryDirectory(prefix="convrs-bench-") as tmpdir:
            tmp = Path(tmpdir)
            if not args.skip_qe:
                qe_version = qe.ensure_venv()
            if not args.skip_counting:
                counting = counting_part(args, tmp)
            if not args.skip_scrape:
                convrs, qe_result = scrape_part(args, tmp)
    except KeyboardInterrupt:
        log("interrupted: stopping processes and dropping databases")
        return 130
    finally:
        Proc.stop_all()
        if not args.keep:
            for name in (COUNT_DB, SCRAPE_DB):
                data.drop_database(name)

    rows: list[Row] = []
    sections: dict[int, str] = {}
    if counting:
        sections[len(rows)] = (
            f"message counting: {COUNT_ORGS:,} orgs, {4 * COUNT_CHANNELS} series each; "
            f"steady state = median of {MEASURED_RUNS} collections, each after "
            f"{NEW_MESSAGES:,} new messages"
        )
        rows += counting_rows(counting)
    if convrs:
        sections[len(rows)] = (
            f"/metrics: {args.scrape_orgs:,} orgs x {4 * args.channels} message series, "
            f"{args.scrape_message_count:,} messages, collection every {args.interval} s, "
            "Prometheus's Accept header"
        )
        rows += scrape_rows(args, convrs, qe_result)
    minutes = (time.monotonic() - started) / 60
    print(
        f"convrs-exporter {git_describe(REPO)} vs query-exporter {qe_version}; "
        f"PostgreSQL {data.server_version()}; {os.cpu_count()} CPUs; {minutes:.1f} min"
    )
    print(render_table(rows, sections) if rows else "(nothing measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
