"""Stalled and slow clients do not stop other scrapes from being answered."""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from tests.support import pg
from tests.support.expo import parse
from tests.support.procs import Exporter, http_get

IDLE, SLOW, SCRAPES = 200, 5, 20


def test_idle_connections_and_slow_readers_do_not_block_scrapes(seeded: Engine, tmp: Path) -> None:
    url = seeded.url.render_as_string(hide_password=False)
    config = {"collection": {"interval": "1s"}, "database": {"statement_timeout": "500ms"}}
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    held: list[socket.socket] = []
    stop = threading.Event()
    slow_bytes = [0] * SLOW
    try:
        for i in range(IDLE):  # connected, half a request line, then silence
            s = socket.create_connection(("127.0.0.1", exp.port))
            if i % 2:
                s.sendall(b"GET /met")
            held.append(s)

        def slow_reader(n: int) -> None:  # asks for /metrics, reads a byte a second
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", exp.port))
            held.append(s)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            while not stop.wait(1.0):
                with contextlib.suppress(OSError):
                    slow_bytes[n] += len(s.recv(1))

        readers = [
            threading.Thread(target=slow_reader, args=(n,), daemon=True) for n in range(SLOW)
        ]
        for r in readers:
            r.start()
        time.sleep(1.5)

        latencies = []
        want = pg.reference_counts(seeded)["convrs_flows"]
        for _ in range(SCRAPES):
            began = time.perf_counter()
            status, _, body = http_get(exp.url + "/metrics", timeout=10)
            latencies.append((time.perf_counter() - began) * 1000)
            assert status == 200
            assert parse(body.decode())["convrs_flows"] == want
        assert all(n >= 1 for n in slow_bytes)  # the slow readers are being served, slowly
        print(
            f"\nwith {IDLE} idle connections and {SLOW} slow readers held open: "
            f"{SCRAPES} scrapes answered, median {statistics.median(latencies):.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )
    finally:
        stop.set()
        for s in held:
            s.close()
        assert exp.stop() == 0, exp.log()
