"""The daemon's commands: ``remind run``, ``remind status`` and the agents' ``remind calls``.

The clock is read here (or pinned with the hidden ``--now``; for ``run`` the pinned instant
then runs on in real time, so rehearsals and the downtime tests can live in another day).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from scheduler.cases import CaseFile, Recorded
from scheduler.cli_cases import parse_amount, parse_date, parse_result, record_outcome
from scheduler.cli_common import (
    EXIT_INVALID,
    ConfigOption,
    NowOption,
    exits_cleanly,
    now_from,
    settings_from,
)
from scheduler.cli_sources import print_sources, source_report
from scheduler.daemon import (
    Daemon,
    build_lanes,
    load_rulebook,
    offset_clock,
    policy_channels,
    single_instance_lock,
)
from scheduler.logs import configure_logging, mask_phone
from scheduler.models import Channel, OutcomeRecord
from scheduler.queue import ContactQueue, QueuedContact
from scheduler.sources import build_runners
from scheduler.store import open_store
from scheduler.workers import DispatchWorkers

__all__ = ["calls_app", "run", "status"]

calls_app = typer.Typer(help="Call tasks kept for agents (channel type call_queue).",
                        no_args_is_help=True)  # fmt: skip

FormatOption = Annotated[str, typer.Option("--format", help="table, json or csv.")]


@exits_cleanly
def run(
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="One plan, dispatch what is due, one watch; exit.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
    now: NowOption = None,
) -> None:
    """Run the daemon: plan, dispatch through the configured channels, watch the SLA."""
    settings = settings_from(config)
    configure_logging(level=log_level)
    clock = offset_clock(now_from(now)) if now is not None else (lambda: datetime.now(UTC))
    rulebook = load_rulebook(settings)
    processes = 1 if once else settings.daemon.dispatch_processes
    lanes = build_lanes(settings, clock, policy_channels(rulebook), processes=processes)
    with open_store(settings) as store, single_instance_lock(store) as lock:
        workers = None
        if processes > 1:
            workers = DispatchWorkers(
                settings, count=processes - 1, clock=clock, pinned=now is not None,
                log_level=log_level, pass_fds=lock.fds,
            )  # fmt: skip
        daemon = Daemon(
            settings=settings, store=store, lanes=lanes, rulebook=rulebook, clock=clock,
            reload=lambda: load_rulebook(settings_from(config)),
            sources=build_runners(settings, store), workers=workers,
        )  # fmt: skip
        if once:
            counts = daemon.run_once()
            daemon.close()
            typer.echo(json.dumps(counts), err=True)
            return
        code = daemon.run()
        if not daemon.drained:
            # A tick outlived the drain (a plan is one transaction: abandoning it writes
            # nothing); its worker thread would hold the interpreter's exit, so leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise typer.Exit(code)


@exits_cleanly
def status(config: ConfigOption = None, fmt: FormatOption = "table", now: NowOption = None) -> None:
    """Last ticks, the queue by channel and status, failures and SLA breaches of the last 24 h."""
    settings = settings_from(config)
    moment = now_from(now)
    with open_store(settings) as store:
        queue = ContactQueue(store)
        state = queue.state()
        depth = queue.depth()
        recent = queue.events_since(("failed", "sla_breach", "retry", "missed"),
                                    moment - timedelta(hours=24))  # fmt: skip
        sources = source_report(settings, store)
    report: dict[str, Any] = {
        "ticks": {k: {"at": v.updated_at.isoformat(), "by": v.owner, "value": v.value}
                  for k, v in sorted(state.items())},
        "queue": [{"channel": c, "status": s, "contacts": n}
                  for (c, s), n in sorted(depth.items())],
        "last_24h": {k: recent.get(k, 0) for k in ("failed", "sla_breach", "retry", "missed")},
        "sources": sources,
    }  # fmt: skip
    if fmt == "json":
        typer.echo(json.dumps(report, indent=2))
        return
    if fmt != "table":
        raise typer.BadParameter("--format must be table or json")
    console = Console()
    ticks = Table(title="last ticks", title_justify="left")
    for column in ("tick", "at (UTC)", "by", "value"):
        ticks.add_column(column)
    for name, entry in report["ticks"].items():
        ticks.add_row(name, entry["at"][:19], entry["by"], entry["value"][:32])
    console.print(ticks)
    table = Table(title="contacts by channel and status", title_justify="left")
    for column in ("channel", "status", "contacts"):
        table.add_column(column)
    for row in report["queue"]:
        table.add_row(row["channel"], row["status"], str(row["contacts"]))
    console.print(table)
    print_sources(sources, console)
    last = report["last_24h"]
    style = "bold red" if last["sla_breach"] or last["failed"] else "green"
    console.print(
        f"[{style}]last 24 h: {last['failed']} failed, {last['sla_breach']} SLA breaches, "
        f"{last['retry']} retries, {last['missed']} missed[/]"
    )


def _task(c: QueuedContact) -> dict[str, Any]:
    return {
        "contact_id": c.contact_id,
        "account_id": c.account_id,
        "rule": c.rule,
        "target": c.target,
        "window_start": c.window_start.isoformat(),
        "window_end": c.window_end.isoformat(),
        "priority": c.priority,
        "sla_risk": c.sla_risk,
    }


@calls_app.command("next")
@exits_cleanly
def calls_next(
    agent: Annotated[str, typer.Option("--agent", help="The agent taking the task.")],
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Take the most urgent call task whose window is open (held for you for 15 minutes),
    printed as JSON with the account's phone number; exit 1 when there is none."""
    settings = settings_from(config)
    moment = now_from(now)
    with open_store(settings) as store:
        task = ContactQueue(store).next_call(agent, now=moment)
        if task is None:
            typer.echo("no call task is due now", err=True)
            raise typer.Exit(1)
        account = store.account(task.account_id, now=moment)
    found = _task(task)
    found["phone"] = task.target if task.target != "borrower" else (account and account.phone)
    found["name"] = account.name if account and task.target == "borrower" else None
    typer.echo(json.dumps(found, ensure_ascii=False))


@calls_app.command("export")
@exits_cleanly
def calls_export(
    config: ConfigOption = None, fmt: FormatOption = "csv", now: NowOption = None
) -> None:
    """Every open call task (queued, no outcome, window not over), for a dialer or a sheet.
    Phone numbers are masked; ``calls next`` gives an agent the full number."""
    settings = settings_from(config)
    with open_store(settings) as store:
        tasks = [_task(c) for c in ContactQueue(store).open_calls(now=now_from(now))]
    for task in tasks:
        if task["target"] != "borrower":
            task["target"] = mask_phone(task["target"])
    if fmt == "json":
        for task in tasks:
            typer.echo(json.dumps(task))
        return
    if fmt != "csv":
        raise typer.BadParameter("--format must be csv or json")
    fields = ["contact_id", "account_id", "rule", "target", "window_start", "window_end",
              "priority", "sla_risk"]  # fmt: skip
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    writer.writerows(tasks)


@calls_app.command("outcome")
@exits_cleanly
def calls_outcome(
    contact_id: Annotated[str, typer.Argument(help="The call task's contact id.")],
    result: Annotated[str, typer.Option("--result", help="What happened, e.g. no_answer.")],
    agent: Annotated[str, typer.Option("--agent")] = "",
    note: Annotated[str, typer.Option("--note")] = "",
    promise_amount: Annotated[str | None, typer.Option("--promise-amount")] = None,
    promise_date: Annotated[str | None, typer.Option("--promise-date")] = None,
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Record what came of a call task (once); the same record and effects as
    ``remind outcome``."""
    try:
        outcome = parse_result(result)
    except typer.BadParameter as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_INVALID) from None
    settings = settings_from(config)
    moment = now_from(now)
    book = load_rulebook(settings)
    with open_store(settings) as store:
        task = CaseFile(store).call_task(contact_id)
        done = Recorded.NO_TASK
        if task is not None and not task.has_outcome:
            record = OutcomeRecord(
                account_id=task.account_id, at=moment, channel=Channel.CALL, result=outcome,
                target=task.target, contact_id=contact_id, rule=task.rule,
                promise_amount=parse_amount(promise_amount), promise_date=parse_date(promise_date),
                note=note, source=f"calls agent:{agent}" if agent else "calls",
            )  # fmt: skip
            done, effects = record_outcome(store, book, record, now=moment)
    if done is not Recorded.RECORDED:
        typer.echo(f"no open call task {contact_id} (unknown, or its outcome is recorded)",
                   err=True)  # fmt: skip
        raise typer.Exit(1)
    tail = f" ({'; '.join(effects)})" if effects else ""
    typer.echo(f"{contact_id}: {outcome.value} recorded{tail}")
