"""The store's tables, as SQLModel classes. Rows never leave ``scheduler.store``.

The schema itself is created and changed only by the Alembic migrations in
``scheduler/migrations``; these classes describe it for queries, and a test checks that the
two agree. Conventions, the same on SQLite and PostgreSQL:

* money is a ``BIGINT`` of ten-thousandths (:class:`ScaledDecimal`): exact, comparable in SQL,
  and free of SQLite's lossy ``NUMERIC``;
* every ``datetime`` is stored and returned aware, in UTC (SQLModel's ``UTCDateTime``;
  a naive value raises ``ValueError`` at bind time);
* lists are joined strings: ``timezones`` by spaces (order kept: the first zone defines the
  borrower's day), ``flags`` and ``emergency_contacts`` by ``;``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect
from sqlmodel import Field, SQLModel

__all__ = [
    "ACCOUNT_STATUSES",
    "CONTACT_STATUSES",
    "PROMISE_STATUSES",
    "AccountFlagRow",
    "AccountRow",
    "AuditRow",
    "ContactRow",
    "DaemonStateRow",
    "NoteRow",
    "OutcomeRow",
    "PromiseRow",
    "ScaledDecimal",
    "SourceRunRow",
    "SourceStateRow",
    "account_flags",
    "accounts",
    "audit_log",
    "contacts",
    "daemon_state",
    "from_stored",
    "metadata",
    "notes",
    "outcomes",
    "promises",
    "source_runs",
    "source_state",
]

ACCOUNT_STATUSES = ("active", "closed", "handed_over")
CONTACT_STATUSES = ("planned", "claimed", "sent", "skipped", "missed", "failed")
PROMISE_STATUSES = ("pending", "kept", "broken")

metadata = SQLModel.metadata


class ScaledDecimal(sa.TypeDecorator[Decimal]):
    """A ``Decimal`` stored exactly as a ``BIGINT`` count of 10**-4 units.

    Binding a value with more than four decimal places raises ``ValueError`` (the importer
    rejects such rows first, so this only guards the code). Results come back with exactly
    four decimal places: ``Decimal("0.3")`` is returned as ``Decimal("0.3000")`` (equal).
    """

    impl = sa.BigInteger
    cache_ok = True
    PLACES: ClassVar[int] = 4

    def process_bind_param(self, value: Decimal | int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        scaled = Decimal(value).scaleb(self.PLACES)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"amount {value} has more than {self.PLACES} decimal places")
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_stored(value)

    def coerce_compared_value(self, op: Any, value: Any) -> sa.types.TypeEngine[Any]:
        return self


def from_stored(value: int) -> Decimal:
    """The ``Decimal`` a stored ``ScaledDecimal`` integer stands for (4 decimal places)."""
    return Decimal(value) * _UNIT  # exact: at most 19 digits, within the 28 of the context


_UNIT = Decimal(1).scaleb(-ScaledDecimal.PLACES)


#: Integer surrogate keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class AccountRow(SQLModel, table=True):
    """One imported account; ``flags`` are the imported ones only (case-work flags live in
    ``account_flags``)."""

    __tablename__ = "accounts"
    __table_args__ = (
        sa.Index("ix_accounts_status_due_date", "status", "due_date"),
        sa.CheckConstraint(_in("status", ACCOUNT_STATUSES), name="ck_accounts_status"),
    )

    account_id: str = Field(primary_key=True)
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    timezones: str
    country: str = ""
    language: str = ""
    product: str = ""
    due_date: date
    amount_due: Decimal = Field(sa_type=ScaledDecimal)
    amount_paid: Decimal = Field(sa_type=ScaledDecimal)
    currency: str = ""
    status: str = "active"
    flags: str = ""
    emergency_contacts: str = ""
    phone_valid: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    created_at: datetime
    updated_at: datetime


class ContactRow(SQLModel, table=True):
    """A planned or performed contact. ``contact_id`` is ``models.contact_id(...)``: stable
    across runs and hosts, and the provider's idempotency key."""

    __tablename__ = "contacts"
    __table_args__ = (
        sa.Index("ix_contacts_account_performed", "account_id", "performed_at"),
        sa.Index("ix_contacts_claim", "channel", "status", "priority", "next_attempt_at"),
        sa.Index("ix_contacts_performed_at", "performed_at"),
        sa.Index("ix_contacts_status_window_end", "status", "window_end"),
        sa.CheckConstraint(_in("status", CONTACT_STATUSES), name="ck_contacts_status"),
    )

    contact_id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.account_id")
    channel: str
    rule: str
    target: str
    due_date: date | None = None
    step: int = 0
    window_start: datetime
    window_end: datetime
    template: str = ""
    priority: int = 0
    sla_risk: bool = False
    status: str
    reason: str | None = None
    outcome: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    performed_at: datetime | None = None
    policy_version: str | None = None
    created_at: datetime
    updated_at: datetime
    provider_ref: str | None = None
    last_error: str | None = None


class PromiseRow(SQLModel, table=True):
    """A promise to pay: amount and date the borrower committed to."""

    __tablename__ = "promises"
    __table_args__ = (
        sa.Index("ix_promises_status_account", "status", "account_id"),
        sa.CheckConstraint(_in("status", PROMISE_STATUSES), name="ck_promises_status"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    account_id: str = Field(foreign_key="accounts.account_id")
    amount: Decimal = Field(sa_type=ScaledDecimal)
    promised_date: date
    status: str = "pending"
    created_at: datetime
    closed_at: datetime | None = None
    paid_before: Decimal = Field(
        default=Decimal(0), sa_type=ScaledDecimal, sa_column_kwargs={"server_default": sa.text("0")}
    )


class AccountFlagRow(SQLModel, table=True):
    """A flag set by case work, in force from ``since`` until ``until`` (``None``: open-ended)."""

    __tablename__ = "account_flags"

    account_id: str = Field(primary_key=True, foreign_key="accounts.account_id")
    flag: str = Field(primary_key=True)
    since: datetime = Field(primary_key=True)
    until: datetime | None = None
    source: str
    note: str = ""


class OutcomeRow(SQLModel, table=True):
    """What came of one contact (``models.OutcomeRecord``), recorded once: the unique
    (account, at, channel, target, result) makes a re-imported file add nothing."""

    __tablename__ = "outcomes"
    __table_args__ = (
        sa.Index("uq_outcomes_event", "account_id", "at", "channel", "target", "result",
                 unique=True),
        sa.Index("ix_outcomes_result", "result"),
        sa.Index("ix_outcomes_at", "at"),
    )  # fmt: skip

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    account_id: str = Field(foreign_key="accounts.account_id")
    at: datetime
    channel: str
    result: str
    target: str
    number: str | None = None
    contact_id: str | None = None
    rule: str | None = None
    promise_amount: Decimal | None = Field(default=None, sa_type=ScaledDecimal)
    promise_date: date | None = None
    note: str = Field(default="", sa_type=sa.Text)
    source: str
    policy_version: str | None = None
    recorded_at: datetime


class NoteRow(SQLModel, table=True):
    """A case note (``remind note``)."""

    __tablename__ = "notes"
    __table_args__ = (sa.Index("ix_notes_account_at", "account_id", "at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    account_id: str = Field(foreign_key="accounts.account_id")
    at: datetime
    text: str = Field(sa_type=sa.Text)
    author: str


class AuditRow(SQLModel, table=True):
    """One audit event. Append-only: nothing in remind updates these rows; ``remind db
    prune`` deletes only rows older than ``[store] audit_retention_days``."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_account_at", "account_id", "at"),
        sa.Index("ix_audit_log_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    at: datetime
    kind: str
    account_id: str | None = None
    contact_id: str | None = None
    rule: str | None = None
    channel: str | None = None
    policy_version: str | None = None
    detail: str = Field(default="{}", sa_type=sa.Text)


class DaemonStateRow(SQLModel, table=True):
    """The daemon's own bookkeeping, one row per name: ``tick.plan`` (last plan tick),
    ``tick.dispatch``, ``tick.watch``, ``planned_through`` (last borrower-local day the plan
    was materialised for). ``owner`` is the daemon instance that wrote it."""

    __tablename__ = "daemon_state"

    name: str = Field(primary_key=True)
    value: str
    owner: str
    updated_at: datetime


class SourceRunRow(SQLModel, table=True):
    """One run of an account source (``[[sources]]``): when, what it read and did, the
    watermark it reached, and the error that stopped it (``None``: it succeeded).
    ``finished`` is ``None`` while the run is in progress (or if its process died)."""

    __tablename__ = "source_runs"
    __table_args__ = (sa.Index("ix_source_runs_source_started", "source", "started"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    source: str
    started: datetime
    finished: datetime | None = None
    rows_read: int = 0
    upserted: int = 0
    rejected: int = 0
    cancelled: int = 0
    watermark: str | None = None
    error: str | None = None


class SourceStateRow(SQLModel, table=True):
    """What a source remembers between runs: the watermark reached (a SQL source reads only
    rows past it; ``watermark_type`` says how to read the text back) and, for a folder, the
    files seen but not yet settled (JSON: name -> size, mtime and since when unchanged)."""

    __tablename__ = "source_state"

    source: str = Field(primary_key=True)
    watermark: str | None = None
    watermark_type: str | None = None
    files: str = Field(default="{}", sa_type=sa.Text)
    updated_at: datetime


accounts = metadata.tables["accounts"]
contacts = metadata.tables["contacts"]
promises = metadata.tables["promises"]
account_flags = metadata.tables["account_flags"]
audit_log = metadata.tables["audit_log"]
daemon_state = metadata.tables["daemon_state"]
outcomes = metadata.tables["outcomes"]
notes = metadata.tables["notes"]
source_runs = metadata.tables["source_runs"]
source_state = metadata.tables["source_state"]
