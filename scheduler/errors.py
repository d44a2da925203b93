"""Every error remind raises on purpose, in one tree.

::

    RemindError
    ├── ConfigError            config.toml missing, unreadable or invalid (raised at load)
    ├── PolicyError            one or more problems in policy files; each names file, key, line
    ├── ImportFileError        an input file as a whole cannot be imported (nothing is)
    ├── SourceError            an account source cannot be read now (database down, folder gone)
    ├── StoreError             the store cannot be used as asked
    │   └── SchemaBehindError  the store's schema is older than the code: run `remind db upgrade`
    └── ChannelError           a channel could not deliver a message
        ├── TransientChannelError  may succeed later; carries ``retry_after`` seconds (or None)
        └── PermanentChannelError  will never succeed (invalid number, opted out at the provider)

Vendor exceptions (SQLAlchemy, httpx, smtplib) are mapped to these in one place per module,
always with ``raise ... from exc`` so the cause stays in the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ChannelError",
    "ConfigError",
    "ImportFileError",
    "PermanentChannelError",
    "PolicyError",
    "PolicyProblem",
    "RemindError",
    "SchemaBehindError",
    "SourceError",
    "StoreError",
    "TransientChannelError",
]


class RemindError(Exception):
    """Base class of every error remind raises on purpose."""


class ConfigError(RemindError):
    """config.toml (or an environment override) is missing, unreadable or invalid."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem in one policy file: where it is, what is wrong, how to fix it."""

    file: str
    key: str
    line: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class PolicyError(RemindError):
    """The policy files are invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in problems))


class ImportFileError(RemindError):
    """The file as a whole cannot be imported (unreadable, unknown format, missing a
    required column, not UTF-8). Nothing is imported. (A bad *row* is not an error: it is
    reported as ``importer.RowProblem`` and the good rows still import.)"""


class SourceError(RemindError):
    """An account source (``[[sources]]``) cannot be read now: its database is unreachable
    or its query fails, its drop folder is missing or unreadable. The run is recorded as
    failed and the next scheduled run tries again."""


class StoreError(RemindError):
    """The store cannot be used as asked (unreachable, locked, inconsistent)."""


class SchemaBehindError(StoreError):
    """The store's schema is older than this code; the message names the command that fixes it."""


class ChannelError(RemindError):
    """A channel could not deliver a message."""


class TransientChannelError(ChannelError):
    """Delivery may succeed later (rate limit, 5xx, timeout). ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """Delivery will never succeed for this message (invalid number, opted out): never retry."""
