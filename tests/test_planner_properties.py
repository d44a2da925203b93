"""Properties of the planner over random portfolios, zones (DST days included), holidays and
histories: the promises a lender makes to regulators, checked on every generated case."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import PolicySet, load_policies
from scheduler.dispatcher import plans_for_today
from scheduler.models import (
    HOLD_FLAGS,
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
)
from scheduler.planner import merge_plans, plan, plan_account
from tests.factories import copy_policies, shipped_policies

POLICIES = shipped_policies()
POLICY = POLICIES.default
CAPS = POLICY.caps
GAP = timedelta(minutes=CAPS.min_gap_minutes)
LEGAL = {r.id: r.legally_required for r in POLICY.rule}

DAYS = [
    date(2026, 11, 24),
    date(2026, 3, 8),  # US spring forward
    date(2026, 11, 1),  # US fall back
    date(2026, 3, 29),  # EU spring forward
    date(2026, 10, 25),  # EU fall back
    date(2026, 10, 4),  # AU spring forward
    date(2026, 10, 1),  # CN National Day
    date(2026, 2, 17),  # CN Spring Festival
    date(2026, 12, 25),  # Christmas (US, GB, AU)
]
ZONE_SETS = [
    (("Asia/Shanghai",), "CN"),
    (("America/New_York",), "US"),
    (("America/New_York", "America/Los_Angeles"), "US"),
    (("America/Chicago", "Pacific/Honolulu"), "US"),
    (("Europe/London",), "GB"),
    (("Australia/Sydney", "Australia/Perth"), "AU"),
    (("Europe/Moscow", "Asia/Vladivostok"), "RU"),
]
FLAGS = sorted(Flag, key=str)
PAST = st.tuples(
    st.sampled_from(list(Channel)),
    st.sampled_from(["first_overdue_call", "early_call", "manual"]),
    st.integers(1, 10 * 24 * 60),
    st.sampled_from(list(Outcome)),
    st.sampled_from(["borrower", "borrower", "+8613912345678"]),
)


Case = tuple[date, datetime, list[Account], dict[str, AccountHistory]]


@st.composite
def portfolios(draw: st.DrawFn) -> Case:
    day = draw(st.sampled_from(DAYS))
    # `now` anywhere from two days before the day to the middle of it
    now = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(
        minutes=draw(st.integers(-48 * 60, 12 * 60))
    )
    accounts: list[Account] = []
    history: dict[str, AccountHistory] = {}
    for index in range(draw(st.integers(1, 8))):
        zones, country = draw(st.sampled_from(ZONE_SETS))
        amount = Decimal(draw(st.integers(1, 5000)))
        paid = draw(st.sampled_from([Decimal(0), Decimal(0), Decimal(0), amount / 2, amount]))
        a = Account(
            account_id=f"A{index}",
            due_date=day - timedelta(days=draw(st.integers(-4, 95))),
            amount_due=amount,
            amount_paid=paid,
            timezones=zones,
            country=country,
            phone=draw(st.sampled_from(["+8613812345678", "+12015550123", None])),
            email=draw(st.sampled_from(["x@example.com", None])),
            status=draw(st.sampled_from([AccountStatus.ACTIVE] * 5 + [AccountStatus.CLOSED])),
            flags=frozenset(draw(st.lists(st.sampled_from(FLAGS), max_size=2)))
            if draw(st.booleans()) and draw(st.booleans())
            else frozenset(),
            emergency_contacts=("+8613912345678",) if draw(st.booleans()) else (),
        )
        accounts.append(a)
        contacts = tuple(
            PastContact(
                a.account_id,
                channel,
                rule,
                min(now, datetime.combine(day, time(0), tzinfo=UTC)) - timedelta(minutes=ago),
                outcome,
                target=target,
                due_date=a.due_date,
            )
            for channel, rule, ago, outcome, target in draw(st.lists(PAST, max_size=6))
        )
        promises = ()
        if draw(st.integers(0, 4)) == 0:
            promises = (
                Promise(a.account_id, amount, day + timedelta(days=draw(st.integers(-4, 4)))),
            )
        removed = frozenset({"+8613912345678"}) if draw(st.integers(0, 3)) == 0 else frozenset()
        history[a.account_id] = AccountHistory(contacts, promises, removed)
    return day, now, accounts, history


def run(case: Case) -> Plan:
    day, now, accounts, history = case
    return plan(now, accounts, history, POLICIES, Horizon(day))


def in_quiet_hours(instant: datetime, zone: str) -> bool:
    t = instant.astimezone(ZoneInfo(zone)).time()
    return t >= POLICY.quiet_hours.start or t < POLICY.quiet_hours.end


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(portfolios())
def test_nothing_is_planned_in_quiet_hours_or_on_a_holiday_for_calls_or_before_now(
    case: Case,
) -> None:
    _, now, accounts, _ = case
    by_id = {a.account_id: a for a in accounts}
    for contact in run(case).planned:
        assert contact.window_start >= now
        assert contact.window_start < contact.window_end
        if contact.channel is Channel.LETTER:
            continue
        a = by_id[contact.account_id]
        last = contact.window_end - timedelta(microseconds=1)
        for zone in a.timezones:
            assert not in_quiet_hours(contact.window_start, zone), (contact, zone)
            assert not in_quiet_hours(last, zone), (contact, zone)
            start_day = contact.window_start.astimezone(ZoneInfo(zone)).date()
            assert start_day == last.astimezone(ZoneInfo(zone)).date()
            if contact.channel is Channel.CALL:
                assert not POLICIES.calendar.is_holiday(a.country, start_day), (contact, zone)


@SETTINGS
@given(portfolios())
def test_nothing_is_planned_for_a_paid_closed_held_or_promised_account(case: Case) -> None:
    day, _, accounts, history = case
    result = run(case)
    grace = timedelta(days=POLICY.suppressions.promise_grace_days)
    for a in accounts:
        promised = any(day <= p.promised_date + grace for p in history[a.account_id].promises)
        held = (
            a.paid_in_full
            or a.status is not AccountStatus.ACTIVE
            or a.flags & HOLD_FLAGS
            or promised
        )
        mine = [c for c in result.planned if c.account_id == a.account_id]
        if (
            held
            and a.flags & HOLD_FLAGS == {Flag.CEASE}
            and not (a.paid_in_full or a.status is not AccountStatus.ACTIVE or promised)
        ):
            # a cease request leaves only the letters the law requires
            assert all(c.channel is Channel.LETTER and LEGAL[c.rule] for c in mine), mine
        elif held:
            assert not mine
        for c in result.planned:
            if c.account_id == a.account_id and c.channel is Channel.SMS:
                assert Flag.NO_SMS not in a.flags and a.phone
            if (
                c.account_id == a.account_id
                and c.channel is Channel.CALL
                and c.target == "borrower"
            ):
                assert Flag.NO_CALL not in a.flags and a.phone


@SETTINGS
@given(portfolios())
def test_caps_are_never_exceeded_counting_history(case: Case) -> None:
    day, _, accounts, history = case
    result = run(case)
    for a in accounts:
        mine = [
            c
            for c in result.planned
            if c.account_id == a.account_id and c.channel is not Channel.LETTER
        ]
        if not mine:
            continue
        past = [p for p in history[a.account_id].contacts if p.channel is not Channel.LETTER]
        zone = ZoneInfo(a.zone)
        # at most N contacts that borrower-local day, history included
        same_day = [p for p in past if p.at.astimezone(zone).date() == day]
        assert len(same_day) + len(mine) <= CAPS.contacts_per_day
        # every planned contact keeps the gap to every other contact
        others = [(p.at, p.at) for p in past] + [
            (c.window_start, c.window_end if c.channel is Channel.CALL else c.window_start)
            for c in mine
        ]
        for c in mine:
            span = (c.window_start, c.window_end if c.channel is Channel.CALL else c.window_start)
            for other in others:
                if other is span or other == span:
                    continue
                assert other[1] + GAP <= span[0] or span[1] + GAP <= other[0], (c, other)
        # calls to the borrower: 7 attempts in any 7 days, none within 7 days of a conversation
        calls = sorted(
            [p.at for p in past if p.channel is Channel.CALL and p.target == "borrower"]
            + [c.window_start for c in mine if c.channel is Channel.CALL and c.target == "borrower"]
        )
        planned_calls = [c for c in mine if c.channel is Channel.CALL and c.target == "borrower"]
        for c in planned_calls:
            for end in calls:
                if end >= c.window_start:
                    window = [t for t in calls if end - timedelta(days=7) < t <= end]
                    assert len(window) <= CAPS.call_attempts_per_7_days
            for p in past:
                if p.channel is Channel.CALL and p.outcome.reached_borrower:
                    assert c.window_start >= p.at + timedelta(days=CAPS.conversation_cooldown_days)


@SETTINGS
@given(portfolios())
def test_every_account_that_became_overdue_gets_a_first_contact_within_24_hours(case: Case) -> None:
    day, _, accounts, history = case
    result = run(case)
    first_rules = {r.id for r in POLICY.rule if r.first_contact}
    for a in accounts:
        if a.due_date != day - timedelta(days=1):
            continue
        overdue_at = datetime.combine(day, time(0), tzinfo=ZoneInfo(a.zone))
        deadline = overdue_at + timedelta(hours=24)
        mine = [c for c in result.planned if c.account_id == a.account_id and c.rule in first_rules]
        held = {s.rule for s in result.suppressed if s.account_id == a.account_id}
        done = {p.rule for p in history[a.account_id].contacts if p.due_date == a.due_date}
        in_time = [c for c in mine if c.window_start < deadline]
        flagged = [c for c in mine if c.sla_risk]
        assert in_time or flagged or first_rules <= held | done, (a, mine, held)
        for c in mine:
            assert c.sla_risk == (c.window_start >= deadline)


@SETTINGS
@given(portfolios())
def test_the_plan_is_deterministic(case: Case) -> None:
    day, now, accounts, history = case
    assert run(case) == plan(now, list(reversed(accounts)), history, POLICIES, Horizon(day))


@SETTINGS
@given(portfolios())
def test_a_complaint_holds_everything_and_a_cease_leaves_only_required_letters(
    case: Case,
) -> None:
    result = run(case)
    by_id = {a.account_id: a for a in case[2]}
    for c in result.planned:
        flags = by_id[c.account_id].flags
        assert Flag.COMPLAINT not in flags and Flag.DISPUTE not in flags, c
        if Flag.CEASE in flags:
            assert c.channel is Channel.LETTER and LEGAL[c.rule], c


@SETTINGS
@given(portfolios())
def test_an_emergency_contact_removed_for_good_is_never_planned(case: Case) -> None:
    _, _, _, history = case
    for c in run(case).planned:
        assert c.target not in history[c.account_id].removed_contacts, c


#: DPDs on which the shipped rules fire (pre-due SMS and email, first contact, the DPD 2-30
#: and 31-90 ladders, hand-over).
FIRING_DPDS = [-3, -1, 0, 1, 2, 3, 4, 31, 38, 95]
#: What a plan depends on besides history, each with the values drawn (the usual ones more
#: often): due date (as DPD on the day), zones, country, flags, status, product, which
#: addresses exist, whether there are emergency contacts.
KEY_POOLS: tuple[list[Any], ...] = (
    FIRING_DPDS,
    [zones for zones, _ in ZONE_SETS],
    ["CN", "US", "GB", "AU", "RU"],
    [frozenset()] * 3 + [frozenset({Flag.NO_SMS}), frozenset({Flag.NO_EMAIL}),
                         frozenset({Flag.NO_CALL}), frozenset({Flag.DISPUTE}),
                         frozenset({Flag.CEASE})],
    [AccountStatus.ACTIVE] * 3 + [AccountStatus.CLOSED],
    ["", "card"],
    [True, True, True, False],  # has a phone
    [True, True, True, False],  # the phone is valid
    [True, True, False],  # has an email
    [False, True],  # may have emergency contacts (some, all or none of NUMBERS, any order)
)  # fmt: skip
NUMBERS = ["+8613912345678", "+8613912340000", "+12015550199"]
LookalikeCase = tuple[datetime, Horizon, list[Account], dict[str, AccountHistory]]


@pytest.fixture(scope="module")
def card_policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    """The shipped policies plus a ``card`` product policy that moves two rules and has
    other caps (a 30-minute gap, a 3-day cool-down, 2 calls in 7 days)."""
    directory = copy_policies(tmp_path_factory.mktemp("policies"))
    (directory / "card.toml").write_text(
        '[policy]\nname = "card"\nproducts = ["card"]\nextends = "default"\n\n'
        "[caps]\nmin_gap_minutes = 30\nconversation_cooldown_days = 3\n"
        "call_attempts_per_7_days = 2\n\n"
        '[[rule]]\nid = "pre_due_sms_1d"\nat = "11:00"\n\n'
        '[[rule]]\nid = "early_call"\nat = "10:30"\n'
    )
    return load_policies(directory)


#: What a past contact may be, for a group of accounts alike: channel, rule, outcome, target
#: (an emergency contact now and then) and whether it was for the account's due date.
PAST_KINDS = st.tuples(
    st.sampled_from([Channel.CALL, Channel.CALL, Channel.SMS, Channel.EMAIL, Channel.LETTER]),
    st.sampled_from(["first_overdue_call", "early_call", "early_sms", "third_party_call"]),
    st.sampled_from(list(Outcome)),
    st.sampled_from(["borrower"] * 5 + [NUMBERS[0]]),
    st.booleans(),
)


def _near_bounds(now: datetime, horizon: Horizon, zone: str) -> list[datetime]:
    """The instants a past contact's time is compared with (``planner._HistoryShapes``):
    contacts are drawn at and around them."""
    end = datetime.combine(horizon.last_day + timedelta(days=1), time(0), tzinfo=ZoneInfo(zone))
    starts = [
        datetime.combine(horizon.first_day + timedelta(days=k), time(0), tzinfo=ZoneInfo(zone))
        for k in range(horizon.days)
    ]
    spans = [timedelta(days=n) for n in (3, 7)] + [timedelta(minutes=m) for m in (30, 120)]
    return [
        *(now - span for span in spans),
        *(end - span for span in spans),
        *(start - timedelta(days=7) for start in starts),
        *starts,
        now - timedelta(hours=30),
    ]


@st.composite
def lookalikes(draw: st.DrawFn) -> LookalikeCase:
    """A base variant of what a plan depends on (``KEY_POOLS``) and, for each thing in it,
    a variant differing in just that; two or three accounts of each, which vary in all else
    (names, numbers, amounts short of paid, language, currency), in random order: the
    accounts the planner plans once for all alike. Some variants have a history: the same
    kinds of past contacts for each of their accounts, each account's at its own times, at
    and around the instants the planner compares them with, so that some histories differ
    where a rule can tell and some where none can."""
    # holidays twice as often: whether a call may go then depends on the country
    day = draw(st.sampled_from([*DAYS, date(2026, 10, 1), date(2026, 12, 25)]))
    now = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(
        minutes=draw(st.integers(-48 * 60, 12 * 60))
    )
    horizon = Horizon(day, draw(st.sampled_from([1, 1, 3])))
    base = [draw(st.sampled_from(pool)) for pool in KEY_POOLS]
    variants = [base]
    for which, pool in enumerate(KEY_POOLS):
        variant = list(base)
        variant[which] = draw(st.sampled_from([v for v in pool if v != base[which]]))
        variants.append(variant)
    accounts: list[Account] = []
    history: dict[str, AccountHistory] = {}
    for fields in variants:
        dpd, zones, country, flags, status, product, phone, phone_valid, email, emergency = fields
        kinds = draw(st.lists(PAST_KINDS, max_size=3)) if draw(st.booleans()) else []
        bounds = _near_bounds(now, horizon, zones[0])
        anchors = [draw(st.sampled_from(bounds)) for _ in kinds]
        for _ in range(draw(st.integers(2, 3))):
            index = len(accounts)
            amount = Decimal(draw(st.integers(2, 5000)))
            account = Account(
                account_id=f"L{draw(st.integers(0, 10**6))}-{index}",
                due_date=day - timedelta(days=dpd),
                amount_due=amount,
                amount_paid=draw(st.sampled_from([Decimal(0), amount - 1, amount])),
                timezones=zones,
                country=country,
                name=draw(st.sampled_from([None, "Li Wei", "Ann Lee"])),
                phone=draw(st.sampled_from(["+8613812345678", "+12015550123"])) if phone else None,
                phone_valid=phone_valid,
                email=draw(st.sampled_from(["x@example.com", "y@example.org"])) if email else None,
                language=draw(st.sampled_from(["en", "zh-CN"])),
                product=product,
                currency=draw(st.sampled_from(["", "CNY", "USD"])),
                status=status,
                flags=flags,
                emergency_contacts=tuple(
                    draw(st.lists(st.sampled_from(NUMBERS), max_size=2 if emergency else 0))
                ),
            )
            accounts.append(account)
            past = sorted(
                (
                    PastContact(account.account_id, channel, rule,
                                (anchor + timedelta(minutes=draw(st.integers(-90, 90)) // 30 * 30))
                                .astimezone(UTC),
                                outcome, target, account.due_date if same_due else None)
                    for (channel, rule, outcome, target, same_due), anchor in zip(
                        kinds, anchors, strict=True)
                ),
                key=lambda p: p.at,
            )  # fmt: skip
            if past:
                history[account.account_id] = AccountHistory(tuple(past))
            elif draw(st.integers(0, 3)) == 0:
                history[account.account_id] = AccountHistory()  # read from the store, but empty
    return now, horizon, draw(st.permutations(accounts)), history


@settings(SETTINGS, max_examples=300)
@given(case=lookalikes())
def test_accounts_alike_get_the_plan_each_would_get_alone(
    card_policies: PolicySet, case: LookalikeCase
) -> None:
    """``plan`` plans accounts alike once and copies the plan to the others: what it gives
    is exactly what planning each account on its own gives, contact ids included."""
    now, horizon, accounts, history = case
    alone = [
        plan_account(now, a, history.get(a.account_id, AccountHistory()), card_policies, horizon)
        for a in accounts
    ]
    assert plan(now, accounts, history, card_policies, horizon) == merge_plans(alone)


@settings(SETTINGS, max_examples=200)
@given(case=lookalikes())
def test_a_batchs_recheck_plans_are_each_accounts_own(
    card_policies: PolicySet, case: LookalikeCase
) -> None:
    """The dispatcher re-checks a claimed batch with one plan per borrower-local day
    (``plans_for_today``): each account's part is what planning it alone for its own today
    gives, contact by contact, whatever the zones of the others in the batch."""
    now, _, accounts, history = case
    batch = plans_for_today(now, accounts, history, card_policies)
    assert set(batch) == {a.account_id for a in accounts}
    for a in accounts:
        today = now.astimezone(ZoneInfo(a.zone)).date()
        past = history.get(a.account_id, AccountHistory())
        alone = plan_account(now, a, past, card_policies, Horizon(today))
        got = batch[a.account_id]
        assert sorted(got.planned, key=repr) == sorted(alone.planned, key=repr)
        assert sorted(got.suppressed, key=repr) == sorted(alone.suppressed, key=repr)
        assert got.handover == alone.handover
