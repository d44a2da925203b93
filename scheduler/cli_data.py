"""The data-in commands: ``remind db ...``, ``remind accounts import`` and
``remind sample-portfolio``. Mounted by ``scheduler.cli``; the clock is read here only.

Exit codes (as in ``cli_common``): 0 done; 1 done, but rows were rejected; 2 unusable
file, config or arguments; 3 store problem.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape

from scheduler.cases import CaseFile
from scheduler.cli_common import (
    EXIT_INVALID,
    ConfigOption,
    NowOption,
    err_console,
    exits_cleanly,
    now_from,
    settings_from,
)
from scheduler.config import Settings
from scheduler.importer import (
    Defaults,
    ImportFileError,
    ImportReport,
    detect_format,
    import_accounts,
)
from scheduler.sample import generate_portfolio, write_csv
from scheduler.store import Store, head_revision, open_store

__all__ = ["accounts_app", "db_app", "sample_portfolio"]

db_app = typer.Typer(
    help="The store's schema (show it, upgrade it) and its audit log's retention.",
    no_args_is_help=True,
)
accounts_app = typer.Typer(help="Accounts: import the lender's file.", no_args_is_help=True)


def _open_unchecked(settings: Settings) -> Store:
    return Store.open(settings.store_url, check_schema=False)


@db_app.command("upgrade")
@exits_cleanly
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the store's schema to the version this remind needs (creates it if empty)."""
    settings = settings_from(config)
    with _open_unchecked(settings) as store:
        before = store.current_revision()
        after = store.upgrade()
    if before == after:
        typer.echo(f"store schema already at revision {after} (head)")
    else:
        typer.echo(f"store schema upgraded: {before or 'none'} -> {after} (head)")


@db_app.command("current")
@exits_cleanly
def db_current(config: ConfigOption = None) -> None:
    """Show the store's schema revision and the one this remind needs."""
    settings = settings_from(config)
    with _open_unchecked(settings) as store:
        current = store.current_revision()
    head = head_revision()
    typer.echo(f"current: {current or 'none'}")
    typer.echo(f"head:    {head}")
    if current == head:
        typer.echo("up to date")
    else:
        typer.echo(f"behind: run `remind db upgrade --config {settings.config_path}`")


@db_app.command("prune")
@exits_cleanly
def db_prune(
    before: Annotated[
        str | None, typer.Option("--before", help="Delete audit events before this day (UTC).")
    ] = None,
    older_than: Annotated[
        int | None, typer.Option("--older-than", help="Delete audit events older than N days.")
    ] = None,
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Delete audit events older than a cut-off. Refused (exit 2) when the cut-off would
    remove anything younger than ``[store] audit_retention_days`` (default 730)."""
    if (before is None) == (older_than is None):
        raise typer.BadParameter("give exactly one of --before DATE or --older-than DAYS")
    settings = settings_from(config)
    moment = now_from(now)
    if before is not None:
        cutoff = datetime.combine(_parse_day(before), datetime.min.time(), tzinfo=UTC)
    else:
        cutoff = moment - timedelta(days=older_than or 0)
    keep_from = moment - timedelta(days=settings.audit_retention_days)
    if cutoff > keep_from:
        err_console.print(
            f"[bold red]refused:[/] audit events are kept {settings.audit_retention_days} days "
            f"([store] audit_retention_days); the cut-off {cutoff:%Y-%m-%d %H:%M} UTC would "
            f"remove events younger than that. The earliest allowed cut-off is "
            f"{keep_from:%Y-%m-%d %H:%M} UTC."
        )
        raise typer.Exit(EXIT_INVALID)
    with open_store(settings) as store:
        removed = CaseFile(store).prune_audit(cutoff)
        store.record_audit(
            "audit_pruned", at=moment,
            detail={"before": cutoff.isoformat(), "removed": removed},
        )  # fmt: skip
    typer.echo(f"removed {removed} audit event(s) before {cutoff:%Y-%m-%d %H:%M} UTC")


FileArgument = Annotated[
    Path,
    typer.Argument(help="CSV or JSON Lines file.", exists=True, dir_okay=False, readable=True),
]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", help="csv or jsonl (default: from the extension)."),
]
StrictOption = Annotated[bool, typer.Option("--strict", help="Import nothing if any row is bad.")]


@accounts_app.command("import")
@exits_cleanly
def accounts_import(
    file: FileArgument,
    fmt: FormatOption = None,
    strict: StrictOption = False,
    config: ConfigOption = None,
) -> None:
    """Import (insert or update by account_id) the accounts in FILE. Bad rows go to
    <FILE stem>.rejects.csv with row, column and reason; the good ones are imported in one
    transaction (none with --strict). Exit 1 when any row was rejected."""
    settings = settings_from(config)
    try:
        detect_format(file, fmt)
        with open_store(settings) as store:
            report = import_accounts(
                store, file, defaults=Defaults.from_settings(settings),
                now=datetime.now(UTC), fmt=fmt, strict=strict,
                parse_workers=settings.import_parse_workers,
            )  # fmt: skip
    except ImportFileError as exc:
        err_console.print(f"[bold red]import error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from exc
    _print_report(report, strict=strict)
    if report.rejected:
        raise typer.Exit(1)


def _print_report(report: ImportReport, *, strict: bool) -> None:
    if report.unknown_columns:
        err_console.print(
            f"warning: ignored unknown column(s): {', '.join(report.unknown_columns)}",
            markup=False,
        )
    for problem in report.problems:
        err_console.print(f"  {problem}", markup=False)
    if report.rejected > len(report.problems):
        err_console.print("  ... see the rejects file for every problem", markup=False)
    c = report.counts
    typer.echo(
        f"{report.path.name}: {report.rows_read} rows read, {c.inserted} inserted, "
        f"{c.updated} updated, {c.unchanged} unchanged, {report.rejected} rejected"
    )
    if report.rejects_path is not None:
        typer.echo(f"rejected rows: {report.rejects_path}")
    if strict and not report.committed:
        typer.echo("--strict: nothing was imported")


@exits_cleanly
def sample_portfolio(
    out: Annotated[Path, typer.Option("--out", help="CSV file to write.")],
    accounts: Annotated[int, typer.Option("--accounts", min=1, help="How many accounts.")] = 300,
    today: Annotated[
        str | None,
        typer.Option("--today", help="YYYY-MM-DD (default: today in the ops time zone)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same portfolio.")] = 7,
    overdue_share: Annotated[
        float,
        typer.Option("--overdue-share", min=0.0, max=1.0, help="Fraction past due."),
    ] = 0.1,
    config: ConfigOption = None,
) -> None:
    """Write a deterministic sample portfolio, relative to today, as an import CSV."""
    day = _parse_day(today) if today else _ops_today(settings_from(config))
    rows = generate_portfolio(accounts, day, seed, overdue_share=overdue_share)
    count = write_csv(rows, out)
    typer.echo(f"wrote {count} accounts to {out} (today {day.isoformat()}, seed {seed})")


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not a date YYYY-MM-DD: {text!r}", param_hint="--today") from exc


def _ops_today(settings: Settings) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(settings.ops_timezone)).date()
