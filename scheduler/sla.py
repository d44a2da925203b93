"""The first-24h contact, day by day: of the accounts that became overdue, how many were
reached in time, attempted in time, reached late, or missed (``remind report sla``).

An account becomes overdue at 00:00 borrower-local on the day after its due date; the
first-24h contact is due 24 hours later (``planner.sla_deadline``). Each (account, due date)
is counted once, on the ops-zone day it became overdue, in exactly one column:

* ``reached_in_time``: a first-24h message sent, or a first-24h call that reached the
  borrower, before the deadline;
* ``attempted_in_time``: attempted before the deadline (a call not answered, a send that
  failed) but not reached;
* ``late``: first attempted after the deadline;
* ``missed``: the deadline passed and nothing was attempted (missed, failed to plan, or an
  ``sla_breach`` audit event with no attempt after it);
* ``held``: not contacted because a hold applied (paid, dispute, cease ...), which is not a
  breach;
* ``open``: the deadline has not passed and nothing has been attempted yet;
* ``not_planned``: unpaid and overdue, but no first-24h contact was ever planned (held at
  planning time, or the daemon was not running).

``became_overdue`` is the sum of the columns. ``first_contact_rows`` reads the store (SQL
stays at this module's edge); ``sla_days`` is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from policies.hours import to_utc
from scheduler.models import Account, AccountStatus, Channel, Outcome
from scheduler.planner import sla_deadline
from scheduler.store import Store, db_errors
from scheduler.tables import accounts, audit_log, contacts

__all__ = [
    "COLUMNS",
    "FirstContactRow",
    "SlaDay",
    "first_contact_rows",
    "overdue_at",
    "sla_days",
    "unplanned_overdue",
]

COLUMNS = (
    "became_overdue",
    "reached_in_time",
    "attempted_in_time",
    "late",
    "missed",
    "held",
    "open",
    "not_planned",
)
_HELD = frozenset(
    {
        "paid",
        "closed",
        "handed_over",
        "promise_pending",
        "dispute",
        "cease",
        "complaint",
        "legal_hold",
        "deceased",
        "bankrupt",
        "no_sms",
        "no_email",
        "no_call",
        "missing_phone",
        "invalid_phone",
        "missing_email",
        "borrower_recently_reached",
    }
)


@dataclass(frozen=True, slots=True)
class FirstContactRow:
    """One first-24h contact row as the report needs it. ``queued`` is a call handed to the
    agents' queue (``sent`` there means "queued"; the call is made when an outcome is
    recorded). ``breach`` is True when the watch recorded an ``sla_breach`` for it."""

    contact_id: str
    account_id: str
    rule: str
    channel: Channel
    due_date: date | None
    status: str
    reason: str | None
    outcome: str | None
    performed_at: datetime | None
    queued: bool
    breach: bool = False

    @property
    def attempted_at(self) -> datetime | None:
        """When the contact was attempted (None: not yet, or never)."""
        if self.status not in ("sent", "failed") or self.performed_at is None:
            return None
        if self.channel is Channel.CALL and self.queued and self.outcome is None:
            return None  # with the agents, not yet called
        return self.performed_at

    @property
    def reached(self) -> bool:
        if self.attempted_at is None:
            return False
        if self.channel is Channel.CALL:
            return self.outcome is not None and Outcome(self.outcome).reached_borrower
        return self.status == "sent"


@dataclass(frozen=True, slots=True)
class SlaDay:
    """One ops-zone day of the report; ``counts`` has every name in ``COLUMNS``."""

    day: date
    counts: Mapping[str, int]

    def row(self) -> dict[str, object]:
        return {"day": self.day.isoformat(), **{c: self.counts.get(c, 0) for c in COLUMNS}}


def overdue_at(account: Account, due_date: date) -> datetime:
    """When ``account`` became overdue for ``due_date`` (00:00 borrower-local next day), UTC."""
    return to_utc(due_date + timedelta(days=1), time(0, 0), account.zone)


def _classify(rows: list[FirstContactRow], deadline: datetime, now: datetime) -> str:
    attempts = [r for r in rows if r.attempted_at is not None]
    if any(r.reached and r.attempted_at is not None and r.attempted_at <= deadline for r in rows):
        return "reached_in_time"
    if any(r.attempted_at is not None and r.attempted_at <= deadline for r in attempts):
        return "attempted_in_time"
    if attempts:
        return "late"
    if rows and all(r.status == "skipped" and (r.reason or "") in _HELD for r in rows):
        return "held"
    if now < deadline and not any(r.breach for r in rows):
        return "open"
    return "missed"


def sla_days(
    rows: Iterable[FirstContactRow],
    accounts_by_id: Mapping[str, Account],
    unplanned: Iterable[Account],
    *,
    ops_zone: str,
    first: date,
    last: date,
    now: datetime,
) -> tuple[SlaDay, ...]:
    """Count each (account, due date) with first-24h rows, plus the ``unplanned`` overdue
    accounts, on the ops-zone day it became overdue, for the days ``first..last``."""
    zone = ZoneInfo(ops_zone)
    groups: dict[tuple[str, date], list[FirstContactRow]] = {}
    for r in rows:
        account = accounts_by_id.get(r.account_id)
        if account is None:
            continue
        groups.setdefault((r.account_id, r.due_date or account.due_date), []).append(r)
    tally: dict[date, Counter[str]] = {
        first + timedelta(days=k): Counter() for k in range((last - first).days + 1)
    }
    for (account_id, due), members in groups.items():
        account = replace(accounts_by_id[account_id], due_date=due)
        day = overdue_at(account, due).astimezone(zone).date()
        if day in tally:
            tally[day][_classify(members, sla_deadline(account), now)] += 1
    planned = set(groups)
    for account in unplanned:
        if (account.account_id, account.due_date) in planned:
            continue
        day = overdue_at(account, account.due_date).astimezone(zone).date()
        if day in tally and overdue_at(account, account.due_date) <= now:
            tally[day]["not_planned"] += 1
    out = []
    for day, counts in tally.items():
        counts["became_overdue"] = sum(counts[c] for c in COLUMNS[1:])
        out.append(SlaDay(day, {c: counts[c] for c in COLUMNS}))
    return tuple(out)


# -- the store's edge ------------------------------------------------------------------------


def first_contact_rows(
    store: Store, rules: Collection[str], *, first: date, last: date
) -> list[FirstContactRow]:
    """Rows of the first-24h ``rules`` whose window starts from two days before ``first``
    to 17 days after ``last`` (a first contact may move up to 14 days), with their
    ``sla_breach`` audit events. Raises ``StoreError``."""
    if not rules:
        return []
    c = contacts.c
    low = datetime.combine(first - timedelta(days=2), time(0), tzinfo=ZoneInfo("UTC"))
    high = datetime.combine(last + timedelta(days=17), time(0), tzinfo=ZoneInfo("UTC"))
    stmt = sa.select(
        c.contact_id,
        c.account_id,
        c.rule,
        c.channel,
        c.due_date,
        c.status,
        c.reason,
        c.outcome,
        c.performed_at,
        c.provider_ref,
    ).where(c.rule.in_(sorted(rules)), c.window_start >= low, c.window_start < high)
    breach = sa.select(audit_log.c.contact_id).where(
        audit_log.c.kind == "sla_breach", audit_log.c.at >= low
    )
    with db_errors("cannot read first-24h contacts"), store.engine.connect() as conn:
        breached = {row[0] for row in conn.execute(breach)}
        return [
            FirstContactRow(
                contact_id=row.contact_id,
                account_id=row.account_id,
                rule=row.rule,
                channel=Channel(row.channel),
                due_date=row.due_date,
                status=row.status,
                reason=row.reason,
                outcome=row.outcome,
                performed_at=row.performed_at,
                queued=(row.provider_ref or "").startswith("queue:"),
                breach=row.contact_id in breached,
            )
            for row in conn.execute(stmt)
        ]


def unplanned_overdue(store: Store, *, first: date, last: date, now: datetime) -> Iterator[Account]:
    """Active accounts unpaid now whose due date makes them overdue within ``first..last``
    (one day either side for zones); ``sla_days`` drops those that have first-24h rows."""
    a = accounts.c
    where = sa.and_(
        a.status == AccountStatus.ACTIVE.value,
        a.amount_paid < a.amount_due,
        a.due_date.between(first - timedelta(days=2), last + timedelta(days=1)),
    )
    with db_errors("cannot read accounts"), store.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.select(a.account_id).where(where))]
    yield from store.accounts_by_id(ids, now=now).values()
