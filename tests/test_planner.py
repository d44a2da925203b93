"""The pure planner, scenario by scenario (Given / When / Then), with fixed zones and days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from scheduler.models import (
    Account,
    AccountHistory,
    AccountStatus,
    Channel,
    Flag,
    Horizon,
    Outcome,
    PastContact,
    Plan,
    Promise,
    Reason,
)
from scheduler.planner import plan
from tests.factories import account, evening_before, local, shipped_policies

DAY = date(2026, 11, 24)  # a Tuesday, no holiday in CN, US, GB
SH = "Asia/Shanghai"


def plan_day(
    *accounts: Account,
    history: dict[str, AccountHistory] | None = None,
    day: date = DAY,
    now: datetime | None = None,
    days: int = 1,
) -> Plan:
    return plan(
        now or evening_before(day),
        list(accounts),
        history or {},
        shipped_policies(),
        Horizon(day, days),
    )


def planned(result: Plan) -> list[tuple[str, str, str]]:
    return [
        (c.rule, c.channel.value, f"{c.window_start:%H:%M}-{c.window_end:%H:%M}")
        for c in result.planned
    ]


def reasons(result: Plan) -> dict[str, str]:
    return {s.rule: s.reason.value for s in result.suppressed}


@pytest.mark.parametrize(
    ("dpd", "expected"),
    [
        (-4, []),
        (-3, [("pre_due_sms_3d", "sms", "10:00-20:00")]),
        (-2, []),
        (
            -1,
            [
                ("pre_due_sms_1d", "sms", "10:00-20:00"),
                ("pre_due_email_1d", "email", "12:00-20:00"),
            ],
        ),
        (0, [("due_day_sms", "sms", "09:00-18:00")]),
        (
            1,
            [
                ("first_overdue_call", "call", "09:00-12:00"),
                ("first_overdue_sms", "sms", "14:00-20:00"),
            ],
        ),
        (2, [("early_call", "call", "09:00-12:00"), ("early_sms", "sms", "14:00-20:00")]),
        (3, []),
        (4, [("early_call", "call", "09:00-12:00")]),
        (5, [("early_sms", "sms", "14:00-20:00")]),
        (30, [("early_call", "call", "09:00-12:00")]),
        (31, [("letter_dpd31", "letter", "09:00-17:00"), ("late_call", "call", "09:00-12:00")]),
        (32, []),
        (38, [("late_call", "call", "09:00-12:00")]),
    ],
)
def test_the_default_ladder_by_days_past_due(
    dpd: int, expected: list[tuple[str, str, str]]
) -> None:
    # Given an unpaid account whose due date puts the planned day at `dpd`
    result = plan_day(account(due_date=DAY - timedelta(days=dpd)))
    # Then exactly the rules of that day are planned, at their borrower-local times
    assert sorted(planned(result)) == sorted(expected)
    assert all(c.window_start.utcoffset() == timedelta(hours=8) for c in result.planned)


def test_the_first_overdue_contact_is_inside_24_hours_and_the_sms_is_a_conditional_fallback() -> (
    None
):
    result = plan_day(account(due_date=DAY - timedelta(days=1)))
    overdue_at = local(DAY, "00:00", SH)
    for contact in result.planned:
        assert (
            overdue_at
            <= contact.window_start
            < contact.window_end
            <= overdue_at + timedelta(hours=24)
        )
        assert not contact.sla_risk
    sms = next(c for c in result.planned if c.channel is Channel.SMS)
    assert "only if first_overdue_call did not reach the borrower" in sms.note


def test_the_sms_fallback_is_dropped_when_the_first_call_reached_the_borrower() -> None:
    # Given the first call this morning reached the borrower
    a = account(due_date=DAY - timedelta(days=1))
    call = PastContact(
        a.account_id,
        Channel.CALL,
        "first_overdue_call",
        local(DAY, "09:30", SH),
        Outcome.PROMISE,
        due_date=a.due_date,
    )
    # When the rest of the day is planned at 13:00
    result = plan_day(
        a, history={a.account_id: AccountHistory((call,))}, now=local(DAY, "13:00", SH)
    )
    # Then no SMS goes out, and the record says why
    assert planned(result) == []
    assert reasons(result) == {"first_overdue_sms": "borrower_recently_reached"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount_paid": Decimal("1000.00")}, "paid"),
        ({"status": AccountStatus.CLOSED}, "closed"),
        ({"flags": frozenset({Flag.DISPUTE})}, "dispute"),
        ({"flags": frozenset({Flag.CEASE, Flag.NO_SMS})}, "cease"),
        ({"flags": frozenset({Flag.COMPLAINT})}, "complaint"),
        ({"flags": frozenset({Flag.LEGAL_HOLD})}, "legal_hold"),
        ({"flags": frozenset({Flag.DECEASED})}, "deceased"),
        ({"flags": frozenset({Flag.BANKRUPT})}, "bankrupt"),
    ],
)
def test_account_holds_suppress_every_contact_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    result = plan_day(account(due_date=DAY - timedelta(days=1), **change))
    assert result.planned == ()
    assert set(reasons(result).values()) == {reason}
    assert all(s.detail for s in result.suppressed)


def test_a_pending_promise_holds_contact_until_its_date_plus_the_grace_day() -> None:
    a = account(due_date=DAY - timedelta(days=4))
    promise = Promise(a.account_id, Decimal("500"), promised_date=DAY - timedelta(days=1))
    history = {a.account_id: AccountHistory(promises=(promise,))}
    held = plan_day(a, history=history)
    assert held.planned == () and set(reasons(held).values()) == {"promise_pending"}
    # After the grace day the promise is broken: contact resumes with the broken-promise
    # follow-up call, which takes the morning call block from the DPD 6 early_call
    after_grace = plan_day(a, history=history, day=DAY + timedelta(days=2))
    assert [c.rule for c in after_grace.planned] == ["broken_promise"]
    assert reasons(after_grace) == {"early_call": "cap_min_gap"}


@pytest.mark.parametrize(
    ("change", "channel_reasons"),
    [
        ({"flags": frozenset({Flag.NO_SMS})}, {"first_overdue_sms": "no_sms"}),
        ({"flags": frozenset({Flag.NO_CALL})}, {"first_overdue_call": "no_call"}),
        (
            {"phone": None},
            {"first_overdue_call": "missing_phone", "first_overdue_sms": "missing_phone"},
        ),
        (
            {"phone_valid": False},
            {"first_overdue_call": "invalid_phone", "first_overdue_sms": "invalid_phone"},
        ),
    ],
)
def test_channel_holds_drop_one_channel_only(
    change: dict[str, Any], channel_reasons: dict[str, str]
) -> None:
    result = plan_day(account(due_date=DAY - timedelta(days=1), **change))
    assert reasons(result) == channel_reasons
    assert len(result.planned) == 2 - len(channel_reasons)


def test_missing_email_suppresses_the_email_reminder() -> None:
    result = plan_day(account(due_date=DAY + timedelta(days=1), email=None))
    assert reasons(result) == {"pre_due_email_1d": "missing_email"}
    assert [c.rule for c in result.planned] == ["pre_due_sms_1d"]


def test_a_borrower_in_several_zones_is_called_when_every_zone_allows() -> None:
    # Given a US number that may be in New York or Los Angeles
    a = account(
        due_date=DAY - timedelta(days=1),
        timezones=("America/New_York", "America/Los_Angeles"),
        country="US",
        phone="+12015550123",
    )
    result = plan_day(a)
    call = next(c for c in result.planned if c.channel is Channel.CALL)
    # Then the 09:00 call moves to 11:00 New York (08:00 Los Angeles)
    assert call.window_start == local(DAY, "11:00", "America/New_York")
    assert "quiet hours" in call.note


def test_a_first_overdue_day_on_a_holiday_sends_the_sms_and_moves_the_call_flagged_sla_risk() -> (
    None
):
    # Given an account whose first overdue day is CN National Day (no calls on holidays)
    a = account(due_date=date(2026, 9, 30))
    first_day = date(2026, 10, 1)
    result = plan_day(a, day=first_day, days=4)
    by_rule = {c.rule: c for c in result.planned}
    # Then the SMS still goes inside the 24 hours
    assert by_rule["first_overdue_sms"].window_start == local(first_day, "14:00", SH)
    assert not by_rule["first_overdue_sms"].sla_risk
    # And the call goes at the first allowed time, flagged as an SLA risk
    call = by_rule["first_overdue_call"]
    assert call.window_start.date() > first_day and call.sla_risk
    assert "National Day" in call.note
    # And a one-day dry-run of the holiday says where the call went
    holiday_only = plan_day(a, day=first_day)
    held = next(s for s in holiday_only.suppressed if s.rule == "first_overdue_call")
    assert held.reason is Reason.NO_ALLOWED_TIME and "SLA risk" in held.detail


def test_planning_today_starts_windows_now_and_records_passed_windows() -> None:
    a = account(due_date=DAY - timedelta(days=1))
    result = plan_day(a, now=local(DAY, "11:00", SH))
    call = next(c for c in result.planned if c.channel is Channel.CALL)
    assert call.window_start == local(DAY, "11:00", SH)
    late = plan_day(account(due_date=DAY), now=local(DAY, "19:00", SH))
    assert reasons(late) == {"due_day_sms": "window_passed"}


def history_of(a_id: str, *contacts: tuple[str, Channel, Outcome]) -> dict[str, AccountHistory]:
    return {
        a_id: AccountHistory(
            tuple(
                PastContact(
                    a_id, channel, "manual", datetime.fromisoformat(at).astimezone(UTC), outcome
                )
                for at, channel, outcome in contacts
            )
        )
    }


def test_seven_call_attempts_in_seven_days_block_the_next_call() -> None:
    a = account(due_date=DAY - timedelta(days=10))  # DPD 10: early_call day
    calls = [
        (f"2026-11-{d}T10:00:00+08:00", Channel.CALL, Outcome.NO_ANSWER) for d in range(17, 24)
    ]
    result = plan_day(a, history=history_of(a.account_id, *calls))
    assert reasons(result) == {"early_call": "cap_calls_7d"}
    fewer = plan_day(a, history=history_of(a.account_id, *calls[1:]))
    assert [c.rule for c in fewer.planned] == ["early_call"]


def test_no_call_in_the_seven_days_after_a_conversation() -> None:
    a = account(due_date=DAY - timedelta(days=10))
    talk = ("2026-11-20T10:00:00+08:00", Channel.CALL, Outcome.CONVERSATION)
    result = plan_day(a, history=history_of(a.account_id, talk))
    assert reasons(result) == {"early_call": "cap_conversation_cooldown"}


def test_contacts_already_made_today_count_toward_the_daily_cap_and_the_gap() -> None:
    a = account(due_date=DAY - timedelta(days=2))  # DPD 2: early call and early SMS
    today = [(f"2026-11-24T0{h}:00:00+08:00", Channel.SMS, Outcome.SENT) for h in (8, 9)]
    # Given two contacts already this morning, planning at 09:30
    result = plan_day(a, history=history_of(a.account_id, *today), now=local(DAY, "09:30", SH))
    # Then the call moves to keep two hours after the 09:00 SMS, and the third-contact SMS fits
    assert planned(result)[0] == ("early_call", "call", "11:00-12:00")
    assert reasons(result) == {"early_sms": "cap_daily"}


def test_emergency_contacts_only_after_seven_days_without_reaching_the_borrower() -> None:
    a = account(due_date=DAY - timedelta(days=31), emergency_contacts=("+8613912345678",))
    # Given a call to the borrower 8 days ago that nobody answered
    unanswered = ("2026-11-16T10:00:00+08:00", Channel.CALL, Outcome.NO_ANSWER)
    result = plan_day(a, history=history_of(a.account_id, unanswered))
    third = [c for c in result.planned if c.rule == "emergency_contact_call"]
    assert [(c.target, f"{c.window_start:%H:%M}") for c in third] == [("+8613912345678", "15:00")]
    # When the borrower was reached 4 days ago, or nobody has tried to call them yet
    reached = ("2026-11-20T10:00:00+08:00", Channel.CALL, Outcome.REFUSED)
    held = plan_day(a, history=history_of(a.account_id, unanswered, reached))
    untried = plan_day(a)
    # Then the emergency contact is not called
    assert reasons(held)["emergency_contact_call"] == "borrower_recently_reached"
    assert reasons(untried)["emergency_contact_call"] == "borrower_not_yet_unreachable"


def test_accounts_alike_each_get_their_own_ids_and_their_own_emergency_contacts() -> None:
    # Given three accounts at DPD 31 alike in all the plan depends on, each with two
    # emergency contacts of its own (the planner plans such accounts once)
    numbers = [("+8613900000001", "+8613900000002"), ("+8613900000003", "+8613900000004"),
               ("+8613900000002", "+8613900000001")]  # fmt: skip
    alike = [
        account(f"E{k}", due_date=DAY - timedelta(days=31), emergency_contacts=pair)
        for k, pair in enumerate(numbers)
    ]
    # When they are planned together
    result = plan_day(*alike)
    # Then each account's contacts name its own numbers and carry ids of their own, as
    # planning each alone gives
    third = {
        (s.account_id, s.target) for s in result.suppressed if s.rule == "emergency_contact_call"
    }
    assert third == {(a.account_id, n) for a in alike for n in a.emergency_contacts}
    alone = [plan_day(a) for a in alike]
    assert result.planned == tuple(c for p in alone for c in p.planned)
    assert sorted(result.suppressed, key=lambda s: s.contact_id) == sorted(
        (s for p in alone for s in p.suppressed), key=lambda s: s.contact_id
    )
    ids = [c.contact_id for c in (*result.planned, *result.suppressed)]
    assert len(set(ids)) == len(ids)


def test_past_the_handover_line_nothing_is_planned_and_the_account_is_listed() -> None:
    result = plan_day(account("OLD", due_date=DAY - timedelta(days=91)))
    assert result.planned == () and result.handover == ("OLD",)


def test_the_plan_is_deterministic_and_contact_ids_are_stable() -> None:
    accounts = [account(f"A{k}", due_date=DAY - timedelta(days=k)) for k in range(-3, 40)]
    first, second = plan_day(*accounts), plan_day(*reversed(accounts))
    assert first == second
    assert len({c.contact_id for c in first.planned}) == len(first.planned)
    moved_later = plan(
        evening_before(DAY) + timedelta(hours=3), accounts, {}, shipped_policies(), Horizon(DAY)
    )
    assert [c.contact_id for c in moved_later.planned] == [c.contact_id for c in first.planned]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        plan(datetime(2026, 11, 23, 20), [], {}, shipped_policies(), Horizon(DAY))
