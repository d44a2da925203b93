"""What a plan needs from the store: the accounts that can have a contact in a horizon,
and as much of their history as the policies' caps and conditions look back on. Shared by
``remind dry-run``/``explain`` and the daemon's plan tick."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from policies import PolicySet
from scheduler.diff import PlanDiff, diff_plans, diff_policies
from scheduler.errors import RemindError
from scheduler.models import Account, AccountHistory, AccountStatus, Horizon, Plan
from scheduler.planner import FIRST_CONTACT_SEARCH_DAYS, follow_up_rules, plan, rules_on
from scheduler.store import Store

__all__ = [
    "compare_policies",
    "due_dates_for",
    "history_since",
    "load_for_plan",
    "plan_under",
]


def history_since(policies: PolicySet, first_day: date) -> datetime:
    """How far back history matters to the caps and conditions of ``policies``."""
    days = FIRST_CONTACT_SEARCH_DAYS  # a moved first contact may have been made this far back
    for policy in policies.policies:
        caps = policy.caps
        days = max(
            days,
            caps.conversation_cooldown_days,
            caps.third_party_every_days,
            *(r.unreached_days for r in policy.rule),
        )
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    return start - timedelta(days=days + 2)  # +2: zones up to a day either side of UTC


def due_dates_for(policies: PolicySet, horizon: Horizon) -> tuple[set[date], date]:
    """The due dates on which some rule of ``policies`` fires in ``horizon`` (DPD is the
    borrower-local day minus the due date, so this is exact), and the latest due date of
    accounts past the hand-over line."""
    dates: set[date] = set()
    min_handover = min(p.handover.min_dpd for p in policies.policies)
    for policy in policies.policies:
        earliest = min((r.first_dpd for r in policy.rule), default=0)
        for dpd in range(earliest, policy.handover.min_dpd):
            if rules_on(policies, policy, dpd):
                dates.update(
                    horizon.first_day + timedelta(days=k) - timedelta(days=dpd)
                    for k in range(horizon.days)
                )
    return dates, horizon.last_day - timedelta(days=min_handover)


def load_for_plan(
    store: Store, policies: PolicySet, horizon: Horizon, now: datetime, account_id: str | None
) -> tuple[list[Account], dict[str, AccountHistory]]:
    """The accounts that can have a contact in ``horizon``, and their history."""
    since = history_since(policies, horizon.first_day)
    if account_id is not None:
        account = store.account(account_id, now=now)
        if account is None:
            raise RemindError(f"no account {account_id!r} in the store")
        return [account], store.history([account_id], since=since)
    due_dates, handover_until = due_dates_for(policies, horizon)
    accounts = [
        a
        for batch in store.accounts_due_on(due_dates, due_until=handover_until, now=now)
        for a in batch
    ]
    history = store.history(None, since=since)
    accounts += _with_follow_ups(store, policies, history, {a.account_id for a in accounts}, now)
    return accounts, history


def _with_follow_ups(
    store: Store,
    policies: PolicySet,
    history: dict[str, AccountHistory],
    loaded: set[str],
    now: datetime,
) -> list[Account]:
    """Accounts with a promise (pending or recently broken) that no DPD rule brought in: a
    broken-promise rule may fire for them on any day."""
    if not any(follow_up_rules(policies, p) for p in policies.policies):
        return []
    wanted = {key for key, h in history.items() if h.promises and key not in loaded}
    found = store.accounts_by_id(wanted, now=now)
    return [
        found[key]
        for key in sorted(found)
        if found[key].status is AccountStatus.ACTIVE and not found[key].paid_in_full
    ]


def plan_under(
    store: Store, policies: PolicySet, horizon: Horizon, now: datetime
) -> tuple[list[Account], Plan]:
    """The accounts ``policies`` would plan in ``horizon`` and their plan (reads the store,
    writes nothing): the dry-run's work, for ``policy diff``, ``forecast`` and reloads."""
    accounts, history = load_for_plan(store, policies, horizon, now, None)
    return accounts, plan(now, accounts, history, policies, horizon)


def compare_policies(
    store: Store, old: PolicySet, new: PolicySet, horizon: Horizon, now: datetime
) -> PlanDiff:
    """The plan of ``horizon`` under ``old`` versus under ``new`` (and their key changes).
    Each side reads the accounts and history its own policies need."""
    _, before = plan_under(store, old, horizon, now)
    _, after = plan_under(store, new, horizon, now)
    return diff_plans(before, after, policy_changes=diff_policies(old, new))
