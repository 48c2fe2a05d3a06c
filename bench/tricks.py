"""Three of the exporter's performance tricks, each measured on its own against the exporter
as shipped (a "baseline"); prints one table on stdout (progress on stderr), asserts nothing.

    .venv/bin/python bench/tricks.py [--skip-counting] [--skip-scrape] [--keep]

The tricks, and the variant that undoes each:

1. the cyclic GC paused around each collection and render (``MemoryPolicy.working()``);
   ``gc-off``: a ``contextlib.nullcontext()`` instead;
2. the malloc arena limit (``limit_arenas()``: mallopt M_ARENA_MAX=2 at start);
   ``arenas-env``: no mallopt but ``MALLOC_ARENA_MAX=2`` in the environment (as a Docker
   image could set it); ``arenas-none``: neither;
3. the steady count grouped by label values with the orgs as arrays (PostgreSQL);
   ``by_labels-off``: ``MessagesCollector.by_labels = False`` after assembly, so steady
   counts read one row per series.

A. Counting, in process, as bench/run.py's counting part (its ``Counting`` class, wired
   through exporter.assembly; 1,000 orgs x 28 series, --size messages, default 10M): for
   baseline, gc-off, by_labels-off and baseline again (interleaved, so drift shows), a
   fresh exporter, one full count, then steady collections, each after 10,000 new
   messages: at least --warmup unmeasured (more while the full count's rows still settle,
   i.e. more than the last 10,000 are above the watermark), then --measured; medians.
B. /metrics at about 290,000 series, as bench/run.py's scrape part (10,000 orgs, 5
   channels, 1M messages, a collection every 15 s), the exporter a subprocess started
   through bench/variant_exporter.py: for baseline, gc-off, arenas-env and arenas-none,
   resident memory once the first snapshot is served and after --soak seconds of 8 gzip
   clients, the soak's latencies, then the latest render's duration and the mean
   collection duration during the soak, read from /metrics.

About 15 minutes on 2 cores. The databases (convrs_tricks, convrs_tricks_10k) are dropped at
the end unless --keep; every process started is stopped; --deadline bounds the whole run.
A smoke run (about a minute): --size 300k --scrape-orgs 500 --scrape-messages 50k --soak 10
--interval 5.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import bench_data as data
import run
import yaml
from bench_load import LoadResult
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
from variant_exporter import ARENA_ENV, patched

BENCH = Path(__file__).resolve().parent
COUNT_DB = "convrs_tricks"
SCRAPE_DB = "convrs_tricks_10k"
COUNT_VARIANTS = ("baseline", "gc-off", "by_labels-off", "baseline")
SCRAPE_VARIANTS = ("baseline", "gc-off", "arenas-env", "arenas-none")
MAX_EXTRA_WARMUP = 10
"""Steady collections left unmeasured beyond --warmup while more than the last batch of new
messages is above the watermark (the full count's rows settle over a few collections)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="10M", help="messages for the counting part (default 10M)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="steady collections not measured, at least; more while the full count's rows "
        "are still settling (default 2)",
    )
    p.add_argument("--measured", type=int, default=5, help="steady collections measured")
    p.add_argument("--scrape-orgs", type=int, default=10_000, help="orgs for the /metrics part")
    p.add_argument("--scrape-messages", default="1M", help="messages for the /metrics part")
    p.add_argument("--channels", type=int, default=5, help="channels for the /metrics part")
    p.add_argument("--soak", type=float, default=60, help="seconds of 8-client gzip scraping")
    p.add_argument("--interval", type=int, default=15, help="collection interval (s)")
    p.add_argument("--skip-counting", action="store_true", help="skip part A (counting)")
    p.add_argument("--skip-scrape", action="store_true", help="skip part B (/metrics)")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    p.add_argument(
        "--deadline", type=int, default=2700, help="stop everything after this many seconds"
    )
    args = p.parse_args(argv)
    args.size_n = run.parse_size(args.size)
    args.scrape_n = run.parse_size(args.scrape_messages)
    return args


# --- A. counting, in process ------------------------------------------------------


@dataclass
class CountFigures:
    variant: str
    full: run.Timing
    steady: run.Timing
    """Medians of the measured steady collections."""
    walls: list[float]
    warmed: int
    """Steady collections not measured."""
    shapes: set[str]
    """How the steady counts read their new rows (by_labels or per_series)."""
    exact: bool


def build_count_db(size: int) -> None:
    """As bench/run.py's counting part: 1,000 orgs, every channel, the messages in bulk."""
    log(f"counting: building {COUNT_DB} ({run.COUNT_ORGS:,} orgs, {size:,} messages)")
    data.create_database(COUNT_DB)
    with data.connect(COUNT_DB) as conn:
        data.fill_organizations(conn, run.COUNT_ORGS, run.COUNT_CHANNELS, resources=False)
        data.fill_messages(conn, 1, size, run.COUNT_ORGS, run.COUNT_CHANNELS)
        data.finish_load(conn)


def count_variant(variant: str, warmup: int, measured: int) -> CountFigures:
    """A fresh exporter with ``variant``: one full count, then the steady collections."""
    log(f"counting: {variant}")
    with patched("gc-off" if variant == "gc-off" else "baseline"):
        counting = run.Counting(data.url(COUNT_DB))
        collector = counting.collection.messages
        if variant == "by_labels-off":
            collector.by_labels = False
        shapes: set[str] = set()
        steady_rows = collector._steady_rows

        def recording(conn: Any, keys: Any) -> Any:
            rows, shape = steady_rows(conn, keys)
            shapes.add(shape)
            return rows, shape

        collector._steady_rows = recording  # type: ignore[method-assign]
        try:
            full = counting.run()
            log(f"  full count: {run.describe_timing(full)}")
            steady: list[run.Timing] = []
            warmed = 0
            with data.connect(COUNT_DB) as conn:
                for i in range(warmup + MAX_EXTRA_WARMUP + measured):
                    data.add_messages(conn, run.NEW_MESSAGES, run.COUNT_ORGS, run.COUNT_CHANNELS)
                    time.sleep(0.2)  # past settle_after (1 ms)
                    t = counting.run()
                    log(f"  collection {i + 1}: {run.describe_timing(t)}")
                    if warmed < warmup or (
                        t.recounted > run.NEW_MESSAGES and warmed < warmup + MAX_EXTRA_WARMUP
                    ):
                        warmed += 1  # the full count's rows still settling: not steady yet
                        continue
                    steady.append(t)
                    if len(steady) == measured:
                        break
                total = sum(counting.collection.counter.totals_by_key().values())
                exact = total == data.count_messages(conn)
        finally:
            counting.close()
            # unfreeze the heap and collect: the next variant starts as this one did
            counting.running.job.memory.release()
            gc.collect()
    walls = [t.wall for t in steady]
    return CountFigures(variant, full, run.median_timing(steady), walls, warmed, shapes, exact)


# --- B. /metrics, the exporter as a subprocess --------------------------------------


@dataclass
class ScrapeFigures:
    variant: str
    series: int
    idle: tuple[float, float]
    """(VmRSS, VmHWM) in MB once the first snapshot is served."""
    soaked: tuple[float, float]
    """(VmRSS, VmHWM) in MB after the soak."""
    load: LoadResult
    render: float | None
    """convrs_exporter_render_duration_seconds after the soak (the latest render)."""
    collection_mean: float | None
    """Mean of convrs_exporter_collection_duration_seconds over the collections that
    completed during the soak (the /metrics reads before and after it)."""
    collections: int


def build_scrape_db(orgs: int, messages: int, channels: int) -> None:
    """As bench/run.py's scrape part: every resource, messages over every series."""
    log(f"/metrics: building {SCRAPE_DB} ({orgs:,} orgs, {messages:,} messages)")
    data.create_database(SCRAPE_DB)
    with data.connect(SCRAPE_DB) as conn:
        data.fill_organizations(conn, orgs, channels, resources=True)
        data.fill_messages(conn, 1, messages, orgs, channels)
        data.finish_load(conn)


def scrape_variant(variant: str, args: argparse.Namespace, tmp: Path) -> ScrapeFigures:
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
    env = environ_with(CONVRS_EXPORTER_DATABASE_URL=data.url(SCRAPE_DB), BENCH_VARIANT=variant)
    env.pop(ARENA_ENV, None)
    if variant == "arenas-env":
        env[ARENA_ENV] = "2"
    log(f"/metrics: {variant}")
    proc = Proc(
        f"convrs-exporter ({variant})",
        [
            sys.executable,
            str(BENCH / "variant_exporter.py"),
            "--config.file",
            str(config_path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        env,
        tmp / f"convrs-exporter-{variant}.log",
    )
    try:

        def ready() -> bool:
            proc.check_alive()
            return http_get(port, "/readyz")[0] == 200

        wait_until(ready, 180, f"{proc.name} /readyz")

        def published() -> bytes | None:
            body = http_get(port, "/metrics")[2]
            return body if b"\nconvrs_messages_total{" in body else None

        body = wait_until(published, 60, f"{proc.name}'s first snapshot")
        series = series_count(body)
        idle = memory_mb(proc.pid)
        log(f"  {series:,} series; RSS {idle[0]:.0f} MB (peak {idle[1]:.0f})")
        marks = functools.partial(run.convrs_marks, port)
        load, schedule = run.soak(port, args.soak, args.interval, marks, marks())
        soaked = memory_mb(proc.pid)
        body = http_get(port, "/metrics")[2]
        render = sample_sum(body, "convrs_exporter_render_duration_seconds")
        proc.check_alive()
    finally:
        proc.stop()
    run.describe_load(f"8 clients, gzip, {args.soak:g}s", load)
    log(f"  RSS after {soaked[0]:.0f} MB (peak {soaked[1]:.0f}); {schedule.describe()}")
    return ScrapeFigures(
        variant, series, idle, soaked, load, render, schedule.load_duration, schedule.seen
    )


# --- the table -------------------------------------------------------------------


def lines(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return [line(header), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)]


def counting_lines(args: argparse.Namespace, figures: list[CountFigures]) -> list[str]:
    ms = run.ms
    rows = [
        (
            f.variant,
            ms(f.full.wall),
            f"{ms(f.steady.wall)} ({ms(min(f.walls))}..{ms(max(f.walls))})",
            ms(f.steady.sql),
            ms(f.steady.render),
            run.fraction(f.steady.wall, f.full.wall),
            str(f.warmed),
            "/".join(sorted(f.shapes)) or "-",
            "yes" if f.exact else "NO",
        )
        for f in figures
    ]
    header = (
        "variant",
        "full count",
        "steady wall (min..max)",
        "steady SQL",
        "render",
        "steady/full",
        "warm-up",
        "steady rows",
        "exact",
    )
    title = (
        f"-- A. counting in process: {args.size_n:,} messages, {run.COUNT_ORGS:,} orgs x "
        f"{4 * run.COUNT_CHANNELS} series; steady = median of {args.measured} collections, "
        f"each after +{run.NEW_MESSAGES:,} messages, once only the last batch is above the "
        "watermark (warm-up: collections left out)"
    )
    return [title, *lines(header, rows)]


def scrape_lines(args: argparse.Namespace, figures: list[ScrapeFigures]) -> list[str]:
    def mb(m: tuple[float, float]) -> str:
        return f"{m[0]:.0f} MB (peak {m[1]:.0f})"

    rows = [
        (
            f.variant,
            mb(f.idle),
            mb(f.soaked),
            run.ms(f.load.median_ms / 1000),
            run.ms(f.load.p99_ms / 1000),
            f"{f.load.n:,} ({f.load.errors} errors)",
            run.ms(f.render),
            f"{run.ms(f.collection_mean)} (n={f.collections})",
        )
        for f in figures
    ]
    header = (
        "variant",
        "RSS idle",
        "RSS after soak",
        "soak median",
        "soak p99",
        "scrapes",
        "render",
        "collection mean",
    )
    series = figures[0].series if figures else 0
    title = (
        f"-- B. /metrics: {series:,} series ({args.scrape_orgs:,} orgs, {args.scrape_n:,} "
        f"messages), collection every {args.interval} s; {args.soak:g} s of 8 gzip clients; "
        "render and collection mean read from /metrics after the soak"
    )
    return [title, *lines(header, rows)]


# --- main -------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def bounded(seconds: int) -> Iterator[None]:
    """SIGTERM, SIGINT and the deadline (SIGALRM) all unwind through the cleanup."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, _interrupted)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    counting: list[CountFigures] = []
    scraping: list[ScrapeFigures] = []
    try:
        with bounded(args.deadline), tempfile.TemporaryDirectory(prefix="convrs-tricks-") as tmp:
            if not args.skip_counting:
                build_count_db(args.size_n)
                for variant in COUNT_VARIANTS:
                    counting.append(count_variant(variant, args.warmup, args.measured))
                if not args.keep:
                    data.drop_database(COUNT_DB)
            if not args.skip_scrape:
                build_scrape_db(args.scrape_orgs, args.scrape_n, args.channels)
                for variant in SCRAPE_VARIANTS:
                    scraping.append(scrape_variant(variant, args, Path(tmp)))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}): stopping processes and dropping databases")
        return 130
    finally:
        Proc.stop_all()
        if not args.keep:
            for name in (COUNT_DB, SCRAPE_DB):
                data.drop_database(name)

    minutes = (time.monotonic() - started) / 60
    out = [
        f"convrs-exporter {git_describe(run.REPO)}: tricks one at a time; "
        f"PostgreSQL {data.server_version()}; {os.cpu_count()} CPUs; {minutes:.1f} min"
    ]
    if counting:
        out += counting_lines(args, counting)
    if scraping:
        out += scrape_lines(args, scraping)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
