"""One tick of dispatch for one channel: claim, re-check, render, send, record.

``Dispatcher.dispatch(kind)`` repeats, until nothing is due or it is told to stop:

1. **claim** a batch of due contacts of that channel with a lease (``ContactQueue``);
2. **re-check** each against fresh account state and history by re-planning the account at
   ``now`` (``recheck``): the same precedence as the plan, so a borrower who paid, was
   flagged, reached a cap or entered quiet hours since planning is recorded as skipped (or
   missed, or moved to its next allowed time) and never sent;
3. **render** its template and **send** it through the channel's adapter, on a bounded pool
   of worker threads per channel (a slow provider never blocks another channel) and under
   the provider's rate; short in-process retries with tenacity;
4. **record** every outcome and release the lease in one transaction per batch.

A crash anywhere leaves claimed rows whose lease expires (or, on single-instance SQLite, are
released at the next start); they are sent again with the same contact id, which the
provider sees as the idempotency key.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from channels.base import Channel as Adapter
from channels.base import Message, Receipt
from policies import PolicySet
from policies.rules import Hold
from scheduler.errors import (
    ChannelError,
    PermanentChannelError,
    RemindError,
    TransientChannelError,
)
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
from scheduler.planner import first_contact_catch_up, plan, plan_account, sla_deadline
from scheduler.planning import history_since
from scheduler.queue import ContactQueue, QueuedContact, Settlement
from scheduler.render import Templates, context_for
from scheduler.store import Store

__all__ = [
    "Dispatcher",
    "Lane",
    "Recheck",
    "RetrySettings",
    "Rulebook",
    "compute_backoff",
    "next_dispatch",
    "plans_for_today",
    "recheck",
]

log = structlog.get_logger("remind.dispatch")

_NO_HISTORY = AccountHistory()
_MISSED_REASONS = frozenset({Reason.WINDOW_PASSED, Reason.NO_ALLOWED_TIME})


# --- pure parts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How often and how soon a transient failure is tried again.

    ``short_retries`` happen in the worker thread (tenacity, exponential backoff with jitter
    up to ``short_max_wait_seconds``, or the provider's ``Retry-After`` when it is no longer
    than that). After them the contact goes back to the table with its attempt count and a
    next attempt ``compute_backoff`` later, so retries survive restarts; at ``max_attempts``
    it is ``failed``."""

    max_attempts: int = 5
    short_retries: int = 2
    short_max_wait_seconds: float = 5.0
    base_seconds: float = 60.0
    max_seconds: float = 3600.0


def next_dispatch(after: float, every: float) -> float:
    """The first instant later than ``after`` on the dispatch grid (both in seconds since
    the epoch): the multiples of ``every`` seconds since 1970-01-01 UTC. Every dispatching
    process (daemons, their children, on any host with a synced clock) ticks on it, so
    contacts coming due together, at a window's start, are claimed by all of them at once
    rather than up to ``every`` seconds apart."""
    return (math.floor(after / every) + 1) * every


def compute_backoff(
    attempts: int, *, base_seconds: float, max_seconds: float, jitter: float = 0.0
) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: ``base * 2**(n-1)``,
    capped at ``max_seconds``, then shortened by up to ``jitter`` (0..1) of itself so that
    many contacts failing together do not come back together."""
    if attempts < 1:
        return 0.0
    delay: float = min(max_seconds, base_seconds * 2.0 ** min(attempts - 1, 32))
    return delay * (1.0 - max(0.0, min(jitter, 1.0)) / 2)


@dataclass(frozen=True, slots=True)
class Recheck:
    """What the re-check says to do with a claimed contact: ``send`` it now, ``move`` it to
    ``window`` (its next allowed time), record it ``skip``ped or ``missed`` with ``reason``."""

    action: str
    reason: Reason | None = None
    detail: str = ""
    window: tuple[datetime, datetime] | None = None


def recheck(
    now: datetime,
    contact: QueuedContact,
    account: Account | None,
    history: AccountHistory,
    policies: PolicySet,
    today_plan: Plan | None = None,
) -> Recheck:
    """Re-plan ``account`` for its borrower-local today and tomorrow at ``now`` and find
    ``contact`` in the result (ids are stable: the same one if the plan still wants it).
    ``today_plan``: the account's plan for its today at ``now``, when the caller made it
    already (``plans_for_today``, a batch at once).

    Planned and open now: send. Planned later (quiet hours began, a cap gap, a retry after
    the first allowed time): move. Suppressed: skip with the plan's reason, or missed when
    the reason is that no allowed time is left. A first-24h contact that came up late (its
    window passed: downtime, a provider down all afternoon) goes at its next allowed time
    (``first_contact_catch_up``) unless another first-24h contact of the account is still
    planned later (the call's SMS fallback); any other contact absent from the plan is
    missed if its window is over, else skipped ``not_due`` (no longer asked for)."""
    if account is None:
        return Recheck("skip", Reason.CLOSED, "the account is no longer in the store")
    today = now.astimezone(ZoneInfo(account.zone)).date()
    # Today's plan settles most contacts. One it holds for want of time may still be
    # planned tomorrow (a first-24h contact with no allowed time at all today moves to
    # tomorrow's first allowed time, and must be recognised as moved, not missed), so then
    # today and tomorrow are planned; days are planned in order, so today's part is the same.
    result = today_plan
    if result is None:
        result = plan_account(now, account, history, policies, Horizon(today))
    found = _find(contact, now, result)
    if found is None or found.action == "missed":
        result = plan_account(now, account, history, policies, Horizon(today, 2))
        found = _find(contact, now, result)
    if found is not None and (found.action != "missed" or _covered(contact, result, policies)):
        return found
    late = first_contact_catch_up(now, account, history, policies, contact.rule, contact.target)
    if isinstance(late, Hold):
        return Recheck("skip", late.reason, late.sentence)
    if late is not None:
        action = "send" if late[0] <= now else "move"
        return Recheck(action, window=late, detail="first-24h contact made late (catch-up)")
    if found is not None:
        return found
    if contact.window_end <= now:
        return Recheck("missed", Reason.WINDOW_PASSED, "its window ended before it was sent")
    return Recheck("skip", Reason.NOT_DUE, "the policy no longer asks for this contact today")


def plans_for_today(
    now: datetime,
    accounts: Iterable[Account],
    history: Mapping[str, AccountHistory],
    policies: PolicySet,
) -> dict[str, Plan]:
    """Each account's plan for its borrower-local today at ``now``, by account id: what
    ``recheck`` plans for it, made with one ``plan`` per local day, so that accounts alike
    (no history, same due date, zone, product...) are planned once and an account with
    several contacts in a batch once, not once a contact."""
    by_day: dict[date, list[Account]] = {}
    for account in accounts:
        by_day.setdefault(now.astimezone(ZoneInfo(account.zone)).date(), []).append(account)
    plans: dict[str, Plan] = {}
    for today, group in by_day.items():
        result = plan(now, group, history, policies, Horizon(today))
        planned: dict[str, list[PlannedContact]] = {}
        suppressed: dict[str, list[SuppressedContact]] = {}
        for c in result.planned:
            planned.setdefault(c.account_id, []).append(c)
        for s in result.suppressed:
            suppressed.setdefault(s.account_id, []).append(s)
        handover = set(result.handover)
        for account in group:
            aid = account.account_id
            plans[aid] = Plan(
                tuple(planned.get(aid, ())),
                tuple(suppressed.get(aid, ())),
                (aid,) if aid in handover else (),
            )
    return plans


def _covered(contact: QueuedContact, result: Plan, policies: PolicySet) -> bool:
    """Whether ``result`` still plans another first-24h contact of the same due date, so
    missing ``contact`` leaves the first contact to it."""
    rules = first_contact_rules(policies)
    if contact.rule not in rules:
        return True
    return any(
        p.rule in rules and p.contact_id != contact.contact_id and p.due_date == contact.due_date
        for p in result.planned
    )


def _find(contact: QueuedContact, now: datetime, result: Plan) -> Recheck | None:
    for planned in result.planned:
        if planned.contact_id == contact.contact_id:
            if planned.window_start <= now:
                return Recheck("send", window=(planned.window_start, planned.window_end))
            return Recheck("move", window=(planned.window_start, planned.window_end))
    for held in result.suppressed:
        if held.contact_id == contact.contact_id:
            action = "missed" if held.reason in _MISSED_REASONS else "skip"
            return Recheck(action, held.reason, held.detail)
    return None


def recipient(contact: QueuedContact, account: Account) -> str | None:
    """Where the message goes: the emergency contact's number, or the borrower's phone
    (SMS, call), email, or account (letters go to the address on file)."""
    if contact.target != "borrower":
        return contact.target
    if contact.channel in (Channel.SMS, Channel.CALL):
        return account.phone
    if contact.channel is Channel.EMAIL:
        return account.email
    return account.account_id


# --- the shell ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rulebook:
    """The policies and templates in force; the daemon swaps the whole object on reload."""

    policies: PolicySet
    templates: Templates
    lender_name: str

    @property
    def version(self) -> str:
        """The policy version recorded with every decision: the policy files' hash and the
        templates' hash, so a wording change shows in the audit too."""
        return f"{self.policies.version}+{self.templates.version[:8]}"


class RateLimiter:
    """A token bucket: at most ``rate`` acquisitions per second, bursts of up to ``rate``."""

    def __init__(self, rate: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._tokens = rate
        self._monotonic = monotonic
        self._last = monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a token; False if ``stop`` was set while waiting."""
        while True:
            with self._lock:
                now = self._monotonic()
                self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) / self._rate
            if stop.wait(wait):
                return False


@dataclass
class Lane:
    """One channel kind's adapter with its own worker pool and rate."""

    kind: Channel
    adapter: Adapter
    concurrency: int = 4
    rate_per_second: float = 0.0
    _pool: ThreadPoolExecutor = field(init=False, repr=False)
    _limiter: RateLimiter | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"send-{self.kind}")
        self._limiter = RateLimiter(self.rate_per_second) if self.rate_per_second else None

    def submit(self, fn: Callable[[], Settlement]) -> Future[Settlement]:
        return self._pool.submit(fn)

    def throttle(self, stop: threading.Event) -> bool:
        return self._limiter.acquire(stop) if self._limiter else True

    def close(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
        close = getattr(self.adapter, "close", None)
        if callable(close):
            close()


@dataclass
class _Batch:
    """One claimed batch between ``_start`` and ``_finish``."""

    book: Rulebook
    settled: list[Settlement] = field(default_factory=list)
    sending: list[Future[Settlement]] = field(default_factory=list)


class _Stopped(Exception):
    """Raised in a worker when shutdown began before its send started."""


class Dispatcher:
    """Dispatches due contacts for each channel kind through its ``Lane``.

    Parts are passed in: the store, the lanes (adapters), the rulebook (a callable, so a
    reload takes effect at the next batch), the clock and this instance's owner id.
    ``stop`` is set by the daemon at shutdown: no new claims, no new sends; sends in flight
    finish and are recorded."""

    def __init__(
        self,
        *,
        store: Store,
        lanes: Mapping[Channel, Lane],
        rulebook: Callable[[], Rulebook],
        clock: Callable[[], datetime],
        owner: str,
        retry: RetrySettings = RetrySettings(),
        batch_size: int = 200,
        lease_seconds: float = 120.0,
        stop: threading.Event | None = None,
        on_settled: Callable[[Sequence[Settlement]], None] | None = None,
    ) -> None:
        self.store = store
        self.queue = ContactQueue(store)
        self.lanes = lanes
        self.rulebook = rulebook
        self.clock = clock
        self.owner = owner
        self.retry = retry
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.stop = stop or threading.Event()
        self.on_settled = on_settled
        self._jitter = random.Random()

    def dispatch(self, kind: Channel) -> int:
        """Claim and settle batches of ``kind`` until none is due or ``stop`` is set;
        returns how many contacts were settled. Raises ``StoreError``.

        Two batches overlap: while one batch's messages are on the wire and then recorded
        (on a thread of its own), the next is claimed, re-checked and rendered. A batch is
        recorded once all its sends returned; the next is handed over only after that, so
        at most two batches are claimed and not yet recorded, as many as one thread
        claiming and recording in turn would hold. (In turn, the claim and the record, both
        round trips to the store, took more than half of a daemon's time: see
        docs/performance.md.)"""
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix=f"remind-record-{kind.value}") as recorder:
            recording: Future[int] | None = None
            try:
                while not self.stop.is_set():
                    claimed = self.queue.claim_due(
                        kind, self.owner, now=self.clock(), lease_seconds=self.lease_seconds,
                        limit=self.batch_size,
                    )  # fmt: skip
                    if not claimed:
                        break
                    started = self._start(kind, claimed)
                    if recording is not None:
                        total += recording.result()
                    recording = recorder.submit(self._finish, started)
            finally:
                if recording is not None:  # recorded even when a claim failed meanwhile
                    total += recording.result()
        return total

    def run_batch(self, kind: Channel, claimed: Sequence[QueuedContact]) -> int:
        """Re-check, send and record one claimed batch; returns how many were settled.
        Contacts not sent because shutdown began stay claimed for ``release``."""
        return self._finish(self._start(kind, claimed))

    def _start(self, kind: Channel, claimed: Sequence[QueuedContact]) -> _Batch:
        """Re-check and render ``claimed``; hand the sendable ones to the lane's workers."""
        book = self.rulebook()
        now = self.clock()
        ids = {c.account_id for c in claimed}
        accounts = self.store.accounts_by_id(ids, now=now)
        history = self.store.history(ids, since=history_since(book.policies, now.date()))
        plans = plans_for_today(now, accounts.values(), history, book.policies)
        batch = _Batch(book)
        lane = self.lanes[kind]
        for contact in claimed:
            aid = contact.account_id
            account = accounts.get(aid)
            verdict = recheck(
                now, contact, account, history.get(aid, _NO_HISTORY), book.policies, plans.get(aid)
            )
            if verdict.action != "send" or account is None:
                batch.settled.append(self._not_sent(contact, verdict, now))
                continue
            try:
                message = self._message(book, contact, account, now)
            except RemindError as exc:
                batch.settled.append(
                    self._failed(contact, contact.attempts, Reason.RENDER_ERROR, exc)
                )
                continue
            batch.sending.append(lane.submit(partial(self._send, lane, contact, account, message)))
        return batch

    def _finish(self, batch: _Batch) -> int:
        """Wait for the batch's sends and record every outcome in one transaction."""
        for future in batch.sending:
            try:
                batch.settled.append(future.result())
            except _Stopped:
                continue
        return self._record(batch.settled, batch.book)

    # -- steps --

    def _message(
        self, book: Rulebook, contact: QueuedContact, account: Account, now: datetime
    ) -> Message:
        to = recipient(contact, account)
        if not to:
            raise RemindError(f"no {contact.channel} address for the account")
        language = book.templates.language_for(account.language)
        local_today = now.astimezone(ZoneInfo(account.zone)).date()
        context = context_for(
            account, lender_name=book.lender_name, rule_id=contact.rule,
            now_local_date=local_today, language=language,
        )  # fmt: skip
        rendered = book.templates.render(contact.template, contact.channel, language, context)
        return Message(
            contact_id=contact.contact_id,
            account_id=contact.account_id,
            kind=contact.channel,
            to=to,
            body=rendered.text,
            subject=rendered.subject,
            html=rendered.html,
            window_start=contact.window_start,
            window_end=contact.window_end,
            priority=contact.priority,
            meta={"rule": contact.rule, "language": language},
        )

    def _send(
        self, lane: Lane, contact: QueuedContact, account: Account, message: Message
    ) -> Settlement:
        if self.stop.is_set() or not lane.throttle(self.stop):
            raise _Stopped
        tries = [contact.attempts]

        def attempt() -> Receipt:
            tries[0] += 1
            return lane.adapter.send(message)

        try:
            try:
                receipt = attempt()
            except TransientChannelError as first:
                # tenacity takes over once a send failed (most succeed at once)
                if not self.retry.short_retries or not self._retry_now(first):
                    raise
                self._pause(self._wait_seconds(first, 1))
                if self.stop.is_set():
                    raise
                receipt = self._retrying()(attempt)
        except PermanentChannelError as exc:
            return self._failed(contact, tries[0], Reason.PERMANENT_FAILURE, exc)
        except TransientChannelError as exc:
            return self._retry_later(contact, tries[0], exc)
        except ChannelError as exc:  # an adapter's own subclass: treat as permanent
            return self._failed(contact, tries[0], Reason.PERMANENT_FAILURE, exc)
        return self._sent(contact, account, tries[0], receipt)

    def _retry_now(self, exc: BaseException) -> bool:
        """Whether a failed send is worth retrying in process: transient, not shutting down,
        and not asked to wait longer than the short retries do."""
        if not isinstance(exc, TransientChannelError) or self.stop.is_set():
            return False
        return exc.retry_after is None or exc.retry_after <= self.retry.short_max_wait_seconds

    def _wait_seconds(self, exc: BaseException | None, failures: int) -> float:
        """The pause after ``failures`` failed sends: the provider's ``Retry-After``, else
        exponential backoff with full jitter, capped."""
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return float(after)
        ceiling = min(self.retry.short_max_wait_seconds, 0.1 * 2 ** (failures - 1))
        return self._jitter.uniform(0, ceiling)

    def _retrying(self) -> Retrying:
        """The retries after the first failed send (which already counts as an attempt)."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self._wait_seconds(exc, state.attempt_number + 1)

        return Retrying(
            retry=retry_if_exception(self._retry_now),
            stop=stop_after_attempt(self.retry.short_retries),
            wait=wait,
            sleep=self._pause,
            reraise=True,
        )

    def _pause(self, seconds: float) -> None:
        """tenacity's sleep: cut short by shutdown (the retry predicate then gives up)."""
        self.stop.wait(seconds)

    # -- settlements --

    def _sent(
        self, contact: QueuedContact, account: Account, attempts: int, receipt: Receipt
    ) -> Settlement:
        now = self.clock()
        breach = False
        if contact.sla_risk or self._first_contact(contact.rule):
            breach = now > sla_deadline(account)
        return _settled(contact, "sent", "sent", attempts, provider_ref=receipt.provider_id,
                        sla_breach=breach)  # fmt: skip

    def _not_sent(self, contact: QueuedContact, verdict: Recheck, now: datetime) -> Settlement:
        if verdict.action == "move" and verdict.window:
            return _settled(contact, "planned", "moved", contact.attempts,
                            next_attempt_at=verdict.window[0], window=verdict.window)  # fmt: skip
        status = "missed" if verdict.action == "missed" else "skipped"
        reason = verdict.reason.value if verdict.reason else None
        return _settled(contact, status, status, contact.attempts, reason=reason,
                        error=verdict.detail or None)  # fmt: skip

    def _failed(
        self, contact: QueuedContact, attempts: int, reason: Reason, exc: Exception
    ) -> Settlement:
        return _settled(contact, "failed", "failed", attempts, reason=reason.value,
                        error=str(exc)[:500])  # fmt: skip

    def _retry_later(
        self, contact: QueuedContact, attempts: int, exc: TransientChannelError
    ) -> Settlement:
        now = self.clock()
        delay = compute_backoff(
            attempts, base_seconds=self.retry.base_seconds, max_seconds=self.retry.max_seconds,
            jitter=self._jitter.random(),
        )  # fmt: skip
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        at = now + timedelta(seconds=delay)
        if attempts >= self.retry.max_attempts or at >= contact.window_end:
            return self._failed(contact, attempts, Reason.RETRIES_EXHAUSTED, exc)
        return _settled(contact, "planned", "retry", attempts, next_attempt_at=at,
                        error=str(exc)[:500])  # fmt: skip

    def _first_contact(self, rule_id: str) -> bool:
        return rule_id in first_contact_rules(self.rulebook().policies)

    def _record(self, settled: Sequence[Settlement], book: Rulebook) -> int:
        if not settled:
            return 0
        self.queue.settle(self.owner, settled, now=self.clock(), policy_version=book.version)
        for s in settled:
            log.info(
                "contact.settled", event_kind=s.event, contact_id=s.contact_id, owner=self.owner,
                account_id=s.account_id, rule=s.rule, channel=s.channel, outcome=s.status,
                reason=s.reason, attempts=s.attempts, sla_breach=s.sla_breach or None,
            )  # fmt: skip
        if self.on_settled:
            self.on_settled(settled)
        return len(settled)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()


def _settled(
    contact: QueuedContact, status: str, event: str, attempts: int, **details: Any
) -> Settlement:
    """A settlement of ``contact`` carrying its identity (id, account, rule, channel)."""
    return Settlement(
        contact.contact_id, contact.account_id, status, event, attempts,
        rule=contact.rule, channel=contact.channel.value, **details,
    )  # fmt: skip


def first_contact_rules(policies: PolicySet) -> frozenset[str]:
    """Ids of the first-24h rules of every policy (memoised on the policy set)."""
    key = ("first_contact_rules",)
    found = policies.memo.get(key)
    if not isinstance(found, frozenset):
        found = policies.memo[key] = frozenset(
            r.id for p in policies.policies for r in p.rule if r.first_contact
        )
    return found
