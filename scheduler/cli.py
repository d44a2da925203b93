"""The ``remind`` command line. The clock is read in the commands (``cli_common.now_from``),
never in the planner or the policies, which get ``now`` as an argument. ``--now`` (hidden)
pins it for tests and rehearsals."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

from policies import PolicySet, check_policies, load_policies
from scheduler.cases import CaseFile
from scheduler.cli_cases import audit, export_app, note, outcome, outcomes_app
from scheduler.cli_common import (
    EXIT_INVALID,
    ConfigOption,
    NowOption,
    err_console,
    exits_cleanly,
    now_from,
    settings_from,
)
from scheduler.cli_daemon import calls_app, run, status
from scheduler.cli_data import accounts_app, db_app, sample_portfolio
from scheduler.cli_ops import forecast_command, policy_diff, report_app
from scheduler.cli_sources import sources_app
from scheduler.config import Settings
from scheduler.errors import PolicyError
from scheduler.models import Account, AccountHistory, CaseNote, Horizon, Plan
from scheduler.planner import plan
from scheduler.planning import load_for_plan, plan_from_store
from scheduler.render import Templates, check_templates, template_dirs
from scheduler.report import (
    print_decisions,
    print_summary,
    print_table,
    summarise,
    write_csv,
    write_jsonl,
)
from scheduler.store import open_store

__all__ = ["app", "main"]

app = typer.Typer(
    name="remind",
    help="Repayment reminders and collection contact, inside the lender's policy and the law.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Check and compare policy files.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(policy_app, name="policy")
app.add_typer(calls_app, name="calls")
app.add_typer(sources_app, name="sources")
app.command("sample-portfolio")(sample_portfolio)
app.command("run")(run)
app.command("status")(status)
app.command("outcome")(outcome)
app.add_typer(outcomes_app, name="outcomes")
app.command("note")(note)
app.command("audit")(audit)
app.add_typer(export_app, name="export")
app.command("forecast")(forecast_command)
app.add_typer(report_app, name="report")
policy_app.command("diff")(policy_diff)

PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Policy directory (default: [policy] dir).")
]
DateOption = Annotated[
    str, typer.Option("--date", help="YYYY-MM-DD or 'tomorrow', a day in each borrower's zone.")
]


def _day(value: str, settings: Settings, now: datetime) -> date:
    today = now.astimezone(ZoneInfo(settings.ops_timezone)).date()
    if value == "tomorrow":
        return today + timedelta(days=1)
    if value == "today":
        return today
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use YYYY-MM-DD, 'today' or 'tomorrow'") from exc


def _policies(settings: Settings, directory: Path | None) -> PolicySet:
    return load_policies((directory or settings.policy_dir).resolve())


def _plan_inputs(
    config: Path | None, day: str, policy_dir: Path | None, now: datetime | None
) -> tuple[Settings, datetime, Horizon, PolicySet]:
    """What a planning command's options name: the settings, the instant (``--now`` or the
    clock), the day (``--date``) and the policies (``--policy-dir`` or the config's)."""
    settings = settings_from(config)
    moment = now_from(now)
    return settings, moment, Horizon(_day(day, settings, moment)), _policies(settings, policy_dir)


@dataclass(frozen=True, slots=True)
class _PlanRun:
    """Everything a planning command reads: the instant, the day, the policies, and the
    accounts with their history (the store is opened and closed again here)."""

    now: datetime
    horizon: Horizon
    policies: PolicySet
    accounts: list[Account]
    history: dict[str, AccountHistory]
    notes: tuple[CaseNote, ...] = ()

    @classmethod
    def prepare(
        cls,
        config: Path | None,
        day: str,
        policy_dir: Path | None,
        now: datetime | None,
        account_id: str | None,
    ) -> _PlanRun:
        settings, moment, horizon, policies = _plan_inputs(config, day, policy_dir, now)
        store = open_store(settings)
        try:
            accounts, history = load_for_plan(store, policies, horizon, moment, account_id)
            notes = CaseFile(store).notes(account_id) if account_id is not None else []
        finally:
            store.close()
        return cls(moment, horizon, policies, accounts, history, tuple(notes))


@app.command("dry-run")
@exits_cleanly
def dry_run(
    config: ConfigOption = None,
    date_: DateOption = "tomorrow",
    output: Annotated[
        str, typer.Option("--format", help="table, json (JSON Lines) or csv.")
    ] = "table",
    show_suppressed: Annotated[
        bool, typer.Option("--show-suppressed", help="List held contacts too.")
    ] = False,
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    policy_dir: PolicyOption = None,
    limit: Annotated[int, typer.Option(help="Table rows to print (0: all).")] = 200,
    now: NowOption = None,
) -> None:
    """What will be sent and called on a day (default tomorrow), and who is left out, and why.

    Reads the store, writes nothing, sends nothing."""
    if output not in ("table", "json", "csv"):
        raise typer.BadParameter("--format must be table, json or csv")
    if account is not None:
        run = _PlanRun.prepare(config, date_, policy_dir, now, account)
        result = plan(run.now, run.accounts, run.history, run.policies, run.horizon)
        horizon, policies = run.horizon, run.policies
    else:
        horizon, policies, result = _plan_store(config, date_, policy_dir, now)
    _print_plan(result, output, show_suppressed or account is not None, limit, horizon, policies)


def _plan_store(
    config: Path | None, day: str, policy_dir: Path | None, now: datetime | None
) -> tuple[Horizon, PolicySet, Plan]:
    """The whole store's plan for a day, in ``[planner] workers`` shards. Worker processes
    are forked: this command runs no other threads."""
    settings, moment, horizon, policies = _plan_inputs(config, day, policy_dir, now)
    store = open_store(settings)
    try:
        _, result = plan_from_store(
            store, policies, horizon, moment, workers=settings.planner.workers, context="fork"
        )
    finally:
        store.close()
    return horizon, policies, result


def _print_plan(
    result: Plan,
    output: str,
    show_suppressed: bool,
    limit: int,
    horizon: Horizon,
    policies: PolicySet,
) -> None:
    summary = summarise(result)
    if output == "json":
        write_jsonl(result, sys.stdout, show_suppressed=show_suppressed)
    elif output == "csv":
        write_csv(result, sys.stdout, show_suppressed=show_suppressed)
    else:
        console = Console()
        title = f"Plan for {horizon.first_day} (borrower-local days), policy {policies.version}"
        print_table(result, console, show_suppressed=show_suppressed, limit=limit, title=title)
        print_summary(summary, console)
        return
    print_summary(summary, err_console)


@app.command("explain")
@exits_cleanly
def explain(
    account_id: Annotated[str, typer.Argument(help="The account to explain.")],
    config: ConfigOption = None,
    date_: DateOption = "tomorrow",
    policy_dir: PolicyOption = None,
    now: NowOption = None,
) -> None:
    """Every rule considered for one account on a day, and why it fired, moved or was dropped."""
    run = _PlanRun.prepare(config, date_, policy_dir, now, account_id)
    horizon, policies, account = run.horizon, run.policies, run.accounts[0]
    result = plan(run.now, run.accounts, run.history, policies, horizon, explain=True)
    console = Console()
    dpd = (horizon.first_day - account.due_date).days
    policy = policies.for_product(account.product)
    console.print(
        f"[bold]{account.account_id}[/] on {horizon.first_day}: DPD {dpd}, due {account.due_date}, "
        f"balance {account.balance} {account.currency}, status {account.status.value}, "
        f"zones {', '.join(account.timezones)}, country {account.country or '-'}, "
        f"flags {', '.join(sorted(account.flags)) or 'none'}"
    )
    console.print(f"policy {policy.policy.name} (version {policies.version})")
    print_decisions(result.decisions.get(account.account_id, ()), console)
    if result.handover:
        console.print("listed for hand-over: no automated contact")
    for case_note in run.notes:
        author = f" ({case_note.author})" if case_note.author else ""
        console.print(f"note {case_note.at:%Y-%m-%d %H:%M} UTC{author}: {case_note.text}",
                      markup=False, highlight=False)  # fmt: skip


@policy_app.command("check")
@exits_cleanly
def policy_check(
    directory: Annotated[
        Path | None, typer.Argument(help="Policy directory (default: config's).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a policy directory and render every template its rules use, in every language,
    for a sample account; list every problem with file, key and line. Exit 0 or 2."""
    if directory is None or config is not None:
        settings = settings_from(config)
        directory = directory or settings.policy_dir
        lender, language = settings.lender_name, settings.default_language
    else:  # `remind policy check DIR` needs no config file; config.toml's defaults then
        lender, language = "Your lender", "en"
    folder = directory.resolve()
    problems = check_policies(folder)
    languages: tuple[str, ...] = ()
    if not problems:
        policies = load_policies(folder)
        try:
            templates = Templates.load(template_dirs(folder), default_language=language)
        except PolicyError as exc:
            problems = list(exc.problems)
        else:
            languages = templates.languages
            problems = check_templates(policies, templates, lender_name=lender, languages=languages)
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s) in {directory}:[/]")
        for problem in problems:
            err_console.print(f"  {problem}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    names = ", ".join(p.policy.name for p in policies.policies)
    Console().print(
        f"OK: {directory} ({names}), version {policies.version}; "
        f"templates rendered in {', '.join(languages)}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
