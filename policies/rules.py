"""The pure policy rules: holds (suppressions) and frequency caps.

Precedence, written down once (the planner applies it in this order):

1. **Account holds** win over everything: closed or handed over, paid in full, a hold flag
   (dispute, cease, complaint, legal hold, deceased, bankrupt), a pending promise to pay.
   A cease request leaves the rules marked ``legally_required`` (letters).
2. **Channel holds**: ``no_sms``/``no_email``/``no_call``, a missing or invalid phone or email.
3. **Rule conditions**: a fallback whose first contact reached the borrower; an emergency
   contact while the borrower was reached recently, or before the borrower has been
   unreachable for ``[outcomes] unreachable_days_before_third_party``, or one who objected
   (or whose number was wrong): never again.
4. **Time**: quiet hours, weekends and holidays move a contact to the next allowed time
   inside its rule's window, or drop it (``no_allowed_time``). The first-24h contact is
   moved to the first allowed time even past its window and flagged ``sla_risk``.
5. **Caps**, counted from stored history plus what is already planned, contacts taken in
   priority order (first-24h first): a contact that would break a cap is moved later in its
   window if that satisfies the cap, else dropped.

Letters are tasks for the mail room, not real-time contact: they obey holds but not quiet
hours or caps. Contacts with emergency contacts count toward the account's daily cap and
gaps but not toward the borrower's call caps; they have their own once-per-N-days cap.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from policies.hours import Span
from policies.schema import Caps, Outcomes, Rule, Suppressions, Target
from scheduler.models import (
    CHANNEL_FLAGS,
    Account,
    AccountHistory,
    AccountStatus,
    Channel,
    Flag,
    PastContact,
    Promise,
    PromiseStatus,
    Reason,
)

__all__ = [
    "Booking",
    "CapLedger",
    "Hold",
    "account_hold",
    "broken_on",
    "channel_hold",
    "condition_hold",
    "promise_state",
    "target_hold",
]

_HOLD_ORDER = (
    Flag.DECEASED,
    Flag.BANKRUPT,
    Flag.LEGAL_HOLD,
    Flag.CEASE,
    Flag.DISPUTE,
    Flag.COMPLAINT,
)
_FLAG_TEXT = {
    Flag.DECEASED: "the borrower is recorded as deceased",
    Flag.BANKRUPT: "the borrower is in bankruptcy",
    Flag.LEGAL_HOLD: "the account is on legal hold",
    Flag.CEASE: "the borrower asked us to stop contact",
    Flag.DISPUTE: "the borrower disputes the debt",
    Flag.COMPLAINT: "a complaint is open",
}


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a contact will not be made: a reason code and a sentence for people."""

    reason: Reason
    sentence: str


def promise_state(
    promise: Promise, account: Account, day: date, rules: Suppressions
) -> PromiseStatus:
    """What ``promise`` is on borrower-local ``day``: ``kept`` once the account has been paid
    the promised amount more than when it was made (or in full), ``pending`` until its date
    plus ``promise_grace_days``, ``broken`` after that. A stored kept or broken status
    stands."""
    if promise.status is not PromiseStatus.PENDING:
        return promise.status
    if account.paid_in_full or account.amount_paid - promise.paid_before >= promise.amount:
        return PromiseStatus.KEPT
    if day <= promise.promised_date + timedelta(days=rules.promise_grace_days):
        return PromiseStatus.PENDING
    return PromiseStatus.BROKEN


def broken_on(promise: Promise, rules: Suppressions) -> date:
    """The first borrower-local day a promise not kept counts as broken."""
    return promise.promised_date + timedelta(days=rules.promise_grace_days + 1)


def account_hold(
    account: Account,
    history: AccountHistory,
    rules: Suppressions,
    day: date,
    *,
    legally_required: bool = False,
) -> Hold | None:
    """The hold on every contact with ``account`` on borrower-local ``day``, if any.
    ``legally_required``: the hold on a rule marked so, which a cease request leaves."""
    if account.status is AccountStatus.CLOSED:
        return Hold(Reason.CLOSED, "the account is closed")
    if account.status is AccountStatus.HANDED_OVER:
        return Hold(Reason.HANDED_OVER, "the account was handed over to an agency")
    if account.paid_in_full:
        paid = f"{account.amount_paid} of {account.amount_due} {account.currency}".rstrip()
        return Hold(Reason.PAID, f"paid in full ({paid})")
    if account.flags:
        for flag in _HOLD_ORDER:
            if flag in account.flags and not (legally_required and flag is Flag.CEASE):
                return Hold(Reason(flag.value), _FLAG_TEXT[flag])
    if not history.promises:
        return None
    grace = timedelta(days=rules.promise_grace_days)
    for promise in history.promises:
        if promise_state(promise, account, day, rules) is PromiseStatus.PENDING:
            return Hold(
                Reason.PROMISE_PENDING,
                f"promise to pay {promise.amount} by {promise.promised_date} is pending "
                f"(held until {promise.promised_date + grace})",
            )
    return None


def channel_hold(account: Account, channel: Channel, target: Target) -> Hold | None:
    """The hold on ``channel`` for ``account`` (opt-outs, missing or invalid address)."""
    flag = CHANNEL_FLAGS.get(channel)
    if flag is not None and flag in account.flags:
        return Hold(Reason(flag.value), f"the borrower opted out of {channel.value}")
    if target is Target.EMERGENCY_CONTACTS or channel is Channel.LETTER:
        return None
    if channel in (Channel.SMS, Channel.CALL):
        if not account.phone:
            return Hold(Reason.MISSING_PHONE, "no phone number on file")
        if not account.phone_valid:
            return Hold(Reason.INVALID_PHONE, "the phone number is marked invalid")
    if channel is Channel.EMAIL and not account.email:
        return Hold(Reason.MISSING_EMAIL, "no email address on file")
    return None


def target_hold(history: AccountHistory, target: str) -> Hold | None:
    """The hold on one emergency contact: removed for good when they objected to being
    contacted or the number turned out wrong."""
    if target != "borrower" and target in history.removed_contacts:
        return Hold(
            Reason.THIRD_PARTY_REMOVED,
            "this emergency contact objected (or the number was wrong): never contacted again",
        )
    return None


def condition_hold(
    rule: Rule,
    account: Account,
    history: AccountHistory,
    day_start: datetime,
    outcomes: Outcomes | None = None,
) -> Hold | None:
    """The hold from the rule's own conditions (fallbacks, unreached-days) and, for
    emergency-contact rules, the policy's ``[outcomes]`` unreachable days, if any."""
    if rule.fallback_for is not None:
        for past in history.contacts:
            if (
                past.rule == rule.fallback_for
                and past.due_date == account.due_date
                and past.outcome.reached_borrower
            ):
                return Hold(
                    Reason.BORROWER_RECENTLY_REACHED,
                    f"{rule.fallback_for} reached the borrower; no fallback needed",
                )
    if rule.unreached_days:
        since = day_start - timedelta(days=rule.unreached_days)
        for past in history.contacts:
            if past.target == "borrower" and past.outcome.reached_borrower and past.at >= since:
                return Hold(
                    Reason.BORROWER_RECENTLY_REACHED,
                    f"the borrower was reached on {past.at:%Y-%m-%d}, within "
                    f"{rule.unreached_days} days",
                )
    if rule.target is Target.EMERGENCY_CONTACTS and outcomes is not None:
        return _unreachable_hold(history, day_start, outcomes.unreachable_days_before_third_party)
    return None


def _unreachable_hold(history: AccountHistory, day_start: datetime, days: int) -> Hold | None:
    """Emergency contacts wait until the borrower has been unreachable ``days``: a call to
    the borrower at least that long ago, and no contact reaching them since."""
    if not days:
        return None
    since = day_start - timedelta(days=days)
    calls = [p for p in history.contacts if p.target == "borrower" and p.channel is Channel.CALL]
    reached = [p.at for p in calls if p.outcome.reached_borrower and p.at >= since]
    if reached:
        return Hold(
            Reason.BORROWER_RECENTLY_REACHED,
            f"the borrower was reached on {max(reached):%Y-%m-%d}, within {days} days",
        )
    if not any(p.at <= since for p in calls):
        return Hold(
            Reason.BORROWER_NOT_YET_UNREACHABLE,
            f"no call to the borrower {days} or more days ago: not yet unreachable for "
            f"{days} days (outcomes.unreachable_days_before_third_party)",
        )
    return None


@dataclass(frozen=True, slots=True)
class Booking:
    """A contact counted by the caps: when it starts and ends, on which channel, to whom."""

    start: datetime
    end: datetime
    channel: Channel
    target: str
    reached: bool = False


class CapLedger:
    """The frequency caps of one account, from its stored history plus what is planned.

    ``fit(...)`` finds the earliest start inside ``spans`` that breaks no cap, or says which
    cap is in the way; ``book(...)`` records an accepted contact so later ones count it.
    Letters never reach the ledger (they are not capped).
    """

    def __init__(self, caps: Caps, zone: str, history: Iterable[PastContact]) -> None:
        self._caps = caps
        self._zone = ZoneInfo(zone)
        self._gap = timedelta(minutes=caps.min_gap_minutes)
        self._bookings: list[Booking] = []
        self._local_days: dict[datetime, date] = {}  # booking start -> borrower-local day
        for past in history:
            if past.channel is not Channel.LETTER:
                reached = past.channel is Channel.CALL and past.outcome.reached_borrower
                self._insert(Booking(past.at, past.at, past.channel, past.target, reached))

    def _insert(self, booking: Booking) -> None:
        insort(self._bookings, booking, key=lambda b: b.start)

    def book(self, booking: Booking) -> None:
        self._insert(booking)

    def fit(
        self, spans: Sequence[Span], channel: Channel, target: str
    ) -> tuple[datetime, datetime] | Reason:
        """The earliest ``(start, end)`` inside one of ``spans`` that keeps every cap, or the
        reason of the cap that leaves no room. ``end`` is clipped so the gap to a later
        booking holds. Messages occupy an instant; calls occupy their window."""
        if not spans:
            raise ValueError("fit needs at least one span")
        first, first_end = spans[0]
        static = self._day_reason(self._local_day(first), channel, target)
        if static is not None:
            return static
        lower = self._lower_bound(first, channel, target)
        if lower <= first < first_end:
            fitted = self._fit_at_start(first, first_end, channel, target)
            if fitted is not None:
                return fitted
        blockers = [(b.start - self._gap, b.end + self._gap) for b in self._bookings]
        last_reason = Reason.CAP_MIN_GAP
        for start, end in spans:
            points = sorted(
                {start, max(start, lower)} | {hi for _, hi in blockers if start <= hi < end}
            )
            for t in points:
                if t < lower or not start <= t < end:
                    if t < lower:
                        last_reason = (
                            Reason.CAP_THIRD_PARTY
                            if target != "borrower"
                            else Reason.CAP_CONVERSATION_COOLDOWN
                        )
                    continue
                if any(lo < t < hi for lo, hi in blockers):
                    continue
                if channel is Channel.CALL and target == "borrower" and not self._rolling_ok(t):
                    last_reason = Reason.CAP_CALLS_7D
                    continue
                stop = min([end] + [lo for lo, _ in blockers if lo > t])
                return t, (stop if channel is Channel.CALL else max(stop, t))
        return last_reason

    def _fit_at_start(
        self, start: datetime, end: datetime, channel: Channel, target: str
    ) -> tuple[datetime, datetime] | None:
        """The general search's answer when it takes the first span's start (always its
        first candidate): no booking's gap covers it and the 7-day call cap allows it.
        ``None``: the general search must look further."""
        gap = self._gap
        stop = end
        for b in self._bookings:
            lo = b.start - gap
            if lo > start:
                stop = min(stop, lo)
            elif start < b.end + gap and lo < start:
                return None
        if channel is Channel.CALL and target == "borrower" and not self._rolling_ok(start):
            return None
        return start, (stop if channel is Channel.CALL else max(stop, start))

    def _local_day(self, at: datetime) -> date:
        day = self._local_days.get(at)
        if day is None:
            day = self._local_days[at] = at.astimezone(self._zone).date()
        return day

    def _day_reason(self, day: date, channel: Channel, target: str) -> Reason | None:
        caps = self._caps
        today = [b for b in self._bookings if self._local_day(b.start) == day]
        if caps.contacts_per_day and len(today) >= caps.contacts_per_day:
            return Reason.CAP_DAILY
        if channel is Channel.CALL and target == "borrower" and caps.connected_calls_per_day:
            connected = sum(1 for b in today if b.reached)
            if connected >= caps.connected_calls_per_day:
                return Reason.CAP_CONNECTED_CALLS
        if channel is Channel.CALL and caps.call_attempts_per_day:
            unanswered = sum(
                1
                for b in today
                if b.channel is Channel.CALL and b.target == target and not b.reached
            )
            if unanswered >= caps.call_attempts_per_day:
                return Reason.CAP_CALL_ATTEMPTS_DAILY
        return None

    def _lower_bound(self, earliest: datetime, channel: Channel, target: str) -> datetime:
        """The earliest start the cool-down and third-party caps allow (at least ``earliest``)."""
        bound = earliest
        caps = self._caps
        for b in self._bookings:
            if target == "borrower" and channel is Channel.CALL and b.reached:
                bound = max(bound, b.start + timedelta(days=caps.conversation_cooldown_days))
            if target != "borrower" and b.target == target and caps.third_party_every_days:
                bound = max(bound, b.start + timedelta(days=caps.third_party_every_days))
        return bound

    def _rolling_ok(self, t: datetime) -> bool:
        cap = self._caps.call_attempts_per_7_days
        if not cap:
            return True
        week = timedelta(days=7)
        calls = sorted(
            [
                b.start
                for b in self._bookings
                if b.channel is Channel.CALL and b.target == "borrower"
            ]
            + [t]
        )
        lo = 0
        for hi, end in enumerate(calls):  # every window (end - 7 days, end]
            while calls[lo] <= end - week:
                lo += 1
            if hi - lo + 1 > cap:
                return False
        return True
