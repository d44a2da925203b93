"""Outcomes import: a call centre's or dialer's CSV / JSON Lines file -> recorded outcomes.

The same rules as the accounts import (``scheduler.importer``, whose file machinery this
reuses): every row is checked; bad rows go with their row number, column and reason to
``<stem>.rejects.csv`` beside the file; good rows are recorded. Importing the same file
twice records nothing new (an outcome is one account, time, channel, target and result).

Columns (``OUTCOME_COLUMNS``): ``account_id``, ``at`` (ISO 8601 with a UTC offset) and
``result`` are required; ``channel`` (default ``call``), ``target`` (``borrower``, or the
emergency contact's number), ``promise_amount`` and ``promise_date`` (for ``promise``),
``note``, ``contact_id`` (the call task it settles) and ``agent`` may be empty.
Good rows are recorded in batches of ``BATCH`` rows, one transaction each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from policies import PolicySet
from policies.outcomes import prepare_outcome
from scheduler.cases import CaseFile, Recorded
from scheduler.errors import ImportFileError
from scheduler.importer import (
    Columns,
    Rejects,
    RowProblem,
    detect_format,
    open_source,
    rejects_path_for,
)
from scheduler.models import Channel, Outcome, OutcomeRecord
from scheduler.store import Store

__all__ = ["OUTCOME_COLUMNS", "OutcomesReport", "import_outcomes", "parse_outcome"]

OUTCOME_COLUMNS = (
    "account_id", "at", "result", "channel", "target", "promise_amount", "promise_date",
    "note", "contact_id", "agent",
)  # fmt: skip
_COLUMNS = Columns(OUTCOME_COLUMNS, ("account_id", "at", "result"))
BATCH = 2_000
#: How far in the future an outcome's time may be (clocks differ a little).
_CLOCK_SKEW = timedelta(minutes=5)
_RESULTS = {o.value: o for o in Outcome}
_CHANNELS = {c.value: c for c in Channel}


@dataclass(frozen=True, slots=True)
class OutcomesReport:
    """What an outcomes import did."""

    path: Path
    rows_read: int
    recorded: int
    duplicates: int
    rejected: int
    rejects_path: Path | None
    problems: tuple[RowProblem, ...] = ()
    unknown_columns: tuple[str, ...] = ()


def parse_outcome(
    values: Mapping[str, str], *, now: datetime, source: str
) -> OutcomeRecord | list[tuple[str, str]]:
    """An ``OutcomeRecord`` from one row's text, or every ``(column, reason)`` wrong with
    it (checks that need the account come later, in ``prepare_outcome``)."""
    problems: list[tuple[str, str]] = []
    account_id = values.get("account_id", "")
    if not account_id:
        problems.append(("account_id", "required"))
    at = _instant(values.get("at", ""), now, problems)
    result = _RESULTS.get(values.get("result", "").lower())
    if result is None:
        problems.append(("result", f"unknown result {values.get('result', '')!r}"))
    channel = _CHANNELS.get((values.get("channel") or "call").lower())
    if channel is None:
        problems.append(("channel", f"unknown channel {values.get('channel')!r}"))
    amount = _amount(values.get("promise_amount", ""), problems)
    promised = _day(values.get("promise_date", ""), problems)
    if problems or at is None or result is None or channel is None:
        return problems
    agent = values.get("agent", "")
    return OutcomeRecord(
        account_id=account_id,
        at=at,
        channel=channel,
        result=result,
        target=values.get("target") or "borrower",
        contact_id=values.get("contact_id") or None,
        promise_amount=amount,
        promise_date=promised,
        note=values.get("note", ""),
        source=f"{source} agent:{agent}" if agent else source,
    )


def _instant(text: str, now: datetime, problems: list[tuple[str, str]]) -> datetime | None:
    if not text:
        problems.append(("at", "required"))
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        problems.append(("at", f"not an ISO 8601 time: {text!r}"))
        return None
    if found.tzinfo is None:
        problems.append(("at", "needs a UTC offset, e.g. 2026-11-24T10:15:00+08:00"))
        return None
    if found > now + _CLOCK_SKEW:
        problems.append(("at", "is in the future"))
        return None
    return found


def _amount(text: str, problems: list[tuple[str, str]]) -> Decimal | None:
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        problems.append(("promise_amount", f"not a number: {text!r}"))
        return None
    if not value.is_finite() or value != value.quantize(Decimal("0.0001")):
        problems.append(("promise_amount", f"not an amount with at most 4 decimals: {text!r}"))
        return None
    return value


def _day(text: str, problems: list[tuple[str, str]]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        problems.append(("promise_date", f"not a date YYYY-MM-DD: {text!r}"))
        return None


_Original = Sequence[str] | Mapping[str, Any]


@dataclass
class _Pending:
    number: int
    record: OutcomeRecord
    original: _Original


def import_outcomes(
    store: Store,
    path: Path,
    *,
    policies: PolicySet,
    policy_version: str,
    now: datetime,
    fmt: str | None = None,
) -> OutcomesReport:
    """Import ``path`` (see the module docstring). Raises ``ImportFileError`` when the file
    as a whole is unusable (nothing is then recorded) and ``StoreError``."""
    fmt = detect_format(path, fmt)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from exc
    run = _Run(store, policies, policy_version, now, f"import:{path.name}")
    with handle:
        try:
            source = open_source(handle, fmt, path.name, _COLUMNS)
            run.rejects = Rejects(rejects_path_for(path), source.columns)
            try:
                run.consume(source.records)
            finally:
                run.rejects.close()
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{path.name}: not UTF-8 text: {exc.reason}") from exc
    store.record_audit(
        "outcomes_import",
        at=now,
        policy_version=policy_version,
        detail={"file": path.name, "rows": run.rows, "recorded": run.recorded,
                "duplicates": run.duplicates, "rejected": run.rejects.count},
    )  # fmt: skip
    return OutcomesReport(
        path, run.rows, run.recorded, run.duplicates, run.rejects.count,
        run.rejects.path if run.rejects.count else None, tuple(run.rejects.shown),
        tuple(sorted(source.unknown)),
    )  # fmt: skip


class _Run:
    """One pass over a file: parse, check against the store, record in batches."""

    rejects: Rejects

    def __init__(
        self, store: Store, policies: PolicySet, version: str, now: datetime, source: str
    ) -> None:
        self.store = store
        self.cases = CaseFile(store)
        self.policies = policies
        self.version = version
        self.now = now
        self.source = source
        self.rows = self.recorded = self.duplicates = 0

    def consume(self, records: Iterator[tuple[int, Any, _Original]]) -> None:
        batch: list[_Pending] = []
        for number, values, original in records:
            self.rows += 1
            if isinstance(values, RowProblem):
                self.rejects.add(original, [values])
                continue
            parsed = parse_outcome(values, now=self.now, source=self.source)
            if isinstance(parsed, list):
                self._reject(number, original, parsed)
                continue
            batch.append(_Pending(number, parsed, original))
            if len(batch) >= BATCH:
                self._record(batch)
                batch = []
        if batch:
            self._record(batch)

    def _reject(self, number: int, original: _Original, problems: list[tuple[str, str]]) -> None:
        self.rejects.add(original, [RowProblem(number, col, why) for col, why in problems])

    def _record(self, batch: list[_Pending]) -> None:
        accounts = self.store.accounts_by_id({p.record.account_id for p in batch}, now=self.now)
        ready = []
        for item in batch:
            record = self._with_task(item)
            if record is None:
                continue
            account = accounts.get(record.account_id)
            if account is None:
                self._reject(item.number, item.original, [("account_id", "no such account")])
                continue
            policy = self.policies.for_product(account.product)
            prepared = prepare_outcome(record, account, policy)
            if isinstance(prepared, list):
                self._reject(item.number, item.original, prepared)
                continue
            ready.append((item, prepared[0], account, prepared[1]))
        done = self.cases.record_outcomes(
            [(record, account, effects) for _, record, account, effects in ready],
            now=self.now,
            policy_version=self.version,
        )
        for (item, *_), what in zip(ready, done, strict=True):
            if what is Recorded.RECORDED:
                self.recorded += 1
            elif what is Recorded.DUPLICATE:
                self.duplicates += 1
            else:
                problem = ("contact_id", "the call task already has an outcome")
                self._reject(item.number, item.original, [problem])

    def _with_task(self, item: _Pending) -> OutcomeRecord | None:
        """The record with its call task's rule and target, or None (rejected)."""
        record = item.record
        if record.contact_id is None:
            return record
        task = self.cases.call_task(record.contact_id)
        if task is None or task.account_id != record.account_id:
            problem = ("contact_id", "no call task of this account with that id")
            self._reject(item.number, item.original, [problem])
            return None
        return replace(record, rule=task.rule, target=task.target)
