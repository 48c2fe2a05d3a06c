"""Command line: flags, environment, logging, signals. main() reads in a straight line:
flags, config, logger, the parts (database, specs, web config: checked), serve, wait.
The wiring of the parts, and reloading them, is runtime.py's."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from pydantic import ValidationError

from . import __version__, demo, logsetup, memory
from .cards import OrgCards, as_text
from .config import Config, LogConfig, WebConfig, load_config, validation_error
from .db import parse_url, redact_url_text, url_secrets
from .demo import sqlite_demo
from .errors import ConfigError
from .http import parse_listen_address
from .preview import cards_now, check_label_values
from .runtime import CHECKED, CHECKING, Parts, Runtime, open_database, prepare
from .webconfig import load_web_config

log = logging.getLogger("convrs_exporter")
T = TypeVar("T")

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
        "--output",
        choices=["text", "json"],
        default="text",
        help="--config.check: print its findings (and the organizations' cards) as text or JSON",
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


class SignalFlag:
    """Set by a signal handler, waited for by polling. Not a threading.Event: its set()
    takes a lock, and a second signal that arrives while the handler of the first holds
    it runs the handler again in the same thread, which then waits for itself forever
    (seen: a make that passed SIGTERM on to the exporter it ran, as the exporter's own
    SIGTERM was being handled). A handler here only stores a bool."""

    POLL = 0.02

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self._set:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.POLL, left))
        return self._set


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
    stop, hup = SignalFlag(), SignalFlag()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop is always clean
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
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
    secrets: list[str] = []
    if url:
        try:  # the parts that are secrets: a SQLite path is not one, and is logged
            secrets = url_secrets(parse_url(url))
        except ConfigError:  # a URL that does not parse cannot be redacted: never shown
            secrets = [url]
    logsetup.setup(config.log.level, config.log.format, secrets)
    if ignored:
        log.warning(
            "ignoring environment variables that name no setting",
            extra={"variables": ",".join(ignored)},
        )
    if config.web.config_file is not None:  # before anything slow: fail fast
        try:
            load_web_config(config.web.config_file, config.web.telemetry_path)
        except ConfigError as exc:
            fail(exc.line())
    with contextlib.ExitStack() as cleanup:
        return _run(args, config, url, listen, load, stop, hup, cleanup)


def _run(
    args: argparse.Namespace,
    config: Config,
    url: str | None,
    listen: tuple[str, int],
    load: Callable[[], Config],
    stop: SignalFlag,
    hup: SignalFlag,
    cleanup: contextlib.ExitStack,
) -> int:
    demo_url, writer = None, None
    if url is None:
        if args.demo_seed:
            fail("database.url: --demo.seed needs a database URL")
        path = args.demo_path
        if path is None:  # a temporary one, removed at exit
            path = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="convrs-demo-")))
            path /= "demo.sqlite"
        demo_url, writer = sqlite_demo(path)
        cleanup.callback(writer.dispose)
        log.info(
            "no database configured: serving the embedded demo database", extra={"path": str(path)}
        )
    try:
        if args.demo_seed:
            assert url is not None
            return _seed(url, config)
        parts = _until_stopped(lambda: prepare(config, demo_url), stop)
    except ConfigError as exc:
        exc.source = exc.source or args.config_file or "configuration"
        cleanup.close()
        fail(redact_url_text(exc.line()))
    if parts is None:
        log.info("stopped during the start-up check")
        return 0
    cleanup.callback(parts.db.close)
    if args.config_check:
        return _report_check(args, config, parts)

    runtime = Runtime(load, demo_url, writer, enable_lifecycle=args.enable_lifecycle)
    try:
        runtime.start(parts, listen)
    except OSError as exc:
        cleanup.close()
        fail(f"web.listen_address: cannot listen on {config.web.listen_address}: {exc.strerror}")
    log.info(
        "listening",
        extra={
            "address": config.web.listen_address,
            "database": parts.db.describe(),
            "version": __version__,
        },
    )
    if not _serve_until_stopped(runtime, stop, hup):
        log.warning("a collection was still running; exiting without waiting for it")
        cleanup.close()
        logging.shutdown()
        os._exit(0)  # its worker thread would otherwise hold the exit until it ends
    return 0


def _until_stopped(work: Callable[[], T], stop: SignalFlag) -> T | None:
    """``work`` in a thread of its own, so that SIGTERM ends the wait at once (the
    start-up check may wait for a lock or a network that does not answer); None if
    stopped first. Its statement is cancelled (``runtime.CHECKING``)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="start-up-check", daemon=True)
    thread.start()
    while thread.is_alive():
        if stop.wait(0.1):
            CHECKING.cancel()
            thread.join(2.0)
            return None
    if failure:
        raise failure[0]
    return result[0]


def _serve_until_stopped(runtime: Runtime, stop: SignalFlag, hup: SignalFlag) -> bool:
    """SIGHUP reloads (in a thread of its own: a reload waiting for a stalled database
    does not hold up a stop); SIGTERM and SIGINT stop: the running query is cancelled,
    connections closed, serving stopped. False when something was still running after the
    grace period (the caller exits without waiting for it)."""
    reloading: threading.Thread | None = None
    while not stop.wait(0.2):
        if hup.is_set() and (reloading is None or not reloading.is_alive()):
            hup.clear()
            reloading = threading.Thread(target=runtime.reload, name="reload", daemon=True)
            reloading.start()
    log.info("stopping")
    done: list[bool] = []
    stopper = threading.Thread(target=lambda: done.append(runtime.stop(grace=3.0)), daemon=True)
    stopper.start()
    stopper.join(4.0)
    return bool(done and done[0]) and (reloading is None or not reloading.is_alive())


def _report_check(args: argparse.Namespace, config: Config, parts: Parts) -> int:
    """--config.check: against a database that answered, the label values sampled and the
    organizations' cards as the platform's page shows them."""
    cards: list[OrgCards] = []
    sampled = 0
    if parts.checked == CHECKED:
        try:
            sampled = check_label_values(parts.db, parts.specs)
        except ConfigError as exc:
            exc.source = exc.source or args.config_file or "configuration"
            fail(exc.line())
        cards = cards_now(config, parts.db, parts.specs)
    source = args.config_file or "defaults"
    if args.output == "json":
        report = {
            "configuration": "ok",
            "source": source,
            "checked": parts.checked,
            "label_value_sets_checked": sampled,
            "organizations": [c.as_dict() for c in cards],
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"convrs-exporter: configuration OK ({source}; {parts.checked})")
    if parts.checked == CHECKED:
        print(f"label values: {sampled} sets checked against the contract\n")
        print(as_text(cards), end="")
    return 0


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
