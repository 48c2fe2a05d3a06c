"""Configuration: pydantic models, YAML loading, environment overrides.

Precedence, highest first: command-line flags (applied by the CLI), environment
variables ``CONVRS_EXPORTER_<SECTION>_<KEY>``, the YAML file, the defaults here.
The metric mapping starts from the reference mapping shipped with the package;
each metric given under ``mapping:`` replaces the reference entry whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping as AbcMapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from .contract import MAPPED_LABELS
from .errors import ConfigError
from .labels import zone

ENV_PREFIX = "CONVRS_EXPORTER_"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """Accept seconds as a number, or Prometheus-style text: ``500ms``, ``30s``, ``1m30s``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or text such as 30s")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            # the value is not echoed: a misplaced secret would be printed
            raise ValueError("not a duration (use e.g. 500ms, 30s, 5m, 1h)")
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise ValueError("a duration must be a number of seconds or text such as 30s")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]
SqlText = Annotated[str, Field(min_length=1)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _zone_name(name: str) -> str:
    zone(name)  # ValueError names what is accepted
    return name


class DatabaseConfig(Model):
    url: SecretStr | None = None
    statement_timeout: Duration = 10.0
    connect_timeout: Duration = 5.0
    pool_size: int = Field(default=2, ge=1, le=32)
    prepared_statements: bool = True
    """PostgreSQL: let psycopg prepare the statements a connection runs again and again.
    False behind a pooler that cannot keep them (PgBouncer in transaction mode before 1.21,
    or without max_prepared_statements)."""
    timezone: Annotated[str, AfterValidator(_zone_name)] = "UTC"
    """The zone of timestamps stored without one (PostgreSQL ``timestamp``, MySQL
    ``DATETIME``, SQLite text); MySQL sessions also read ``TIMESTAMP`` columns in it."""


class CollectionConfig(Model):
    interval: Duration = 30.0
    stale_after: Duration | None = None
    """How long the last good values of a failing metric are still served; 5 intervals."""
    settle_after: Duration = 30.0
    """How long a message id must have been seen before it is counted as final."""
    reconcile_interval: Duration | None = 6 * 3600.0
    """How often a full count checks the settled messages (None: never)."""
    state_file: Path | None = None
    """Where the message counter's state is kept across restarts (none: a restart counts
    the whole table again)."""
    state_every: Duration = 60.0
    """How often the state file is written at most (after a collection; and at stop)."""

    def stale_after_seconds(self, interval: float) -> float:
        return self.stale_after if self.stale_after is not None else 5 * interval


class LabelsConfig(Model):
    drop: list[Literal["channel", "sender"]] = []


class WebConfig(Model):
    listen_address: str = ":9653"
    telemetry_path: str = Field(default="/metrics", pattern=r"^/")
    config_file: Path | None = None


class LogConfig(Model):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


class TableMapping(Model):
    """A metric counted from a table, or given as one complete query."""

    query: SqlText | None = None
    table: SqlText | None = None
    org: SqlText | None = None
    joins: list[SqlText] = []
    filter: SqlText | None = None
    labels: dict[LabelName, SqlText] = {}
    value: SqlText = "count(*)"
    interval: Duration | None = None
    statement_timeout: Duration | None = None
    """This metric's own statement timeout (default ``database.statement_timeout``), below
    its interval: a slow count on its own schedule may take longer than the others."""

    @model_validator(mode="after")
    def _table_or_query(self) -> TableMapping:
        if self.query is not None:
            given = [k for k in ("table", "org", "filter") if getattr(self, k) is not None]
            if given or self.joins:
                raise ValueError(f"give either query or table/org/joins/filter, not both {given}")
        elif self.table is None or self.org is None:
            raise ValueError("needs table and org (or a complete query)")
        return self


class OrganizationsMapping(Model):
    query: SqlText | None = None
    table: SqlText | None = None
    id: SqlText | None = None
    name: SqlText | None = None
    filter: SqlText | None = None
    counting_since: SqlText | None = None
    """SQL expression for when message counting began, where the platform records it."""
    interval: Duration | None = None
    statement_timeout: Duration | None = None
    """This metric's own statement timeout (default ``database.statement_timeout``), below
    its interval: a slow count on its own schedule may take longer than the others."""

    @model_validator(mode="after")
    def _table_or_query(self) -> OrganizationsMapping:
        if self.query is None and (self.table is None or self.id is None or self.name is None):
            raise ValueError("needs table, id and name (or a complete query)")
        if self.query is not None and self.table is not None:
            raise ValueError("give either query or table, not both")
        return self


class MessagesMapping(Model):
    """Messages, counted incrementally past a strictly increasing key."""

    query: SqlText | None = None
    """A row source returning id, created_at, org and the labels (one row per message)."""
    table: SqlText | None = None
    org: SqlText | None = None
    key: SqlText | None = None
    timestamp: SqlText | None = None
    joins: list[SqlText] = []
    filter: SqlText | None = None
    labels: dict[LabelName, SqlText] = {}
    interval: Duration | None = None
    statement_timeout: Duration | None = None
    """This metric's own statement timeout (default ``database.statement_timeout``), below
    its interval: a slow count on its own schedule may take longer than the others."""

    @model_validator(mode="after")
    def _table_or_query(self) -> MessagesMapping:
        if self.query is None:
            missing = [k for k in ("table", "org", "key", "timestamp") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"needs {', '.join(missing)} (or a complete row query)")
        elif self.table is not None:
            raise ValueError("give either query or table, not both")
        return self


class MappingConfig(Model):
    organizations: OrganizationsMapping
    bots: TableMapping
    agents: TableMapping
    flows: TableMapping
    users: TableMapping
    messages: MessagesMapping

    @model_validator(mode="after")
    def _labels_match_contract(self) -> MappingConfig:
        for metric, required in MAPPED_LABELS.items():
            entry: TableMapping | MessagesMapping = getattr(self, metric)
            if entry.query is not None:
                continue  # a complete query's columns are checked when it runs
            got = set(entry.labels)
            if got != set(required):
                want = ", ".join(required) or "none"
                have = ", ".join(sorted(got)) or "none"
                raise ValueError(f"{metric}.labels must map exactly: {want} (got {have})")
        return self


NonNegative = Annotated[float, Field(ge=0)]


class ThresholdValues(Model):
    """Alert thresholds; the Prometheus rules compare against them (see config/prometheus)."""

    inbound_spike_per_minute: NonNegative | None = None
    """Inbound messages per minute (5m average) above which InboundSpike fires."""
    inbound_collapse_ratio: NonNegative | None = None
    """InboundCollapsed: the last 30m's inbound rate below this fraction of the last day's."""
    inbound_usual_min_per_minute: NonNegative | None = None
    """... but only for organizations that usually get at least this many per minute."""
    outbound_per_inbound_min: NonNegative | None = None
    outbound_per_inbound_max: NonNegative | None = None
    """The band for outbound per inbound messages over the last hour."""
    users_per_active_agent_max: NonNegative | None = None
    """... (an organization without an active agent is not alerted: bot-only by design)."""
    outbound_ratio_min_inbound_per_hour: NonNegative | None = None
    """OutboundRatioOutOfBand only for organizations with at least this many inbound
    messages in the last hour (a ratio of a handful of messages is noise)."""
    """Capacity: users per active agent above which UsersPerAgentHigh fires."""


THRESHOLD_DEFAULTS = ThresholdValues(
    inbound_spike_per_minute=1000,
    inbound_collapse_ratio=0.2,
    inbound_usual_min_per_minute=1,
    outbound_per_inbound_min=0.5,
    outbound_per_inbound_max=5,
    users_per_active_agent_max=500,
    outbound_ratio_min_inbound_per_hour=60,
)


class ThresholdsConfig(Model):
    defaults: ThresholdValues = THRESHOLD_DEFAULTS
    organizations: dict[str, ThresholdValues] = {}
    """By org id (as in the `org` label): only the thresholds that differ from the defaults."""

    def effective_defaults(self) -> dict[str, float]:
        """Every threshold's default: the configured one, else the built-in one."""
        builtin = THRESHOLD_DEFAULTS.model_dump()
        return {
            k: v if v is not None else builtin[k] for k, v in self.defaults.model_dump().items()
        }

    def per_org(self) -> dict[str, dict[str, float]]:
        return {
            org: {k: v for k, v in values.model_dump().items() if v is not None}
            for org, values in self.organizations.items()
        }


class ShardConfig(Model):
    """This replica's share of the organizations: those whose stable hash modulo ``total``
    is ``index`` (0-based)."""

    index: int = Field(default=0, ge=0)
    total: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _index_below_total(self) -> ShardConfig:
        if self.index >= self.total:
            raise ValueError(f"index ({self.index}) must be below total ({self.total})")
        return self


class Config(Model):
    database: DatabaseConfig = DatabaseConfig()
    collection: CollectionConfig = CollectionConfig()
    labels: LabelsConfig = LabelsConfig()
    web: WebConfig = WebConfig()
    log: LogConfig = LogConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    shard: ShardConfig = ShardConfig()
    mapping: MappingConfig

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> Config:
        default = self.database.statement_timeout
        shared = [self.collection.interval]
        for name, m in self.metric_mappings().items():
            interval = m.interval or self.collection.interval
            if m.statement_timeout is None:
                shared.append(interval)
            elif m.statement_timeout >= interval:
                raise ValueError(
                    f"mapping.{name}.statement_timeout ({m.statement_timeout:g}s) must be "
                    f"below its collection interval ({interval:g}s)"
                )
        if default >= min(shared):
            raise ValueError(
                f"database.statement_timeout ({default:g}s) must be "
                f"below the shortest collection interval ({min(shared):g}s)"
            )
        return self

    def statement_timeout(self, metric: str) -> float:
        own = self.metric_mappings()[metric].statement_timeout
        return own if own is not None else self.database.statement_timeout

    def metric_mappings(self) -> dict[str, TableMapping | MessagesMapping | OrganizationsMapping]:
        return {name: getattr(self.mapping, name) for name in MappingConfig.model_fields}


# --- YAML -----------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with ``!env NAME`` and ``!file path`` so secrets stay out of the YAML."""

    environ: AbcMapping[str, str] = os.environ


def _env_tag(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    name = loader.construct_scalar(node)  # type: ignore[arg-type]
    environ = loader.environ if isinstance(loader, _Loader) else os.environ
    value = environ.get(str(name))
    if value is None:
        raise yaml.MarkedYAMLError(
            problem=f"environment variable {name} is not set", problem_mark=node.start_mark
        )
    return value


def _file_tag(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    path = Path(str(loader.construct_scalar(node)))  # type: ignore[arg-type]
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise yaml.MarkedYAMLError(
            problem=f"cannot read {path}: {exc.strerror}", problem_mark=node.start_mark
        ) from None


_Loader.add_constructor("!env", _env_tag)
_Loader.add_constructor("!file", _file_tag)


def _load_yaml(text: str, source: str, environ: AbcMapping[str, str] | None = None) -> Any:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader rejects some characters already here
        if environ is not None:
            loader.environ = environ
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise ConfigError(f"{exc.problem or exc.context}", source=source, key=where) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"character {exc.character!r} at position {exc.position} is not allowed in YAML",
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"invalid YAML: {first}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def reference_mapping() -> dict[str, Any]:
    """The mapping for the reference schema, shipped with the package."""
    text = resources.files("exporter").joinpath("reference_mapping.yml").read_text()
    data = _load_yaml(text, "reference_mapping.yml")
    assert isinstance(data, dict)
    return data


# --- environment ------------------------------------------------------------

_SECTIONS = ("database", "collection", "labels", "web", "log", "thresholds", "shard")
_LIST_SETTINGS = {("labels", "drop")}


def _env_overrides(
    environ: AbcMapping[str, str], origins: dict[tuple[str, str], str], ignored: list[str]
) -> dict[str, Any]:
    """``CONVRS_EXPORTER_COLLECTION_INTERVAL=10s`` -> ``{"collection": {"interval": "10s"}}``.

    Values are text, but for lists (``labels.drop``: ``[channel, sender]`` or
    ``channel,sender``). The database URL may come from a file named by
    ``CONVRS_EXPORTER_DATABASE_URL_FILE``. Variables outside the known sections are left
    alone (named in ``ignored``): Kubernetes sets ``CONVRS_EXPORTER_PORT`` and the like for
    a Service of that name. ``origins`` maps (section, key) to the variable, for errors.
    """
    out: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "database_url_file":
            try:
                value: Any = Path(raw).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the file it names: {exc.strerror}", source="environment", key=name
                ) from None
            out.setdefault("database", {})["url"] = value
            origins[("database", "url")] = name
            continue
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            ignored.append(name)
            continue
        key = rest[len(section) + 1 :]
        value = raw
        if (section, key) in _LIST_SETTINGS:  # "[channel, sender]" or "channel,sender"
            text = raw.strip()
            value = (
                _load_yaml(text, "environment", environ)
                if text.startswith("[")
                else [item.strip() for item in text.split(",") if item.strip()]
            )
        out.setdefault(section, {})[key] = value
        origins[(section, key)] = name
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _error_key(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the failing validator's name in the location of tagged unions; drop it
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(top level)"


def load_config(
    path: str | Path | None = None,
    environ: AbcMapping[str, str] | None = None,
    ignored: list[str] | None = None,
) -> Config:
    """Read the YAML file (if any), apply environment overrides, validate everything.

    Environment variables with the prefix but no known section are appended to ``ignored``.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "configuration"
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read file: {exc.strerror}", source=source) from None
        data = _load_yaml(text, source, environ)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("the file must hold a mapping of settings", source=source)
    origins: dict[tuple[str, str], str] = {}
    data = _merge(data, _env_overrides(environ, origins, [] if ignored is None else ignored))
    mapping = data.get("mapping") or {}
    if not isinstance(mapping, dict):
        raise ConfigError("must be a mapping from metric to its SQL", source=source, key="mapping")
    data["mapping"] = {**reference_mapping(), **mapping}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, origins) from None


def validation_error(
    exc: ValidationError, source: str, origins: dict[tuple[str, str], str] | None = None
) -> ConfigError:
    """One ConfigError for all of pydantic's complaints; the first names where it came from."""
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        loc = tuple(str(p) for p in err["loc"])
        env = (origins or {}).get((loc[0], loc[1])) if len(loc) >= 2 else None
        problems.append((env, f"{_error_key(err['loc'])}: {msg}"))
    (env, first), *rest = problems
    key, _, message = first.partition(": ")
    if rest:
        message += f" (and {len(rest)} more: " + "; ".join(p for _, p in rest) + ")"
    if env is not None:
        return ConfigError(message, source="environment", key=env)
    return ConfigError(message, source=source, key=key)
