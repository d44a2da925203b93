"""Daemon settings: config.toml -> frozen ``Settings``, checked at load.

Where the file comes from, first match wins: ``--config FILE``, ``$REMIND_CONFIG``,
``./config.toml``, ``/etc/remind/config.toml``. ``$REMIND_STORE_URL`` overrides
``[store] url``. Relative paths (a SQLite file, the policy directory) are read relative to
the config file's own folder, so the same file works from any working directory.
Secrets never live here; channels read them from the environment or systemd credentials.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.errors import ConfigError

__all__ = [
    "DEFAULT_LOCATIONS",
    "ChannelSettings",
    "DaemonSettings",
    "Settings",
    "find_config",
    "load_settings",
]

DEFAULT_LOCATIONS: tuple[Path, ...] = (Path("config.toml"), Path("/etc/remind/config.toml"))
DEFAULT_AUDIT_RETENTION_DAYS = 730

_SCHEMA: dict[str, dict[str, type]] = {
    "store": {"url": str, "audit_retention_days": int},
    "ops": {"timezone": str, "lender_name": str},
    "borrower_defaults": {"timezone": str, "country": str, "language": str, "currency": str},
    "policy": {"dir": str},
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
    #: ``[store] audit_retention_days``: audit events younger than this are never pruned
    #: (default 730 days, two years: the card rules' minimum).
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS
    channels: Mapping[str, ChannelSettings] = field(default_factory=dict)


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
        channels=_channels(path, data.get("channels", {})),
        audit_retention_days=_retention(path, data.get("store", {})),
    )
    return settings


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
    for key in ("plan_days", "batch_size", "lease_seconds", "max_attempts"):
        if key in values and values[key] < 1:
            raise ConfigError(f"{path}: daemon.{key} must be at least 1")
    if "dispatch_every_seconds" in values:
        values["dispatch_every_seconds"] = float(values["dispatch_every_seconds"])
    return DaemonSettings(**values)


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


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    for section, body in data.items():
        if section == "channels":
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: channels must be a table of [channels.KIND] tables")
            continue
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
