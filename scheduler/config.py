"""Daemon settings: config.toml -> frozen ``Settings``, checked at load.

Where the file comes from, first match wins: ``--config FILE``, ``$REMIND_CONFIG``,
``./config.toml``, ``/etc/remind/config.toml``. ``$REMIND_STORE_URL`` overrides
``[store] url``. Relative paths (a SQLite file, the policy directory, a drop folder) are read
relative to the config file's own folder, so the same file works from any working directory.
Secrets never live here; channels and account sources name an environment variable or a
systemd credential holding them (read by ``channels.secrets.read_secret`` when used).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger

from scheduler.errors import ConfigError

__all__ = [
    "DEFAULT_LOCATIONS",
    "ChannelSettings",
    "DaemonSettings",
    "PlannerSettings",
    "Settings",
    "SourceSettings",
    "find_config",
    "load_settings",
]

DEFAULT_LOCATIONS: tuple[Path, ...] = (Path("config.toml"), Path("/etc/remind/config.toml"))
DEFAULT_AUDIT_RETENTION_DAYS = 730
#: ``[import] parse_workers``: processes that check rows while ``remind accounts import``
#: writes them (1: the importing process checks them itself).
DEFAULT_PARSE_WORKERS = 2

_SCHEMA: dict[str, dict[str, type]] = {
    "store": {"url": str, "audit_retention_days": int},
    "ops": {"timezone": str, "lender_name": str},
    "borrower_defaults": {"timezone": str, "country": str, "language": str, "currency": str},
    "policy": {"dir": str},
    "import": {"parse_workers": int},
    "planner": {"workers": int},
    "daemon": {
        "plan_every_seconds": int,
        "plan_days": int,
        "dispatch_every_seconds": float,
        "watch_every_seconds": int,
        "batch_size": int,
        "lease_seconds": int,
        "max_attempts": int,
        "retry_base_seconds": int,
        "retry_max_seconds": int,
        "short_retries": int,
        "drain_seconds": int,
        "metrics_port": int,
        "dispatch_processes": int,
    },
}
#: Keys of a ``[channels.KIND]`` table that the dispatcher reads; the rest go to the adapter.
_LANE_KEYS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "concurrency": int,
    "rate_per_second": (int, float),
}
#: Adapter options naming a file: made absolute against the config file's folder.
_PATH_OPTIONS = frozenset({"path", "ca_file"})


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """``[daemon]``: how often each tick runs and how contacts are claimed and retried."""

    plan_every_seconds: int = 600
    plan_days: int = 2
    dispatch_every_seconds: float = 2.0
    watch_every_seconds: int = 30
    batch_size: int = 200
    lease_seconds: int = 120
    max_attempts: int = 5
    retry_base_seconds: int = 60
    retry_max_seconds: int = 3600
    short_retries: int = 2
    drain_seconds: int = 30
    metrics_port: int = 0
    dispatch_processes: int = 1


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: ``[planner] workers`` when the key is absent: one per CPU this process may use, at most 4.
MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """``[planner]``: ``workers`` is how many shards (account_id ranges) a whole-store plan
    (``remind dry-run``, the daemon's plan tick) is split into, each loaded and planned in
    its own process; 1 plans in-process. Absent: one per usable CPU, at most 4."""

    workers: int = field(default_factory=lambda: min(_usable_cpus(), MAX_DEFAULT_WORKERS))


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """``[channels.KIND]``: which adapter serves a channel kind (sms, email, call, letter),
    how many sends may be in flight at once, the provider's rate limit (0: none), and the
    adapter's own options (passed to its factory as keyword arguments)."""

    kind: str
    type: str
    concurrency: int = 4
    rate_per_second: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """One ``[[sources]]`` table: where the daemon reads accounts by itself, and when.

    ``kind`` is ``sql`` (``url``, ``query``, optional ``watermark_column``; the password is
    named by ``password_env``/``password_credential``, never written here) or ``folder``
    (``path``, ``settle_seconds``, optional ``format``). The schedule is exactly one of
    ``every_seconds`` (an interval) and ``cron`` (five crontab fields, in ``[ops] timezone``).
    """

    name: str
    kind: str
    every_seconds: float | None = None
    cron: str | None = None
    enabled: bool = True
    url: str = ""
    password_env: str | None = None
    password_credential: str | None = None
    query: str = ""
    watermark_column: str | None = None
    batch_size: int = 5_000
    path: Path | None = None
    settle_seconds: float = 30.0
    format: str | None = None

    @property
    def schedule(self) -> str:
        """The schedule as people read it: ``every 60 s`` or ``cron 0 2 * * *``."""
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {self.every_seconds:g} s"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything config.toml says, validated and with paths made absolute."""

    config_path: Path
    store_url: str
    ops_timezone: str
    lender_name: str
    default_timezone: str
    default_country: str
    default_language: str
    default_currency: str
    policy_dir: Path
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    #: ``[store] audit_retention_days``: audit events younger than this are never pruned
    #: (default 730 days, two years: the card rules' minimum).
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS
    channels: Mapping[str, ChannelSettings] = field(default_factory=dict)
    sources: tuple[SourceSettings, ...] = ()
    #: ``[import] parse_workers``: worker processes that read and check the rows of
    #: ``remind accounts import`` while it writes them; 1 checks them in-process.
    import_parse_workers: int = DEFAULT_PARSE_WORKERS


def find_config(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Return the config file to use, or raise ``ConfigError`` naming every place looked at."""
    env = os.environ if env is None else env
    if explicit is not None:
        candidates: tuple[Path, ...] = (explicit,)
    elif env.get("REMIND_CONFIG"):
        candidates = (Path(env["REMIND_CONFIG"]),)
    else:
        candidates = DEFAULT_LOCATIONS
    for path in candidates:
        if path.is_file():
            return path.resolve()
    looked = ", ".join(str(p) for p in candidates)
    raise ConfigError(f"no config file found (looked at {looked}); pass --config FILE")


def load_settings(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Find, read and validate config.toml. Raises ``ConfigError`` with the file and key."""
    env = os.environ if env is None else env
    path = find_config(explicit, env)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    _check_keys(path, data)
    base = path.parent

    def get(section: str, key: str, default: str) -> str:
        value = data.get(section, {}).get(key, default)
        return str(value)

    store_url = env.get("REMIND_STORE_URL") or get("store", "url", "sqlite:///var/remind.db")
    settings = Settings(
        config_path=path,
        store_url=_absolute_sqlite_url(store_url, base),
        ops_timezone=_zone(path, "ops.timezone", get("ops", "timezone", "UTC")),
        lender_name=get("ops", "lender_name", "Your lender"),
        default_timezone=_zone(
            path, "borrower_defaults.timezone", get("borrower_defaults", "timezone", "UTC")
        ),
        default_country=get("borrower_defaults", "country", "").upper(),
        default_language=get("borrower_defaults", "language", "en"),
        default_currency=get("borrower_defaults", "currency", ""),
        policy_dir=(base / get("policy", "dir", "policies")).resolve(),
        daemon=_daemon(path, data.get("daemon", {})),
        planner=_planner(path, data.get("planner", {})),
        channels=_channels(path, data.get("channels", {})),
        audit_retention_days=_retention(path, data.get("store", {})),
        sources=_sources(path, data.get("sources", []), get("ops", "timezone", "UTC")),
        import_parse_workers=_parse_workers(path, data.get("import", {})),
    )
    return settings


def _parse_workers(path: Path, table: Mapping[str, Any]) -> int:
    workers = table.get("parse_workers", DEFAULT_PARSE_WORKERS)
    if isinstance(workers, bool) or not 1 <= workers <= 64:
        raise ConfigError(f"{path}: import.parse_workers must be a whole number from 1 to 64")
    return int(workers)


def _retention(path: Path, table: Mapping[str, Any]) -> int:
    days = int(table.get("audit_retention_days", DEFAULT_AUDIT_RETENTION_DAYS))
    if days < DEFAULT_AUDIT_RETENTION_DAYS:
        raise ConfigError(
            f"{path}: store.audit_retention_days must be at least "
            f"{DEFAULT_AUDIT_RETENTION_DAYS} (two years: the card rules' minimum)"
        )
    return days


def _daemon(path: Path, table: dict[str, Any]) -> DaemonSettings:
    values = dict(table)
    for key, value in values.items():
        if value < 0:
            raise ConfigError(f"{path}: daemon.{key} must not be negative")
    for key in ("plan_days", "batch_size", "lease_seconds", "max_attempts", "dispatch_processes"):
        if key in values and values[key] < 1:
            raise ConfigError(f"{path}: daemon.{key} must be at least 1")
    if "dispatch_every_seconds" in values:
        values["dispatch_every_seconds"] = float(values["dispatch_every_seconds"])
    return DaemonSettings(**values)


def _planner(path: Path, table: dict[str, Any]) -> PlannerSettings:
    if "workers" not in table:
        return PlannerSettings()
    workers = table["workers"]
    if isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"{path}: planner.workers must be at least 1 (1: plan in-process)")
    return PlannerSettings(workers=workers)


def _channels(path: Path, table: dict[str, Any]) -> dict[str, ChannelSettings]:
    found: dict[str, ChannelSettings] = {}
    for kind, body in table.items():
        where = f"{path}: channels.{kind}"
        if kind not in _CHANNEL_KINDS:
            raise ConfigError(f"{where}: unknown channel kind; known: {sorted(_CHANNEL_KINDS)}")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ConfigError(f'{where}: needs type = "..." (e.g. "outbox", "sms_http")')
        for key, expected in _LANE_KEYS.items():
            if key in body and not isinstance(body[key], expected):
                raise ConfigError(f"{where}.{key} has the wrong type")
        concurrency = int(body.get("concurrency", 4))
        rate = float(body.get("rate_per_second", 0))
        if concurrency < 1 or rate < 0:
            raise ConfigError(f"{where}: concurrency must be >= 1 and rate_per_second >= 0")
        options = {k: v for k, v in body.items() if k not in _LANE_KEYS}
        for key in _PATH_OPTIONS & options.keys():
            options[key] = (path.parent / str(options[key])).resolve()
        found[kind] = ChannelSettings(kind, body["type"], concurrency, rate, options)
    return found


_CHANNEL_KINDS = frozenset({"sms", "email", "call", "letter"})


#: ``[[sources]]`` keys: every kind's, then each kind's own (another kind's key is refused).
_SOURCE_COMMON: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "kind": str,
    "every_seconds": (int, float),
    "cron": str,
    "enabled": bool,
}
_SOURCE_KINDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "sql": {
        "url": str,
        "password_env": str,
        "password_credential": str,
        "query": str,
        "watermark_column": str,
        "batch_size": int,
    },
    "folder": {"path": str, "settle_seconds": (int, float), "format": str},
}
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _sources(path: Path, table: Any, zone: str) -> tuple[SourceSettings, ...]:
    if not isinstance(table, list):
        raise ConfigError(f"{path}: sources must be written as [[sources]] tables")
    found: list[SourceSettings] = []
    for n, body in enumerate(table, 1):
        source = _source(path, f"sources[{n}]", body, zone)
        if any(s.name == source.name for s in found):
            raise ConfigError(f"{path}: sources[{n}].name: {source.name!r} is used twice")
        found.append(source)
    return tuple(found)


def _source(path: Path, where: str, body: Any, zone: str) -> SourceSettings:
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    kind = body.get("kind")
    if kind not in _SOURCE_KINDS:
        raise ConfigError(f'{path}: {where}.kind must be "sql" or "folder"')
    schema = {**_SOURCE_COMMON, **_SOURCE_KINDS[kind]}
    for key, value in body.items():
        expected = schema.get(key)
        if expected is None:
            raise ConfigError(f"{path}: {where}: unknown key {key!r} for a {kind} source; "
                              f"known: {sorted(schema)}")  # fmt: skip
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ConfigError(f"{path}: {where}.{key} has the wrong type")
    name = body.get("name", "")
    if not _SOURCE_NAME.fullmatch(name):
        raise ConfigError(f"{path}: {where}.name: letters, digits, '_', '.', '-' (up to 63)")
    where = f"sources.{name}"
    every, cron = body.get("every_seconds"), body.get("cron")
    if (every is None) == (cron is None):
        raise ConfigError(f"{path}: {where}: give exactly one of every_seconds and cron")
    if every is not None and every <= 0:
        raise ConfigError(f"{path}: {where}.every_seconds must be more than 0")
    if cron is not None:
        try:
            CronTrigger.from_crontab(cron, timezone=ZoneInfo(zone))
        except ValueError as exc:
            raise ConfigError(f'{path}: {where}.cron: {exc} (e.g. "*/5 * * * *")') from exc
    common = {"name": name, "kind": kind, "cron": cron, "enabled": body.get("enabled", True),
              "every_seconds": None if every is None else float(every)}  # fmt: skip
    if kind == "sql":
        return SourceSettings(**common, **_sql_source(path, where, body))
    return SourceSettings(**common, **_folder_source(path, where, body))


def _sql_source(path: Path, where: str, body: dict[str, Any]) -> dict[str, Any]:
    for key in ("url", "query"):
        if not body.get(key, "").strip():
            raise ConfigError(f"{path}: {where}.{key} is required for a sql source")
    try:
        url = sa.make_url(body["url"])
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"{path}: {where}.url: not a SQLAlchemy URL: {exc}") from exc
    if url.password is not None:
        raise ConfigError(
            f"{path}: {where}.url holds a password: secrets never go in config.toml; "
            "name where it is with password_env or password_credential"
        )
    column = body.get("watermark_column")
    if column is not None and not _COLUMN_NAME.fullmatch(column):
        raise ConfigError(f"{path}: {where}.watermark_column must be a plain column name")
    batch_size = body.get("batch_size", 5_000)
    if batch_size < 1:
        raise ConfigError(f"{path}: {where}.batch_size must be at least 1")
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        url = url.set(database=str((path.parent / database).resolve()))
    return {
        "url": url.render_as_string(hide_password=False),
        "password_env": body.get("password_env"),
        "password_credential": body.get("password_credential"),
        "query": body["query"].strip().rstrip(";").strip(),
        "watermark_column": column,
        "batch_size": batch_size,
    }


def _folder_source(path: Path, where: str, body: dict[str, Any]) -> dict[str, Any]:
    if not body.get("path", "").strip():
        raise ConfigError(f"{path}: {where}.path (the drop folder) is required")
    settle = body.get("settle_seconds", 30)
    if settle < 0:
        raise ConfigError(f"{path}: {where}.settle_seconds must not be negative")
    fmt = body.get("format")
    if fmt is not None and fmt not in ("csv", "jsonl"):
        raise ConfigError(f'{path}: {where}.format must be "csv" or "jsonl"')
    return {
        "path": (path.parent / body["path"]).resolve(),
        "settle_seconds": float(settle),
        "format": fmt,
    }


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    for section, body in data.items():
        if section == "channels":
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: channels must be a table of [channels.KIND] tables")
            continue
        if section == "sources":
            continue  # checked by _sources, table by table
        if section not in _SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]; known: {sorted(_SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section} must be a table")
        for key, value in body.items():
            expected = _SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError(
                    f"{path}: unknown key {section}.{key}; known: {sorted(_SCHEMA[section])}"
                )
            if not isinstance(value, expected) and not (
                expected is float and isinstance(value, int)
            ):
                raise ConfigError(f"{path}: {section}.{key} must be a {expected.__name__}")


def _zone(path: Path, key: str, name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{path}: {key}: unknown time zone {name!r}") from exc
    return name


def _absolute_sqlite_url(url: str, base: Path) -> str:
    """Make ``sqlite:///relative.db`` relative to the config file, not the working directory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == "sqlite:///:memory:":
        return url
    file_part = url[len(prefix) :]
    if file_part.startswith("/"):
        return url
    return prefix + str((base / file_part).resolve())
