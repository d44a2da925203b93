"""Render a plan for people (rich table and summary) and machines (JSON Lines, CSV).

The JSON Lines keys are a contract with ops' scripts: exactly ``account_id``, ``channel``,
``rule``, ``status``, ``reason``, ``window_start``, ``window_end``, ``sla_risk``.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from rich.console import Console
from rich.table import Table

from scheduler.models import Decision, Plan, PlannedContact, SuppressedContact

__all__ = [
    "JSON_KEYS",
    "Summary",
    "plan_rows",
    "print_summary",
    "print_table",
    "summarise",
    "write_csv",
    "write_jsonl",
]

JSON_KEYS = (
    "account_id",
    "channel",
    "rule",
    "status",
    "reason",
    "window_start",
    "window_end",
    "sla_risk",
)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a plan adds up to: the numbers ops read every evening."""

    planned: Counter[tuple[str, str]]
    calls_by_hour: Counter[int]
    suppressed: Counter[str]
    sla_risks: int
    handover: int

    @property
    def total_planned(self) -> int:
        return sum(self.planned.values())


def summarise(plan: Plan) -> Summary:
    return Summary(
        planned=Counter((c.channel.value, c.rule) for c in plan.planned),
        calls_by_hour=Counter(c.window_start.hour for c in plan.planned if c.channel == "call"),
        suppressed=Counter(c.reason.value for c in plan.suppressed),
        sla_risks=sum(1 for c in plan.planned if c.sla_risk),
        handover=len(plan.handover),
    )


def plan_rows(plan: Plan, *, show_suppressed: bool) -> Iterator[dict[str, object]]:
    """One dict per contact with exactly ``JSON_KEYS``, planned first then suppressed."""
    for c in plan.planned:
        yield _row(c, "planned", None, c.sla_risk)
    if show_suppressed:
        for s in plan.suppressed:
            yield _row(s, "suppressed", s.reason.value, False)


def _row(
    c: PlannedContact | SuppressedContact, status: str, reason: str | None, sla_risk: bool
) -> dict[str, object]:
    return {
        "account_id": c.account_id,
        "channel": c.channel.value,
        "rule": c.rule,
        "status": status,
        "reason": reason,
        "window_start": c.window_start.isoformat(),
        "window_end": c.window_end.isoformat(),
        "sla_risk": sla_risk,
    }


def write_jsonl(plan: Plan, out: IO[str], *, show_suppressed: bool) -> None:
    for row in plan_rows(plan, show_suppressed=show_suppressed):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_csv(plan: Plan, out: IO[str], *, show_suppressed: bool) -> None:
    writer = csv.DictWriter(out, fieldnames=JSON_KEYS, lineterminator="\n")
    writer.writeheader()
    for row in plan_rows(plan, show_suppressed=show_suppressed):
        writer.writerow(
            {**row, "reason": row["reason"] or "", "sla_risk": str(row["sla_risk"]).lower()}
        )


def mask_target(target: str) -> str:
    """A target fit for output: an emergency contact's number shows its last four digits
    only; "borrower" and rule targets ("emergency_contacts") pass as they are."""
    return f"3rd party …{target[-4:]}" if target.startswith("+") else target


def print_table(
    plan: Plan, console: Console, *, show_suppressed: bool, limit: int, title: str
) -> None:
    """The contacts as a table, one row each, borrower-local windows (the day is the title's)."""
    rows: list[PlannedContact | SuppressedContact] = list(plan.planned)
    if show_suppressed:
        rows.extend(plan.suppressed)
    table = Table(title=title, header_style="bold", title_justify="left")
    table.add_column("local window", no_wrap=True)
    table.add_column("account", no_wrap=True)
    table.add_column("channel", no_wrap=True)
    table.add_column("rule")
    table.add_column("status / why", overflow="fold")
    for c in rows[: limit or None]:
        window = f"{c.window_start:%H:%M}-{c.window_end:%H:%M} {c.window_start:%z}"
        rule = c.rule if c.target == "borrower" else f"{c.rule} → {mask_target(c.target)}"
        if isinstance(c, PlannedContact):
            status = "[bold red]SLA RISK[/] " if c.sla_risk else ""
            status += c.note or "planned"
        else:
            status = f"[yellow]{c.reason.value}[/]: {c.detail}"
        table.add_row(window, c.account_id, c.channel.value, rule, status)
    console.print(table)
    if limit and len(rows) > limit:
        console.print(f"… {len(rows) - limit} more rows (use --limit 0, or --format csv/json)")


def print_summary(summary: Summary, console: Console) -> None:
    console.print(f"[bold]Planned contacts: {summary.total_planned}[/]")
    by_rule = Table(
        "channel", "rule", "contacts", title="Per channel and rule", title_justify="left"
    )
    for (channel, rule), count in sorted(summary.planned.items()):
        by_rule.add_row(channel, rule, str(count))
    console.print(by_rule)
    if summary.calls_by_hour:
        hours = Table("local hour", "call tasks starting", title="Agent load", title_justify="left")
        for hour, count in sorted(summary.calls_by_hour.items()):
            hours.add_row(f"{hour:02d}:00", str(count))
        console.print(hours)
    if summary.suppressed:
        held = Table("reason", "contacts", title="Suppressed per reason", title_justify="left")
        for reason, count in summary.suppressed.most_common():
            held.add_row(reason, str(count))
        console.print(held)
    style = "bold red" if summary.sla_risks else "green"
    console.print(f"[{style}]First-24h contacts at SLA risk: {summary.sla_risks}[/]")
    console.print(f"Accounts listed for hand-over (DPD past the policy line): {summary.handover}")


def print_decisions(decisions: tuple[Decision, ...], console: Console) -> None:
    table = Table("rule", "channel", "to", "verdict", "why", header_style="bold")
    colour = {"fired": "green", "moved": "cyan", "dropped": "yellow", "not_due": "dim"}
    for d in decisions:
        table.add_row(
            d.rule,
            d.channel.value,
            mask_target(d.target),
            f"[{colour[d.verdict.value]}]{d.verdict.value}[/]",
            d.sentence,
        )
    console.print(table)
