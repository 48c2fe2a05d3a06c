"""Real processes for the tests: the exporter, and a Prometheus server that scrapes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    pythonpath: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The exporter's command line run to its end, in a bare environment (PATH, what
    ``env`` adds, ``PYTHONPATH`` if given): its exit code and what it printed."""
    base = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def wait_until(
    predicate: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Exporter:
    """``convrs-exporter`` as a subprocess with a config file, on a free port."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.config_path = tmp / f"exporter-{self.port}.yml"
        self.config_path.write_text(yaml.safe_dump(config or {}, allow_unicode=True))
        self.log_path = tmp / f"exporter-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheme = "http"
        self.headers: dict[str, str] = {}
        self.context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.url + path, {**self.headers, **(headers or {})}, context=self.context)

    def start(self, wait_ready: bool = True) -> Exporter:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter.cli",
                "--config.file",
                str(self.config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait_ready:
            wait_until(
                lambda: self._alive() and self.get("/readyz")[0] == 200,
                timeout=30,
                what=f"exporter ready (log: {self.log()})",
            )
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited {self.proc.returncode}: {self.log()}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self, accept: str | None = None) -> str:
        status, _, body = self.get("/metrics", {"Accept": accept} if accept else {})
        assert status == 200
        return body.decode()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Prometheus:
    """A real Prometheus server scraping the given targets every second."""

    def __init__(
        self,
        tmp: Path,
        targets: list[str],
        rule_files: list[str] | None = None,
        extra_scrape: dict[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.dir = tmp / f"prometheus-{self.port}"
        self.dir.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files or [],
            "scrape_configs": [
                {
                    "job_name": "convrs",
                    "static_configs": [{"targets": targets}],
                    **(extra_scrape or {}),
                }
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: http_get(self.url + "/-/ready")[0] == 200, timeout=30, what="prometheus ready"
        )
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, _, body = http_get(
            self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        )
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(lb, "") for lb in labels): float(r["value"][1])
            for r in self.query(expr)
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
