"""The dispatcher in-process, with a recording channel and a real store: what the plan said
is sent once; what changed since planning is re-checked at send time and recorded with its
reason; transient failures retry, permanent ones fail; a crashed claimer's contacts are
sent again under the same id, which the provider deduplicates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from channels.outbox import OutboxChannel
from channels.recording import RecordingChannel
from scheduler.config import load_settings
from scheduler.daemon import Daemon, load_rulebook
from scheduler.dispatcher import Lane, compute_backoff, recheck
from scheduler.errors import PermanentChannelError, TransientChannelError
from scheduler.models import AccountHistory, Channel, Flag, Outcome, PastContact, contact_id
from scheduler.notify import Notifier
from scheduler.queue import ContactQueue, QueuedContact
from scheduler.store import Store
from scheduler.tables import audit_log, contacts
from tests.factories import account, local, shipped_policies
from tests.support.daemon import write_config
from tests.support.signals import own_handlers, sigterm_inside_set

DUE = date(2026, 11, 23)
ZONE = "Asia/Shanghai"
MORNING = local(DUE - timedelta(days=1), "09:00", ZONE).astimezone(UTC)  # before any window
NOON = local(DUE - timedelta(days=1), "12:30", ZONE).astimezone(UTC)  # SMS and email open


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock(MORNING)


@pytest.fixture
def sms() -> RecordingChannel:
    return RecordingChannel("sms")


@pytest.fixture
def daemon(store: Store, tmp_path: Path, clock: Clock, sms: RecordingChannel) -> Iterator[Daemon]:
    config = write_config(tmp_path, store_url="sqlite:///unused.db", channels="")
    settings = load_settings(config)
    store.upsert_accounts([account(f"A{i}", due_date=DUE) for i in range(5)], now=MORNING)
    made = Daemon(
        settings=settings, store=store,
        lanes={Channel.SMS: Lane(Channel.SMS, sms, 2),
               Channel.EMAIL: Lane(Channel.EMAIL, RecordingChannel("email"), 2)},
        rulebook=load_rulebook(settings), clock=clock, notifier=Notifier.from_environ({}),
        owner="test",
    )  # fmt: skip
    made.tick_plan()
    yield made
    made.close()


def row(store: Store, account_id: str, rule: str = "pre_due_sms_1d") -> sa.Row[Any]:
    """The account's contact row for ``rule`` (today's SMS by default)."""
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(contacts).where(contacts.c.account_id == account_id,
                                      contacts.c.rule == rule)
        ).one()  # fmt: skip


def test_plan_then_send_at_the_window_renders_and_records_each_once(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    # Given the plan was made in the morning, when the window opens and dispatch runs twice
    assert daemon.tick_dispatch(Channel.SMS) == 0  # nothing due before 10:00
    clock.at = NOON
    assert daemon.tick_dispatch(Channel.SMS) == 5
    assert daemon.tick_dispatch(Channel.SMS) == 0
    # Then each borrower got one SMS, rendered with the amount, under its contact id
    assert sorted(m.account_id for m in sms.sent) == [f"A{i}" for i in range(5)]
    message = sms.sent[0]
    assert message.to == "+8613812345678" and "1,000.00" in message.body
    stored = row(store, message.account_id)
    assert (stored.contact_id, stored.status, stored.attempts) == (message.contact_id, "sent", 1)
    assert stored.performed_at == NOON and stored.lease_owner is None


def test_a_borrower_who_pays_between_plan_and_send_gets_nothing(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    store.upsert_accounts(
        [account("A1", due_date=DUE, amount_paid=Decimal("1000.00"))], now=MORNING
    )
    store.add_flag("A2", Flag.DISPUTE, since=MORNING, until=None, source="test")
    clock.at = NOON
    daemon.tick_dispatch(Channel.SMS)
    assert "A1" not in {m.account_id for m in sms.sent}
    assert "A2" not in {m.account_id for m in sms.sent}
    assert (row(store, "A1").status, row(store, "A1").reason) == ("skipped", "paid")
    assert (row(store, "A2").status, row(store, "A2").reason) == ("skipped", "dispute")


def test_caps_count_contacts_made_since_planning(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    # Given an agent reached A3 by phone at 11:00 (recorded after the plan was made)
    store.add_performed_contact(
        PastContact("A3", Channel.CALL, "manual", NOON - timedelta(minutes=90),
                    Outcome.CONVERSATION), contact_id="manual-1", now=NOON,
    )  # fmt: skip
    clock.at = NOON
    daemon.tick_dispatch(Channel.SMS)
    # Then the SMS would break the 120-minute gap: it moves to 13:00 instead of going now
    moved = row(store, "A3")
    assert moved.status == "planned" and moved.next_attempt_at > NOON
    assert "A3" not in {m.account_id for m in sms.sent}


def test_window_passed_during_downtime_is_missed_not_sent_in_quiet_hours(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    clock.at = local(DUE - timedelta(days=1), "21:30", ZONE).astimezone(UTC)
    daemon.tick_dispatch(Channel.SMS)
    assert sms.sent == []
    assert {row(store, f"A{i}").status for i in range(5)} == {"missed"}
    assert row(store, "A0").reason == "window_passed"


def test_transient_failures_retry_and_permanent_ones_fail(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    ids = {a: row(store, a).contact_id for a in ("A0", "A1", "A2")}
    sms._failures.update({
        ids["A0"]: [TransientChannelError("503")],  # retried at once, then sent
        ids["A1"]: [TransientChannelError("429", retry_after=600)],  # back to the table
        ids["A2"]: [PermanentChannelError("invalid number")],
    })  # fmt: skip
    clock.at = NOON
    daemon.tick_dispatch(Channel.SMS)
    first, later, dead = row(store, "A0"), row(store, "A1"), row(store, "A2")
    assert (first.status, first.attempts) == ("sent", 2)
    assert later.status == "planned" and later.attempts == 1
    assert later.next_attempt_at >= NOON + timedelta(seconds=600)
    assert (dead.status, dead.reason, dead.attempts) == ("failed", "permanent_failure", 1)
    # the retry survives in the table and goes when due
    clock.at = later.next_attempt_at
    daemon.tick_dispatch(Channel.SMS)
    assert (row(store, "A1").status, row(store, "A1").attempts) == ("sent", 2)


def test_quick_transient_failures_get_the_short_retries_then_go_back_to_the_table(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    # Given a provider that answers 503 (no Retry-After) four times running
    cid = row(store, "A0").contact_id
    sms._failures[cid] = [TransientChannelError("503")] * 4
    short = daemon.settings.daemon.short_retries
    # When one dispatch tick runs
    clock.at = NOON
    daemon.tick_dispatch(Channel.SMS)
    # Then the send was tried once plus the short retries, in process, and the contact
    # went back to the table with those attempts counted and a later attempt time
    stored = row(store, "A0")
    assert (stored.status, stored.attempts) == ("planned", 1 + short)
    assert stored.next_attempt_at > NOON
    assert sms.attempts.count(cid) == 1 + short


def test_after_the_last_attempt_the_contact_fails(
    daemon: Daemon, store: Store, clock: Clock, sms: RecordingChannel
) -> None:
    cid = row(store, "A0").contact_id
    sms._failures[cid] = [TransientChannelError("down", retry_after=60)] * 10
    clock.at = NOON
    for _ in range(6):
        daemon.tick_dispatch(Channel.SMS)
        stored = row(store, "A0")
        if stored.status != "planned":
            break
        clock.at = stored.next_attempt_at
    assert (stored.status, stored.reason) == ("failed", "retries_exhausted")
    assert stored.attempts == daemon.settings.daemon.max_attempts


def test_a_crashed_claimer_is_taken_over_and_the_provider_sees_one_message(
    daemon: Daemon, store: Store, clock: Clock, tmp_path: Path
) -> None:
    # Given a process claimed the batch, sent it, and died before recording anything
    outbox = OutboxChannel(tmp_path / "outbox.jsonl")
    clock.at = NOON
    claimed = ContactQueue(store).claim_due(Channel.SMS, "dead", now=NOON, lease_seconds=60,
                                            limit=10)  # fmt: skip
    dead_lane = Lane(Channel.SMS, outbox, 1)
    for contact in claimed:
        message = daemon.dispatcher._message(daemon.rulebook, contact,
                                             store.accounts_by_id([contact.account_id], now=NOON)[
                                                 contact.account_id], NOON)  # fmt: skip
        dead_lane.adapter.send(message)
    dead_lane.close()
    # When the lease expires and a live dispatcher runs with the same provider
    daemon.dispatcher.lanes[Channel.SMS].adapter = OutboxChannel(tmp_path / "outbox.jsonl")  # type: ignore[misc]
    clock.at = NOON + timedelta(seconds=61)
    assert daemon.tick_dispatch(Channel.SMS) == 5
    # Then every contact is recorded sent once, and the provider holds one message each
    lines = [json.loads(x) for x in (tmp_path / "outbox.jsonl").read_text().splitlines()]
    assert len(lines) == len({x["contact_id"] for x in lines}) == 5
    with store.engine.connect() as conn:
        sent_events = (
            conn.execute(sa.select(audit_log.c.contact_id).where(audit_log.c.kind == "sent"))
            .scalars()
            .all()
        )
    assert sorted(sent_events) == sorted(c.contact_id for c in claimed)


def test_backoff_doubles_up_to_its_cap_and_jitter_only_shortens() -> None:
    delays = [compute_backoff(n, base_seconds=60, max_seconds=600) for n in range(1, 7)]
    assert delays == [60, 120, 240, 480, 600, 600]
    assert 30 <= compute_backoff(1, base_seconds=60, max_seconds=600, jitter=1.0) < 60


def test_reload_with_a_broken_policy_keeps_the_previous_one(daemon: Daemon, tmp_path: Path) -> None:
    from scheduler.errors import PolicyError, PolicyProblem

    def broken() -> object:
        raise PolicyError([PolicyProblem("default.toml", "rule[0].dpd", 12, "not a number")])

    before = daemon.rulebook
    daemon._reload = broken  # type: ignore[assignment]
    assert daemon.reload() is False
    assert daemon.rulebook is before


@pytest.mark.parametrize(
    ("rule", "hh_mm", "action", "window_day"),
    [
        ("first_overdue_call", "10:00", "send", 0),  # inside its 09:00-12:00 window
        ("first_overdue_call", "12:30", "missed", None),  # over: the 14:00 SMS is the fallback
        ("first_overdue_sms", "15:00", "send", 0),  # inside its 14:00-20:00 window
        ("first_overdue_sms", "21:30", "move", 1),  # quiet hours: tomorrow's first allowed time
    ],
)
def test_recheck_of_a_late_first_24h_contact(
    rule: str, hh_mm: str, action: str, window_day: int | None
) -> None:
    # Given an account that became overdue at midnight and one of its first-24h contacts
    overdue_day = DUE + timedelta(days=1)
    borrower = account("F1", due_date=DUE)
    start = local(overdue_day, "09:00", ZONE).astimezone(UTC)
    channel = Channel.CALL if rule.endswith("call") else Channel.SMS
    queued = QueuedContact(
        contact_id("F1", rule, DUE, 1, "borrower"), "F1", channel, rule, "borrower", DUE,
        start, start + timedelta(hours=3), rule, 100, False, 0,
    )  # fmt: skip
    # When the dispatcher re-checks it at hh_mm local on that day
    now = local(overdue_day, hh_mm, ZONE).astimezone(UTC)
    result = recheck(now, queued, borrower, AccountHistory(), shipped_policies())
    # Then it goes now, moves to the next allowed time, or (the call) is missed
    assert result.action == action
    if window_day is not None:
        assert result.window is not None
        local_start = result.window[0].astimezone(ZoneInfo(ZONE))
        assert local_start.date() == overdue_day + timedelta(days=window_day)


def test_a_reload_logs_what_it_changes_in_tomorrows_plan(daemon: Daemon, tmp_path: Path) -> None:
    import threading

    from structlog.testing import capture_logs

    from tests.factories import copy_policies

    # Given a policy edit that moves the due-day SMS from 09:00 to 10:00 (the accounts are
    # due tomorrow in the ops zone)
    edited = copy_policies(tmp_path / "edited")
    text = (edited / "default.toml").read_text()
    (edited / "default.toml").write_text(text.replace('at = "09:00"\nuntil = "18:00"',
                                                      'at = "10:00"\nuntil = "18:00"'))  # fmt: skip
    daemon._reload = lambda: load_rulebook(daemon.settings, edited)
    # When the daemon reloads
    with capture_logs() as logs:
        assert daemon.reload() is True
        for thread in threading.enumerate():
            if thread.name == "reload-diff":
                thread.join(30)
    # Then one event carries the diff summary
    [event] = [e for e in logs if e["event"] == "reload.diff"]
    assert event["policy_changes"] == ["default: rule.due_day_sms.at: 09:00 -> 10:00"]
    assert event["by_rule"] == {
        "due_day_sms/sms": {"old": 5, "new": 5, "added": 0, "removed": 0, "moved": 5}
    }
    assert event["moved"] == 5 and event["added"] == event["removed"] == 0


def test_a_second_sigterm_arriving_while_the_first_sets_stop_does_not_hang_the_daemon(
    daemon: Daemon,
) -> None:
    """Python runs a handler on the main thread between two bytecodes: a handler that set
    the stop Event itself could run inside the previous one's ``stop.set()`` (a second
    SIGTERM, Ctrl-C twice) and wait for the Event's lock forever."""
    with own_handlers():
        daemon._install_signals()
        # Given the main thread inside stop.set(), holding the Event's lock, when a SIGTERM
        # arrives, then its handler returns at once, without the lock
        assert sigterm_inside_set(daemon.stop), "the SIGTERM handler waited on stop's lock"
        # and the main loop ends, setting stop; no scheduled tick starts any more
        daemon._serve()
        assert daemon.stop.is_set()
        ran: list[str] = []
        daemon._guarded("plan", lambda: ran.append("plan"))()
        assert ran == []


def test_every_daemons_dispatch_ticks_fall_on_the_same_instants(daemon: Daemon) -> None:
    """Dispatch ticks are on a grid of ``dispatch_every_seconds`` since the epoch, not timed
    from each daemon's start, so contacts coming due together (at a window's start) are
    claimed by every daemon at once."""
    every = daemon.settings.daemon.dispatch_every_seconds
    before = time.time()
    scheduler = daemon._scheduler()
    jobs = [j for j in scheduler.get_jobs() if j.id.startswith("dispatch.")]
    assert {j.id for j in jobs} == {"dispatch.sms", "dispatch.email"}
    for job in jobs:
        first = job.next_run_time.timestamp()
        assert before < first <= time.time() + every
        later = job.trigger.get_next_fire_time(job.next_run_time, job.next_run_time).timestamp()
        for instant in (first, later):
            assert instant == pytest.approx(round(instant / every) * every, abs=1e-3)
