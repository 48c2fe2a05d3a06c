"""The web configuration file (``--web.config.file``), in the Prometheus exporter-toolkit
format: TLS (certificate, key, versions, client CA for mutual TLS) and basic auth with
bcrypt-hashed passwords. The file is re-read at start only.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Model):
    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None
    # accepted for compatibility with exporter-toolkit files; Python's defaults apply
    cipher_suites: list[str] | None = None
    prefer_server_cipher_suites: bool | None = None
    curve_preferences: list[str] | None = None

    @model_validator(mode="after")
    def _ca_for_verification(self) -> TlsServerConfig:
        # Python verifies every client certificate it asks for, so each mode but
        # NoClientCert needs the CA (Request/RequireAny act as VerifyIfGiven/RequireAndVerify)
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        return self


class HttpServerConfig(_Model):
    http2: bool | None = None
    headers: dict[str, str] = {}


class WebFile(_Model):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = HttpServerConfig()
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    unauthenticated_paths: list[Literal["/healthz", "/readyz", "/"]] = []
    """convrs-exporter's extension: probes that stay open under basic auth (never /metrics)."""


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes.

    bcrypt is slow on purpose, so answers are cached (as exporter-toolkit does: a good
    client pays once), an unknown user costs what a known one does (a dummy hash of the
    users' highest cost: no user names found by timing), and at most ``WORKERS`` checks
    run at once (a flood of wrong passwords takes one core, not all of them, and waits
    in line)."""

    WORKERS = 1
    WAIT = 10.0
    """Seconds a check waits for its turn before it is refused."""
    CACHE = 1024

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {u: h.encode() for u, h in users.items()}
        cost = max((_cost(h) for h in self.users.values()), default=4)
        self._dummy = bcrypt.hashpw(b"dummy", bcrypt.gensalt(cost))
        self._known: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        self._work = threading.BoundedSemaphore(self.WORKERS)

    def __call__(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            raw = base64.b64decode(header[6:].strip(), validate=True)
            user, _, password = raw.decode().partition(":")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            return False
        hashed = self.users.get(user)
        token = hashlib.sha256(raw + b"\0" + (hashed or b"")).digest()
        with self._lock:
            known = self._known.get(token)
            if known is not None:
                self._known.move_to_end(token)
                return known
        ok = self._check(password.encode(), hashed)
        with self._lock:
            self._known[token] = ok
            if len(self._known) > self.CACHE:
                self._known.popitem(last=False)
        return ok

    def _check(self, password: bytes, hashed: bytes | None) -> bool:
        if not self._work.acquire(timeout=self.WAIT):
            return False
        try:
            ok = bcrypt.checkpw(password[:72], hashed or self._dummy)
            return ok and hashed is not None and len(password) <= 72
        except ValueError:  # a hash bcrypt cannot read
            return False
        finally:
            self._work.release()


def _cost(hashed: bytes) -> int:
    """The cost of a bcrypt hash: ``$2b$10$...`` is 10."""
    try:
        return int(hashed.split(b"$")[2])
    except (IndexError, ValueError):
        return 4


class WebSettings:
    def __init__(self, source: WebFile, ssl_context: ssl.SSLContext | None) -> None:
        self.file = source
        self.ssl_context = ssl_context
        self.authorize = BasicAuth(source.basic_auth_users) if source.basic_auth_users else None
        self.headers = dict(source.http_server_config.headers)
        self.open_paths = frozenset(source.unauthenticated_paths)


def load_web_config(path: Path, telemetry_path: str = "/metrics") -> WebSettings:
    """The web configuration file, checked; also against the telemetry path, which must
    never be one of the paths served without authentication."""
    settings = _load(path)
    if settings.authorize is not None and telemetry_path in settings.open_paths:
        raise ConfigError(
            f"{telemetry_path} is the telemetry path (--web.telemetry-path): listed in "
            "unauthenticated_paths, it would serve the metrics without a password",
            source=str(path),
            key="unauthenticated_paths",
        )
    return settings


def _load(path: Path) -> WebSettings:
    source = str(path)
    try:
        data: Any = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}".splitlines()[0], source=source) from None
    try:
        parsed = WebFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else str(err["msg"])
        raise ConfigError(msg.removeprefix("Value error, "), source=source, key=key) from None
    for user, hashed in parsed.basic_auth_users.items():
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError:
            raise ConfigError(
                "not a bcrypt hash", source=source, key=f"basic_auth_users.{user}"
            ) from None
    base = path.parent
    tls = parsed.tls_server_config
    context = _ssl_context(tls, base, source) if tls is not None else None
    return WebSettings(parsed, context)


def _ssl_context(tls: TlsServerConfig, base: Path, source: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.max_version:
        ctx.maximum_version = _VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(base / tls.cert_file, base / tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load certificate and key: {exc}",
            source=source,
            key="tls_server_config.cert_file",
        ) from None
    if tls.client_auth_type != "NoClientCert":
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth_type.startswith("Require") else ssl.CERT_OPTIONAL
        )
        if tls.client_ca_file is not None:
            try:
                ctx.load_verify_locations(base / tls.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client CA: {exc}",
                    source=source,
                    key="tls_server_config.client_ca_file",
                ) from None
    return ctx
