"""The HTTP side under attack (issue #16), against a real exporter process on loopback:
basic auth at bcrypt cost 10, the embedded demo database. Prints one table; asserts
nothing. Every loop is bounded in count and time; only 127.0.0.1 is contacted.

    .venv/bin/python bench/attack.py

- timing: median of wrong passwords for a known user against an unknown user;
- a failed-auth flood (16 threads, 10 s): a good client's median meanwhile, CPU used;
- 40 concurrent requests with 98 headers of 65 KB each: answers, resident memory;
- 300 slowloris connections (a byte a second): how many are still open after 15 s;
- 3,000 idle connections: threads, resident memory, a good client's median.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import yaml

PASSWORD = "correct horse battery staple"  # noqa: S105 - the bench's own
HZ = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(port: int, auth: str, path: str = "/metrics") -> tuple[int, float]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n".encode()
        )
        head = s.recv(64)
        while s.recv(65536):
            pass
    return int(head.split()[1]), time.perf_counter() - started


def median_ms(port: int, auth: str, n: int = 40, path: str = "/metrics") -> float:
    return 1e3 * statistics.median(get(port, auth, path)[1] for _ in range(n))


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="convrs-attack-"))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = tmp / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    port = free_port()
    log = (tmp / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--web.config.file",
            str(web),
            "--demo.path",
            str(tmp / "demo.sqlite"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CONVRS_EXPORTER_LOG_LEVEL": "warn"},
    )
    rows: list[tuple[str, str]] = []
    good = basic("prom", PASSWORD)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, IndexError, ValueError):
                if get(port, good, "/readyz")[0] == 200:
                    break
            time.sleep(0.2)
        idle_rss = rss_mb(proc.pid)
        base = median_ms(port, good)
        rows.append(("idle: RSS / threads", f"{idle_rss:.0f} MB / {threads(proc.pid)}"))
        rows.append(("good client median, quiet", f"{base:.1f} ms"))

        wrong = [1e3 * get(port, basic("prom", f"wrong{i}"))[1] for i in range(30)]
        unknown = [1e3 * get(port, basic(f"nobody{i}", "x"))[1] for i in range(30)]
        w, u = statistics.median(wrong), statistics.median(unknown)
        rows.append(("wrong password / unknown user, medians", f"{w:.1f} / {u:.1f} ms"))

        stop = time.monotonic() + 10
        cpu0 = cpu_seconds(proc.pid)

        def flood(n: int) -> None:
            i = 0
            while time.monotonic() < stop:
                i += 1
                with contextlib.suppress(OSError):
                    get(port, basic("prom", f"flood{n}-{i}"))

        flooders = [threading.Thread(target=flood, args=(n,)) for n in range(16)]
        for t in flooders:
            t.start()
        time.sleep(1)
        during = median_ms(port, good, 40)
        for t in flooders:
            t.join()
        cpu = 100 * (cpu_seconds(proc.pid) - cpu0) / 10
        rows.append(("failed-auth flood, 16 threads: good median", f"{during:.1f} ms"))
        rows.append(("  exporter CPU during the flood", f"{cpu:.0f}%"))

        pad = b"".join(b"X-Pad-%d: " % i + b"a" * 65000 + b"\r\n" for i in range(98))
        answers: list[bytes] = []
        peak = [idle_rss]

        def huge() -> None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(30)
                with contextlib.suppress(OSError):
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n")
                answers.append(s.recv(32)[:12])

        hugers = [threading.Thread(target=huge) for _ in range(40)]
        for t in hugers:
            t.start()
        while any(t.is_alive() for t in hugers):
            peak[0] = max(peak[0], rss_mb(proc.pid))
            time.sleep(0.05)
        codes = sorted({a.decode(errors="replace") for a in answers})
        rows.append(("40 requests x 98 headers of 65 KB: answers", ", ".join(codes) or "-"))
        rows.append(("  RSS peak / after", f"{peak[0]:.0f} / {rss_mb(proc.pid):.0f} MB"))

        slow = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"G")
            slow.append(s)
        open_after = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:
            for s in slow:
                with contextlib.suppress(OSError):
                    s.sendall(b"E")
            time.sleep(1)
        for s in slow:
            s.setblocking(False)
            try:
                s.recv(1)  # b"" or a 4xx: the server has closed it
            except BlockingIOError:  # nothing yet: still held open
                open_after += 1
            except OSError:  # reset by the server
                pass
        rows.append(("300 slowloris connections: open after 15 s", str(open_after)))
        for s in slow:
            s.close()

        idle = []
        for _ in range(3000):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        time.sleep(1)
        n_threads, rss = threads(proc.pid), rss_mb(proc.pid)
        during_idle = median_ms(port, good, 40)
        rows.append(
            (
                f"{len(idle)} idle connections: threads / RSS",
                f"{n_threads} / {rss:.0f} MB ({rss / idle_rss:.2f}x idle)",
            )
        )
        rows.append(("  good client median meanwhile", f"{during_idle:.1f} ms"))
        for s in idle:
            s.close()
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    width = max(len(r[0]) for r in rows)
    print("\nconvrs-exporter under attack (basic auth, bcrypt cost 10, loopback)")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
