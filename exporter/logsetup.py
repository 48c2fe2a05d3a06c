"""Logging in logfmt or JSON, with every known secret scrubbed from every line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__()
        self.fmt = fmt
        self.secrets = secrets  # shared, so secrets added later are scrubbed too

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        line = (
            json.dumps(fields, default=str, ensure_ascii=False)
            if self.fmt == "json"
            else " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        )
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


_SECRETS: list[str] = []
"""Every secret seen so far: kept across setup() calls (a reload), scrubbed from every line."""


def setup(level: str, fmt: str, secrets: list[str] | None = None) -> None:
    for secret in secrets or []:
        add_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, _SECRETS))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # APScheduler asks tzlocal for the local zone; its debug lines say nothing of ours
    logging.getLogger("tzlocal").setLevel(max(_LEVELS[level], logging.INFO))


def add_secret(secret: str | None) -> None:
    """Scrub this value too (a password learned after logging was set up)."""
    if secret and secret not in _SECRETS:
        _SECRETS.append(secret)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text
