"""Command line: flags, environment, logging, signals. main() reads in a straight line:
flags, config, logger, the parts (database, specs, web config: checked), serve, wait.
The wiring of the parts, and reloading them, is runtime.py's."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from . import __version__, demo, logsetup, memory
from .config import Config, LogConfig, WebConfig, load_config, validation_error
from .db import redact_url_text
from .demo import sqlite_demo
from .errors import ConfigError
from .http import parse_listen_address
from .runtime import Runtime, open_database, prepare
from .webconfig import load_web_config

log = logging.getLogger("convrs_exporter")

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="convrs-exporter",
        description="Prometheus exporter for the Convrs platform's organization metrics.",
    )
    p.add_argument("--config.file", dest="config_file", help="YAML configuration file")
    p.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration (and the mapping against the database, "
        "if it answers), then exit: 0 if good, 2 if not",
    )
    p.add_argument(
        "--web.listen-address", dest="listen_address", help="address to listen on (default :9653)"
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        help="path under which to expose metrics (default /metrics)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        help="exporter-toolkit web configuration file (TLS, basic auth)",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="accept POST /-/reload (SIGHUP always reloads)",
    )
    p.add_argument("--log.level", dest="log_level", choices=["debug", "info", "warn", "error"])
    p.add_argument("--log.format", dest="log_format", choices=["logfmt", "json"])
    p.add_argument(
        "--demo.path",
        dest="demo_path",
        type=Path,
        help="SQLite file for the embedded demo database (default: a temporary "
        "file); used only when no database URL is configured",
    )
    p.add_argument(
        "--demo.seed",
        dest="demo_seed",
        action="store_true",
        help="create the reference schema in the configured database, fill it with "
        "demo data, and exit (for demo stacks; this one writes)",
    )
    p.add_argument("--version", action="version", version=f"convrs-exporter {__version__}")
    return p.parse_args(argv)


def fail(message: str) -> NoReturn:
    """The one line for a configuration that cannot run; known secrets scrubbed."""
    print(f"convrs-exporter: error: {logsetup.scrub(message)}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def with_flags(config: Config, args: argparse.Namespace) -> Config:
    web = {
        k: v
        for k, v in (
            ("listen_address", args.listen_address),
            ("telemetry_path", args.telemetry_path),
            ("config_file", args.web_config_file),
        )
        if v is not None
    }
    log_cfg = {
        k: v for k, v in (("level", args.log_level), ("format", args.log_format)) if v is not None
    }
    # through the models' validation, as the file's values went (model_copy would not check)
    try:
        return config.model_copy(
            update={
                "web": WebConfig.model_validate({**config.web.model_dump(), **web}),
                "log": LogConfig.model_validate({**config.log.model_dump(), **log_cfg}),
            }
        )
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        flag = {
            "listen_address": "--web.listen-address",
            "telemetry_path": "--web.telemetry-path",
            "config_file": "--web.config.file",
        }.get(field, f"--log.{field}")
        message = validation_error(exc, "command line").message
        raise ConfigError(message, source="command line", key=flag) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    memory.limit_arenas()
    ignored: list[str] = []

    def load() -> Config:
        ignored.clear()
        return with_flags(load_config(args.config_file, ignored=ignored), args)

    try:
        config = load()
    except ConfigError as exc:
        fail(exc.line())
    try:
        listen = parse_listen_address(config.web.listen_address)
    except ValueError as exc:
        fail(f"web.listen_address: {exc}")
    url = config.database.url.get_secret_value() if config.database.url else None
    logsetup.setup(config.log.level, config.log.format, [url] if url else [])
    if ignored:
        log.warning(
            "ignoring environment variables that name no setting",
            extra={"variables": ",".join(ignored)},
        )
    if config.web.config_file is not None:  # before anything slow: fail fast
        try:
            load_web_config(config.web.config_file)
        except ConfigError as exc:
            fail(exc.line())
    demo_url, writer = None, None
    if url is None:
        if args.demo_seed:
            fail("database.url: --demo.seed needs a database URL")
        path = args.demo_path or Path(tempfile.mkdtemp(prefix="convrs-demo-")) / "demo.sqlite"
        demo_url, writer = sqlite_demo(path)
        log.info(
            "no database configured: serving the embedded demo database", extra={"path": str(path)}
        )
    try:
        if args.demo_seed:
            assert url is not None
            return _seed(url, config)
        parts = prepare(config, demo_url)
    except ConfigError as exc:
        exc.source = exc.source or args.config_file or "configuration"
        fail(redact_url_text(exc.line()))
    if args.config_check:
        print(f"convrs-exporter: configuration OK ({args.config_file or 'defaults'})")
        parts.db.close()
        return 0

    runtime = Runtime(load, demo_url, writer, enable_lifecycle=args.enable_lifecycle)
    try:
        runtime.start(parts, listen)
    except OSError as exc:
        fail(f"web.listen_address: cannot listen on {config.web.listen_address}: {exc.strerror}")
    log.info(
        "listening",
        extra={
            "address": config.web.listen_address,
            "database": parts.db.describe(),
            "version": __version__,
        },
    )
    _serve_until_stopped(runtime)
    return 0


def _serve_until_stopped(runtime: Runtime) -> None:
    """SIGHUP reloads; SIGTERM and SIGINT stop: the running query is cancelled, connections
    closed, serving stopped, and the process exits 0 within a few seconds."""
    stop, hup = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    while not stop.wait(0.2):
        if hup.is_set():
            hup.clear()
            runtime.reload()
    log.info("stopping")
    if not runtime.stop(grace=3.0):
        log.warning("a collection was still running; exiting without waiting for it")
        logging.shutdown()
        os._exit(0)  # its worker thread would otherwise hold the exit until it ends


def _seed(url: str, config: Config) -> int:
    """--demo.seed: idempotent, so a demo stack can run it on every start."""
    db = open_database(url, config)
    if demo.already_seeded(db.engine):
        print("convrs-exporter: the database already holds organizations; not seeding")
        return 0
    summary = demo.seed(db.engine, seed=42)
    print(f"seeded {summary.organizations} organizations, {summary.messages} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
