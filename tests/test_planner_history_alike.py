"""Accounts alike but for the times of their past contacts are planned once when no rule can
tell those times apart (``planner._HistoryShapes``). Each case here is two such accounts
whose contacts sit on either side of one instant a rule compares them with, so that planned
alone they get different plans: ``plan`` over both must give exactly those two plans, not
one copied to the other. Each case fails when the shape leaves out what it is about."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from policies import PolicySet, load_policies
from scheduler.models import Account, AccountHistory, Channel, Horizon, Outcome, PastContact, Plan
from scheduler.planner import merge_plans, plan, plan_account
from tests.factories import account, copy_policies, local, shipped_policies

ZONE = "Asia/Shanghai"
DAY = date(2026, 11, 24)  # a Tuesday, no holiday in CN
NUMBER = "+8613912345678"
#: A past contact: channel, rule, when, outcome, target.
Past = tuple[Channel, str, datetime, Outcome, str]


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    """The shipped policies, and a ``card`` product with a 3-day cool-down and 2 calls in 7
    days (the shipped 7 and 7 fall in one band of times, so one would hide the other)."""
    directory = copy_policies(tmp_path_factory.mktemp("policies"))
    (directory / "card.toml").write_text(
        '[policy]\nname = "card"\nproducts = ["card"]\nextends = "default"\n\n'
        "[caps]\nconversation_cooldown_days = 3\ncall_attempts_per_7_days = 2\n\n"
        '[[rule]]\nid = "early_call"\nat = "10:30"\n'
    )
    return load_policies(directory)


def at(day: date, hh_mm: str) -> datetime:
    return local(day, hh_mm, ZONE)


def call(when: datetime, outcome: Outcome = Outcome.NO_ANSWER, rule: str = "early_call") -> Past:
    return (Channel.CALL, rule, when, outcome, "borrower")


def sms(when: datetime, rule: str, target: str = "borrower") -> Past:
    return (Channel.SMS, rule, when, Outcome.SENT, target)


def _what(result: Plan) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """A plan without its account ids and contact ids."""
    return (
        [(c.rule, c.target, c.window_start, c.window_end, c.note) for c in result.planned],
        [(s.rule, s.target, s.reason, s.detail) for s in result.suppressed],
    )


def _history(owner: Account, contacts: list[Past], due_date: date | None) -> AccountHistory:
    """Past contacts as the store gives them: in UTC, oldest first."""
    return AccountHistory(
        tuple(
            PastContact(
                owner.account_id, channel, rule, when.astimezone(UTC), outcome, target, due_date
            )
            for channel, rule, when, outcome, target in sorted(contacts, key=lambda c: c[2])
        )
    )


D = DAY
CASES = {
    # the minimum gap: an SMS 60 minutes before now pushes today's SMS an hour on
    "gap": (
        {"due_date": D}, at(D, "10:00"), Horizon(D),
        [sms(at(D, "09:00"), "pre_due_sms_1d")], [sms(at(D, "07:30"), "pre_due_sms_1d")],
    ),
    # an emergency contact's own 7 days: to that number, times count exactly
    "emergency contact": (
        {"due_date": D - timedelta(days=38), "emergency_contacts": (NUMBER,)},
        at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=10), "10:00")),
         sms(at(D - timedelta(days=7), "16:00"), "emergency_contact_call", NUMBER)],
        [call(at(D - timedelta(days=10), "10:00")),
         sms(at(D - timedelta(days=7), "14:00"), "emergency_contact_call", NUMBER)],
    ),
    # 2 calls in 7 days: a call 7 days before the window counts at its start or does not
    "7-day calls, a call near the line": (
        {"due_date": D - timedelta(days=4), "product": "card"}, at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=3), "10:00")), call(at(D - timedelta(days=7), "11:00"))],
        [call(at(D - timedelta(days=3), "10:00")), call(at(D - timedelta(days=7), "09:00"))],
    ),
    # 2 calls in 7 days, more past calls than that: the 7 days ending at a past call
    "7-day calls, more past calls than the cap": (
        {"due_date": D - timedelta(days=4), "product": "card"}, at(D, "08:00"), Horizon(D),
        [call(at(D, "08:00") - timedelta(days=8)), call(at(D, "07:00") - timedelta(days=7)),
         call(at(D, "08:00") - timedelta(days=2))],
        [call(at(D, "08:00") - timedelta(days=12)), call(at(D, "07:00") - timedelta(days=7)),
         call(at(D, "08:00") - timedelta(days=2))],
    ),
    # a 3-day cool-down ending inside the call's window, or before it opens
    "cool-down": (
        {"due_date": D - timedelta(days=4), "product": "card"}, at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=3), "11:00"), Outcome.CONVERSATION)],
        [call(at(D - timedelta(days=3), "10:00"), Outcome.CONVERSATION)],
    ),
    # unreached for 7 days before an emergency contact: reached an hour inside, or outside
    "unreached days": (
        {"due_date": D - timedelta(days=38), "emergency_contacts": (NUMBER,)},
        at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=7), "01:00"), Outcome.CONVERSATION)],
        [call(at(D - timedelta(days=8), "23:00"), Outcome.CONVERSATION)],
    ),
    # ... reached at the very instant 7 days before the day began (within, by the rule)
    "unreached days, at the line": (
        {"due_date": D - timedelta(days=38), "emergency_contacts": (NUMBER,)},
        at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=7), "00:00"), Outcome.CONVERSATION)],
        [call(at(D - timedelta(days=8), "23:00"), Outcome.CONVERSATION)],
    ),
    # the hold's sentence names the (UTC) date the borrower was reached
    "the date in the sentence": (
        {"due_date": D - timedelta(days=38), "emergency_contacts": (NUMBER,)},
        at(D, "08:00"), Horizon(D),
        [call(at(D - timedelta(days=2), "07:00"), Outcome.CONVERSATION)],
        [call(at(D - timedelta(days=2), "09:00"), Outcome.CONVERSATION)],
    ),
    # a first-24h call with no time on its own day (CN National Day) is caught up later,
    # unless made on that day: the day of a first-24h rule's contact counts, however old
    "a first-24h contact's day": (
        {"due_date": date(2026, 9, 30)}, local(date(2026, 10, 4), "08:00", ZONE),
        Horizon(date(2026, 10, 4)),
        [sms(local(date(2026, 10, 1), "12:00", ZONE), "first_overdue_call")],
        [sms(local(date(2026, 10, 2), "12:00", ZONE), "first_overdue_call")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_histories_a_rule_tells_apart_get_their_own_plans(policies: PolicySet, name: str) -> None:
    fields, now, horizon, first, second = CASES[name]
    a = account("H1", **fields)
    b = replace(a, account_id="H2")
    history = {a.account_id: _history(a, first, None), b.account_id: _history(b, second, None)}
    alone = [plan_account(now, x, history[x.account_id], policies, horizon) for x in (a, b)]
    assert _what(alone[0]) != _what(alone[1]), "the case does not tell the histories apart"
    assert plan(now, [a, b], history, policies, horizon) == merge_plans(alone)


def test_a_first_contact_for_this_due_date_is_told_from_one_for_another(
    policies: PolicySet,
) -> None:
    """The same past first-24h contact, once for the account's due date (made: nothing more)
    and once for an earlier one (not this one's: today's first contact is planned)."""
    now = at(D, "08:00")
    a = account("H1", due_date=D - timedelta(days=1))
    b = replace(a, account_id="H2")
    made = [sms(at(D - timedelta(days=1), "12:00"), "first_overdue_call")]
    history = {
        a.account_id: _history(a, made, a.due_date),
        b.account_id: _history(b, made, a.due_date - timedelta(days=30)),
    }
    alone = [plan_account(now, x, history[x.account_id], policies, Horizon(D)) for x in (a, b)]
    assert _what(alone[0]) != _what(alone[1])
    assert plan(now, [a, b], history, policies, Horizon(D)) == merge_plans(alone)


def test_histories_no_rule_tells_apart_get_the_same_plan_each_would_get_alone() -> None:
    """Past SMS and unanswered calls days before, at different times: every account's plan
    is what it gets alone (and the same for all, but for ids)."""
    policies = shipped_policies()
    now = at(D, "08:00")
    accounts = [account(f"H{n}", due_date=D - timedelta(days=4)) for n in range(6)]
    history = {
        x.account_id: _history(
            x,
            [sms(at(D - timedelta(days=3), f"1{n}:10"), "early_sms"),
             call(at(D - timedelta(days=2), f"09:{n}5"))],
            None,
        )
        for n, x in enumerate(accounts)
    }  # fmt: skip
    alone = [plan_account(now, x, history[x.account_id], policies, Horizon(D)) for x in accounts]
    assert len({repr(_what(p)) for p in alone}) == 1
    assert alone[0].planned
    assert plan(now, accounts, history, policies, Horizon(D)) == merge_plans(alone)
