"""What recorded outcomes do to the pure planner: promises (held, kept, broken and followed
up), a cease request, removed emergency contacts. No database, no clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from policies.rules import promise_state
from scheduler.models import (
    AccountHistory,
    Channel,
    Flag,
    Horizon,
    Outcome,
    PastContact,
    Plan,
    Promise,
    PromiseStatus,
)
from scheduler.planner import plan
from tests.factories import account, evening_before, shipped_policies

POLICIES = shipped_policies()
GRACE = POLICIES.default.suppressions


def run(a_history: AccountHistory, first: date, days: int = 1, **fields: object) -> Plan:
    a = account(**fields)  # type: ignore[arg-type]
    return plan(
        evening_before(first), [a], {a.account_id: a_history}, POLICIES, Horizon(first, days)
    )


def by_day(result: Plan) -> list[tuple[str, str]]:
    return [(f"{c.window_start:%Y-%m-%d}", c.rule) for c in result.planned]


def test_a_promise_holds_until_its_date_plus_grace_then_is_followed_up_once() -> None:
    # Given a borrower due 2026-11-02 who promised 1000 on Thursday 2026-11-26
    promise = Promise("A1", Decimal(1000), date(2026, 11, 26))
    history = AccountHistory(promises=(promise,))
    # When we plan 2026-11-24 .. 2026-11-30
    result = run(history, date(2026, 11, 24), 7, due_date=date(2026, 11, 2))
    # Then nothing is planned through 11-27 (date + 1 grace day); 11-28 has the follow-up call
    assert [d for d, _ in by_day(result)] and min(d for d, _ in by_day(result)) == "2026-11-28"
    assert by_day(result).count(("2026-11-28", "broken_promise")) == 1
    assert not [r for d, r in by_day(result) if r == "broken_promise" and d != "2026-11-28"]
    held = {
        s.reason.value for s in result.suppressed if s.window_start.date() <= date(2026, 11, 27)
    }
    assert held == {"promise_pending"}


def test_a_follow_up_already_made_is_not_planned_again() -> None:
    promise = Promise("A1", Decimal(1000), date(2026, 11, 26))
    made = PastContact(
        "A1", Channel.CALL, "broken_promise", datetime(2026, 11, 28, 2, tzinfo=UTC),
        Outcome.NO_ANSWER,
    )  # fmt: skip
    history = AccountHistory(contacts=(made,), promises=(promise,))
    result = run(history, date(2026, 11, 29), 3, due_date=date(2026, 11, 2))
    assert "broken_promise" not in {r for _, r in by_day(result)}


def test_a_follow_up_on_a_call_holiday_goes_to_the_next_allowed_day() -> None:
    # Given a promise for 2026-09-29 (breaks 10-01, the first day of CN National Day)
    promise = Promise("A1", Decimal(1000), date(2026, 9, 29))
    result = run(AccountHistory(promises=(promise,)), date(2026, 10, 1), 10,
                 due_date=date(2026, 9, 10))  # fmt: skip
    # Then the follow-up call is planned once, on the first day calls are allowed again
    follow = [d for d, r in by_day(result) if r == "broken_promise"]
    assert len(follow) == 1
    first_allowed = next(
        date(2026, 10, 1) + timedelta(days=k)
        for k in range(10)
        if not POLICIES.calendar.is_holiday("CN", date(2026, 10, 1) + timedelta(days=k))
    )
    assert follow == [first_allowed.isoformat()]


def test_a_payment_covering_the_promise_keeps_it_and_lifts_the_hold() -> None:
    promise = Promise("A1", Decimal(300), date(2026, 11, 26), paid_before=Decimal(100))
    paid = account(due_date=date(2026, 11, 2), amount_paid=Decimal(400))
    short = account(due_date=date(2026, 11, 2), amount_paid=Decimal(399))
    assert promise_state(promise, paid, date(2026, 11, 25), GRACE) is PromiseStatus.KEPT
    assert promise_state(promise, short, date(2026, 11, 25), GRACE) is PromiseStatus.PENDING
    assert promise_state(promise, short, date(2026, 11, 28), GRACE) is PromiseStatus.BROKEN
    # Kept: the ladder resumes and there is no broken-promise follow-up
    result = run(AccountHistory(promises=(promise,)), date(2026, 11, 24), 5,
                 due_date=date(2026, 11, 2), amount_paid=Decimal(400))  # fmt: skip
    rules = {r for _, r in by_day(result)}
    assert "early_call" in rules and "broken_promise" not in rules


def test_a_cease_request_leaves_only_the_legally_required_letter() -> None:
    # Given a borrower who asked us to stop, on DPD 31 (letter, late call, emergency contacts)
    result = run(AccountHistory(), date(2026, 11, 24), 1, due_date=date(2026, 10, 24),
                 flags=frozenset({Flag.CEASE}), emergency_contacts=("+8613912345678",))  # fmt: skip
    assert [(c.rule, c.channel) for c in result.planned] == [("letter_dpd31", Channel.LETTER)]
    assert {s.reason.value for s in result.suppressed} == {"cease"}
    # And a complaint on top of it holds the letter too
    both = run(AccountHistory(), date(2026, 11, 24), 1, due_date=date(2026, 10, 24),
               flags=frozenset({Flag.CEASE, Flag.COMPLAINT}))  # fmt: skip
    assert both.planned == ()


def test_an_emergency_contact_who_objected_is_never_contacted_again() -> None:
    tried = PastContact(
        "A1", Channel.CALL, "late_call", datetime(2026, 11, 10, 2, tzinfo=UTC), Outcome.NO_ANSWER
    )
    contacts = ("+8613912345678", "+8613712345678")
    history = AccountHistory(contacts=(tried,), removed_contacts=frozenset({contacts[0]}))
    result = run(history, date(2026, 11, 24), 1, due_date=date(2026, 10, 24),
                 emergency_contacts=contacts)  # fmt: skip
    third = [c.target for c in result.planned if c.rule == "emergency_contact_call"]
    assert third == [contacts[1]]
    removed = [s for s in result.suppressed if s.target == contacts[0]]
    assert [s.reason.value for s in removed] == ["third_party_removed"]


def test_a_follow_up_waits_for_the_conversation_cool_down_to_end() -> None:
    # Given the promise was made in a call on 2026-11-24 10:00 (a conversation)
    call = PastContact(
        "A1", Channel.CALL, "manual", datetime(2026, 11, 24, 2, tzinfo=UTC), Outcome.PROMISE
    )
    promise = Promise("A1", Decimal(1000), date(2026, 11, 26))
    history = AccountHistory(contacts=(call,), promises=(promise,))
    # When the promise breaks on 11-28, inside the 7-day cool-down
    result = run(history, date(2026, 11, 28), 5, due_date=date(2026, 11, 2))
    # Then the follow-up call is held by the cool-down, and made the first day it ends
    follow = [
        (f"{c.window_start:%Y-%m-%d %H:%M}") for c in result.planned if c.rule == "broken_promise"
    ]
    assert follow == ["2026-12-01 10:00"]
    held = {s.reason.value for s in result.suppressed if s.rule == "broken_promise"}
    assert held == {"cap_conversation_cooldown"}
