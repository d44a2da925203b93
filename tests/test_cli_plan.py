"""`remind dry-run`, `remind explain` and `remind policy check`, through the real CLI against a
real SQLite store imported from a CSV file."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from scheduler.cli import app
from scheduler.report import JSON_KEYS
from tests.factories import copy_policies

NOW = "2026-11-23T20:00:00+08:00"  # the evening before 2026-11-24, ops time
ROWS = [
    # account_id, phone, email, timezone, due_date, amount_due, amount_paid, flags
    ("PRE3", "+8613800000001", "a@example.cn", "", "2026-11-27", "100.00", "0", ""),
    ("FIRST", "+8613800000002", "b@example.cn", "", "2026-11-23", "100.00", "0", ""),
    ("PAID", "+8613800000003", "c@example.cn", "", "2026-11-23", "100.00", "100.00", ""),
    ("DISPUTED", "+8613800000004", "", "", "2026-11-23", "100.00", "0", "dispute"),
    ("NYC", "+12015550123", "d@example.com", "America/New_York", "2026-11-23", "50", "0", ""),
    ("NOSMS", "+8613800000005", "", "", "2026-11-24", "100.00", "0", "no_sms"),
]


def write_portfolio(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "account_id",
                "phone",
                "email",
                "timezone",
                "due_date",
                "amount_due",
                "amount_paid",
                "flags",
            ]
        )
        writer.writerows(ROWS)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    copy_policies(tmp_path / "policies")
    (tmp_path / "config.toml").write_text(
        '[store]\nurl = "sqlite:///remind.db"\n[ops]\ntimezone = "Asia/Shanghai"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\n'
        '[policy]\ndir = "policies"\n'
    )
    result = invoke(tmp_path, "accounts", "import", str(write_portfolio(tmp_path / "p.csv")))
    assert result.exit_code == 0, result.output
    return tmp_path


def invoke(workdir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, [*args, "--config", str(workdir / "config.toml")], env={"COLUMNS": "200"}
    )


def dry_run_json(workdir: Path, *extra: str) -> list[dict[str, object]]:
    result = invoke(workdir, "dry-run", "--format", "json", "--now", NOW, *extra)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_dry_run_json_lines_have_exactly_the_contract_keys(workdir: Path) -> None:
    rows = dry_run_json(workdir, "--show-suppressed")
    assert rows and all(tuple(row) == JSON_KEYS for row in rows)
    planned = {(r["account_id"], r["rule"]) for r in rows if r["status"] == "planned"}
    assert planned == {
        ("PRE3", "pre_due_sms_3d"),
        ("FIRST", "first_overdue_call"),
        ("FIRST", "first_overdue_sms"),
        ("NYC", "first_overdue_call"),
        ("NYC", "first_overdue_sms"),
    }
    held = {(r["account_id"], r["reason"]) for r in rows if r["status"] == "suppressed"}
    assert ("DISPUTED", "dispute") in held and ("NOSMS", "no_sms") in held
    first_call = next(r for r in rows if r["account_id"] == "FIRST" and r["channel"] == "call")
    assert first_call["window_start"] == "2026-11-24T09:00:00+08:00"
    assert first_call["window_end"] == "2026-11-24T12:00:00+08:00"
    assert first_call["sla_risk"] is False and first_call["reason"] is None
    nyc = next(r for r in rows if r["account_id"] == "NYC" and r["channel"] == "call")
    assert nyc["window_start"] == "2026-11-24T09:00:00-05:00"


def test_the_summary_goes_to_stderr_and_the_table_reads_as_a_schedule(workdir: Path) -> None:
    result = invoke(workdir, "dry-run", "--format", "json", "--now", NOW)
    assert "Planned contacts: 5" in result.stderr
    assert "Planned contacts" not in result.stdout
    table = invoke(workdir, "dry-run", "--now", NOW, "--show-suppressed")
    assert table.exit_code == 0
    for text in (
        "first_overdue_call",
        "09:00-12:00 +0800",
        "Agent load",
        "dispute",
        "Suppressed per reason",
        "SLA risk: 0",
    ):
        assert text in table.stdout


def test_csv_has_a_header_and_one_row_per_contact(workdir: Path) -> None:
    result = invoke(workdir, "dry-run", "--format", "csv", "--now", NOW)
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert tuple(rows[0]) == JSON_KEYS and len(rows) == 5


def test_the_date_is_a_borrower_local_day_and_can_be_chosen(workdir: Path) -> None:
    rows = dry_run_json(workdir, "--date", "2026-11-27")
    assert {(r["account_id"], r["rule"]) for r in rows} == {
        ("PRE3", "due_day_sms"),  # due that day
        ("FIRST", "early_call"),
        ("NYC", "early_call"),  # DPD 4
    }


def test_a_dry_run_writes_nothing_to_the_store(workdir: Path) -> None:
    before = hashlib.sha256((workdir / "remind.db").read_bytes()).hexdigest()
    dry_run_json(workdir)
    invoke(workdir, "explain", "FIRST", "--now", NOW)
    assert hashlib.sha256((workdir / "remind.db").read_bytes()).hexdigest() == before


def test_one_account_shows_why_it_is_left_out(workdir: Path) -> None:
    rows = dry_run_json(workdir, "--account", "PAID")
    assert [(r["status"], r["reason"]) for r in rows] == [("suppressed", "paid")] * 2


def test_explain_lists_every_rule_and_what_became_of_it(workdir: Path) -> None:
    result = invoke(workdir, "explain", "NYC", "--now", NOW)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "DPD 1" in out and "America/New_York" in out
    for rule in ("pre_due_sms_3d", "first_overdue_call", "early_call", "letter_dpd31"):
        assert rule in out
    assert "fired" in out and "not_due" in out
    missing = invoke(workdir, "explain", "NOBODY", "--now", NOW)
    assert missing.exit_code == 1 and "no account 'NOBODY'" in missing.stderr


def test_policy_check_passes_the_shipped_files_and_lists_every_problem_in_broken_ones(
    workdir: Path,
) -> None:
    ok = invoke(workdir, "policy", "check")
    assert ok.exit_code == 0 and "OK" in ok.stdout
    broken = workdir / "broken"
    copy_policies(broken)
    text = (broken / "default.toml").read_text()
    text = text.replace("contacts_per_day = 3", "contacts_per_day = -1")
    text = text.replace('at = "14:00"', 'at = "2pm"')
    (broken / "default.toml").write_text(text)
    result = invoke(workdir, "policy", "check", str(broken))
    assert result.exit_code == 2
    assert "caps.contacts_per_day" in result.stderr and "rule[5].at" in result.stderr
    assert "default.toml:" in result.stderr
    # And a dry-run with that directory refuses to plan
    refused = invoke(workdir, "dry-run", "--policy", str(broken), "--now", NOW)
    assert refused.exit_code == 2 and "rule[5].at" in refused.stderr


def test_history_reaches_back_as_far_as_a_first_contact_can_move() -> None:
    from datetime import date, timedelta

    from scheduler.planner import FIRST_CONTACT_SEARCH_DAYS
    from scheduler.planning import history_since
    from tests.factories import shipped_policies

    since = history_since(shipped_policies(), date(2026, 11, 24))
    assert since.date() <= date(2026, 11, 24) - timedelta(days=FIRST_CONTACT_SEARCH_DAYS)
