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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.errors import ConfigError

__all__ = ["DEFAULT_LOCATIONS", "Settings", "find_config", "load_settings"]

DEFAULT_LOCATIONS: tuple[Path, ...] = (Path("config.toml"), Path("/etc/remind/config.toml"))

_SCHEMA: dict[str, dict[str, type]] = {
    "store": {"url": str},
    "ops": {"timezone": str, "lender_name": str},
    "borrower_defaults": {"timezone": str, "country": str, "language": str, "currency": str},
    "policy": {"dir": str},
}


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
    )
    return settings


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    for section, body in data.items():
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
            if not isinstance(value, expected):
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
