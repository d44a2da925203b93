"""``remind sources`` (each configured source and its last run) and ``remind sources run
NAME`` (run one now, as the daemon would). ``source_report`` is shared with ``remind status``.

Exit codes of ``sources run``: 0 the run succeeded; 1 it succeeded but rejected rows;
2 no such source or a bad config (a missing password too); 3 store problem; 4 the source
could not be read (the run is recorded as failed, with its error).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scheduler.cli_common import ConfigOption, NowOption, exits_cleanly, now_from, settings_from
from scheduler.config import Settings
from scheduler.logs import configure_logging
from scheduler.sources import SourceLedger, build_runners
from scheduler.store import Store, open_store

__all__ = ["EXIT_SOURCE_FAILED", "print_sources", "source_report", "sources_app"]

EXIT_SOURCE_FAILED = 4

sources_app = typer.Typer(
    help="Account sources ([[sources]] in config.toml): list them with their last run "
    "(no subcommand), or run one now.",
    invoke_without_command=True,
)


def source_report(settings: Settings, store: Store) -> list[dict[str, Any]]:
    """Each configured source with its schedule, its last run and its last success (JSON-able;
    times ISO 8601 UTC). Raises ``StoreError``."""
    names = [s.name for s in settings.sources]
    found = {s.source: s for s in SourceLedger(store).status(names)}
    report = []
    for source in settings.sources:
        status = found[source.name]
        last = status.last
        report.append(
            {
                "name": source.name,
                "kind": source.kind,
                "schedule": source.schedule,
                "enabled": source.enabled,
                "last_run": None
                if last is None
                else {
                    "started": last.started.isoformat(),
                    "finished": last.finished.isoformat(),
                    "ok": last.ok,
                    "running": status.running,
                    "rows_read": last.rows_read,
                    "upserted": last.upserted,
                    "rejected": last.rejected,
                    "cancelled": last.cancelled,
                    "watermark": last.watermark,
                },
                "running": status.running,
                "last_error": None if last is None else last.error,
                "last_success": status.last_success.isoformat() if status.last_success else None,
            }
        )
    return report


def print_sources(report: list[dict[str, Any]], console: Console) -> None:
    """The report as a table (nothing when no source is configured)."""
    if not report:
        return
    table = Table(title="account sources", title_justify="left")
    for column in ("source", "schedule", "last run (UTC)", "result", "read/in/rej/paid",
                   "watermark"):  # fmt: skip
        table.add_column(column)
    for entry in report:
        last = entry["last_run"]
        result = "never run" if last is None else "ok" if last["ok"] else "[bold red]FAILED[/]"
        if entry["running"]:
            result = "running" if last is None else f"{result}, running again"
        counts = "-"
        if last is not None:
            counts = "/".join(str(last[k]) for k in ("rows_read", "upserted", "rejected",
                                                      "cancelled"))  # fmt: skip
        table.add_row(
            f"{entry['name']} ({entry['kind']})",
            entry["schedule"] + ("" if entry["enabled"] else " (disabled)"),
            last["started"][:19].replace("T", " ") if last else "-", result, counts,
            escape(str(last["watermark"] or "-")) if last else "-",
        )  # fmt: skip
    console.print(table)
    for entry in report:
        if entry["last_error"]:
            since = (entry["last_success"] or "never")[:19].replace("T", " ")
            console.print(f"[bold red]{entry['name']}[/] (last success {since}): "
                          f"{escape(entry['last_error'])}")  # fmt: skip


FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


@sources_app.callback()
@exits_cleanly
def sources_list(
    ctx: typer.Context, config: ConfigOption = None, fmt: FormatOption = "table"
) -> None:
    """Each configured source: kind, schedule, last run and its counts, last error."""
    if ctx.invoked_subcommand is not None:
        return
    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    settings = settings_from(config)
    with open_store(settings) as store:
        report = source_report(settings, store)
    if fmt == "json":
        typer.echo(json.dumps(report, indent=2))
    elif not report:
        typer.echo(f"no [[sources]] in {settings.config_path}")
    else:
        print_sources(report, Console())


@sources_app.command("run")
@exits_cleanly
def sources_run(
    name: Annotated[str, typer.Argument(help="The source's name in config.toml.")],
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Run one source now (also a disabled one), as the daemon would: import, cancel the
    contacts payments made unnecessary, record the run. Exit 4 when the source failed."""
    settings = settings_from(config)
    moment = now_from(now)
    configure_logging(level="warning", stream=sys.stderr)  # a failure, PII masked, on stderr
    with open_store(settings) as store:
        runner = build_runners(settings, store, names=[name])[name]
        try:
            result = runner.run(moment)
        finally:
            runner.close()
    typer.echo(
        f"{name}: {result.rows_read} rows read, {result.upserted} upserted, "
        f"{result.rejected} rejected, {result.cancelled} planned contacts cancelled; "
        f"watermark {result.watermark or '-'}"
    )
    for file in result.files:
        typer.echo(f"  file {file}")
    if result.rejected_ids:
        typer.echo(f"  rejected accounts: {', '.join(result.rejected_ids)}")
    if not result.ok:
        typer.echo(f"{name} FAILED: {result.error}", err=True)
        raise typer.Exit(EXIT_SOURCE_FAILED)
    if result.rejected:
        raise typer.Exit(1)
