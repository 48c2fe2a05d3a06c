"""HTTP: /metrics (text or OpenMetrics, gzip when asked), /healthz, /readyz and a landing page.

A scrape reads the latest pre-rendered snapshot and renders only the exporter's own
few metrics: it never touches the database, holds no lock while writing, and each
connection has its own thread, so scrapes run concurrently and cannot delay collection.
"""

from __future__ import annotations

import contextlib
import html
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Exposition,
    accepts,
    wants_openmetrics,
)
from .health import Health

log = logging.getLogger("convrs_exporter.http")


@dataclass(frozen=True)
class App:
    exposition: Exposition
    health: Health
    ready: threading.Event
    telemetry_path: str = "/metrics"
    authorize: Callable[[str | None], bool] | None = None
    """Checks the Authorization header (basic auth from the web config), if configured."""
    ssl_context: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (web config http_server_config.headers)."""
    open_paths: frozenset[str] = frozenset()
    """Paths served without authentication (web config unauthenticated_paths)."""
    reload: Callable[[], tuple[bool, str]] | None = None
    """POST /-/reload, when --web.enable-lifecycle is given."""
    progress: Callable[[], str | None] = lambda: None
    """Why not ready yet, when there is more to say (the first count's progress)."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9653``, ``0.0.0.0:9653``, ``[::1]:9653`` -> (host, port); empty host is all IPv4."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {address!r} must be host:port (e.g. :9653)")
    return host.strip("[]") or "0.0.0.0", int(port)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake, so a slow one blocks no one."""
        if self.app.ssl_context is not None:
            request.settimeout(Handler.timeout)
            try:
                request = self.app.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake failed", extra={"peer": client_address[0], "err": exc})
                return
        super().finish_request(request, client_address)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # a stalled client loses its connection, not anyone else's
    server_version = "convrs-exporter"

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if self._refused(app, path):
            return
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= 65536:
            self.rfile.read(length)
        if path != "/-/reload" or app.reload is None:
            allow = "POST" if path == "/-/reload" else "GET, HEAD"
            self._send(
                405 if path == "/-/reload" else 404,
                b"Not allowed\n",
                "text/plain; charset=utf-8",
                False,
                {"Allow": allow},
            )
            return
        ok, message = app.reload()
        self._send(200 if ok else 500, message.encode() + b"\n", "text/plain; charset=utf-8", False)

    def _refused(self, app: App, path: str) -> bool:
        """401 unless the request carries valid credentials (when auth is configured)."""
        if app.authorize is None or path in app.open_paths:
            return False
        if app.authorize(self.headers.get("Authorization")):
            return False
        self._send(
            401,
            b"Unauthorized\n",
            "text/plain; charset=utf-8",
            self.command == "HEAD",
            {"WWW-Authenticate": 'Basic realm="convrs-exporter"'},
        )
        return True

    def _dispatch(self, head: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if self._refused(app, path):
            return
        if path == app.telemetry_path:
            self._metrics(head)
        elif path == "/healthz":
            self._send(200, b"OK\n", "text/plain; charset=utf-8", head)
        elif path == "/readyz":
            if app.ready.is_set():
                self._send(200, b"ready\n", "text/plain; charset=utf-8", head)
            else:
                why = app.progress() or "no successful collection yet"
                body = f"not ready: {why}\n".encode()
                self._send(503, body, "text/plain; charset=utf-8", head)
        elif path == "/":
            self._send(200, _landing(app.telemetry_path), "text/html; charset=utf-8", head)
        else:
            self._send(404, b"Not found\n", "text/plain; charset=utf-8", head)

    def _metrics(self, head: bool) -> None:
        app = self.server.app
        om = wants_openmetrics(self.headers.get("Accept"))
        data = app.exposition.want(om)
        own = app.health.render(om)
        content_type = OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE
        headers = {"Vary": "Accept, Accept-Encoding"}
        if accepts(self.headers.get("Accept-Encoding"), "gzip"):
            # the data part was compressed once; only our own lines are compressed now
            headers["Content-Encoding"] = "gzip"
            closing = data.closing(own)  # the prefix is sent as it is: no per-scrape copy
            self._start(200, content_type, len(data.prefix) + len(closing), headers)
            if not head:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data.prefix)
                    self.wfile.write(closing)
            return
        # no gzip (curl, a person): stream the data part out of its compressed form
        self._start(200, content_type, data.length + len(own), headers)
        if head:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for chunk in data.chunks():
                self.wfile.write(chunk)
            self.wfile.write(own)

    def _start(
        self, code: int, content_type: str, length: int, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in {**self.server.app.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._start(code, content_type, len(body), headers)
        if not head:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args)


def _landing(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return (
        "<!doctype html><html><head><title>convrs-exporter</title></head><body>"
        "<h1>convrs-exporter</h1><p>Convrs organization metrics for Prometheus.</p><ul>"
        f'<li><a href="{path}">{path}</a></li>'
        '<li><a href="/healthz">/healthz</a></li><li><a href="/readyz">/readyz</a></li>'
        "</ul></body></html>\n"
    ).encode()
