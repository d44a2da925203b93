"""Pieces every CLI command shares: the ``--config`` option, settings and store opening,
and the mapping of remind's errors to exit codes and one clear line on stderr."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from scheduler.config import Settings, load_settings
from scheduler.errors import ConfigError, PolicyError, RemindError, StoreError

__all__ = [
    "ConfigOption",
    "NowOption",
    "err_console",
    "exits_cleanly",
    "now_from",
    "settings_from",
]

err_console = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="config.toml to use (else $REMIND_CONFIG, ./config.toml, /etc/remind/config.toml).",
        show_default=False,
    ),
]

NowOption = Annotated[
    datetime | None,
    typer.Option("--now", hidden=True, help="Pretend it is this instant (ISO 8601, with offset)."),
]

P = ParamSpec("P")
R = TypeVar("R")

#: Exit codes: 0 ok, 1 done with rejected input, 2 invalid config/policy/usage, 3 store problem.
EXIT_INVALID = 2
EXIT_STORE = 3


def now_from(pinned: datetime | None) -> datetime:
    """The instant a command works at: the real clock, or ``--now`` (aware, as UTC)."""
    if pinned is None:
        return datetime.now(UTC)
    if pinned.tzinfo is None:
        raise typer.BadParameter("--now needs a UTC offset, e.g. 2026-11-23T20:00:00+08:00")
    return pinned.astimezone(UTC)


def settings_from(config: Path | None) -> Settings:
    return load_settings(config)


def exits_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn remind's own errors into one readable line on stderr and a documented exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PolicyError as exc:
            err_console.print(f"[bold red]policy invalid[/] ({len(exc.problems)} problems):")
            for problem in exc.problems:
                err_console.print(f"  {problem}", markup=False)
            raise typer.Exit(EXIT_INVALID) from exc
        except ConfigError as exc:
            err_console.print(f"[bold red]config error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_INVALID) from exc
        except StoreError as exc:
            err_console.print(f"[bold red]store error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_STORE) from exc
        except RemindError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc

    return wrapper
