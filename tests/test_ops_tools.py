"""Ops tools through the real CLI against real SQLite stores, with ``--now`` pinned:
``remind policy diff``, ``remind forecast`` (and its PNG) and ``remind report sla``."""

from __future__ import annotations

import csv
import json
import re
import struct
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from scheduler.cli import app
from scheduler.config import load_settings
from scheduler.models import Channel, Outcome, PastContact, PlannedContact, contact_id
from scheduler.queue import ContactQueue
from scheduler.store import open_store
from tests.factories import copy_policies, local

NOW = "2026-11-23T20:00:00+08:00"  # the evening before 2026-11-24, ops time
SH = "Asia/Shanghai"
HEADER = ["account_id", "phone", "email", "timezone", "due_date", "amount_due", "amount_paid"]
ROWS = [
    ("PRE3", "+8613800000001", "a@example.cn", "", "2026-11-27", "100.00", "0"),  # DPD -3
    ("PRE1", "+8613800000002", "b@example.cn", "", "2026-11-25", "100.00", "0"),  # DPD -1
    ("NYPRE", "+12015550123", "c@example.com", "America/New_York", "2026-11-27", "50", "0"),
    ("FIRST", "+8613800000003", "d@example.cn", "", "2026-11-23", "100.00", "0"),  # DPD 1
    ("CALLS", "+8613800000004", "e@example.cn", "", "2026-11-18", "100.00", "0"),  # DPD 6
    ("DUE", "+8613800000005", "f@example.cn", "", "2026-11-24", "100.00", "0"),  # DPD 0
]


def invoke(workdir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, [*args, "--config", str(workdir / "config.toml")], env={"COLUMNS": "200"}
    )


def make_workdir(path: Path, rows: list[tuple[str, ...]]) -> Path:
    copy_policies(path / "policies")
    (path / "config.toml").write_text(
        '[store]\nurl = "sqlite:///remind.db"\n[ops]\ntimezone = "Asia/Shanghai"\n'
        'lender_name = "Example Finance"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\n'
        '[policy]\ndir = "policies"\n'
    )
    portfolio = path / "p.csv"
    with portfolio.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    result = invoke(path, "accounts", "import", str(portfolio))
    assert result.exit_code == 0, result.output
    return path


def store_of(workdir: Path):  # type: ignore[no-untyped-def]
    return open_store(load_settings(workdir / "config.toml"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = make_workdir(tmp_path, ROWS)
    # CALLS has had three unanswered calls in the last 7 days (DPD 1, 2 and 4)
    store = store_of(path)
    try:
        for day, rule in ((19, "first_overdue_call"), (20, "early_call"), (22, "early_call")):
            store.add_performed_contact(
                PastContact(
                    "CALLS",
                    Channel.CALL,
                    rule,
                    local(date(2026, 11, day), "10:00", SH),
                    Outcome.NO_ANSWER,
                    due_date=date(2026, 11, 18),
                ),
                contact_id=f"seed-{day}",
                now=local(date(2026, 11, 23), "20:00", SH),
            )
    finally:
        store.close()
    return path


def edited_policies(workdir: Path) -> Path:
    """The shipped policies with the 10:00 reminders moved to 08:30 and the 7-day call cap
    tightened from 7 to 3."""
    new = copy_policies(workdir / "new-policies")
    text = (new / "default.toml").read_text()
    assert text.count('at = "10:00"') == 2  # pre_due_sms_3d and pre_due_sms_1d
    text = text.replace('at = "10:00"', 'at = "08:30"')
    text = text.replace("call_attempts_per_7_days = 7", "call_attempts_per_7_days = 3")
    (new / "default.toml").write_text(text)
    return new


# -- policy diff -----------------------------------------------------------------------------


def test_policy_diff_shows_exactly_the_moved_reminders_and_the_tightened_cap(
    workdir: Path,
) -> None:
    # Given an edit that moves the 10:00 reminders to 08:30 and tightens a call cap
    new = edited_policies(workdir)
    # When ops ask for tomorrow's difference
    result = invoke(workdir, "policy", "diff", str(new), "--now", NOW, "--format", "json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.stdout)
    # Then the policy keys that changed are exactly those two edits
    assert {(c["policy"], c["key"], c["old"], c["new"]) for c in diff["policy_changes"]} == {
        ("default", "rule.pre_due_sms_3d.at", "10:00", "08:30"),
        ("default", "rule.pre_due_sms_1d.at", "10:00", "08:30"),
        ("default", "caps.call_attempts_per_7_days", "7", "3"),
    }
    # And the plan changes only there: the reminders moved, CALLS' fourth call is capped
    changed = {
        (d["rule"], d["channel"], d["added"], d["removed"], d["moved"])
        for d in diff["by_rule_channel"]
    }
    assert changed == {
        ("pre_due_sms_3d", "sms", 0, 0, 2),  # PRE3 and NYPRE
        ("pre_due_sms_1d", "sms", 0, 0, 1),  # PRE1
        ("early_call", "call", 0, 1, 0),  # CALLS
    }
    assert diff["suppressed"] == {"cap_calls_7d": {"before": 0, "after": 1}}
    assert {(t["from"], t["to"], t["contacts"]) for t in diff["transitions"]} == {
        ("planned", "planned", 3),
        ("planned", "cap_calls_7d", 1),
    }
    assert set(diff["sample_accounts"]) == {"PRE3", "NYPRE", "PRE1", "CALLS"}
    assert diff["planned_before"] - diff["planned_after"] == 1


def test_policy_diff_table_reads_as_a_report(workdir: Path) -> None:
    new = edited_policies(workdir)
    result = invoke(workdir, "policy", "diff", str(new), "--now", NOW)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "Policy changes",
        "rule.pre_due_sms_3d.at",
        "Per rule and channel",
        "cap_calls_7d",
        "Sample of affected accounts",
        "08:30-20:00 +0800",
        "08:30-20:00 -0500",
    ):
        assert text in out, text
    # the unchanged rules are not listed
    assert "first_overdue_call" not in out and "due_day_sms" not in out


def test_policy_diff_of_identical_policies_is_empty(workdir: Path) -> None:
    same = copy_policies(workdir / "same")
    result = invoke(workdir, "policy", "diff", str(same), "--now", NOW)
    assert result.exit_code == 0, result.output
    assert "No policy key differs" in result.stdout and "same under both" in result.stdout


def test_policy_diff_exits_2_when_the_new_directory_is_invalid(workdir: Path) -> None:
    broken = copy_policies(workdir / "broken")
    path = broken / "default.toml"
    path.write_text(path.read_text().replace('at = "14:00"', 'at = "2pm"', 1))
    result = invoke(workdir, "policy", "diff", str(broken), "--now", NOW)
    assert result.exit_code == 2
    assert "default.toml:" in result.stderr and ".at" in result.stderr


# -- forecast --------------------------------------------------------------------------------


def test_forecast_counts_days_channels_rules_and_call_hours(workdir: Path) -> None:
    result = invoke(workdir, "forecast", "--days", "5", "--now", NOW, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert rows and tuple(rows[0]) == ("day", "channel", "rule", "local_hour", "contacts")
    got = {(r["day"], r["rule"]): int(r["contacts"]) for r in rows if r["rule"] != "early_sms"}
    # PRE3 (due 11-27): -3 on 11-24, -1 on 11-26 (sms+email), due day 11-27
    assert got[("2026-11-24", "pre_due_sms_3d")] == 2  # PRE3 and NYPRE
    assert got[("2026-11-26", "pre_due_email_1d")] == 2
    assert got[("2026-11-27", "due_day_sms")] == 2
    # FIRST: the first call on DPD 1 (11-24), early calls every 2 days from DPD 2 (11-25, 11-27)
    assert got[("2026-11-24", "first_overdue_call")] == 1
    assert got[("2026-11-25", "first_overdue_call")] == 1  # DUE's DPD 1
    # CALLS' early calls (DPD 6, 8) stay inside 7 calls in 7 days
    calls = [r for r in rows if r["channel"] == "call"]
    assert {r["local_hour"] for r in calls} == {"9"}
    table = invoke(workdir, "forecast", "--days", "5", "--now", NOW)
    assert table.exit_code == 0, table.output
    for text in (
        "Forecast 2026-11-24 to 2026-11-28",
        "Call tasks per borrower-local starting hour",
        "09:00",
    ):
        assert text in table.stdout


def test_forecast_caps_count_the_contacts_of_earlier_forecast_days(tmp_path: Path) -> None:
    # Given a policy allowing 2 call attempts in 7 days and an account in early overdue
    path = make_workdir(tmp_path, [ROWS[3]])  # FIRST, DPD 1 on 11-24
    text = (path / "policies" / "default.toml").read_text()
    (path / "policies" / "default.toml").write_text(
        text.replace("call_attempts_per_7_days = 7", "call_attempts_per_7_days = 2")
    )
    # When ten days are forecast
    result = invoke(path, "forecast", "--days", "10", "--now", NOW, "--format", "json")
    assert result.exit_code == 0, result.output
    calls = [json.loads(line) for line in result.stdout.splitlines()]
    days = sorted(r["day"] for r in calls if r["channel"] == "call" for _ in range(r["contacts"]))
    # Then no 7-day window holds more than two planned calls
    as_dates = [date.fromisoformat(d) for d in days]
    assert as_dates, "some calls are planned"
    for i, first in enumerate(as_dates):
        assert sum(1 for d in as_dates[i:] if d < first + timedelta(days=7)) <= 2


def test_forecast_plot_writes_a_readable_png(workdir: Path) -> None:
    pytest.importorskip("matplotlib")
    png = workdir / "forecast.png"
    result = invoke(workdir, "forecast", "--days", "7", "--now", NOW, "--plot", str(png))
    assert result.exit_code == 0, result.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600 and len(data) > 20_000


# -- report sla ------------------------------------------------------------------------------

SLA_ROWS = [
    (name, f"+86138000001{i:02d}", "", "", "2026-11-20", "100.00", "0")
    for i, name in enumerate(("REACHED", "TRIED", "LATE", "MISSED", "HELD", "NEVER", "OPEN"))
]


def test_report_sla_counts_each_overdue_account_once_per_day(tmp_path: Path) -> None:
    # Given accounts due 2026-11-20 (overdue from 11-21 00:00, deadline 11-22 00:00 Shanghai)
    rows = [*SLA_ROWS[:-1], ("OPEN", "+8613800000199", "", "", "2026-11-21", "100.00", "0")]
    path = make_workdir(tmp_path, rows)
    store = store_of(path)
    now = local(date(2026, 11, 22), "12:00", SH)
    due = date(2026, 11, 20)
    try:

        def performed(
            account: str, channel: Channel, rule: str, at: datetime, out: Outcome
        ) -> None:
            store.add_performed_contact(
                PastContact(account, channel, rule, at, out, due_date=due),
                contact_id=f"c-{account}",
                now=now,
            )

        d21 = date(2026, 11, 21)
        performed(
            "REACHED",
            Channel.CALL,
            "first_overdue_call",
            local(d21, "10:00", SH),
            Outcome.CONVERSATION,
        )
        performed(
            "TRIED", Channel.CALL, "first_overdue_call", local(d21, "10:00", SH), Outcome.NO_ANSWER
        )
        performed(
            "LATE",
            Channel.SMS,
            "first_overdue_sms",
            local(date(2026, 11, 22), "09:00", SH),
            Outcome.SENT,
        )
        queue = ContactQueue(store)
        planned = [
            _planned("MISSED", due, d21),
            _planned("HELD", due, d21),
            _planned("OPEN", date(2026, 11, 21), date(2026, 11, 22)),
        ]
        queue.materialise(planned, now=now, policy_version="t")
        queue.record_events(
            [{"kind": "sla_breach", "account_id": "MISSED", "contact_id": planned[0].contact_id}],
            now=now,
        )
        from scheduler.tables import contacts

        with store.engine.begin() as conn:
            conn.execute(
                contacts.update()
                .where(contacts.c.account_id == "HELD")
                .values(status="skipped", reason="paid")
            )
    finally:
        store.close()
    # When the SLA report covers 11-21 and 11-22
    result = invoke(
        path,
        "report",
        "sla",
        "--from",
        "2026-11-21",
        "--to",
        "2026-11-22",
        "--now",
        now.isoformat(),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    days = {r["day"]: r for r in map(json.loads, result.stdout.splitlines())}
    # Then each account is counted once, on the day it became overdue
    assert days["2026-11-21"] == {
        "day": "2026-11-21",
        "became_overdue": 6,
        "reached_in_time": 1,
        "attempted_in_time": 1,
        "late": 1,
        "missed": 1,
        "held": 1,
        "open": 0,
        "not_planned": 1,
    }
    assert days["2026-11-22"]["became_overdue"] == 1 and days["2026-11-22"]["open"] == 1
    table = invoke(
        path,
        "report",
        "sla",
        "--from",
        "2026-11-21",
        "--to",
        "2026-11-22",
        "--now",
        now.isoformat(),
    )
    assert table.exit_code == 0, table.output
    assert re.search(r"2026-11-21\s.*6\s.*1\s.*1\s.*1\s.*1\s.*1\s.*0\s.*1", table.stdout)
    assert "Attempted within 24 hours: 40.0% of 5" in table.stdout


def _planned(account: str, due: date, day: date) -> PlannedContact:
    return PlannedContact(
        contact_id=contact_id(account, "first_overdue_call", due, 1, "borrower"),
        account_id=account,
        channel=Channel.CALL,
        rule="first_overdue_call",
        target="borrower",
        due_date=due,
        step=1,
        window_start=local(day, "09:00", SH),
        window_end=local(day, "12:00", SH),
        template="first_overdue_call",
        priority=100,
    )


def test_forecast_plot_without_matplotlib_names_the_extra(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scheduler.cli_ops

    real = scheduler.cli_ops.importlib.util.find_spec
    monkeypatch.setattr(
        scheduler.cli_ops.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    png = workdir / "f.png"
    result = invoke(workdir, "forecast", "--days", "2", "--now", NOW, "--plot", str(png))
    assert result.exit_code == 2 and not png.exists()
    assert "pip install 'remind[plot]'" in result.stderr
