"""Command line: flags, environment, logging, signals, wiring. The only module that
imports everything; main() reads in a straight line: flags, config, logger,
database, specs, collection, HTTP, schedule, wait."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, demo, logsetup
from .collection import Collection
from .config import Config, LogConfig, WebConfig, load_config, validation_error
from .db import Database, classify, connect, fetch, read_only, redact_url_text
from .demo import Trickle, sqlite_demo
from .errors import ConfigError, QueryError
from .exposition import Health, ThresholdCollector
from .http import App, Server, parse_listen_address
from .mapping import Specs, build_specs
from .scheduler import Schedule
from .snapshot import Store
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


_SECRETS: list[str] = []


def fail(message: str) -> NoReturn:
    for secret in _SECRETS:
        message = message.replace(secret, "***")
    print(f"convrs-exporter: error: {message}", file=sys.stderr)
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


def check_mapping(db: Database, specs: Specs) -> None:
    """Run every query on no rows; if the database answers and a query fails, the mapping is
    wrong (a missing table or column): a configuration error. An unreachable database is not."""
    try:
        with db.engine.connect() as conn:
            for spec in specs.all():
                sql = f"SELECT * FROM ({spec.sql}) probe WHERE 1 = 0"
                with read_only(db, conn):
                    fetch(db, conn, spec.key, sql, {"after": 0, "settle": 0, "seen": 0})
    except QueryError as exc:
        raise ConfigError(exc.message, key=f"mapping.{exc.query}") from None
    except SQLAlchemyError as exc:
        log.warning(
            "database not reachable at start; the mapping will be checked by the first collection",
            extra={"err": classify(db, "database", exc).message},
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ignored: list[str] = []
    try:
        config = with_flags(load_config(args.config_file, ignored=ignored), args)
    except ConfigError as exc:
        fail(exc.line())
    try:
        listen = parse_listen_address(config.web.listen_address)
    except ValueError as exc:
        fail(f"web.listen_address: {exc}")
    url = config.database.url.get_secret_value() if config.database.url else None
    _SECRETS.extend([url] if url else [])
    logsetup.setup(
        config.log.level, config.log.format, [url] if url else []
    )  # the whole URL too: it may not parse
    if ignored:
        log.warning(
            "ignoring environment variables that name no setting",
            extra={"variables": ",".join(ignored)},
        )
    web = None
    if config.web.config_file is not None:
        try:
            web = load_web_config(config.web.config_file)
        except ConfigError as exc:
            fail(exc.line())
    store, writer = Store(), None
    if url is None:
        if args.demo_seed:
            fail("database.url: --demo.seed needs a database URL")
        path = args.demo_path or Path(tempfile.mkdtemp(prefix="convrs-demo-")) / "demo.sqlite"
        url, writer = sqlite_demo(path)
        log.info(
            "no database configured: serving the embedded demo database", extra={"path": str(path)}
        )
    try:
        db = connect(
            url,
            statement_timeout=config.database.statement_timeout,
            connect_timeout=config.database.connect_timeout,
            pool_size=config.database.pool_size,
        )
        logsetup.add_secret(db.secret)
        _SECRETS.extend([db.secret] if db.secret else [])
        if args.demo_seed:
            return _seed(db)
        specs = build_specs(config, db.dialect)
        check_mapping(db, specs)
    except ConfigError as exc:
        exc.source = exc.source or args.config_file or "configuration"
        fail(redact_url_text(exc.line()))
    if args.config_check:
        print(f"convrs-exporter: configuration OK ({args.config_file or 'defaults'})")
        return 0

    health = Health(
        [s.key for s in specs.all()],
        ThresholdCollector(
            config.thresholds.effective_defaults(),
            {o: t for o, t in config.thresholds.per_org().items() if specs.shard.owns(o)},
        ),
        interval=config.collection.interval,
    )
    collection = Collection(db, specs, config.collection, store, health)
    app = App(
        store,
        health,
        collection.ready,
        config.web.telemetry_path,
        authorize=web.authorize if web else None,
        ssl_context=web.ssl_context if web else None,
        headers=web.headers if web else {},
    )
    try:
        server = Server(listen, app)
    except OSError as exc:
        fail(f"web.listen_address: cannot listen on {config.web.listen_address}: {exc.strerror}")
    schedule = Schedule(collection)
    if writer is not None:
        schedule.every(2.0, Trickle(writer).tick, "demo-trickle")
    server.serve_in_thread()
    schedule.start()
    log.info(
        "listening",
        extra={
            "address": config.web.listen_address,
            "database": db.describe(),
            "version": __version__,
        },
    )
    _wait_for_stop()
    log.info("stopping")
    schedule.stop()
    server.shutdown()
    server.server_close()
    db.close()
    return 0


def _seed(db: Database) -> int:
    """--demo.seed: idempotent, so a demo stack can run it on every start."""
    if demo.already_seeded(db.engine):
        print("convrs-exporter: the database already holds organizations; not seeding")
        return 0
    summary = demo.seed(db.engine, seed=42)
    print(f"seeded {summary.organizations} organizations, {summary.messages} messages")
    return 0


def _wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


if __name__ == "__main__":
    sys.exit(main())
