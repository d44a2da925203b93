"""Ops tools: ``remind policy diff``, ``remind forecast`` and ``remind report sla``.

Like ``dry-run`` they read the store and write nothing. The clock is read here only
(``--now`` pins it); the work is done by the pure ``scheduler.diff``, ``scheduler.forecast``
and ``scheduler.sla``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from policies import PolicySet, load_policies
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
from scheduler.diff import PlanDiff
from scheduler.dispatcher import first_contact_rules
from scheduler.errors import PolicyError
from scheduler.forecast import CSV_KEYS, Forecast, forecast, plot_forecast
from scheduler.models import Horizon
from scheduler.planning import compare_policies, load_for_plan
from scheduler.render import Templates, check_templates, template_dirs
from scheduler.sla import COLUMNS, SlaDay, first_contact_rows, sla_days, unplanned_overdue
from scheduler.store import open_store

__all__ = ["forecast_command", "policy_diff", "report_app", "validated_policies"]

report_app = typer.Typer(help="Reports from the store.", no_args_is_help=True)

PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Active policy directory (default: [policy] dir).")
]
FormatOption = Annotated[str, typer.Option("--format", help="table, json (JSON Lines) or csv.")]


def _day(value: str, settings: Settings, now: datetime) -> date:
    today = now.astimezone(ZoneInfo(settings.ops_timezone)).date()
    named = {"today": today, "tomorrow": today + timedelta(days=1)}
    if value in named:
        return named[value]
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use YYYY-MM-DD, 'today' or 'tomorrow'") from exc


def _check_format(output: str) -> None:
    if output not in ("table", "json", "csv"):
        raise typer.BadParameter("--format must be table, json or csv")


def validated_policies(folder: Path, settings: Settings) -> PolicySet:
    """``folder``'s policies after the same checks as ``remind policy check`` (policy files,
    templates rendered in every language, template lint); raises ``PolicyError`` listing
    every problem."""
    policies = load_policies(folder.resolve())
    templates = Templates.load(
        template_dirs(folder.resolve()), default_language=settings.default_language
    )
    problems = check_templates(
        policies, templates, lender_name=settings.lender_name, languages=templates.languages
    )
    if problems:
        raise PolicyError(problems)
    return policies


# -- policy diff -----------------------------------------------------------------------------


@exits_cleanly
def policy_diff(
    new_dir: Annotated[Path, typer.Argument(help="The edited policy directory to compare.")],
    config: ConfigOption = None,
    date_: Annotated[
        str, typer.Option("--date", help="YYYY-MM-DD or 'tomorrow', a day in each borrower's zone.")
    ] = "tomorrow",
    policy_dir: PolicyOption = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    sample: Annotated[int, typer.Option(help="Affected accounts to show.")] = 10,
    now: NowOption = None,
) -> None:
    """The day's plan (default tomorrow) under the active policies versus under NEW_DIR:
    contacts added, removed and moved per rule and channel, cap and quiet-hour effects, and a
    sample of affected accounts. Reads the store, writes nothing. Exit 0, or 2 when NEW_DIR
    is invalid (every problem is listed, as by `remind policy check`)."""
    if output not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    settings = settings_from(config)
    moment = now_from(now)
    horizon = Horizon(_day(date_, settings, moment))
    old = load_policies((policy_dir or settings.policy_dir).resolve())
    new = validated_policies(new_dir, settings)
    store = open_store(settings)
    try:
        result = compare_policies(store, old, new, horizon, moment)
    finally:
        store.close()
    if output == "json":
        payload = _diff_json(result, horizon, old, new, sample)
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    console = Console()
    console.print(
        f"[bold]Policy diff for {horizon.first_day}[/] (borrower-local days): active "
        f"{old.directory} ({old.version}) -> {new.directory} ({new.version})"
    )
    print_diff(result, console, sample=sample)


def _diff_json(
    result: PlanDiff, horizon: Horizon, old: PolicySet, new: PolicySet, sample: int
) -> dict[str, object]:
    return {
        "day": horizon.first_day.isoformat(),
        "old_version": old.version,
        "new_version": new.version,
        "planned_before": result.old_planned,
        "planned_after": result.new_planned,
        "policy_changes": [
            {"policy": c.policy, "key": c.key, "old": c.old, "new": c.new}
            for c in result.policy_changes
        ],
        "by_rule_channel": [
            {
                "rule": d.rule,
                "channel": d.channel,
                "before": d.old,
                "after": d.new,
                "added": d.added,
                "removed": d.removed,
                "moved": d.moved,
            }
            for d in result.deltas
        ],
        "suppressed": {r: {"before": a, "after": b} for r, (a, b) in result.suppressed.items()},
        "transitions": [
            {"from": a, "to": b, "contacts": n} for (a, b), n in result.transitions.items()
        ],
        "sample_accounts": list(result.sample_accounts[:sample]),
    }


def print_diff(result: PlanDiff, console: Console, *, sample: int) -> None:
    """The diff for people: policy keys changed, per rule and channel, reasons, a sample."""
    if result.policy_changes:
        keys = Table("policy", "key", "active", "new", title="Policy changes", title_justify="left")
        for key in result.policy_changes:
            keys.add_row(key.policy, key.key, key.old, key.new)
        console.print(keys)
    else:
        console.print("No policy key differs.")
    console.print(f"Planned contacts: {result.old_planned} -> {result.new_planned}")
    if result.empty or not result.changes:
        console.print("[green]The plan is the same under both.[/]")
        return
    table = Table(
        "rule",
        "channel",
        "before",
        "after",
        "added",
        "removed",
        "moved",
        title="Per rule and channel",
        title_justify="left",
    )
    for d in result.deltas:
        table.add_row(
            d.rule,
            d.channel,
            str(d.old),
            str(d.new),
            _signed(d.added, "+"),
            _signed(d.removed, "-"),
            str(d.moved or ""),
        )
    console.print(table)
    if result.transitions:
        why = Table("from", "to", "contacts", title="Why (planned / reason)", title_justify="left")
        for (was, now), n in result.transitions.items():
            why.add_row(was, now, str(n))
        console.print(why)
    if result.suppressed:
        held = Table(
            "reason",
            "before",
            "after",
            title="Held per reason (caps, quiet hours)",
            title_justify="left",
        )
        for reason, (a, b) in result.suppressed.items():
            held.add_row(reason, str(a), str(b))
        console.print(held)
    picked = set(result.sample_accounts[:sample])
    if picked:
        rows = Table(title="Sample of affected accounts", title_justify="left")
        for name in ("account", "rule", "channel", "change", "active", "new"):
            rows.add_column(name, no_wrap=name in ("account", "rule"))
        shown: set[str] = set()
        for c in result.changes:
            if c.account_id in picked and c.account_id not in shown:
                shown.add(c.account_id)
                rows.add_row(
                    c.account_id,
                    c.rule,
                    c.channel,
                    c.kind,
                    _side(c.old_window, c.old_reason),
                    _side(c.new_window, c.new_reason),
                )
        console.print(rows)


def _signed(n: int, sign: str) -> str:
    return f"{sign}{n}" if n else ""


def _side(window: tuple[datetime, datetime] | None, reason: str | None) -> str:
    if reason is not None:
        return reason
    if window is None:
        return "-"
    return f"{window[0]:%H:%M}-{window[1]:%H:%M} {window[0]:%z}"


# -- forecast -------------------------------------------------------------------------------


@exits_cleanly
def forecast_command(
    days: Annotated[int, typer.Option("--days", min=1, max=120, help="How many days.")] = 7,
    config: ConfigOption = None,
    start: Annotated[
        str, typer.Option("--from", help="First day: YYYY-MM-DD, 'today' or 'tomorrow'.")
    ] = "tomorrow",
    output: FormatOption = "table",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the forecast into this PNG.")
    ] = None,
    policy_dir: PolicyOption = None,
    now: NowOption = None,
) -> None:
    """Projected contacts per day, channel and rule, and call tasks per local hour (agent
    staffing), for the next N days, assuming nobody pays and nobody answers. Table, CSV or
    JSON Lines; --plot FILE.png draws it (needs matplotlib: the "plot" extra)."""
    _check_format(output)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        err_console.print(
            "--plot needs matplotlib: pip install 'remind[plot]' (or leave out --plot)",
            markup=False,
        )
        raise typer.Exit(EXIT_INVALID)
    settings = settings_from(config)
    moment = now_from(now)
    first = _day(start, settings, moment)
    policies = load_policies((policy_dir or settings.policy_dir).resolve())
    store = open_store(settings)
    try:
        accounts, history = load_for_plan(store, policies, Horizon(first, days), moment, None)
    finally:
        store.close()
    fc = forecast(moment, accounts, history, policies, first, days)
    if output == "json":
        for row in fc.rows():
            sys.stdout.write(json.dumps(row) + "\n")
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(fc.rows())
    else:
        print_forecast(fc, Console(), policies.version)
    if plot is not None:
        plot_forecast(
            fc,
            plot,
            title=f"remind forecast: {fc.first_day} + {days} days, policy {policies.version}",
        )
        err_console.print(f"plot written to {plot}")


def print_forecast(fc: Forecast, console: Console, version: str) -> None:
    channels = fc.channels()
    per_day = fc.per_day_channel()
    title = (
        f"Forecast {fc.first_day} to {fc.day_list[-1]} (borrower-local days), policy {version}; "
        "assuming no payments and no answers"
    )
    table = Table("day", *channels, "total", title=title, title_justify="left")
    for day in fc.day_list:
        counts = per_day[day]
        table.add_row(
            f"{day:%a %Y-%m-%d}", *(str(counts[c]) for c in channels), str(sum(counts.values()))
        )
    table.add_row(
        "[bold]total[/]",
        *(str(sum(per_day[d][c] for d in fc.day_list)) for c in channels),
        f"[bold]{fc.total}[/]",
    )
    console.print(table)
    by_rule = Table(
        "channel", "rule", "contacts", title="Per channel and rule (all days)", title_justify="left"
    )
    for (channel, rule), n in sorted(fc.per_rule().items()):
        by_rule.add_row(channel, rule, str(n))
    console.print(by_rule)
    hours_by_day = fc.calls_per_hour()
    hours = sorted({h for c in hours_by_day.values() for h in c})
    if hours:
        span = range(hours[0], hours[-1] + 1)
        console.print("[bold]Call tasks per borrower-local starting hour[/] (agent staffing)")
        load = Table("day", *(f"{h:02d}:00" for h in span))
        for day in fc.day_list:
            load.add_row(f"{day:%a %m-%d}", *(str(hours_by_day[day][h] or "") for h in span))
        console.print(load)
    console.print(f"First-24h contacts at SLA risk: {fc.sla_risks}")
    console.print(f"Accounts reaching the hand-over line: {fc.handover}")


# -- report sla -----------------------------------------------------------------------------


@report_app.command("sla")
@exits_cleanly
def report_sla(
    from_: Annotated[str, typer.Option("--from", help="First day (ops zone), YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last day (ops zone), YYYY-MM-DD.")],
    config: ConfigOption = None,
    output: FormatOption = "table",
    policy_dir: PolicyOption = None,
    now: NowOption = None,
) -> None:
    """The first-24h contact per ops-zone day: accounts that became overdue, and of them
    reached in time, attempted in time, late, missed, held, still open, never planned."""
    _check_format(output)
    settings = settings_from(config)
    moment = now_from(now)
    first, last = _day(from_, settings, moment), _day(to, settings, moment)
    if last < first:
        raise typer.BadParameter("--to must not be before --from")
    policies = load_policies((policy_dir or settings.policy_dir).resolve())
    store = open_store(settings)
    try:
        rows = first_contact_rows(store, first_contact_rules(policies), first=first, last=last)
        by_id = store.accounts_by_id({r.account_id for r in rows}, now=moment)
        unplanned = list(unplanned_overdue(store, first=first, last=last, now=moment))
    finally:
        store.close()
    days = sla_days(
        rows, by_id, unplanned, ops_zone=settings.ops_timezone, first=first, last=last, now=moment
    )
    _print_sla(days, output, settings.ops_timezone)


_SLA_HEADERS = {
    "became_overdue": "overdue",
    "reached_in_time": "reached <24h",
    "attempted_in_time": "tried <24h",
    "not_planned": "not planned",
}


def _print_sla(days: Iterable[SlaDay], output: str, zone: str) -> None:
    rows = [d.row() for d in days]
    if output == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=("day", *COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(
        title=f"First-24h contact per day (the day each account became overdue, {zone})",
        title_justify="left",
    )
    table.add_column("day", no_wrap=True)
    for column in COLUMNS:
        table.add_column(_SLA_HEADERS.get(column, column), justify="right")
    totals = dict.fromkeys(COLUMNS, 0)
    for row in rows:
        table.add_row(str(row["day"]), *(str(row[c]) for c in COLUMNS))
        for c in COLUMNS:
            totals[c] += int(str(row[c]))
    table.add_row("[bold]total[/]", *(str(totals[c]) for c in COLUMNS))
    console = Console()
    console.print(table)
    due = totals["became_overdue"] - totals["held"] - totals["open"]
    if due:
        rate = 100 * (totals["reached_in_time"] + totals["attempted_in_time"]) / due
        console.print(f"Attempted within 24 hours: {rate:.1f}% of {due} accounts that needed it")
