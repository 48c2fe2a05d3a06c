"""Processes the benchmark starts (always ended again), progress lines, plain HTTP."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

_T0 = time.monotonic()


def log(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    elapsed = time.monotonic() - _T0
    print(f"[{elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its output in a log file; every one is stopped by stop_all()."""

    started: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as out:
            # its own session: a Ctrl-C in the terminal reaches only us, and we stop it
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        Proc.started.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in Proc.started:
            Proc.started.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.started):
            proc.stop()


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (MiB), from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


_LABEL = re.compile(rb'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(body: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in a text exposition, found without parsing the whole body."""
    out: list[tuple[dict[str, str], float]] = []
    text = b"\n" + body
    needle = b"\n" + name.encode()
    i = text.find(needle)
    while i >= 0:
        end = text.find(b"\n", i + 1)
        line = text[i + 1 : end if end >= 0 else len(text)]
        rest = line[len(needle) - 1 :]
        if rest[:1] == b"{":
            close = rest.rfind(b"}")
            labels = {k.decode(): v.decode() for k, v in _LABEL.findall(rest[1:close])}
            value = rest[close + 1 :].split()[0]
            out.append((labels, float(value)))
        elif rest[:1] == b" ":
            out.append(({}, float(rest.split()[0])))
        i = text.find(needle, i + 1)
    return out


def sample_sum(body: bytes, name: str, **labels: str) -> float | None:
    """The sum of a metric's samples whose labels include ``labels``; None if there is none."""
    values = [
        v for lbs, v in samples(body, name) if all(lbs.get(k) == w for k, w in labels.items())
    ]
    return sum(values) if values else None


def series_count(body: bytes) -> int:
    """Samples in a text exposition, not counting comments and counters' _created samples."""
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    comments = body.count(b"\n#") + (1 if body.startswith(b"#") else 0)
    return lines - comments - body.count(b"_created{") - body.count(b"_created ")


def git_describe(repo: Path) -> str:
    """The commit and whether exporter/ differs from it (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "exporter"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return head + (" + uncommitted changes in exporter/" if dirty else "")


def environ_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
