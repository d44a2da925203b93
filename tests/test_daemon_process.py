"""``remind run`` as a real process: a real SQLite file, the loopback HTTP gateway, a real
SMTP server. Signals, crashes and downtime as an operator would meet them."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, timedelta
from pathlib import Path

import pytest

from tests.factories import account, copy_policies, local
from tests.support.daemon import (
    DaemonProcess,
    audit_rows,
    contact_rows,
    remind,
    seed,
    settled_metric,
    statuses,
    write_config,
)
from tests.support.gateway import LoopbackGateway
from tests.support.smtp import SmtpServer, free_port

DUE = date(2026, 11, 23)
ZONE = "Asia/Shanghai"
MORNING = local(DUE - timedelta(days=1), "09:00", ZONE)
NOON = local(DUE - timedelta(days=1), "12:30", ZONE)


@pytest.fixture
def gateway() -> Iterator[LoopbackGateway]:
    with LoopbackGateway() as gw:
        yield gw


def channels(gateway_url: str, smtp_port: int | None = None) -> str:
    email = (
        f'[channels.email]\ntype = "email_smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        'security = "none"\nfrom_address = "reminders@example.cn"\n'
        if smtp_port
        else '[channels.email]\ntype = "outbox"\npath = "outbox-email.jsonl"\n'
    )
    return (
        f'[channels.sms]\ntype = "sms_http"\nurl = "{gateway_url}/sms"\n'
        'token_env = "TEST_SMS_TOKEN"\nconcurrency = 8\ntimeout_seconds = 2\n'
        f'{email}[channels.call]\ntype = "call_queue"\n'
        '[channels.letter]\ntype = "outbox"\npath = "outbox-letter.jsonl"\n'
    )


ENV = {"TEST_SMS_TOKEN": "s3cret"}


def test_sends_sms_and_email_skips_the_payer_and_drains_on_sigterm(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    # Five borrowers reachable by phone only, five by email only (an SMS and an email to
    # one borrower would be two hours apart: caps.min_gap_minutes)
    borrowers = [account(f"A{i}", due_date=DUE, email=None) for i in range(5)] + [
        account(f"A{i}", due_date=DUE, phone=None, email=f"b{i}@example.cn") for i in range(5, 10)
    ]
    with SmtpServer() as smtp:
        metrics_port = free_port()
        config = write_config(
            tmp_path, store_url=url, channels=channels(gateway.url, smtp.port),
            daemon=f"metrics_port = {metrics_port}\n",
        )  # fmt: skip
        seed(url, borrowers, MORNING)
        # Given the plan was materialised in the morning, before any window opened
        planned = remind(config, "run", "--once", now=MORNING, env=ENV)
        assert planned.returncode == 0, planned.stderr
        assert gateway.deliveries() == [] and set(statuses(url)) == {"planned"}
        # and A3 and A8 paid after that
        seed(url, [replace(b, amount_paid=b.amount_due) for b in borrowers
                   if b.account_id in ("A3", "A8")], MORNING)  # fmt: skip
        # When the daemon runs at 12:30
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log", env=ENV)
        daemon.wait_for(lambda: len(gateway.deliveries()) == 4 and len(smtp.received()) == 4)
        # (and its Prometheus endpoint on 127.0.0.1 counts what it settled)
        daemon.wait_for(
            lambda: settled_metric(metrics_port, 'channel="sms",outcome="skipped"') == 1
        )
        assert settled_metric(metrics_port, 'channel="sms",outcome="sent"') == 4
        assert settled_metric(metrics_port, 'channel="email",outcome="sent"') == 4
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 30
        emails = smtp.received()
    # Then four SMS and four emails went, each under its contact id; the payers got nothing
    rows = contact_rows(url, "contact_id", "account_id", "status", "reason")
    sent = {r.contact_id for r in rows if r.status == "sent"}
    assert {d["key"] for d in gateway.deliveries()} <= sent
    assert {d["body"]["to"] for d in gateway.deliveries()} == {"+8613812345678"}
    assert sorted(e.rcpt_tos[0] for e in emails) == [f"b{i}@example.cn" for i in (5, 6, 7, 9)]
    assert all(e.message["Message-ID"].startswith("<c") for e in emails)
    skipped = {(r.account_id, r.reason) for r in rows if r.status == "skipped"}
    assert skipped == {("A3", "paid"), ("A8", "paid")}
    log = daemon.log_path.read_text()
    assert "+8613812345678" not in log and "b5@example.cn" not in log
    assert any(e.get("event") == "daemon.stopped" for e in daemon.events())


def test_a_second_sigterm_while_draining_still_lets_the_sends_in_flight_finish(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    config = write_config(tmp_path, store_url=url, channels=channels(gateway.url))
    seed(url, [account(f"S{i}", due_date=DUE, email=None) for i in range(3)], MORNING)
    assert remind(config, "run", "--once", now=MORNING, env=ENV).returncode == 0
    # Given a gateway that takes 1.5 s to answer, and the daemon's three sends in flight
    # (delivered, the answers not yet back)
    gateway.set_faults({"script": [{"accept_then_timeout": 1.5}] * 3})
    daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log", env=ENV)
    daemon.wait_for(lambda: len(gateway.deliveries()) == 3)
    # When an impatient operator sends SIGTERM twice
    daemon.signal(signal.SIGTERM)
    time.sleep(0.2)
    daemon.signal(signal.SIGTERM)
    # Then the daemon still drains: it exits 0 with the three sends recorded (the later
    # days' contacts stay planned), nothing left claimed
    assert daemon.stop() == 0
    found = statuses(url)
    assert found["sent"] == 3 and "claimed" not in found
    assert len(gateway.requests()) == 3  # none sent again
    stopped = [e for e in daemon.events() if e.get("event") == "daemon.stopped"]
    assert stopped and stopped[0]["released"] == 0


def test_sighup_with_a_broken_policy_keeps_the_old_one(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    policies = copy_policies(tmp_path / "policies")
    config = write_config(tmp_path, store_url=url, channels=channels(gateway.url),
                          policy_dir=policies)  # fmt: skip
    seed(url, [account("A1", due_date=DUE)], MORNING)
    daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log", env=ENV)
    daemon.wait_for(lambda: any(e.get("event") == "daemon.ready" for e in daemon.events()))
    text = (policies / "default.toml").read_text()
    (policies / "default.toml").write_text(text.replace("dpd = -1\n", 'dpd = "soon"\n', 1))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: any(e.get("event") == "reload.kept_previous" for e in daemon.events()))
    rejected = [e for e in daemon.events() if e.get("event") == "reload.rejected"]
    assert rejected and rejected[0]["file"].endswith("default.toml") and rejected[0]["line"]
    # the daemon still works under the previous policy
    daemon.wait_for(lambda: len(gateway.deliveries()) == 1)
    assert daemon.stop() == 0


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    config = write_config(tmp_path, store_url=url, channels=channels(gateway.url))
    first = DaemonProcess(config, NOON, tmp_path / "first.log", env=ENV)
    first.wait_for(lambda: any(e.get("event") == "daemon.ready" for e in first.events()))
    second = remind(config, "run", now=NOON, env=ENV, timeout=30)
    assert second.returncode == 3
    assert "another remind daemon" in second.stderr and "PostgreSQL" in second.stderr
    assert first.stop() == 0


@pytest.mark.slow
def test_sigkill_at_random_moments_never_doubles_or_loses_a_contact(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    # Given 2,000 SMS due now (accounts without email, so SMS only) and a gateway that is
    # sometimes slow, sometimes rate-limits and sometimes loses its reply after accepting
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    config = write_config(
        tmp_path, store_url=url, channels=channels(gateway.url),
        daemon="retry_base_seconds = 1\nretry_max_seconds = 2\nbatch_size = 50\n",
    )  # fmt: skip
    seed(url, [account(f"K{i:05d}", due_date=DUE, email=None) for i in range(2000)], MORNING)
    assert remind(config, "run", "--once", now=MORNING, env=ENV).returncode == 0
    gateway.set_faults({"rate_429": 0.02, "rate_500": 0.02, "rate_timeout": 0.005,
                        "timeout_seconds": 3, "retry_after": 1, "seed": 7})  # fmt: skip
    rng = random.Random(11)
    # When the daemon is SIGKILLed at random moments while it sends, and restarted each time
    progress = []
    for round_ in range(8):
        daemon = DaemonProcess(config, NOON, tmp_path / f"run{round_}.log", env=ENV)
        daemon.wait_for(lambda d=daemon: any(e.get("event") == "daemon.ready"
                                             for e in d.events()))  # fmt: skip
        time.sleep(rng.uniform(0.2, 1.5))
        daemon.kill()
        progress.append(len(gateway.deliveries()))
    final = DaemonProcess(config, NOON, tmp_path / "final.log", env=ENV)
    final.wait_for(lambda: statuses(url).get("sent", 0) == 2000, timeout=180)
    assert final.stop() == 0
    # (the kills fell in the middle of the work, some batches were recorded before a kill,
    # and the gateway did refuse and time out)
    assert progress[0] > 0 and progress[-1] < 2000 and sorted(progress) == progress
    recorded_before_final = sum(
        '"event_kind": "sent"' in line
        for n in range(8) for line in (tmp_path / f"run{n}.log").read_text().splitlines()
    )  # fmt: skip
    assert 0 < recorded_before_final < 2000
    assert {429, 500} <= {r["status"] for r in gateway.requests()}
    # Then every contact is recorded sent exactly once, and delivered exactly once
    rows = contact_rows(url, "contact_id", "status", "window_start")
    today = [r for r in rows if r.window_start < NOON.astimezone(UTC) + timedelta(hours=12)]
    assert len(today) == 2000 and {r.status for r in today} == {"sent"}
    sent_events = [r.contact_id for r in audit_rows(url, "sent")]
    assert len(sent_events) == len(set(sent_events)) == 2000
    delivered = [d["key"] for d in gateway.deliveries()]
    assert len(delivered) == len(set(delivered)) == 2000
    assert set(delivered) == set(sent_events)


def test_downtime_of_two_days_misses_windows_and_reports_late_first_contacts(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    config = write_config(tmp_path, store_url=url, channels=channels(gateway.url))
    # Given B1 falls due on DUE and B2 the day before; the daemon ran at noon the day before
    seed(url, [account("B1", due_date=DUE, email=None),
               account("B2", due_date=DUE - timedelta(days=1), email=None)], MORNING)  # fmt: skip
    assert remind(config, "run", "--once", now=NOON, env=ENV).returncode == 0
    # When it comes back two days later, late in the evening (quiet hours)
    late = NOON + timedelta(days=2, hours=9, minutes=30)  # 22:00 local
    back = remind(config, "run", "--once", now=late, env=ENV)
    assert back.returncode == 0, back.stderr
    rows = contact_rows(url, "contact_id", "account_id", "rule", "status", "performed_at")
    # Then windows that passed while it was down are recorded missed, none sent at night
    missed = {(r.account_id, r.rule) for r in rows if r.status == "missed"}
    assert ("B1", "due_day_sms") in missed
    for r in rows:
        if r.performed_at is not None:
            assert 8 <= r.performed_at.astimezone(local(DUE, "00:00", ZONE).tzinfo).hour < 21
    # and B2's first-24h contact, never made, is reported as an SLA breach
    breaches = {r.account_id for r in audit_rows(url, "sla_breach")}
    assert "B2" in breaches
    # and goes at the next allowed time, the next morning
    morning = local(late.date() + timedelta(days=1), "09:30", ZONE)
    assert remind(config, "run", "--once", now=morning, env=ENV).returncode == 0
    first = [r for r in contact_rows(url, "account_id", "rule", "status")
             if r.account_id == "B2" and r.rule == "first_overdue_call"]  # fmt: skip
    assert [r.status for r in first] == ["sent"]  # handed to the agents' call queue


def test_agent_reaches_the_borrower_so_the_fallback_sms_is_not_sent(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    config = write_config(tmp_path, store_url=url, channels=channels(gateway.url))
    # Given C1 missed yesterday's payment: its first-overdue call is queued this morning
    seed(url, [account("C1", due_date=DUE - timedelta(days=1), email=None)], MORNING)
    morning = local(DUE, "09:30", ZONE)
    assert remind(config, "run", "--once", now=morning, env=ENV).returncode == 0
    # When an agent takes the call a minute later and reaches the borrower
    morning += timedelta(minutes=1)
    taken = remind(config, "calls", "next", "--agent", "ann", now=morning)
    assert taken.returncode == 0, taken.stderr
    task = json.loads(taken.stdout)
    assert (task["account_id"], task["rule"], task["phone"]) == (
        "C1", "first_overdue_call", "+8613812345678"
    )  # fmt: skip
    assert remind(config, "calls", "next", "--agent", "bob", now=morning).returncode == 1
    done = remind(config, "calls", "outcome", task["contact_id"], "--result", "conversation",
                  "--agent", "ann", now=morning)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Then the afternoon's fallback SMS is recorded skipped, not sent
    afternoon = local(DUE, "14:30", ZONE)
    assert remind(config, "run", "--once", now=afternoon, env=ENV).returncode == 0
    rows = {r.rule: r for r in contact_rows(url, "rule", "status", "reason", "outcome")}
    assert rows["first_overdue_call"].outcome == "conversation"
    assert (rows["first_overdue_sms"].status, rows["first_overdue_sms"].reason) == (
        "skipped", "borrower_recently_reached"
    )  # fmt: skip
    assert gateway.deliveries() == []
    status = json.loads(remind(config, "status", "--format", "json", now=afternoon).stdout)
    assert {"channel": "sms", "status": "skipped", "contacts": 1} in status["queue"]
    assert "tick.plan" in status["ticks"]
