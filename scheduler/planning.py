"""What a plan needs from the store: the accounts that can have a contact in a horizon,
and as much of their history as the policies' caps and conditions look back on. Shared by
``remind dry-run``/``explain`` and the daemon's plan tick."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from policies import PolicySet
from scheduler.diff import PlanDiff, diff_plans, diff_policies
from scheduler.errors import RemindError
from scheduler.models import (
    Account,
    AccountHistory,
    Channel,
    Horizon,
    Plan,
    PlannedContact,
    Reason,
    SuppressedContact,
)
from scheduler.planner import (
    FIRST_CONTACT_SEARCH_DAYS,
    follow_up_rules,
    merge_shard_plans,
    new_planned,
    new_suppressed,
    plan,
    rules_on,
)
from scheduler.store import ALL_IDS, IdRange, Store

__all__ = [
    "collector_paused",
    "compare_policies",
    "due_dates_for",
    "history_since",
    "load_for_plan",
    "plan_from_store",
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
    store: Store,
    policies: PolicySet,
    horizon: Horizon,
    now: datetime,
    account_id: str | None,
    *,
    id_range: IdRange = ALL_IDS,
) -> tuple[list[Account], dict[str, AccountHistory]]:
    """The accounts that can have a contact in ``horizon`` (those with an account_id in
    ``id_range``), and their history: the accounts due on a date where a rule fires or
    past the hand-over line, then (when a broken-promise rule is enabled) those holding a
    promise that the due dates did not bring in (the first part in no particular order,
    the second in account_id order)."""
    since = history_since(policies, horizon.first_day)
    if account_id is not None:
        account = store.account(account_id, now=now)
        if account is None:
            raise RemindError(f"no account {account_id!r} in the store")
        return [account], store.history([account_id], since=since)
    due_dates, handover_until = due_dates_for(policies, horizon)
    accounts = [
        a
        for batch in store.accounts_due_on(
            due_dates, due_until=handover_until, now=now, id_range=id_range
        )
        for a in batch
    ]
    if any(follow_up_rules(policies, p) for p in policies.policies):
        # a broken-promise rule may fire for these on any day
        loaded = {a.account_id for a in accounts}
        accounts += store.accounts_with_promises(
            since=since, now=now, id_range=id_range, loaded=loaded
        )
    return accounts, store.history([a.account_id for a in accounts], since=since)


#: How worker processes start: "fork" (cheapest: a copy of this process; only where no
#: other threads run) or "forkserver" (from a clean server process; safe in the daemon).
ShardContext = Literal["fork", "forkserver"]

#: A shard holds at least this many accounts of the store (all statuses): below that, the
#: cost of a worker process is more than it saves. Read when planning (tests lower it).
SHARD_MIN_ACCOUNTS = 50_000


def plan_from_store(
    store: Store,
    policies: PolicySet,
    horizon: Horizon,
    now: datetime,
    *,
    workers: int = 1,
    context: ShardContext = "forkserver",
) -> tuple[int, Plan]:
    """``load_for_plan`` then ``plan`` over the whole store: the number of accounts
    considered, and the plan. With ``workers`` above 1 (and a store other processes can
    open, holding at least ``SHARD_MIN_ACCOUNTS`` accounts a shard) the accounts are cut
    into up to ``workers`` account_id ranges: this process loads and plans the first, one
    worker process (``multiprocessing`` context ``context``, its own engine) each of the
    others, and the shards' plans are merged into exactly the plan one process would make.
    Raises ``StoreError`` as the store does, and ``RemindError`` when a worker fails."""
    location = store.location
    splits: list[str] = []
    if workers > 1 and location is not None:
        splits = store.account_id_splits(workers, min_per_part=SHARD_MIN_ACCOUNTS)
    if location is None or not splits:
        with collector_paused():
            return _plan_range(store, policies, horizon, now, ALL_IDS)
    bounds: list[str | None] = [None, *splits, None]
    ranges = [(bounds[n], bounds[n + 1]) for n in range(len(bounds) - 1)]
    with _Workers(context, len(ranges)) as pool, collector_paused():
        for number, id_range in enumerate(ranges[1:], 2):
            pool.start(number, _ShardTask(location, policies, horizon, now, id_range))
        considered, first = _plan_range(store, policies, horizon, now, ranges[0])
        results = pool.results()
        return (
            considered + sum(n for n, _ in results),
            merge_shard_plans([first, *(p for _, p in results)]),
        )


def _plan_range(
    store: Store, policies: PolicySet, horizon: Horizon, now: datetime, id_range: IdRange
) -> tuple[int, Plan]:
    considered, result, _ = _load_and_plan(store, policies, horizon, now, id_range)
    return considered, result


def _load_and_plan(
    store: Store, policies: PolicySet, horizon: Horizon, now: datetime, id_range: IdRange
) -> tuple[int, Plan, object]:
    """The accounts considered and the plan of ``id_range``, and what was loaded for it (a
    worker keeps that until it exits, rather than free it object by object)."""
    accounts, history = load_for_plan(store, policies, horizon, now, None, id_range=id_range)
    return len(accounts), plan(now, accounts, history, policies, horizon), (accounts, history)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block (reference counting goes on).
    A plan's load and planning make hundreds of thousands of objects that stay alive and
    hold no cycles: the collector's passes over them freed nothing and took a third of the
    load's CPU time and a seventh of the planning's at 1M accounts (and, when a shard's plan
    went to and from its wire form outside the block, half the time of that).

    On the way out the objects alive then are frozen (``gc.freeze``) before the collector
    is switched back on: it would otherwise scan the plan at once, all of it being younger
    than its last pass (at 1M accounts a young-generation pass of 0.14 s, then a full one of
    0.29 s, both collecting nothing). They are still freed as usual when no longer used. So
    that cycles among them are not kept for ever in a long-running daemon, the next block
    thaws them and collects once before pausing (a full pass over what is alive between two
    plan ticks: 0.08 s with remind's modules loaded, 117k objects). Process-wide: in the
    daemon, other threads' cycles wait until the tick ends. A block entered with the
    collector already off (the caller's choice, or an outer block) changes nothing."""
    if not gc.isenabled():
        yield
        return
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@dataclass(frozen=True, slots=True)
class _ShardTask:
    """What a worker process needs to plan one shard (pickled to it)."""

    location: tuple[str, str | None]
    policies: PolicySet
    horizon: Horizon
    now: datetime
    id_range: IdRange


def _plan_shard(task: _ShardTask) -> tuple[int, Plan, object]:
    """A worker's work: open the store on its own engine, load and plan its shard."""
    url, schema = task.location
    store = Store.open(url, schema=schema, check_schema=False)
    try:
        return _load_and_plan(store, task.policies, task.horizon, task.now, task.id_range)
    finally:
        store.close()


#: A plan's contacts as plain tuples (enum members as their values) for the way back from
#: a worker: pickling the frozen dataclasses and enum members field by field cost several
#: times more than rebuilding them from tuples. They go in parts of ``_PART`` contacts, so
#: that this process rebuilds one part while the worker pickles the next.
_PART = 20_000
_CHANNELS = {c.value: c for c in Channel}
_REASONS = {r.value: r for r in Reason}


def _planned_rows(contacts: Sequence[PlannedContact]) -> list[tuple[Any, ...]]:
    return [
        (c.contact_id, c.account_id, c.channel.value, c.rule, c.target, c.due_date, c.step,
         c.window_start, c.window_end, c.template, c.priority, c.sla_risk, c.note)
        for c in contacts
    ]  # fmt: skip


def _suppressed_rows(contacts: Sequence[SuppressedContact]) -> list[tuple[Any, ...]]:
    return [
        (s.account_id, s.channel.value, s.rule, s.target, s.window_start, s.window_end,
         s.reason.value, s.detail, s.contact_id)
        for s in contacts
    ]  # fmt: skip


def _planned_from(rows: list[tuple[Any, ...]]) -> list[PlannedContact]:
    channels = _CHANNELS
    return [
        new_planned(cid, aid, channels[ch], rule, target, due, step, start, end, tpl, priority,
                    risk, note)
        for cid, aid, ch, rule, target, due, step, start, end, tpl, priority, risk, note in rows
    ]  # fmt: skip


def _suppressed_from(rows: list[tuple[Any, ...]]) -> list[SuppressedContact]:
    channels, reasons = _CHANNELS, _REASONS
    return [
        new_suppressed(aid, channels[ch], rule, target, start, end, reasons[reason], detail,
                       cid)
        for aid, ch, rule, target, start, end, reason, detail, cid in rows
    ]  # fmt: skip


def _send_plan(conn: Connection, considered: int, result: Plan) -> None:
    """``result`` to the parent: ``("planned", rows)`` and ``("suppressed", rows)`` parts,
    then ``("done", considered, handover)``. A thread writes them to the pipe, so that the
    parts are pickled while the parent still plans its own shard, instead of one at a time
    as the parent reads them."""
    parts: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_parts, args=(conn, parts), name="remind-plan-send")
    sender.start()
    try:
        for start in range(0, len(result.planned), _PART):
            rows = _planned_rows(result.planned[start : start + _PART])
            parts.put(pickle.dumps(("planned", rows), pickle.HIGHEST_PROTOCOL))
        for start in range(0, len(result.suppressed), _PART):
            rows = _suppressed_rows(result.suppressed[start : start + _PART])
            parts.put(pickle.dumps(("suppressed", rows), pickle.HIGHEST_PROTOCOL))
        parts.put(pickle.dumps(("done", considered, result.handover), pickle.HIGHEST_PROTOCOL))
    finally:
        parts.put(None)
        sender.join()


def _send_parts(conn: Connection, parts: queue.SimpleQueue[bytes | None]) -> None:
    while (data := parts.get()) is not None:
        conn.send_bytes(data)


def _shard_main(conn: Connection, task: _ShardTask) -> None:
    """A worker process's entry point: send back its plan (``_send_plan``) or
    ``("error", exc)``. Once the plan is sent the process ends at once (``os._exit``):
    freeing its load and plan object by object took a tenth of a second at 1M accounts,
    while the parent waited to merge; its store is closed by then, and it has nothing else
    to clean up."""
    try:
        with collector_paused():
            considered, result, _loaded = _plan_shard(task)  # kept until os._exit
            _send_plan(conn, considered, result)
    except BaseException as exc:  # every failure goes back to the parent, which raises it
        failure: BaseException = exc
        try:
            pickle.dumps(exc)
        except Exception:
            failure = RemindError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", failure))
        conn.close()
        return
    conn.close()
    os._exit(0)


class _Workers:
    """The worker processes of one sharded plan. Leaving the block ends any still running
    (after a failure in this process), so nothing is left behind and nothing hangs."""

    def __init__(self, context: ShardContext, shards: int) -> None:
        self._context: ForkContext | ForkServerContext
        if context == "fork":
            self._context = multiprocessing.get_context("fork")
        else:
            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(["scheduler.planning"])
        self._shards = shards
        self._running: list[tuple[int, BaseProcess, Connection]] = []

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _, process, conn in self._running:
            conn.close()
            if process.is_alive():
                process.terminate()
            process.join()

    def start(self, number: int, task: _ShardTask) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_shard_main, args=(sender, task), name=f"remind-plan-shard-{number}"
        )
        process.start()
        sender.close()  # only the worker holds the sending end now: EOF here when it is gone
        self._running.append((number, process, receiver))

    def results(self) -> list[tuple[int, Plan]]:
        """Each worker's result, in shard order; raises the first failure."""
        return [self._receive(number, process, conn) for number, process, conn in self._running]

    def _receive(self, number: int, process: BaseProcess, conn: Connection) -> tuple[int, Plan]:
        planned: list[PlannedContact] = []
        suppressed: list[SuppressedContact] = []
        while True:
            try:
                message = conn.recv()
            except EOFError:
                process.join()
                raise RemindError(
                    f"planner worker for shard {number} of {self._shards} died "
                    f"(exit code {process.exitcode}) before sending its plan"
                ) from None
            kind = message[0]
            if kind == "planned":
                planned += _planned_from(message[1])
            elif kind == "suppressed":
                suppressed += _suppressed_from(message[1])
            elif kind == "done":
                return message[1], Plan(tuple(planned), tuple(suppressed), message[2])
            else:
                raise message[1]


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
