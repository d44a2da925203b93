"""Case work in the store: outcomes, promises, notes, the audit trail, hand-over, reports.

``CaseFile(store)`` works on ``store``'s tables the way ``ContactQueue`` does for the queue.
Decisions are made elsewhere (``policies.outcomes`` says what an outcome changes, the
planner what a promise holds); this module writes them down, each with its audit events,
in one transaction.

Every write records an audit event carrying the policy version in force and the rule that
asked for the contact (when there is one). Audit events are read back in time order, then
id: ``remind audit`` shows them as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from policies import PolicySet
from policies.outcomes import OutcomeEffects
from policies.rules import promise_state
from scheduler.models import (
    Account,
    AccountStatus,
    CaseNote,
    Channel,
    Outcome,
    OutcomeRecord,
    Promise,
    PromiseStatus,
)
from scheduler.store import Store, db_errors, require_aware
from scheduler.tables import (
    account_flags,
    accounts,
    audit_log,
    contacts,
    notes,
    outcomes,
    promises,
)

__all__ = [
    "MANUAL_RULE",
    "AuditEvent",
    "CallTask",
    "CaseFile",
    "ContactReport",
    "Recorded",
    "manual_contact_id",
]

#: The rule name of a call recorded by hand that no rule planned.
MANUAL_RULE = "manual"


class Recorded(StrEnum):
    """What became of one outcome handed to ``CaseFile.record_outcomes``."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # the same outcome is already recorded: nothing changed
    NO_TASK = "no_task"  # the named call task is unknown, or already has an outcome


@dataclass(frozen=True, slots=True)
class CallTask:
    """A call task as an outcome needs it: whose it is, which rule asked, to whom."""

    contact_id: str
    account_id: str
    rule: str
    target: str
    channel: Channel
    has_outcome: bool


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the audit log, as ``remind audit`` shows it."""

    id: int
    at: datetime
    kind: str
    account_id: str | None
    contact_id: str | None
    rule: str | None
    channel: str | None
    policy_version: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContactReport:
    """``remind report contacts``: volumes and rates over performed contacts in a period.

    ``right_party_rate``: borrower calls that reached the borrower / borrower calls with a
    recorded result. ``promise_rate``: promises / right-party contacts. ``kept_rate``:
    kept / (kept + broken) of the promises made in the period. ``None`` when nothing to
    divide by."""

    start: datetime
    end: datetime
    by_channel: Mapping[str, int]
    by_rule: Mapping[tuple[str, str], int]
    by_outcome: Mapping[tuple[str, str], int]
    call_results: int
    right_party: int
    promises: int
    kept: int
    broken: int

    @staticmethod
    def _rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    @property
    def right_party_rate(self) -> float | None:
        return self._rate(self.right_party, self.call_results)

    @property
    def promise_rate(self) -> float | None:
        return self._rate(self.promises, self.right_party)

    @property
    def kept_rate(self) -> float | None:
        return self._rate(self.kept, self.kept + self.broken)


def manual_contact_id(record: OutcomeRecord) -> str:
    """The stable id of the contact row a call recorded by hand (no task) gets."""
    raw = "\x1f".join(
        (record.account_id, record.at.isoformat(), record.channel.value, record.target,
         record.result.value)
    )  # fmt: skip
    return "m" + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


_C = contacts.c
_O = outcomes.c
_P = promises.c
_A = audit_log.c


class CaseFile:
    """Case-work reads and writes on ``store`` (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine
        self._writer = store.writer

    # -- outcomes --

    def call_task(self, contact_id: str) -> CallTask | None:
        """The call task ``contact_id`` (queued for agents or dialled), or ``None``."""
        stmt = sa.select(_C.contact_id, _C.account_id, _C.rule, _C.target, _C.channel,
                         _C.outcome, _C.status).where(_C.contact_id == contact_id)  # fmt: skip
        with db_errors("cannot read the call task"), self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None or row.channel != Channel.CALL.value or row.status != "sent":
            return None
        return CallTask(row.contact_id, row.account_id, row.rule, row.target,
                        Channel(row.channel), row.outcome is not None)  # fmt: skip

    def record_outcomes(
        self,
        items: Sequence[tuple[OutcomeRecord, Account, OutcomeEffects]],
        *,
        now: datetime,
        policy_version: str,
    ) -> list[Recorded]:
        """Record each outcome with its effects, all in one transaction; returns what
        became of each, in order.

        An outcome naming a call task (``contact_id``) settles that task (once: a task with
        an outcome gives ``NO_TASK``). A call without a task is recorded as a performed
        contact of rule ``manual`` so the caps count it. Then: the ``outcomes`` row (the
        same account, time, channel, target and result twice gives ``DUPLICATE`` and
        changes nothing), the promise, the flags, the phone marked invalid (only while the
        account still has that number), and audit events for each. Raises ``StoreError``
        (then nothing is recorded)."""
        require_aware(now, "now")
        done: list[Recorded] = []
        with db_errors("cannot record the outcome"), self._writer.begin() as conn:
            for record, account, effects in items:
                require_aware(record.at, "record.at")
                done.append(self._record(conn, record, account, effects, now, policy_version))
        return done

    def _record(
        self,
        conn: Connection,
        record: OutcomeRecord,
        account: Account,
        effects: OutcomeEffects,
        now: datetime,
        version: str,
    ) -> Recorded:
        row = _outcome_row(record, now, version)
        inserted = conn.execute(_insert_new(conn, outcomes, "uq_outcomes_event").returning(_O.id),
                                row).first()  # fmt: skip
        if inserted is None:
            return Recorded.DUPLICATE
        if record.contact_id is not None:
            settled = conn.execute(
                contacts.update()
                .where(_C.contact_id == record.contact_id, _C.channel == Channel.CALL.value,
                       _C.status == "sent", _C.outcome.is_(None))
                .values(outcome=record.result.value, performed_at=record.at,
                        lease_owner=None, lease_until=None, updated_at=now)
            ).rowcount  # fmt: skip
            if not settled:
                conn.execute(outcomes.delete().where(_O.id == inserted.id))
                return Recorded.NO_TASK
        elif record.channel is Channel.CALL:
            conn.execute(
                _insert_new(conn, contacts, None), _manual_row(record, account, now, version)
            )
        base = {
            "at": record.at, "account_id": record.account_id, "contact_id": record.contact_id,
            "rule": record.rule, "channel": record.channel.value, "policy_version": version,
        }  # fmt: skip
        events = [{**base, "kind": "outcome", "detail": _json(_outcome_detail(record, effects))}]
        events += self._apply(conn, record, account, effects, base, now)
        conn.execute(audit_log.insert(), events)
        return Recorded.RECORDED

    @staticmethod
    def _apply(
        conn: Connection,
        record: OutcomeRecord,
        account: Account,
        effects: OutcomeEffects,
        base: Mapping[str, Any],
        now: datetime,
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if effects.promise is not None:
            p = effects.promise
            conn.execute(promises.insert(), {
                "account_id": p.account_id, "amount": p.amount, "promised_date": p.promised_date,
                "status": PromiseStatus.PENDING.value, "paid_before": p.paid_before,
                "created_at": record.at, "closed_at": None,
            })  # fmt: skip
            made = {"amount": str(p.amount), "promised_date": p.promised_date.isoformat(),
                    "paid_before": str(p.paid_before)}  # fmt: skip
            events.append({**base, "kind": "promise_made", "detail": _json(made)})
        for change in effects.flags:
            conn.execute(_insert_new(conn, account_flags, None), {
                "account_id": record.account_id, "flag": change.flag.value,
                "since": change.since, "until": change.until,
                "source": f"outcome:{record.result.value}", "note": record.note,
            })  # fmt: skip
            until = change.until.isoformat() if change.until else None
            flag = {"flag": change.flag.value, "until": until}
            events.append({**base, "kind": "flag_set", "detail": _json(flag)})
        if effects.phone_invalid:
            changed = conn.execute(
                accounts.update()
                .where(accounts.c.account_id == record.account_id,
                       accounts.c.phone == effects.phone_invalid)
                .values(phone_valid=False, updated_at=now)
            ).rowcount  # fmt: skip
            if changed:
                events.append({**base, "kind": "phone_invalid", "detail": _json({})})
        if effects.removed_contact:
            removed = {"target": effects.removed_contact}
            events.append({**base, "kind": "third_party_removed", "detail": _json(removed)})
        return events

    # -- promises --

    def settle_promises(
        self, policies: PolicySet, *, now: datetime, policy_version: str
    ) -> tuple[int, int]:
        """Close pending promises that are kept (paid) or broken (past date + grace) on
        each borrower's own today; returns (kept, broken). Each gets an audit event."""
        require_aware(now, "now")
        stmt = sa.select(_P.id, _P.account_id, _P.amount, _P.promised_date, _P.paid_before).where(
            _P.status == PromiseStatus.PENDING.value
        )
        with db_errors("cannot read promises"), self._engine.connect() as conn:
            pending = list(conn.execute(stmt))
        found = self._store.accounts_by_id({r.account_id for r in pending}, now=now)
        closed: list[tuple[Any, PromiseStatus]] = []
        for row in pending:
            account = found.get(row.account_id)
            if account is None:
                continue
            promise = Promise(row.account_id, row.amount, row.promised_date,
                              paid_before=row.paid_before)  # fmt: skip
            rules = policies.for_product(account.product).suppressions
            today = _local_today(now, account)
            state = promise_state(promise, account, today, rules)
            if state is not PromiseStatus.PENDING:
                closed.append((row, state))
        if not closed:
            return 0, 0
        with db_errors("cannot close promises"), self._writer.begin() as conn:
            for row, state in closed:
                conn.execute(promises.update().where(_P.id == row.id)
                             .values(status=state.value, closed_at=now))  # fmt: skip
            conn.execute(audit_log.insert(), [
                {"at": now, "kind": f"promise_{state.value}", "account_id": row.account_id,
                 "contact_id": None, "rule": None, "channel": None,
                 "policy_version": policy_version,
                 "detail": _json({"amount": str(row.amount),
                                  "promised_date": row.promised_date.isoformat()})}
                for row, state in closed
            ])  # fmt: skip
        kept = sum(1 for _, s in closed if s is PromiseStatus.KEPT)
        return kept, len(closed) - kept

    # -- notes --

    def add_note(self, note: CaseNote) -> None:
        """Record a case note and its audit event. Raises ``StoreError`` (unknown account)."""
        require_aware(note.at, "note.at")
        with db_errors("cannot record the note"), self._writer.begin() as conn:
            conn.execute(notes.insert(), {"account_id": note.account_id, "at": note.at,
                                          "text": note.text, "author": note.author})  # fmt: skip
            conn.execute(audit_log.insert(), {
                "at": note.at, "kind": "note", "account_id": note.account_id,
                "contact_id": None, "rule": None, "channel": None, "policy_version": None,
                "detail": _json({"text": note.text, "author": note.author}),
            })  # fmt: skip

    def notes(self, account_id: str) -> list[CaseNote]:
        """The account's case notes, oldest first."""
        n = notes.c
        stmt = (
            sa.select(n.account_id, n.at, n.text, n.author)
            .where(n.account_id == account_id)
            .order_by(n.at, n.id)
        )
        with db_errors("cannot read notes"), self._engine.connect() as conn:
            return [CaseNote(r.account_id, r.at, r.text, r.author) for r in conn.execute(stmt)]

    # -- the audit trail --

    def events(self, account_id: str) -> list[AuditEvent]:
        """Every audit event of the account, by time then id."""
        stmt = sa.select(audit_log).where(_A.account_id == account_id).order_by(_A.at, _A.id)
        with db_errors("cannot read the audit log"), self._engine.connect() as conn:
            return [
                AuditEvent(r.id, r.at, r.kind, r.account_id, r.contact_id, r.rule, r.channel,
                           r.policy_version, json.loads(r.detail or "{}"))
                for r in conn.execute(stmt)
            ]  # fmt: skip

    def oldest_event(self) -> datetime | None:
        with db_errors("cannot read the audit log"), self._engine.connect() as conn:
            oldest: datetime | None = conn.scalar(sa.select(sa.func.min(_A.at)))
        return oldest

    def prune_audit(self, before: datetime) -> int:
        """Delete audit events older than ``before``; returns how many. The caller checks
        the retention (``remind db prune`` refuses anything younger)."""
        require_aware(before, "before")
        with db_errors("cannot prune the audit log"), self._writer.begin() as conn:
            return conn.execute(audit_log.delete().where(_A.at < before)).rowcount

    # -- hand-over --

    def contact_summary(self, account_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """Per account: performed contacts by channel, the last one (time, channel,
        outcome), promises made and broken."""
        found: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"contacts": Counter(), "last_at": None, "last": "", "promises": 0,
                     "broken": 0}
        )  # fmt: skip
        ids = sorted(account_ids)
        with db_errors("cannot read contacts"), self._engine.connect() as conn:
            for start in range(0, len(ids), 5_000):
                part = ids[start : start + 5_000]
                stmt = (
                    sa.select(_C.account_id, _C.channel, _C.performed_at, _C.outcome, _C.status)
                    .where(_C.account_id.in_(part), _C.performed_at.is_not(None))
                    .order_by(_C.account_id, _C.performed_at)
                )
                for r in conn.execute(stmt):
                    entry = found[r.account_id]
                    entry["contacts"][r.channel] += 1
                    entry["last_at"] = r.performed_at
                    entry["last"] = f"{r.channel} {r.outcome or r.status}"
                made = sa.select(_P.account_id, _P.status).where(_P.account_id.in_(part))
                for account_id, status in conn.execute(made):
                    found[account_id]["promises"] += 1
                    found[account_id]["broken"] += status == PromiseStatus.BROKEN.value
        return dict(found)

    def hand_over(
        self, handed: Iterable[tuple[str, Mapping[str, Any]]], *, now: datetime,
        policy_version: str, file: str,
    ) -> int:  # fmt: skip
        """Set each still-active account to ``handed_over`` (no further automated contact)
        with an audit event; returns how many changed."""
        require_aware(now, "now")
        changed = 0
        with db_errors("cannot hand accounts over"), self._writer.begin() as conn:
            for account_id, detail in handed:
                n = conn.execute(
                    accounts.update()
                    .where(accounts.c.account_id == account_id,
                           accounts.c.status == AccountStatus.ACTIVE.value)
                    .values(status=AccountStatus.HANDED_OVER.value, updated_at=now)
                ).rowcount  # fmt: skip
                if n:
                    changed += n
                    conn.execute(audit_log.insert(), {
                        "at": now, "kind": "handed_over", "account_id": account_id,
                        "contact_id": None, "rule": None, "channel": None,
                        "policy_version": policy_version,
                        "detail": _json({**detail, "file": file}),
                    })  # fmt: skip
        return changed

    def overdue_accounts(self, due_on_or_before: date, *, now: datetime) -> list[Account]:
        """Active, unpaid accounts due on or before ``due_on_or_before``."""
        where = sa.and_(
            accounts.c.status == AccountStatus.ACTIVE.value,
            accounts.c.amount_paid < accounts.c.amount_due,
            accounts.c.due_date <= due_on_or_before,
        )
        ids_stmt = sa.select(accounts.c.account_id).where(where)
        with db_errors("cannot read accounts"), self._engine.connect() as conn:
            ids = [r[0] for r in conn.execute(ids_stmt)]
        found = self._store.accounts_by_id(ids, now=now)
        return [found[i] for i in sorted(found)]

    # -- reports --

    def contact_report(self, start: datetime, end: datetime) -> ContactReport:
        """Contacts performed in ``[start, end)`` (see ``ContactReport``)."""
        require_aware(start, "start")
        require_aware(end, "end")
        performed = sa.and_(_C.performed_at >= start, _C.performed_at < end)
        result = sa.func.coalesce(_C.outcome, _C.status)
        with db_errors("cannot read contacts"), self._engine.connect() as conn:
            by_channel: dict[str, int] = {ch: n for ch, n in conn.execute(
                sa.select(_C.channel, sa.func.count()).where(performed)
                .group_by(_C.channel))}  # fmt: skip
            by_rule = {(ch, rule): n for ch, rule, n in conn.execute(
                sa.select(_C.channel, _C.rule, sa.func.count()).where(performed)
                .group_by(_C.channel, _C.rule))}  # fmt: skip
            by_outcome = {(ch, res): n for ch, res, n in conn.execute(
                sa.select(_C.channel, result, sa.func.count()).where(performed)
                .group_by(_C.channel, result))}  # fmt: skip
            in_period = sa.and_(_O.at >= start, _O.at < end)
            results = {res: n for res, n in conn.execute(
                sa.select(_O.result, sa.func.count())
                .where(in_period, _O.target == "borrower", _O.channel == Channel.CALL.value)
                .group_by(_O.result))}  # fmt: skip
            made = sa.and_(_P.created_at >= start, _P.created_at < end)
            promise_counts = {st: n for st, n in conn.execute(
                sa.select(_P.status, sa.func.count()).where(made).group_by(_P.status))}  # fmt: skip
        reached = sum(n for res, n in results.items() if Outcome(res).reached_borrower)
        return ContactReport(
            start, end, by_channel, by_rule, by_outcome,
            call_results=sum(results.values()), right_party=reached,
            promises=results.get(Outcome.PROMISE.value, 0),
            kept=promise_counts.get(PromiseStatus.KEPT.value, 0),
            broken=promise_counts.get(PromiseStatus.BROKEN.value, 0),
        )  # fmt: skip


# --- rows -------------------------------------------------------------------------------


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, default=str, ensure_ascii=False)


def _local_today(now: datetime, account: Account) -> date:
    return now.astimezone(ZoneInfo(account.zone)).date()


def _insert_new(conn: Connection, table: sa.Table, index: str | None) -> Any:
    """INSERT that does nothing when the row (by primary key, or ``index``) exists."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    if index is None:
        return stmt.on_conflict_do_nothing()
    columns = next(i for i in table.indexes if i.name == index).columns
    return stmt.on_conflict_do_nothing(index_elements=list(columns))


def _outcome_row(record: OutcomeRecord, now: datetime, version: str) -> dict[str, Any]:
    return {
        "account_id": record.account_id, "at": record.at, "channel": record.channel.value,
        "result": record.result.value, "target": record.target, "number": record.number,
        "contact_id": record.contact_id, "rule": record.rule,
        "promise_amount": record.promise_amount, "promise_date": record.promise_date,
        "note": record.note, "source": record.source, "policy_version": version,
        "recorded_at": now,
    }  # fmt: skip


def _manual_row(
    record: OutcomeRecord, account: Account, now: datetime, version: str
) -> dict[str, Any]:
    return {
        "contact_id": manual_contact_id(record), "account_id": record.account_id,
        "channel": record.channel.value, "rule": record.rule or MANUAL_RULE,
        "target": record.target, "due_date": account.due_date, "step": 0,
        "window_start": record.at, "window_end": record.at, "template": "", "priority": 0,
        "sla_risk": False, "status": "sent", "reason": None, "outcome": record.result.value,
        "attempts": 1, "performed_at": record.at, "policy_version": version,
        "created_at": now, "updated_at": now,
    }  # fmt: skip


def _outcome_detail(record: OutcomeRecord, effects: OutcomeEffects) -> dict[str, Any]:
    detail: dict[str, Any] = {"result": record.result.value, "target": record.target,
                              "source": record.source}  # fmt: skip
    if record.note:
        detail["note"] = record.note
    if record.promise_amount is not None:
        detail["promise_amount"] = str(record.promise_amount)
    if record.promise_date is not None:
        detail["promise_date"] = record.promise_date.isoformat()
    sentences = effects.sentences()
    if sentences:
        detail["effects"] = sentences
    return detail
