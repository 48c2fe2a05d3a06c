"""HTTP: /metrics (text or OpenMetrics, gzip when asked), /healthz, /readyz and a landing page.

A scrape reads the latest pre-rendered snapshot and renders only the exporter's own
few metrics: it never touches the database, holds no lock while writing, and each
connection has its own thread, so scrapes run concurrently and cannot delay collection.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from . import orgpage
from .exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Exposition,
    accepts,
    wants_openmetrics,
)
from .health import Health
from .orgpage import OrgPage

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
    org_page: OrgPage = field(default_factory=OrgPage)
    """The Organization Metrics page, from the snapshot /metrics serves."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9653``, ``0.0.0.0:9653``, ``[::1]:9653`` -> (host, port); empty host is all IPv4."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("the listen address must be host:port (e.g. :9653)")
    return host.strip("[]") or "0.0.0.0", int(port)


class Server(ThreadingHTTPServer):
    """One thread per connection, within limits that hold against a hostile network:

    - at most ``max_connections`` at once; at the limit a new connection takes the place
      of the one that has sent least (idle between requests, or dribbling its headers
      longest), so that a flood of idle or slow connections cannot lock a client out;
    - a request's line and headers must arrive whole within ``header_timeout`` seconds
      of its first byte (slowloris), and hold at most ``max_header_bytes`` (431);
    - errors of a connection (resets, TLS end-of-file) are logged at debug level."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = 256
    header_timeout = 10.0
    max_header_bytes = 16 * 1024
    max_body_bytes = 64 * 1024

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._open: dict[socket.socket, Connection] = {}
        self._open_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, Handler)
        reaper = threading.Thread(target=self._reap, name="http-reaper", daemon=True)
        reaper.start()

    def _reap(self) -> None:
        """Cut the connections whose request headers have been arriving for longer than
        ``header_timeout``: a socket timeout bounds each read, and a client that sends a
        byte a second never lets one expire (slowloris)."""
        while not self._closed.wait(min(0.5, self.header_timeout / 4)):
            now = time.monotonic()
            with self._open_lock:
                slow = [
                    c
                    for c in self._open.values()
                    if c.state == Connection.HEADERS and now - c.since > self.header_timeout
                ]
            for conn in slow:
                conn.evict()

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accepting thread: make room (or refuse), then a thread for it."""
        with self._open_lock:
            if len(self._open) >= self.max_connections:
                quiet = min(self._open.values(), key=Connection.rank, default=None)
                if quiet is None or not quiet.evictable():
                    self.shutdown_request(request)
                    return
                quiet.evict()
                del self._open[quiet.sock]
            self._open[request] = Connection(request)
        super().process_request(request, client_address)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().close_request(request)

    def connection(self, sock: socket.socket) -> Connection | None:
        with self._open_lock:
            return self._open.get(sock)

    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake, so a slow one blocks no one."""
        if self.app.ssl_context is not None:
            request.settimeout(self.header_timeout)
            try:
                request = self.app.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake failed", extra={"peer": client_address[0], "err": exc})
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection's failure (a reset, a TLS EOF): one debug line, no traceback."""
        exc = sys.exc_info()[1]
        log.debug(
            "connection ended with an error",
            extra={"peer": client_address[0] if client_address else "", "err": repr(exc)},
        )

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


class Connection:
    """What the server knows of an open connection, to choose one to drop at the limit."""

    IDLE, HEADERS, BUSY = 0, 1, 2

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = self.IDLE
        self.since = time.monotonic()

    def set(self, state: int) -> None:
        self.state, self.since = state, time.monotonic()

    def rank(self) -> tuple[int, float]:
        """Idle first, then slow headers; the longest in that state first."""
        return (self.state, self.since)

    def evictable(self) -> bool:
        return self.state != self.BUSY

    def evict(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle between requests: a quiet client loses its connection, no one else's
    server_version = "convrs-exporter"

    def handle_one_request(self) -> None:
        """BaseHTTPRequestHandler's, reading the request's line and headers within the
        limits of the server (bytes, and time from the first byte)."""
        conn = self.server.connection(self.request) or Connection(self.request)
        conn.set(Connection.IDLE)
        try:
            # waits up to ``timeout`` for a request to begin
            if not cast(io.BufferedReader, self.rfile).peek(1):
                self.close_connection = True
                return
            conn.set(Connection.HEADERS)
            head = self._read_head()
            if head is None:
                return
            conn.set(Connection.BUSY)
            self.connection.settimeout(self.timeout)
            line, _, headers = head.partition(b"\n")
            self.raw_requestline = line + b"\n"
            rfile, self.rfile = self.rfile, io.BytesIO(headers)
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = rfile
            if not parsed:
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501, "Unsupported method")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.debug("connection closed", extra={"peer": self.client_address[0], "err": exc})
            self.close_connection = True

    def _read_head(self) -> bytes | None:
        """The request line and headers, up to the blank line; None (connection closed,
        after a 431 where there was too much) when they are too long or too slow."""
        limit, deadline = (
            self.server.max_header_bytes,
            time.monotonic() + self.server.header_timeout,
        )
        lines: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request headers too slow")
            self.connection.settimeout(left)
            line = self.rfile.readline(limit - size + 1)
            size += len(line)
            if size > limit:
                self.close_connection = True
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
                self.send_error(431, "Request Header Fields Too Large")
                return None
            if not line:
                self.close_connection = True
                return None
            if line in (b"\r\n", b"\n"):
                if lines:
                    return b"".join([*lines, line])
                continue  # a stray blank line before the request line
            lines.append(line)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if self._refused(app, path):
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= self.server.max_body_bytes:
            self.close_connection = True
            code, why = (400, b"Bad Content-Length\n") if length < 0 else (413, b"Too large\n")
            self._send(code, why, "text/plain; charset=utf-8", False)
            return
        if length:
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
        path, _, query = self.path.partition("?")
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
        elif path == orgpage.PATH:
            org = urllib.parse.parse_qs(query, keep_blank_values=True).get("org", [None])[0]
            page = app.org_page.render(app.exposition.specs, app.exposition.served, org)
            self._send(page.status, page.body, "text/html; charset=utf-8", head)
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
        f'<li><a href="{orgpage.PATH}">Organization Metrics</a> (the platform page\'s cards)'
        "</li>"
        '<li><a href="/healthz">/healthz</a></li><li><a href="/readyz">/readyz</a></li>'
        "</ul></body></html>\n"
    ).encode()
