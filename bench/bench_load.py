"""Scraping load: N client threads, each on its own keep-alive HTTP/1.1 connection, as
Prometheus scrapes (its Accept header, gzip), timing each request to the last body byte."""

from __future__ import annotations

import http.client
import math
import statistics
import threading
import time
from dataclasses import dataclass, field

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2.x sends when it scrapes."""

GZIP = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
IDENTITY = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "identity"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 values, p99 is the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class LoadResult:
    clients: int
    latencies: list[float] = field(default_factory=list)
    """Seconds, request sent to last byte read."""
    sizes: list[int] = field(default_factory=list)
    encodings: set[str] = field(default_factory=set)
    errors: int = 0
    wall: float = 0.0

    @property
    def n(self) -> int:
        return len(self.latencies)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else math.nan

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000 if self.latencies else math.nan

    @property
    def body_bytes(self) -> int:
        return int(statistics.median(self.sizes)) if self.sizes else 0


def scrape(
    port: int,
    headers: dict[str, str],
    clients: int,
    count: int | None = None,
    duration: float | None = None,
    cap: float | None = None,
    pace: float = 0.0,
    path: str = "/metrics",
) -> LoadResult:
    """Scrape with ``clients`` threads until ``count`` scrapes in all were made (or ``cap``
    seconds passed), or for ``duration`` seconds. A scrape begun in time is finished.
    With ``pace``, a client starts a scrape at most every ``pace`` seconds."""
    assert count is not None or duration is not None
    result = LoadResult(clients)
    lock = threading.Lock()
    issued = 0
    limit = duration if duration is not None else cap
    started = time.monotonic()
    deadline = started + limit if limit is not None else math.inf

    def claim() -> bool:
        nonlocal issued
        with lock:
            if time.monotonic() >= deadline or (count is not None and issued >= count):
                return False
            issued += 1
            return True

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            next_start = time.perf_counter()
            while claim():
                time.sleep(max(0.0, next_start - time.perf_counter()))
                t = time.perf_counter()
                next_start = t + pace
                try:
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    elapsed = time.perf_counter() - t
                except (OSError, http.client.HTTPException):
                    with lock:
                        result.errors += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    continue
                with lock:
                    if resp.status == 200:
                        result.latencies.append(elapsed)
                        result.sizes.append(len(body))
                        result.encodings.add(resp.getheader("Content-Encoding") or "identity")
                    else:
                        result.errors += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result.wall = time.monotonic() - started
    return result
