"""Case work through the real CLI against a real SQLite store: outcomes and their effect on
the schedule, notes, the audit trail, retention, hand-over and the contacts report.

Time is pinned with ``--now``; every borrower is in Asia/Shanghai (UTC+8)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from scheduler.cli import app
from tests.factories import copy_policies

ACCOUNTS = [
    # account_id, phone, due_date, amount_due, amount_paid, emergency_contacts
    ("P1", "+8613800000001", "2026-11-02", "1000", "0", ""),
    ("C1", "+8613800000002", "2026-11-02", "1000", "0", ""),
    ("E1", "+8613800000003", "2026-10-24", "1000", "0", "+8613912345678;+8613712345678"),
    ("OLD", "+8613800000004", "2026-08-20", "800", "100", ""),
]
HEADER = ["account_id", "phone", "due_date", "amount_due", "amount_paid", "emergency_contacts"]


def at(day: str, hh_mm: str = "20:00") -> str:
    return f"{day}T{hh_mm}:00+08:00"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``remind run --once`` in-process points structlog and the root logger at the
    runner's stream, closed when the command returns; put them back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    copy_policies(tmp_path / "policies")
    (tmp_path / "config.toml").write_text(
        '[store]\nurl = "sqlite:///remind.db"\n[ops]\ntimezone = "Asia/Shanghai"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\ncurrency = "CNY"\n'
        '[policy]\ndir = "policies"\n'
        '[channels.sms]\ntype = "outbox"\npath = "sms.jsonl"\n'
        '[channels.email]\ntype = "outbox"\npath = "email.jsonl"\n'
        '[channels.letter]\ntype = "outbox"\npath = "letters.jsonl"\n'
        '[channels.call]\ntype = "call_queue"\n'
    )
    write_accounts(tmp_path / "accounts.csv", ACCOUNTS)
    result = cli(tmp_path, "accounts", "import", str(tmp_path / "accounts.csv"))
    assert result.exit_code == 0, result.output
    return tmp_path


def write_accounts(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def cli(workdir: Path, *args: str, now: str | None = None) -> Result:
    pinned = ["--now", now] if now else []
    return CliRunner().invoke(
        app, [*args, "--config", str(workdir / "config.toml"), *pinned], env={"COLUMNS": "200"}
    )


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def plan_of(workdir: Path, account: str, day: str) -> list[dict[str, object]]:
    """The dry-run rows (planned and suppressed) for one account on one borrower-local day,
    asked the evening before."""
    prev = f"{day[:8]}{int(day[8:]) - 1:02d}" if day[8:] != "01" else None
    now = at(prev) if prev else f"{day}T00:00:00+08:00"
    result = ok(cli(workdir, "dry-run", "--format", "json", "--account", account,
                    "--date", day, now=now))  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


def planned(rows: list[dict[str, object]], channel: str | None = None) -> list[object]:
    return [r["rule"] for r in rows if r["status"] == "planned" and channel in (None, r["channel"])]


def test_a_promise_holds_contact_until_its_date_and_a_broken_one_is_followed_up(
    workdir: Path,
) -> None:
    # Given P1 (due 11-02) promises on Tuesday 11-17 to pay 1000 on 11-26
    ok(cli(workdir, "outcome", "P1", "--result", "promise", "--promise-amount", "1000",
           "--promise-date", "2026-11-26", now=at("2026-11-17", "10:00")))  # fmt: skip
    # Then nothing is planned up to 11-27 (the promised date plus the grace day)
    for day in ("2026-11-18", "2026-11-24", "2026-11-26", "2026-11-27"):
        rows = plan_of(workdir, "P1", day)
        assert planned(rows) == [], (day, rows)
        assert {r["reason"] for r in rows} <= {"promise_pending"}
    # When no payment arrived, the next day has the broken-promise follow-up call
    follow = plan_of(workdir, "P1", "2026-11-28")
    assert "broken_promise" in planned(follow, "call")
    # And the daemon's plan tick closes the promise as broken, with the policy version
    ok(cli(workdir, "run", "--once", now=at("2026-11-28", "07:00")))
    events = audit_json(workdir, "P1")
    broken = [e for e in events if e["kind"] == "promise_broken"]
    assert len(broken) == 1 and broken[0]["policy_version"]


def test_a_payment_covering_the_promise_closes_it_as_kept(workdir: Path) -> None:
    ok(cli(workdir, "outcome", "P1", "--result", "promise", "--promise-amount", "400",
           "--promise-date", "2026-11-26", now=at("2026-11-17", "10:00")))  # fmt: skip
    # When the lender's next file shows 400 paid
    paid = [("P1", "+8613800000001", "2026-11-02", "1000", "400", "")]
    ok(cli(workdir, "accounts", "import", str(write_accounts(workdir / "paid.csv", paid))))
    ok(cli(workdir, "run", "--once", now=at("2026-11-20", "07:00")))
    # Then the promise is kept, and contact resumes on the remaining balance
    assert [e["kind"] for e in audit_json(workdir, "P1")].count("promise_kept") == 1
    assert "broken_promise" not in planned(plan_of(workdir, "P1", "2026-11-28"))


def test_a_conversation_blocks_calls_for_seven_days(workdir: Path) -> None:
    # Given C1 was spoken to on 11-18 at 10:00 (DPD 16)
    ok(cli(workdir, "outcome", "C1", "--result", "conversation", "--note", "lost job",
           now=at("2026-11-18", "10:00")))  # fmt: skip
    # Then calls are held until 11-25 10:00; SMS still go
    for day in ("2026-11-20", "2026-11-22", "2026-11-24"):
        rows = plan_of(workdir, "C1", day)
        assert planned(rows, "call") == [], day
        calls = [r for r in rows if r["channel"] == "call"]
        assert all(r["reason"] == "cap_conversation_cooldown" for r in calls), rows
    assert planned(plan_of(workdir, "C1", "2026-11-22"), "sms") == ["early_sms"]
    later = [r for r in plan_of(workdir, "C1", "2026-11-26") if r["status"] == "planned"]
    assert [r["rule"] for r in later if r["channel"] == "call"] == ["early_call"]


def test_a_complaint_holds_everything_for_the_policys_days(workdir: Path) -> None:
    # Given C1 complains on 11-03 (the shipped policy holds 30 days)
    result = ok(cli(workdir, "outcome", "C1", "--result", "complaint", "--note", "too many calls",
                    now=at("2026-11-03", "10:00")))  # fmt: skip
    assert "flag complaint until 2026-12-03" in result.stdout
    # Then nothing at all is planned, whatever the channel
    for day in ("2026-11-04", "2026-11-12", "2026-11-28"):
        rows = plan_of(workdir, "C1", day)
        assert planned(rows) == [] and {r["reason"] for r in rows} == {"complaint"}, day


def test_a_cease_request_leaves_only_the_legally_required_letter(workdir: Path) -> None:
    ok(cli(workdir, "outcome", "E1", "--result", "cease_request", now=at("2026-11-20", "10:00")))
    rows = plan_of(workdir, "E1", "2026-11-24")  # DPD 31: letter, late call, emergency calls
    assert planned(rows) == ["letter_dpd31"]
    assert {r["reason"] for r in rows if r["status"] == "suppressed"} == {"cease"}


def test_a_wrong_number_stops_calls_and_sms_until_a_new_number_is_imported(
    workdir: Path,
) -> None:
    ok(cli(workdir, "outcome", "C1", "--result", "wrong_number", now=at("2026-11-16", "10:00")))
    rows = plan_of(workdir, "C1", "2026-11-22")  # DPD 20: early call and early SMS
    assert planned(rows) == []
    assert {r["reason"] for r in rows} == {"invalid_phone"}
    # When the same number comes again in the lender's file, it stays invalid
    ok(cli(workdir, "accounts", "import", str(workdir / "accounts.csv")))
    assert planned(plan_of(workdir, "C1", "2026-11-22")) == []
    # When a new number is imported, calls and SMS resume
    new = [("C1", "+8613800000099", "2026-11-02", "1000", "0", "")]
    ok(cli(workdir, "accounts", "import", str(write_accounts(workdir / "new.csv", new))))
    assert set(planned(plan_of(workdir, "C1", "2026-11-22"))) == {"early_call", "early_sms"}


def test_an_emergency_contact_who_objects_is_never_contacted_again(workdir: Path) -> None:
    # Given E1 (DPD 31 on 11-24) was called on 11-10 without reaching the borrower
    ok(cli(workdir, "outcome", "E1", "--result", "no_answer", now=at("2026-11-10", "10:00")))

    def third_party(day: str) -> list[object]:
        rows = plan_of(workdir, "E1", day)
        return sorted(str(r["reason"]) for r in rows if r["rule"] == "emergency_contact_call")

    # one emergency contact a day fits the gap cap: the other waits
    assert third_party("2026-11-24") == ["None", "cap_min_gap"]
    # When the first emergency contact objects
    ok(cli(workdir, "outcome", "E1", "--result", "third_party_objected",
           "--target", "+8613912345678", now=at("2026-11-20", "16:00")))  # fmt: skip
    # Then the other one is called, and the one who objected is held for good, on any day
    assert third_party("2026-11-24") == ["None", "third_party_removed"]
    for day in ("2026-12-01", "2026-12-15"):
        assert "third_party_removed" in third_party(day), day
    # And a third-party result for someone who is not an emergency contact is refused
    refused = cli(workdir, "outcome", "E1", "--result", "third_party_reached",
                  "--target", "+8613500000000", now=at("2026-11-20", "16:30"))  # fmt: skip
    assert refused.exit_code == 2 and "emergency contacts" in refused.output


def audit_json(workdir: Path, account: str) -> list[dict[str, object]]:
    result = ok(cli(workdir, "audit", account, "--format", "json", now=at("2026-12-31")))
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_lists_a_month_of_history_in_order_with_the_policy_version(workdir: Path) -> None:
    # Given a month of the daemon's work for C1 (due 11-02), with call outcomes, a promise,
    # a note and a complaint
    for day in range(3, 31, 3):
        ok(cli(workdir, "run", "--once", now=at(f"2026-11-{day:02d}", "15:00")))
        if day in (9, 15):
            ok(cli(workdir, "outcome", "C1", "--result", "no_answer",
                   now=at(f"2026-11-{day:02d}", "10:30")))  # fmt: skip
    ok(cli(workdir, "note", "C1", "borrower asked for a plan", "--author", "li",
           now=at("2026-11-16", "11:00")))  # fmt: skip
    ok(cli(workdir, "outcome", "C1", "--result", "promise", "--promise-amount", "200",
           "--promise-date", "2026-11-20", now=at("2026-11-17", "10:00")))  # fmt: skip
    ok(cli(workdir, "outcome", "C1", "--result", "complaint", now=at("2026-11-25", "10:00")))
    # When the complaint handler asks for the audit trail
    events = audit_json(workdir, "C1")
    kinds = [e["kind"] for e in events]
    # Then every kind of event is there, oldest first, each decision with its policy version
    for kind in ("planned", "sent", "outcome", "note", "promise_made", "flag_set"):
        assert kind in kinds, kind
    times = [str(e["at"]) for e in events]
    assert times == sorted(times)
    versions = {e["policy_version"] for e in events if e["kind"] != "note"}
    assert None not in versions and len(versions) == 1
    assert all(e["rule"] for e in events if e["kind"] in ("planned", "sent", "skipped"))
    note = next(e for e in events if e["kind"] == "note")
    assert note["detail"] == {"author": "li", "text": "borrower asked for a plan"}
    # And the table and CSV forms carry the same events
    table = ok(cli(workdir, "audit", "C1", now=at("2026-12-31"))).stdout
    assert "borrower asked for a plan" in table and "promise_made" in table
    rows = list(csv.DictReader(ok(cli(workdir, "audit", "C1", "--format", "csv")).stdout
                               .splitlines()))  # fmt: skip
    assert [r["kind"] for r in rows] == kinds
    # And explain shows the note
    explained = ok(cli(workdir, "explain", "C1", now=at("2026-11-30"))).stdout
    assert "borrower asked for a plan" in explained


def test_db_prune_refuses_audit_rows_younger_than_the_retention(workdir: Path) -> None:
    ok(cli(workdir, "note", "C1", "first note", now=at("2024-01-02", "10:00")))
    ok(cli(workdir, "note", "C1", "second note", now=at("2026-11-20", "10:00")))
    # When asked to drop everything older than 30 days, or before a recent day
    for args in (("--older-than", "30"), ("--before", "2026-01-01")):
        refused = cli(workdir, "db", "prune", *args, now=at("2026-11-24"))
        # Then it refuses, says why, and removes nothing
        assert refused.exit_code == 2, refused.output
        assert "730 days" in refused.output
    assert len(audit_json(workdir, "C1")) == 2
    # When the cut-off is older than the retention, only older rows go
    done = ok(cli(workdir, "db", "prune", "--older-than", "731", now=at("2026-11-24")))
    assert "removed 1 audit event" in done.stdout
    assert [e["detail"]["text"] for e in audit_json(workdir, "C1")] == ["second note"]


def test_outcomes_import_rejects_bad_rows_with_their_row_number_and_records_the_rest(
    workdir: Path,
) -> None:
    path = workdir / "dialer.csv"
    path.write_text(
        "account_id,at,result,promise_amount,promise_date,note\n"
        "C1,2026-11-18T10:00:00+08:00,conversation,,,talked\n"
        "NOBODY,2026-11-18T10:05:00+08:00,no_answer,,,\n"
        "P1,2026-11-18T10:10:00+08:00,promise,,2026-11-25,\n"
        "P1,2026-11-18 10:15,busy,,,\n"
        "P1,2026-11-18T10:20:00+08:00,hung_up,,,\n"
        "P1,2026-11-18T10:30:00+08:00,promise,300,2026-11-25,friday\n"
    )
    first = cli(workdir, "outcomes", "import", str(path), now=at("2026-11-18", "12:00"))
    assert first.exit_code == 1
    assert "6 rows read, 2 recorded, 0 already recorded, 4 rejected" in first.stdout
    text = (workdir / "dialer.rejects.csv").read_text()
    rejects = sorted(csv.DictReader(text.splitlines()), key=lambda r: int(r["row"]))
    assert [(r["row"], r["column"]) for r in rejects] == [
        ("3", "account_id"), ("4", "promise_amount"), ("5", "at"), ("6", "result"),
    ]  # fmt: skip
    # The same file again records nothing new
    again = cli(workdir, "outcomes", "import", str(path), now=at("2026-11-18", "12:00"))
    assert "0 recorded, 2 already recorded" in again.stdout
    assert planned(plan_of(workdir, "P1", "2026-11-24")) == []  # the promise holds


def test_calls_outcome_writes_the_same_record_as_outcome(workdir: Path) -> None:
    # Given C1's early call task queued for agents on 11-18 (DPD 16)
    ok(cli(workdir, "run", "--once", now=at("2026-11-18", "09:30")))
    task = json.loads(ok(cli(workdir, "calls", "next", "--agent", "wang",
                             now=at("2026-11-18", "09:31"))).stdout)  # fmt: skip
    # When the agent records a promise on it
    done = ok(cli(workdir, "calls", "outcome", task["contact_id"], "--result", "promise",
                  "--promise-amount", "500", "--promise-date", "2026-11-21", "--agent", "wang",
                  now=at("2026-11-18", "09:40")))  # fmt: skip
    assert "promise to pay 500 by 2026-11-21" in done.stdout
    # Then the audit shows the outcome with the rule that asked for the call and the version
    events = audit_json(workdir, task["account_id"])
    outcome = next(e for e in events if e["kind"] == "outcome")
    assert outcome["rule"] == "early_call" and outcome["contact_id"] == task["contact_id"]
    assert outcome["policy_version"] and outcome["detail"]["result"] == "promise"
    assert "promise_made" in [e["kind"] for e in events]
    # And a second outcome for the same task is refused
    again = cli(workdir, "calls", "outcome", task["contact_id"], "--result", "busy",
                now=at("2026-11-18", "09:45"))  # fmt: skip
    assert again.exit_code == 1


def test_handover_exports_old_accounts_and_stops_their_contact(workdir: Path) -> None:
    out = workdir / "handover.csv"
    result = ok(cli(workdir, "export", "handover", "--min-dpd", "91", "--out", str(out),
                    now=at("2026-11-24", "09:00")))  # fmt: skip
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [(r["account_id"], r["balance"], r["dpd"]) for r in rows] == [("OLD", "700.0000", "96")]
    assert "1 account(s) handed over" in result.stderr
    rows = plan_of(workdir, "OLD", "2026-11-25")
    assert planned(rows) == []
    assert "handed_over" in [e["kind"] for e in audit_json(workdir, "OLD")]
    # A second export finds nobody new
    ok(cli(workdir, "export", "handover", "--out", str(out), now=at("2026-11-25", "09:00")))
    assert list(csv.DictReader(out.read_text().splitlines())) == []


def test_report_contacts_counts_volumes_and_rates(workdir: Path) -> None:
    for account, result, hh in (("C1", "no_answer", "10:00"), ("C1", "conversation", "11:00"),
                                ("P1", "busy", "10:00"), ("E1", "refused", "10:30")):  # fmt: skip
        ok(cli(workdir, "outcome", account, "--result", result, now=at("2026-11-18", hh)))
    ok(cli(workdir, "outcome", "P1", "--result", "promise", "--promise-amount", "100",
           "--promise-date", "2026-11-20", now=at("2026-11-18", "16:00")))  # fmt: skip
    report = json.loads(ok(cli(workdir, "report", "contacts", "--from", "2026-11-18",
                               "--to", "2026-11-18", "--format", "json")).stdout)  # fmt: skip
    assert report["by_channel"] == {"call": 5}
    assert report["call_results"] == 5 and report["right_party_contacts"] == 3
    assert report["right_party_rate"] == 0.6 and report["promise_rate"] == round(1 / 3, 4)
    table = ok(cli(workdir, "report", "contacts", "--from", "2026-11-18", "--to", "2026-11-18"))
    assert "right-party contact rate 60.0%" in table.stdout
