"""The pure planner: ``now`` + accounts + history + policies + horizon -> ``Plan``.

No I/O, no clock: everything it needs is an argument, so the same inputs always give the
same plan. The precedence of holds, time rules and caps is written down once, in
``policies.rules``; this module applies it day by day, account by account:

1. collect the rules that ask for a contact on the borrower-local day (plus first-24h
   contacts of earlier days that could not be made then and move into this day, and
   broken-promise follow-ups on the first allowed day after a promise broke);
2. hold them (account, channel, rule conditions), each with a reason and a sentence;
3. place the rest in time: the rule's window intersected with allowed hours, from ``now``;
4. take them in priority order through the account's cap ledger (stored history plus what
   this plan already booked), moving a contact later in its window or dropping it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Final, TypeVar, cast
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

from policies.hours import Span, intersect, to_utc
from policies.loader import PolicySet
from policies.rules import (
    Booking,
    CapLedger,
    Hold,
    account_hold,
    broken_on,
    channel_hold,
    condition_hold,
    promise_state,
    target_hold,
)
from policies.schema import PolicyFile, Rule, Target, Trigger
from scheduler.models import (
    Account,
    AccountHistory,
    Channel,
    Decision,
    Horizon,
    PastContact,
    Plan,
    PlannedContact,
    PromiseStatus,
    Reason,
    SuppressedContact,
    Verdict,
    contact_id,
    contact_id_of,
    contact_id_tail,
    positional_builder,
)

__all__ = [
    "FIRST_CONTACT_SEARCH_DAYS",
    "first_contact_catch_up",
    "follow_up_rules",
    "merge_plans",
    "merge_shard_plans",
    "plan",
    "plan_account",
    "rules_on",
    "sla_deadline",
]

#: How many days past its nominal day a first-24h contact is searched for an allowed time
#: (a CN National Day week of holidays plus a weekend fits).
FIRST_CONTACT_SEARCH_DAYS = 14
_NO_HISTORY = AccountHistory()
_NOTHING: frozenset[tuple[str, date | None, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A rule's request for one contact on one nominal day, before holds and caps."""

    rule: Rule
    target: str
    nominal_day: date
    step: int


@dataclass(frozen=True, slots=True)
class _Placed:
    candidate: _Candidate
    spans: tuple[Span, ...]
    sla_risk: bool
    moved: str


def plan(
    now: datetime,
    accounts: Iterable[Account],
    history: Mapping[str, AccountHistory],
    policies: PolicySet,
    horizon: Horizon,
    *,
    explain: bool = False,
) -> Plan:
    """Plan every account over ``horizon`` (borrower-local days).

    ``history`` maps account ids to what already happened (accounts absent have none).
    Returns planned and suppressed contacts sorted by window start then account, the
    accounts due for hand-over, and (with ``explain``) every rule's decision per account.
    Accounts alike in all their plan depends on (``_shared_key``) are planned once; the
    result is the same as planning each alone.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    planned: list[PlannedContact] = []
    suppressed: list[SuppressedContact] = []
    handover: list[str] = []
    decisions: dict[str, tuple[Decision, ...]] = {}
    shared: dict[tuple[object, ...], _Shared | None] = {}
    shapes = _HistoryShapes(now, policies, horizon)
    for account in accounts:
        past = history.get(account.account_id, _NO_HISTORY)
        key = None if explain else _shared_key(account, past, shapes)
        if key is not None:
            like = shared.get(key, _UNSEEN)  # one lookup: hashing a key is not cheap
            if like is not _UNSEEN:
                if isinstance(like, _Shared):
                    like.add_for(account, planned, suppressed, handover)
                continue
        days = _plan_days(now, account, past, policies, horizon, explain)
        if key is not None:
            shared[key] = None if days is None else _Shared.of(days)
        if days is None:
            continue
        planned += days.planned
        suppressed += days.suppressed
        if days.handover:
            handover.append(account.account_id)
        if explain:
            decisions[account.account_id] = tuple(days.decisions)
    planned.sort(key=_order)
    suppressed.sort(key=_order)
    return Plan(tuple(planned), tuple(suppressed), tuple(sorted(handover)), decisions)


_UNSEEN: Final = object()


def _shared_key(
    account: Account, history: AccountHistory, shapes: _HistoryShapes
) -> tuple[object, ...] | None:
    """Everything the plan of ``account`` depends on but its id and its emergency contacts'
    numbers, when that is little: not paid in full (the hold names the amounts), no promise
    and no emergency contact removed, and past contacts (if any) only to the borrower whose
    times matter only as ``_HistoryShapes.shape`` tells. Accounts with equal keys get the
    same plan, but for the account id, the numbers (the targets) and the contact ids, and
    are planned once (``None``: this account's plan is its own).
    tests/test_planner_properties.py holds ``plan`` to planning each account alone, and
    tests/test_planner_history_alike.py does at each instant a shape compares with."""
    if history.promises or history.removed_contacts:
        return None
    if account.paid_in_full:
        return None
    numbers = account.emergency_contacts
    if len(set(numbers)) < len(numbers):
        return None  # targets that could not be told apart
    key = (_planned_on(account), len(numbers), not account.phone, not account.email)
    if not history.contacts:
        return key
    shape = shapes.shape(account, history.contacts)
    return None if shape is None else (*key, shape)


class _HistoryShapes:
    """What of an account's past contacts its plan over ``horizon`` from ``now`` depends on,
    so that accounts whose histories differ only in the times of their contacts, and only
    where no rule can tell, are planned once. A past contact's time ``at`` is read by:

    * the contacts made (``_done_on``) and the day's caps: through its borrower-local day,
      which only a horizon day, or the day of a first-24h contact, can match;
    * the minimum gap: never, once ``at`` is ``min_gap_minutes`` before ``now`` (every
      time planned is at or after ``now``);
    * the 7-day call cap: a call counts in every 7 days ending in the horizon when it is
      less than 7 days before the horizon's end, and in none when 7 days or more before
      ``now``; calls between are the account's own. So that the windows ending at past calls
      cannot break the cap, there are at most that many past calls;
    * the conversation cool-down: a conversation ``cooldown`` days or more before ``now``
      holds nothing, one ``cooldown`` days or less before the horizon's end holds every call
      of the horizon; one between is the account's own;
    * the unreached-days conditions and ``[outcomes]`` unreachable days: by comparison with
      each horizon day's start less those days (``at`` at one of these instants: its own);
    * the hold sentences: a conversation's UTC date.

    Contacts to an emergency contact (their caps compare times with that number's own
    contacts) leave the account's plan its own. The zone and policy are those of the
    account (both are in ``_shared_key``)."""

    def __init__(self, now: datetime, policies: PolicySet, horizon: Horizon) -> None:
        self._now = now
        self._policies = policies
        self._horizon = horizon
        self._bounds: dict[tuple[str, str], _ShapeBounds] = {}

    def shape(self, account: Account, past: Sequence[PastContact]) -> tuple[object, ...] | None:
        """The shape of ``past`` for ``account`` (``None``: the plan is the account's own)."""
        bounds = self._bounds_for(account)
        now, due = self._now, account.due_date
        calls = 0
        shape: list[tuple[object, ...]] = []
        for p in past:
            at = p.at
            if p.target != _BORROWER or at + bounds.gap > now:
                return None
            reached = p.outcome.reached_borrower
            local = at.astimezone(bounds.zone).date()
            day = local if local >= bounds.first_day or p.rule in bounds.first_contact else None
            since: int | None = None
            rolling = cooldown = None
            is_call = p.channel is Channel.CALL
            if is_call or reached:
                since = bisect_left(bounds.thresholds, at)
                if since < len(bounds.thresholds) and bounds.thresholds[since] == at:
                    return None
            if is_call:
                calls += 1
                if bounds.weekly_cap:
                    if calls > bounds.weekly_cap:
                        return None
                    if at > bounds.end - _WEEK:
                        rolling = True
                    elif at <= now - _WEEK:
                        rolling = False
                    else:
                        return None
                if reached:
                    if at + bounds.cooldown <= now:
                        cooldown = False
                    elif at + bounds.cooldown >= bounds.end:
                        cooldown = True
                    else:
                        return None
            utc_day = at.date() if reached else None
            shape.append(
                (p.channel, p.rule, reached, p.due_date == due, day, since, rolling, cooldown,
                 utc_day)
            )  # fmt: skip
        return tuple(shape)

    def _bounds_for(self, account: Account) -> _ShapeBounds:
        policy = self._policies.for_product(account.product)
        zone_name = account.timezones[0]
        key = (policy.policy.name, zone_name)
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = _ShapeBounds.of(policy, zone_name, self._horizon)
        return bounds


_WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class _ShapeBounds:
    """The instants and spans ``_HistoryShapes`` compares past contacts with, for one
    policy and zone."""

    zone: ZoneInfo
    first_day: date
    end: datetime  # the end of the horizon's last borrower-local day
    gap: timedelta
    cooldown: timedelta
    weekly_cap: int
    thresholds: list[datetime]  # each horizon day's start less each unreached-days
    first_contact: frozenset[str]  # the first-24h rules

    @classmethod
    def of(cls, policy: PolicyFile, zone_name: str, horizon: Horizon) -> _ShapeBounds:
        caps = policy.caps
        days = {r.unreached_days for r in policy.rule if r.unreached_days}
        if policy.outcomes is not None and policy.outcomes.unreachable_days_before_third_party:
            days.add(policy.outcomes.unreachable_days_before_third_party)
        starts = [
            to_utc(horizon.first_day + timedelta(days=k), _MIDNIGHT, zone_name)
            for k in range(horizon.days)
        ]
        return cls(
            _zone_info(zone_name),
            horizon.first_day,
            to_utc(horizon.last_day + timedelta(days=1), _MIDNIGHT, zone_name),
            timedelta(minutes=caps.min_gap_minutes),
            timedelta(days=caps.conversation_cooldown_days),
            caps.call_attempts_per_7_days,
            sorted({start - timedelta(days=n) for start in starts for n in days}),
            frozenset(r.id for r in policy.rule if r.first_contact),
        )


_BORROWER = "borrower"
#: The fields of an ``Account`` with no history that is not paid in full which its plan
#: does not depend on (of the addresses, only whether there is one; of the emergency
#: contacts, how many). Every other field is in ``_shared_key``: one added to ``Account``
#: later tells accounts apart until it is named here.
_NOT_PLANNED_ON = frozenset(
    {"account_id", "name", "phone", "email", "language", "currency", "amount_due",
     "amount_paid", "emergency_contacts"}
)  # fmt: skip
_planned_on = attrgetter(*(f.name for f in fields(Account) if f.name not in _NOT_PLANNED_ON))


@dataclass(frozen=True, slots=True)
class _Shared:
    """One account's plan, as the plan of every account with the same ``_shared_key``: each
    contact with its step, its target (``None``: the borrower; else which emergency
    contact) and the ``contact_id_tail`` its copies' ids are made from (for the borrower)."""

    planned: tuple[tuple[PlannedContact, int, int | None, bytes], ...]
    suppressed: tuple[tuple[SuppressedContact, int, int | None, bytes], ...]
    due_date: date
    handover: bool

    @classmethod
    def of(cls, days: _AccountDays) -> _Shared:
        due, numbers = days.account.due_date, days.account.emergency_contacts

        def entry(c: _C, step: int) -> tuple[_C, int, int | None, bytes]:
            which = None if c.target == _BORROWER else numbers.index(c.target)
            return c, step, which, contact_id_tail(c.rule, due, step, c.target)

        return cls(
            tuple(entry(c, c.step) for c in days.planned),
            tuple(
                entry(c, step)
                for c, step in zip(days.suppressed, days.suppressed_steps, strict=True)
            ),
            due,
            days.handover,
        )

    def add_for(
        self,
        account: Account,
        planned: list[PlannedContact],
        suppressed: list[SuppressedContact],
        handover: list[str],
    ) -> None:
        """Append this plan's contacts, made for ``account``."""
        aid, numbers = account.account_id, account.emergency_contacts
        for c, step, which, tail in self.planned:
            target, cid = self._target_and_id(aid, numbers, c, step, which, tail)
            planned.append(
                new_planned(cid, aid, c.channel, c.rule, target, c.due_date, step,
                            c.window_start, c.window_end, c.template, c.priority, c.sla_risk,
                            c.note)
            )  # fmt: skip
        for s, step, which, tail in self.suppressed:
            target, cid = self._target_and_id(aid, numbers, s, step, which, tail)
            suppressed.append(
                new_suppressed(aid, s.channel, s.rule, target, s.window_start, s.window_end,
                               s.reason, s.detail, cid)
            )  # fmt: skip
        if self.handover:
            handover.append(aid)

    def _target_and_id(
        self,
        account_id: str,
        numbers: tuple[str, ...],
        c: PlannedContact | SuppressedContact,
        step: int,
        which: int | None,
        tail: bytes,
    ) -> tuple[str, str]:
        """The target and contact id of copy ``c`` for ``account_id``: the borrower's id
        from the stored tail, an emergency contact's from that account's own number."""
        if which is None:
            return c.target, contact_id_of(account_id, tail)
        target = numbers[which]
        return target, contact_id_of(
            account_id, contact_id_tail(c.rule, self.due_date, step, target)
        )


_C = TypeVar("_C", PlannedContact, SuppressedContact)
#: ``PlannedContact(*fields)`` and ``SuppressedContact(*fields)``, every field in order, at
#: half the cost: a plan makes one per contact (200k at 1M accounts), and so does the
#: rebuild of a shard's plan (``scheduler.planning``).
new_planned = positional_builder(PlannedContact)
new_suppressed = positional_builder(SuppressedContact)


def _order(c: PlannedContact | SuppressedContact) -> tuple[float, str, str, str]:
    """The order of a plan's contacts. Timestamps, not the zone-aware datetimes: comparing
    those across zones is slow."""
    return (c.window_start.timestamp(), c.account_id, c.rule, c.target)


def merge_plans(parts: Sequence[Plan]) -> Plan:
    """One plan from the plans of disjoint sets of accounts: exactly what ``plan`` over
    all of them gives. Equal keys belong to one account (the key holds the account id), so
    a stable sort of the parts one after the other keeps ``plan``'s order, ties included;
    each part being sorted already, the sort merges runs."""
    return _merged(parts, _order)


def merge_shard_plans(parts: Sequence[Plan]) -> Plan:
    """``merge_plans`` of the plans of account_id ranges given in ascending order (every
    account of a part below every account of the next), as shards are: contacts at the
    same time then already come part by part in account order, so a stable sort of the
    parts one after the other by time alone gives ``plan``'s order."""
    return _merged(parts, _start)


def _merged(
    parts: Sequence[Plan],
    key: Callable[[PlannedContact | SuppressedContact], SupportsRichComparison],
) -> Plan:
    """The parts' contacts one after the other, stably sorted by ``key``."""
    if len(parts) == 1:
        return parts[0]
    decisions: dict[str, tuple[Decision, ...]] = {}
    for part in parts:
        decisions.update(part.decisions)
    planned = [c for p in parts for c in p.planned]
    suppressed = [c for p in parts for c in p.suppressed]
    planned.sort(key=key)
    suppressed.sort(key=key)
    handover = sorted(account_id for p in parts for account_id in p.handover)
    return Plan(tuple(planned), tuple(suppressed), tuple(handover), decisions)


def _start(c: PlannedContact | SuppressedContact) -> float:
    return c.window_start.timestamp()


def plan_account(
    now: datetime,
    account: Account,
    history: AccountHistory,
    policies: PolicySet,
    horizon: Horizon,
    *,
    explain: bool = False,
) -> Plan:
    """Plan one account over ``horizon``; see ``plan``."""
    days = _plan_days(now, account, history, policies, horizon, explain)
    return _EMPTY if days is None else days.result()


def _plan_days(
    now: datetime,
    account: Account,
    history: AccountHistory,
    policies: PolicySet,
    horizon: Horizon,
    explain: bool,
) -> _AccountDays | None:
    """The account's days planned (``None``: nothing concerns it in ``horizon``)."""
    policy = policies.for_product(account.product)
    if not explain and not _anything_due(policies, policy, account, history, horizon):
        return None
    day_planner = _AccountDays(now, account, history, policies, policy, explain)
    for offset in range(horizon.days):
        day_planner.plan_day(horizon.first_day + timedelta(days=offset))
    return day_planner


_EMPTY = Plan()


def _anything_due(
    policies: PolicySet,
    policy: PolicyFile,
    account: Account,
    history: AccountHistory,
    horizon: Horizon,
) -> bool:
    """Whether any rule (or the hand-over line) concerns ``account`` in ``horizon``."""
    if history.promises and follow_up_rules(policies, policy):
        return True
    for offset in range(horizon.days):
        dpd = (horizon.first_day - account.due_date).days + offset
        if dpd >= policy.handover.min_dpd or rules_on(policies, policy, dpd):
            return True
    return False


def rules_on(policies: PolicySet, policy: PolicyFile, dpd: int) -> tuple[tuple[Rule, int], ...]:
    """``(rule, days_back)`` pairs for a day at ``dpd``: the rules that fire on it (0 days
    back) and the first-contact rules that fired up to ``FIRST_CONTACT_SEARCH_DAYS`` earlier
    (they may have moved into this day). The same for every account: memoised."""
    key = ("rules_on", policy.policy.name, dpd)
    found = cast("tuple[tuple[Rule, int], ...] | None", policies.memo.get(key))
    if found is None:
        pairs: list[tuple[Rule, int]] = []
        for rule in policy.rule:
            if rule.fires_on(dpd):
                pairs.append((rule, 0))
            if rule.first_contact:
                back_days = range(1, FIRST_CONTACT_SEARCH_DAYS + 1)
                pairs.extend((rule, back) for back in back_days if rule.fires_on(dpd - back))
        found = policies.memo[key] = tuple(pairs)
    return found


def follow_up_rules(policies: PolicySet, policy: PolicyFile) -> tuple[Rule, ...]:
    """The enabled broken-promise rules of ``policy`` (memoised)."""
    key = ("follow_up_rules", policy.policy.name)
    found = cast("tuple[Rule, ...] | None", policies.memo.get(key))
    if found is None:
        found = policies.memo[key] = tuple(
            r for r in policy.rule if r.enabled and r.trigger is Trigger.BROKEN_PROMISE
        )
    return found


class _AccountDays:
    """Plans the days of one account in order, so each day's caps count the days before."""

    def __init__(
        self,
        now: datetime,
        account: Account,
        history: AccountHistory,
        policies: PolicySet,
        policy: PolicyFile,
        explain: bool,
    ) -> None:
        self.now = now
        self.account = account
        self.history = history
        self.policies = policies
        self.policy = policy
        self.hours = policies.hours(policy)
        self.explain = explain
        self.zone_name = account.timezones[0]
        self.zone = _zone_info(self.zone_name)
        self.ledger: CapLedger | None = None
        self.planned: list[PlannedContact] = []
        self.suppressed: list[SuppressedContact] = []
        #: The step of each suppressed contact, in order (a ``SuppressedContact`` has none).
        self.suppressed_steps: list[int] = []
        self.handover = False
        self.decisions: list[Decision] = []
        past = history.contacts
        self._counted = any(p.channel is not Channel.LETTER for p in past)
        self._done = {(p.rule, p.due_date, p.target) for p in past} if past else _NOTHING
        self._done_on = (
            {(p.rule, p.at.astimezone(self.zone).date(), p.target) for p in past}
            if past
            else _NOTHING
        )
        #: The rule-window spans of this account's zones and country, per (rule, day):
        #: the same for every account with those zones and that country.
        self._span_memo = cast(
            "dict[tuple[str, date], tuple[Span, ...]]",
            policies.memo.setdefault(
                ("spans", policy.policy.name, account.timezones, account.country), {}
            ),
        )

    def result(self) -> Plan:
        decisions = {self.account.account_id: tuple(self.decisions)} if self.explain else {}
        handover = (self.account.account_id,) if self.handover else ()
        return Plan(tuple(self.planned), tuple(self.suppressed), handover, decisions)

    # -- one day ---------------------------------------------------------------------------

    def plan_day(self, day: date) -> None:
        dpd = (day - self.account.due_date).days
        if dpd >= self.policy.handover.min_dpd:
            self.handover = True
            if self.explain:
                self._note_all(
                    day,
                    dpd,
                    Verdict.DROPPED,
                    f"DPD {dpd} is past the hand-over line "
                    f"(DPD {self.policy.handover.min_dpd}): no automated contact",
                )
            return
        candidates = list(self._candidates(day, dpd))
        if self.explain:
            self._note_not_due(day, dpd, candidates)
        if not candidates:
            return
        hold = account_hold(self.account, self.history, self.policy.suppressions, day)
        placed: list[_Placed] = []
        for candidate in candidates:
            day_hold = hold
            if hold is not None and candidate.rule.legally_required:
                day_hold = account_hold(
                    self.account, self.history, self.policy.suppressions, day,
                    legally_required=True,
                )  # fmt: skip
            outcome = self._hold_or_place(candidate, day, day_hold)
            if isinstance(outcome, Hold):
                self._suppress(candidate, outcome)
            elif outcome is not None:
                placed.append(outcome)
        if len(placed) > 1:
            placed.sort(
                key=lambda p: (-p.candidate.rule.priority, p.spans[0][0], p.candidate.rule.id)
            )
        capped = sum(1 for p in placed if p.candidate.rule.channel is not Channel.LETTER)
        alone = capped == 1 and self.ledger is None and not self.planned and not self._counted
        for item in placed:
            self._book(item, alone=alone)

    def _candidates(self, day: date, dpd: int) -> Iterator[_Candidate]:
        """The contacts the rules ask for on ``day``, less those history shows were made."""
        for rule, back in rules_on(self.policies, self.policy, dpd):
            nominal = day - timedelta(days=back) if back else day
            yield from self._not_done(self._targets(rule, nominal, dpd - back))
        if self.history.promises:
            for rule in follow_up_rules(self.policies, self.policy):
                yield from self._follow_ups(rule, day)

    def _follow_ups(self, rule: Rule, day: date) -> Iterator[_Candidate]:
        """A broken-promise rule asks for one contact per broken promise, every day from the
        one the promise broke on (for ``FIRST_CONTACT_SEARCH_DAYS``) until it is planned:
        the first day on which time rules and caps (a conversation's cool-down) allow it.
        History showing it made, or this plan having it already, ends the asking."""
        rules = self.policy.suppressions
        for promise in self.history.promises:
            if promise_state(promise, self.account, day, rules) is not PromiseStatus.BROKEN:
                continue
            broke = broken_on(promise, rules)
            if not broke <= day <= broke + timedelta(days=FIRST_CONTACT_SEARCH_DAYS):
                continue
            candidate = _Candidate(rule, "borrower", day, promise.promised_date.toordinal())
            if any(
                p.rule == rule.id and p.at.astimezone(self.zone).date() >= broke
                for p in self.history.contacts
            ):
                if self.explain:
                    self._note(candidate, Verdict.NOT_DUE, "already made (in the contact history)")
                continue
            if any(p.rule == rule.id and p.step == candidate.step for p in self.planned):
                continue  # planned on an earlier day of this plan
            yield candidate

    def _not_done(self, candidates: Iterator[_Candidate]) -> Iterator[_Candidate]:
        for c in candidates:
            once = (
                c.rule.first_contact and (c.rule.id, self.account.due_date, c.target) in self._done
            )
            if once or (c.rule.id, c.nominal_day, c.target) in self._done_on:
                if self.explain:
                    self._note(c, Verdict.NOT_DUE, "already made (in the contact history)")
                continue
            yield c

    def _targets(self, rule: Rule, day: date, dpd: int) -> Iterator[_Candidate]:
        if rule.target is Target.EMERGENCY_CONTACTS:
            for number in self.account.emergency_contacts:
                yield _Candidate(rule, number, day, dpd)
        else:
            yield _Candidate(rule, "borrower", day, dpd)

    def _hold_or_place(self, c: _Candidate, day: date, hold: Hold | None) -> Hold | _Placed | None:
        hold = (
            hold
            or channel_hold(self.account, c.rule.channel, c.rule.target)
            or target_hold(self.history, c.target)
            or condition_hold(
                c.rule, self.account, self.history, self._day_start(day),
                self.policy.outcomes,
            )
        )  # fmt: skip
        if hold is not None:
            return hold if c.nominal_day == day else None
        return self._place(c, day)

    def _place(self, c: _Candidate, day: date) -> Hold | _Placed | None:
        """Where ``c`` may go on ``day`` by the time rules (None: it belongs to another day)."""
        rule = c.rule
        if c.nominal_day != day and self._spans(rule, c.nominal_day, clip_to_now=False):
            return None  # it had allowed time on its own day; catching up is the daemon's job
        spans = self._spans(rule, c.nominal_day)
        if spans:
            start = spans[0][0]
            nominal = self._rule_start(rule, day)
            moved = "" if start <= nominal else self._why_moved(rule, day, nominal)
            return _Placed(c, spans, sla_risk=False, moved=moved)
        if not rule.first_contact:
            return self._no_time(rule, day)
        return self._place_first_contact(c, day)

    def _place_first_contact(self, c: _Candidate, day: date) -> Hold | _Placed | None:
        """A first-24h contact with no allowed time on its own day goes at the first allowed
        time of a later day, flagged ``sla_risk`` when that is 24 hours or more after the
        account became overdue."""
        rule = c.rule
        why = self._why_moved(rule, c.nominal_day, self._rule_start(rule, c.nominal_day))
        for later in range(1, FIRST_CONTACT_SEARCH_DAYS + 1):
            target_day = c.nominal_day + timedelta(days=later)
            if target_day > day and c.nominal_day != day:
                return None  # it will be planned on a later day
            spans = self._spans(rule, target_day)
            if not spans:
                continue
            sla_risk = spans[0][0] >= self._sla_deadline()
            if target_day == day:
                return _Placed(c, spans, sla_risk, moved=f"moved from {c.nominal_day}: {why}")
            if c.nominal_day != day:
                return None  # it was planned on an earlier day
            first = spans[0][0].astimezone(self.zone)
            risk = " (SLA risk)" if sla_risk else ""
            return Hold(
                Reason.NO_ALLOWED_TIME,
                f"no allowed time on {c.nominal_day} ({why}); "
                f"moves to {first:%Y-%m-%d %H:%M}{risk}",
            )
        return self._no_time(rule, day) if c.nominal_day == day else None

    def _day_start(self, day: date) -> datetime:
        """00:00 borrower-local on ``day``, in UTC."""
        return to_utc(day, _MIDNIGHT, self.zone_name)

    def _sla_deadline(self) -> datetime:
        return sla_deadline(self.account)

    def _spans(self, rule: Rule, day: date, *, clip_to_now: bool = True) -> tuple[Span, ...]:
        """Allowed spans of ``rule``'s window on ``day`` (from ``now`` unless told not to)."""
        a = self.account
        key = (rule.id, day)
        spans = self._span_memo.get(key)
        if spans is None:
            window: tuple[Span, ...] = (
                (to_utc(day, rule.at, self.zone_name), to_utc(day, rule.until, self.zone_name)),
            )
            if rule.channel is not Channel.LETTER:
                window = intersect(
                    window, self.hours.spans(day, a.timezones, a.country, rule.channel)
                )
            spans = self._span_memo[key] = window
        if clip_to_now and spans and spans[0][0] < self.now:
            return tuple((max(start, self.now), end) for start, end in spans if end > self.now)
        return spans

    def _rule_start(self, rule: Rule, day: date) -> datetime:
        return to_utc(day, rule.at, self.zone_name)

    def _why_moved(self, rule: Rule, day: date, nominal: datetime) -> str:
        if self.now > nominal:
            return f"its {rule.at:%H:%M} start had passed"
        blocked = self.hours.blocked_reason(day, self.account.country, rule.channel)
        if blocked:
            return blocked
        return "quiet hours in a borrower zone (" + ", ".join(self.account.timezones) + ")"

    def _no_time(self, rule: Rule, day: date) -> Hold:
        if to_utc(day, rule.until, self.zone_name) <= self.now:
            return Hold(
                Reason.WINDOW_PASSED, f"its window {rule.at:%H:%M}-{rule.until:%H:%M} has passed"
            )
        why = self._why_moved(rule, day, self._rule_start(rule, day))
        return Hold(
            Reason.NO_ALLOWED_TIME, f"no allowed time in {rule.at:%H:%M}-{rule.until:%H:%M}: {why}"
        )

    # -- caps and results -----------------------------------------------------------------

    def _book(self, item: _Placed, *, alone: bool) -> None:
        """Take ``item`` through the caps. ``alone``: no other contact, stored or planned,
        can count against it, so every cap holds at its earliest time (exactly what the
        ledger would find) and the ledger is not built."""
        c = item.candidate
        if c.rule.channel is Channel.LETTER or alone:
            self._accept(item, item.spans[0][0], item.spans[0][1])
            return
        fitted = self._ledger().fit(item.spans, c.rule.channel, c.target)
        if isinstance(fitted, Reason):
            self._suppress(c, Hold(fitted, _CAP_TEXT[fitted].format(caps=self.policy.caps)))
            return
        start, end = fitted
        self._ledger().book(_booking(c.rule.channel, c.target, start, end))
        moved = item.moved
        if not moved and start > item.spans[0][0]:
            moved = "moved later to keep the caps (gap between contacts)"
        self._accept(item, start, end, moved)

    def _ledger(self) -> CapLedger:
        """The account's cap ledger: its stored history plus what this plan booked so far."""
        if self.ledger is None:
            self.ledger = CapLedger(self.policy.caps, self.zone_name, self.history.contacts)
            for p in self.planned:
                if p.channel is not Channel.LETTER:
                    self.ledger.book(_booking(p.channel, p.target, p.window_start, p.window_end))
        return self.ledger

    def _accept(self, item: _Placed, start: datetime, end: datetime, moved: str = "") -> None:
        c = item.candidate
        rule = c.rule
        moved = moved or item.moved
        note = moved
        if rule.fallback_for:
            note = (
                note + "; " if note else ""
            ) + f"only if {rule.fallback_for} did not reach the borrower"
        account = self.account
        self.planned.append(
            new_planned(
                contact_id(account.account_id, rule.id, account.due_date, c.step, c.target),
                account.account_id,
                rule.channel,
                rule.id,
                c.target,
                account.due_date,
                c.step,
                start.astimezone(self.zone),  # window_start
                end.astimezone(self.zone),  # window_end
                rule.template_name,
                rule.priority,
                item.sla_risk,
                note,
            )
        )
        if self.explain:
            verdict = Verdict.MOVED if moved else Verdict.FIRED
            local_start, local_end = start.astimezone(self.zone), end.astimezone(self.zone)
            text = f"planned {local_start:%Y-%m-%d %H:%M}-{local_end:%H:%M}"
            text += f" ({moved})" if moved else ""
            text += (
                "; SLA RISK: first contact later than 24 hours after becoming overdue"
                if item.sla_risk
                else ""
            )
            self._note(c, verdict, text)

    def _suppress(self, c: _Candidate, hold: Hold) -> None:
        zone = self.zone_name
        self.suppressed_steps.append(c.step)
        account = self.account
        self.suppressed.append(
            new_suppressed(
                account.account_id,
                c.rule.channel,
                c.rule.id,
                c.target,
                to_utc(c.nominal_day, c.rule.at, zone).astimezone(self.zone),  # window_start
                to_utc(c.nominal_day, c.rule.until, zone).astimezone(self.zone),  # window_end
                hold.reason,
                hold.sentence,  # detail
                contact_id(account.account_id, c.rule.id, account.due_date, c.step, c.target),
            )
        )
        if self.explain:
            self._note(c, Verdict.DROPPED, f"{hold.reason.value}: {hold.sentence}")

    # -- explain --------------------------------------------------------------------------

    def _note(self, c: _Candidate, verdict: Verdict, sentence: str) -> None:
        self.decisions.append(Decision(c.rule.id, c.rule.channel, c.target, verdict, sentence))

    def _note_not_due(self, day: date, dpd: int, candidates: list[_Candidate]) -> None:
        asked = {c.rule.id for c in candidates}
        for rule in self.policy.rule:
            if rule.id in asked:
                continue
            if not rule.enabled:
                text = "disabled in the policy"
            elif rule.trigger is Trigger.BROKEN_PROMISE:
                text = "fires the first allowed day after a promise to pay broke; none did"
            elif rule.dpd is not None:
                text = f"fires on DPD {rule.dpd}; {day} is DPD {dpd}"
            else:
                text = (
                    f"fires on DPD {rule.dpd_from}-{rule.dpd_to} every {rule.every_days} day(s) "
                    f"from {rule.dpd_from}; {day} is DPD {dpd}"
                )
            self.decisions.append(
                Decision(rule.id, rule.channel, rule.target.value, Verdict.NOT_DUE, text)
            )

    def _note_all(self, day: date, dpd: int, verdict: Verdict, text: str) -> None:
        for rule in self.policy.rule:
            self.decisions.append(Decision(rule.id, rule.channel, rule.target.value, verdict, text))


def first_contact_catch_up(
    now: datetime,
    account: Account,
    history: AccountHistory,
    policies: PolicySet,
    rule_id: str,
    target: str,
) -> Hold | Span | None:
    """Where a first-24h contact goes when its own window passed without it being made
    (the daemon was down): the first allowed span of its rule from ``now`` on, within
    ``FIRST_CONTACT_SEARCH_DAYS`` borrower-local days, unless a hold applies now (returned).
    ``None`` when ``rule_id`` is not a first-24h rule of the account's policy or no allowed
    time exists. The plan itself never catches up (it assumes contacts are made on time);
    the dispatcher asks this when a first-24h contact comes up late."""
    policy = policies.for_product(account.product)
    rule = next((r for r in policy.rule if r.id == rule_id and r.first_contact), None)
    if rule is None:
        return None
    days = _AccountDays(now, account, history, policies, policy, explain=False)
    today = now.astimezone(days.zone).date()
    hold = (
        account_hold(account, history, policy.suppressions, today)
        or channel_hold(account, rule.channel, rule.target)
        or target_hold(history, target)
        or condition_hold(
            rule, account, history, to_utc(today, _MIDNIGHT, account.zone), policy.outcomes
        )
    )
    if hold is not None:
        return hold
    for offset in range(FIRST_CONTACT_SEARCH_DAYS + 1):
        spans = days._spans(rule, today + timedelta(days=offset))
        if spans:
            return spans[0]
    return None


def sla_deadline(account: Account) -> datetime:
    """When the first-24h contact is due at the latest: 24 hours after the account became
    overdue (00:00 borrower-local the day after the due date), in UTC."""
    overdue_day = account.due_date + timedelta(days=1)
    return to_utc(overdue_day, _MIDNIGHT, account.zone) + timedelta(hours=24)


def _booking(channel: Channel, target: str, start: datetime, end: datetime) -> Booking:
    """What a contact occupies for the caps: a call its window, a message an instant."""
    return Booking(start, end if channel is Channel.CALL else start, channel, target)


_MIDNIGHT = datetime.min.time()


@lru_cache(maxsize=1024)
def _zone_info(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_CAP_TEXT = {
    Reason.CAP_DAILY: "already {caps.contacts_per_day} contacts that day (caps.contacts_per_day)",
    Reason.CAP_CALLS_7D: "would exceed {caps.call_attempts_per_7_days} call attempts in 7 days",
    Reason.CAP_CONVERSATION_COOLDOWN: "within {caps.conversation_cooldown_days} days of a "
    "completed conversation",
    Reason.CAP_CONNECTED_CALLS: "already {caps.connected_calls_per_day} connected calls that day",
    Reason.CAP_MIN_GAP: "no time in the window at least {caps.min_gap_minutes} minutes from "
    "other contacts",
    Reason.CAP_THIRD_PARTY: "this emergency contact was contacted within "
    "{caps.third_party_every_days} days",
    Reason.CAP_CALL_ATTEMPTS_DAILY: "already {caps.call_attempts_per_day} unanswered call "
    "attempts to this number that day (caps.call_attempts_per_day)",
}
