"""The case-work commands: ``remind outcome``, ``remind outcomes import``, ``remind note``,
``remind audit``, ``remind export handover`` and ``remind report contacts``. Mounted by
``scheduler.cli``; the clock is read here only (``--now`` pins it).

Exit codes (as in ``cli_common``): 0 done; 1 done but rows were rejected, or no such
account; 2 unusable input, config or policy; 3 store problem.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TextIO
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from policies.outcomes import AGENT_RESULTS, prepare_outcome
from scheduler.cases import AuditEvent, CaseFile, ContactReport, Recorded
from scheduler.cli_common import (
    EXIT_INVALID,
    ConfigOption,
    NowOption,
    err_console,
    exits_cleanly,
    now_from,
    settings_from,
)
from scheduler.cli_ops import report_app  # one `remind report` group: sla there, contacts here
from scheduler.daemon import load_rulebook
from scheduler.dispatcher import Rulebook
from scheduler.errors import ImportFileError, RemindError
from scheduler.logs import mask_phone
from scheduler.models import CaseNote, Channel, Outcome, OutcomeRecord
from scheduler.outcomes_import import import_outcomes
from scheduler.store import Store, open_store

__all__ = [
    "audit",
    "export_app",
    "note",
    "outcome",
    "outcomes_app",
    "parse_amount",
    "parse_date",
    "parse_result",
    "record_outcome",
]

outcomes_app = typer.Typer(help="Outcomes: import a call centre's or dialer's file.",
                           no_args_is_help=True)  # fmt: skip
export_app = typer.Typer(help="Files for others: the agency hand-over.", no_args_is_help=True)

_RESULT_NAMES = ", ".join(o.value for o in AGENT_RESULTS)


def parse_result(text: str) -> Outcome:
    try:
        found = Outcome(text)
    except ValueError:
        found = None
    if found not in AGENT_RESULTS or found is None:
        raise typer.BadParameter(f"unknown result {text!r}; one of: {_RESULT_NAMES}")
    return found


def record_outcome(
    store: Store, book: Rulebook, record: OutcomeRecord, *, now: datetime
) -> tuple[Recorded, list[str]]:
    """Check ``record`` against its account, work out its effects under the account's
    policy, record both (one transaction); returns what became of it and the effects in
    words. The one path for ``remind outcome`` and ``remind calls outcome``. Raises
    ``RemindError`` (no such account) and ``typer.BadParameter`` (an unusable report)."""
    account = store.account(record.account_id, now=now)
    if account is None:
        raise RemindError(f"no account {record.account_id!r} in the store")
    prepared = prepare_outcome(record, account, book.policies.for_product(account.product))
    if isinstance(prepared, list):
        raise typer.BadParameter("; ".join(f"{field}: {why}" for field, why in prepared))
    ready, effects = prepared
    [done] = CaseFile(store).record_outcomes(
        [(ready, account, effects)], now=now, policy_version=book.version
    )
    return done, effects.sentences()


@exits_cleanly
def outcome(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    result: Annotated[str, typer.Option("--result", help=f"One of: {_RESULT_NAMES}.")],
    channel: Annotated[str, typer.Option("--channel", help="call, sms or email.")] = "call",
    promise_amount: Annotated[
        str | None, typer.Option("--promise-amount", help="For --result promise.")
    ] = None,
    promise_date: Annotated[
        str | None, typer.Option("--promise-date", help="YYYY-MM-DD, for --result promise.")
    ] = None,
    note_text: Annotated[str, typer.Option("--note", help="What was said.")] = "",
    target: Annotated[
        str, typer.Option("--target", help="borrower, or the emergency contact's number.")
    ] = "borrower",
    agent: Annotated[str, typer.Option("--agent", help="Who made the contact.")] = "",
    at: Annotated[
        datetime | None, typer.Option("--at", help="When it happened (default: now).")
    ] = None,
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Record what came of a contact made outside a call task (a manual call, a reply):
    its effect on the schedule follows the policy (docs/casework.md)."""
    moment = now_from(now)
    when = now_from(at) if at is not None else moment
    try:
        kind = Channel(channel)
    except ValueError:
        raise typer.BadParameter(f"unknown channel {channel!r}") from None
    record = OutcomeRecord(
        account_id=account_id, at=when, channel=kind, result=parse_result(result), target=target,
        promise_amount=parse_amount(promise_amount), promise_date=parse_date(promise_date),
        note=note_text, source=f"cli agent:{agent}" if agent else "cli",
    )  # fmt: skip
    settings = settings_from(config)
    book = load_rulebook(settings)
    with open_store(settings) as store:
        done, effects = record_outcome(store, book, record, now=moment)
    _say(account_id, record.result, done, effects)


def _say(subject: str, result: Outcome, done: Recorded, effects: Sequence[str]) -> None:
    if done is Recorded.DUPLICATE:
        typer.echo(f"{subject}: {result.value} was already recorded; nothing changed")
        return
    tail = f" ({'; '.join(effects)})" if effects else ""
    typer.echo(f"{subject}: {result.value} recorded{tail}")


def parse_amount(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"not an amount: {text!r}") from None


def parse_date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not a date YYYY-MM-DD: {text!r}") from None


@outcomes_app.command("import")
@exits_cleanly
def outcomes_import(
    file: Annotated[
        Path,
        typer.Argument(help="CSV or JSON Lines file.", exists=True, dir_okay=False, readable=True),
    ],
    fmt: Annotated[str | None, typer.Option("--format", help="csv or jsonl.")] = None,
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Record the outcomes in FILE (columns: account_id, at, result; channel, target,
    promise_amount, promise_date, note, contact_id, agent). Bad rows go to
    <FILE stem>.rejects.csv with row, column and reason; exit 1 when any was rejected."""
    moment = now_from(now)
    settings = settings_from(config)
    book = load_rulebook(settings)
    try:
        with open_store(settings) as store:
            report = import_outcomes(store, file, policies=book.policies,
                                     policy_version=book.version, now=moment, fmt=fmt)  # fmt: skip
    except ImportFileError as exc:
        err_console.print(f"[bold red]import error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from exc
    if report.unknown_columns:
        err_console.print(f"warning: ignored unknown column(s): "
                          f"{', '.join(report.unknown_columns)}", markup=False)  # fmt: skip
    for problem in report.problems:
        err_console.print(f"  {problem}", markup=False)
    typer.echo(
        f"{file.name}: {report.rows_read} rows read, {report.recorded} recorded, "
        f"{report.duplicates} already recorded, {report.rejected} rejected"
    )
    if report.rejects_path is not None:
        typer.echo(f"rejected rows: {report.rejects_path}")
        raise typer.Exit(1)


@exits_cleanly
def note(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    text: Annotated[str, typer.Argument(help="The note.")],
    author: Annotated[str, typer.Option("--author", help="Who writes it.")] = "",
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Add a case note to an account; `explain` and `audit` show it."""
    if not text.strip():
        raise typer.BadParameter("the note is empty")
    moment = now_from(now)
    settings = settings_from(config)
    with open_store(settings) as store:
        if store.account(account_id, now=moment) is None:
            raise RemindError(f"no account {account_id!r} in the store")
        CaseFile(store).add_note(CaseNote(account_id, moment, text.strip(), author))
    typer.echo(f"{account_id}: note added")


# --- audit ------------------------------------------------------------------------------

AUDIT_FIELDS = ("at", "kind", "channel", "rule", "contact_id", "policy_version", "detail")


def _masked(detail: dict[str, Any]) -> dict[str, Any]:
    out = dict(detail)
    if isinstance(out.get("target"), str) and out["target"] != "borrower":
        out["target"] = mask_phone(out["target"])
    return out


def _audit_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.astimezone(UTC).isoformat(),
        "kind": event.kind,
        "channel": event.channel,
        "rule": event.rule,
        "contact_id": event.contact_id,
        "policy_version": event.policy_version,
        "detail": _masked(dict(event.detail)),
    }


@exits_cleanly
def audit(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """The account's whole history, oldest first: planned, sent, skipped (with reason),
    outcomes, promises, notes, flags, hand-over, each with its policy version and rule."""
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    moment = now_from(now)
    settings = settings_from(config)
    with open_store(settings) as store:
        account = store.account(account_id, now=moment)
        if account is None:
            raise RemindError(f"no account {account_id!r} in the store")
        events = CaseFile(store).events(account_id)
    rows = [_audit_row(e) for e in events]
    if fmt == "json":
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False, sort_keys=False))
        return
    if fmt == "csv":
        _write_csv(sys.stdout, rows)
        return
    console = Console()
    console.print(
        f"[bold]{escape(account_id)}[/]: status {account.status.value}, due "
        f"{account.due_date}, balance {account.balance} {account.currency}, flags "
        f"{', '.join(sorted(account.flags)) or 'none'}, phone "
        f"{'valid' if account.phone_valid else 'INVALID'}"
    )
    table = Table(title=f"audit trail ({len(rows)} events, oldest first, times UTC)",
                  title_justify="left")  # fmt: skip
    for column in AUDIT_FIELDS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["at"][:19], row["kind"], row["channel"] or "", row["rule"] or "",
            row["contact_id"] or "", row["policy_version"] or "",
            escape(_detail_text(row["detail"])),
        )  # fmt: skip
    console.print(table)


def _detail_text(detail: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={'; '.join(v) if isinstance(v, list) else v}"
        for k, v in detail.items()
        if v not in (None, "")
    )


def _write_csv(out: TextIO, rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(out, fieldnames=AUDIT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "detail": json.dumps(row["detail"], ensure_ascii=False)})


# --- hand-over --------------------------------------------------------------------------

HANDOVER_FIELDS = (
    "account_id", "name", "product", "currency", "balance", "amount_due", "amount_paid",
    "due_date", "dpd", "flags", "contacts", "last_contact_at", "last_contact",
    "promises", "broken_promises",
)  # fmt: skip


@export_app.command("handover")
@exits_cleanly
def export_handover(
    min_dpd: Annotated[
        int | None,
        typer.Option("--min-dpd", min=1, help="Default: the policy's [handover] min_dpd."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: standard output).")
    ] = None,
    config: ConfigOption = None,
    now: NowOption = None,
) -> None:
    """Write the agency hand-over file (CSV: account, balance, DPD, contact summary) for
    unpaid active accounts at or past the DPD line, and set them ``handed_over``: remind
    makes no further automated contact with them."""
    moment = now_from(now)
    settings = settings_from(config)
    book = load_rulebook(settings)
    with open_store(settings) as store:
        cases = CaseFile(store)
        lowest = min_dpd or min(p.handover.min_dpd for p in book.policies.policies)
        latest_due = moment.date() - timedelta(days=lowest - 1)  # zones up to a day off UTC
        rows = []
        for account in cases.overdue_accounts(latest_due, now=moment):
            line = min_dpd or book.policies.for_product(account.product).handover.min_dpd
            today = moment.astimezone(ZoneInfo(account.zone)).date()
            dpd = (today - account.due_date).days
            if dpd >= line:
                rows.append((account, dpd))
        summary = cases.contact_summary([a.account_id for a, _ in rows])
        lines = [_handover_line(a, dpd, summary.get(a.account_id)) for a, dpd in rows]
        target = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
        try:
            writer = csv.DictWriter(target, fieldnames=HANDOVER_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(lines)
        finally:
            if out:
                target.close()
        details = [(x["account_id"], {"balance": x["balance"], "dpd": x["dpd"]}) for x in lines]
        changed = cases.hand_over(details, now=moment, policy_version=book.version,
                                  file=out.name if out else "stdout")  # fmt: skip
    err_console.print(f"{changed} account(s) handed over (DPD >= {lowest}); "
                      "no further automated contact", markup=False)  # fmt: skip


def _handover_line(account: Any, dpd: int, summary: dict[str, Any] | None) -> dict[str, Any]:
    s = summary or {"contacts": {}, "last_at": None, "last": "", "promises": 0, "broken": 0}
    contacts = " ".join(f"{ch}:{n}" for ch, n in sorted(s["contacts"].items()))
    return {
        "account_id": account.account_id, "name": account.name or "",
        "product": account.product, "currency": account.currency,
        "balance": str(account.balance), "amount_due": str(account.amount_due),
        "amount_paid": str(account.amount_paid), "due_date": account.due_date.isoformat(),
        "dpd": dpd, "flags": ";".join(sorted(account.flags)), "contacts": contacts,
        "last_contact_at": s["last_at"].isoformat() if s["last_at"] else "",
        "last_contact": s["last"], "promises": s["promises"], "broken_promises": s["broken"],
    }  # fmt: skip


# --- report contacts --------------------------------------------------------------------


@report_app.command("contacts")
@exits_cleanly
def report_contacts(
    start: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD (ops zone).")],
    end: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD, inclusive.")],
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    config: ConfigOption = None,
) -> None:
    """Contacts made in a period: volume per channel, rule and outcome; right-party
    contact rate, promise rate and kept-promise rate."""
    if fmt not in ("table", "json"):
        raise typer.BadParameter("--format must be table or json")
    first, last = parse_date(start), parse_date(end)
    if first is None or last is None or last < first:
        raise typer.BadParameter("--to must not be before --from")
    settings = settings_from(config)
    zone = ZoneInfo(settings.ops_timezone)
    begin = datetime.combine(first, time(0), tzinfo=zone)
    stop = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone)
    with open_store(settings) as store:
        report = CaseFile(store).contact_report(begin, stop)
    data = _report_data(report, first, last)
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    _print_report(data)


def _report_data(report: ContactReport, first: date, last: date) -> dict[str, Any]:
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "by_channel": dict(sorted(report.by_channel.items())),
        "by_rule": [{"channel": c, "rule": r, "contacts": n}
                    for (c, r), n in sorted(report.by_rule.items())],
        "by_outcome": [{"channel": c, "outcome": o, "contacts": n}
                       for (c, o), n in sorted(report.by_outcome.items())],
        "call_results": report.call_results,
        "right_party_contacts": report.right_party,
        "promises": report.promises,
        "promises_kept": report.kept,
        "promises_broken": report.broken,
        "right_party_rate": report.right_party_rate,
        "promise_rate": report.promise_rate,
        "kept_promise_rate": report.kept_rate,
    }  # fmt: skip


def _print_report(data: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]Contacts {data['from']} .. {data['to']}[/] (ops zone)")
    for title, key, column in (("per rule", "by_rule", "rule"),
                               ("per outcome", "by_outcome", "outcome")):  # fmt: skip
        table = Table(title=title, title_justify="left")
        for name in ("channel", column, "contacts"):
            table.add_column(name)
        for row in data[key]:
            table.add_row(row["channel"], row[column], str(row["contacts"]))
        console.print(table)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    console.print(
        "per channel: " + (", ".join(f"{k} {v}" for k, v in data["by_channel"].items()) or "none")
    )
    console.print(
        f"right-party contact rate {pct(data['right_party_rate'])} "
        f"({data['right_party_contacts']} of {data['call_results']} calls with a result); "
        f"promise rate {pct(data['promise_rate'])} ({data['promises']}); "
        f"kept-promise rate {pct(data['kept_promise_rate'])} "
        f"({data['promises_kept']} kept, {data['promises_broken']} broken)"
    )
