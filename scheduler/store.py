"""The store: accounts, contacts, promises, case-work flags and the audit log, in SQL.

SQLite (the default, one file) and PostgreSQL (several daemons) run the same code and the
same Alembic migrations. Rows stay in here: every method takes and returns the frozen value
types of ``scheduler.models``. Every ``datetime`` passed in must be timezone-aware (a naive
one raises ``ValueError``); every one returned is aware UTC.

Errors: anything the database or driver raises is mapped to ``StoreError`` (with the driver's
first line, never the SQL parameters) in ``db_errors``; an out-of-date schema raises
``SchemaBehindError`` naming the command that fixes it.
"""

from __future__ import annotations

import json
import operator
import re
from collections import defaultdict
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from scheduler.bulk import copy_values, staging_table
from scheduler.config import Settings
from scheduler.errors import SchemaBehindError, StoreError
from scheduler.models import (
    Account,
    AccountHistory,
    AccountStatus,
    Channel,
    Flag,
    Outcome,
    PastContact,
    Promise,
    PromiseStatus,
    positional_builder,
)
from scheduler.tables import (
    account_flags,
    accounts,
    audit_log,
    contacts,
    from_stored,
    outcomes,
    promises,
)

__all__ = [
    "ALL_IDS",
    "AccountImport",
    "AccountRows",
    "IdRange",
    "Store",
    "UpsertCounts",
    "alembic_config",
    "head_revision",
    "open_store",
]

MIGRATIONS = "scheduler:migrations"
UPGRADE_COMMAND = "remind db upgrade"
#: Rows per INSERT ... ON CONFLICT batch, and ids per ``IN (...)`` list.
UPSERT_BATCH = 5_000
_IN_CHUNK = 5_000
_PERFORMED_STATUSES = ("sent", "failed")
#: How far before ``since`` broken promises are still read (their follow-up may be due).
_BROKEN_PROMISE_DAYS = 31
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: Shard boundaries on PostgreSQL come from a 1% row sample of at least this many rows,
#: and the table's size from one of at least ``_SPLIT_SAMPLE_COUNTS`` rows (else counted).
_SPLIT_SAMPLE_MIN = 500
_SPLIT_SAMPLE_COUNTS = 5_000

#: An account_id range ``[low, high)``, ``None`` leaving a side open: one shard of a plan.
IdRange = tuple[str | None, str | None]
ALL_IDS: IdRange = (None, None)


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What an upsert did: rows new to the store, rows changed, rows already identical."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
        )


# --- migrations -------------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for remind's migrations, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def drop_schema(url: str, schema: str) -> None:
    """Drop a PostgreSQL schema and everything in it (tests' and benchmarks' own schemas)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def head_revision() -> str:
    """The schema revision this code needs (the migrations' single head)."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise StoreError("no migrations found in the installed package")
    return head


def _known_revision(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


# --- error mapping and engines ----------------------------------------------------------


@contextmanager
def db_errors(action: str) -> Iterator[None]:
    """Map SQLAlchemy/driver/Alembic errors raised inside to ``StoreError("<action>: ...")``."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
        raise StoreError(f"{action}: {first}") from exc
    except (sa.exc.SQLAlchemyError, CommandError) as exc:
        raise StoreError(f"{action}: {str(exc).splitlines()[0]}") from exc


def require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value!r}")


def _make_engine(url: str, schema: str | None) -> Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"invalid store URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return _postgres_engine(parsed, schema)
    raise StoreError(
        f"unsupported store URL {parsed.drivername!r}: use sqlite:///FILE "
        "or postgresql+psycopg://user@host/db"
    )


def _sqlite_engine(url: sa.URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if in_memory:
        engine = sa.create_engine(
            url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for {database}: {exc}") from exc
        engine = sa.create_engine(url)
    _sqlite_pragmas(engine, wal=not in_memory)
    return engine


#: The execution option that marks a write transaction (``Store.writer``).
_WRITE = "remind_write"


def _sqlite_pragmas(engine: Engine, *, wal: bool) -> None:
    """Foreign keys on, WAL, a busy timeout, and real transactions (SQLAlchemy's pysqlite
    recipe: the driver's own implicit BEGIN is turned off and we emit BEGIN ourselves).

    A write transaction (one begun on ``Store.writer``) begins ``IMMEDIATE``: it takes the
    write lock first, waiting up to the busy timeout for it. A plain ``BEGIN`` that reads
    and then writes fails at once with "database is locked" when another connection
    committed in between (SQLite cannot upgrade a stale WAL snapshot, and does not wait);
    readers keep the plain ``BEGIN`` and never block a writer."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 10000")
        if wal:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _postgres_engine(url: sa.URL, schema: str | None) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    # Every session's time zone is UTC, whatever the server's default: psycopg then returns
    # a timestamptz as an aware datetime in ``datetime.UTC``, which the history read keeps as
    # it comes (``_past_contact``) instead of converting each value. Options given in the
    # URL are kept; ours come after them, so they win.
    given = url.query.get("options")
    options = [given] if isinstance(given, str) else list(given or ())
    url = url.difference_update_query(["options"])
    options.append("-cTimeZone=UTC")
    if schema is not None:
        if not _IDENTIFIER.fullmatch(schema):
            raise StoreError(f"invalid PostgreSQL schema name {schema!r}")
        options.append(f"-csearch_path={schema}")
    connect_args: dict[str, Any] = {"options": " ".join(options)}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


# --- row <-> value mapping ----------------------------------------------------------------


def _raw(column: sa.Column[Any], as_type: sa.types.TypeEngine[Any]) -> sa.ColumnElement[Any]:
    return sa.type_coerce(column, as_type).label(column.name)


#: The account columns, read raw: SQLAlchemy's per-value result processing was most of the
#: cost of ``candidate_accounts`` (10 s for 250k rows); ``_account`` converts instead.
_ACCOUNT_COLUMNS = (
    accounts.c.account_id,
    _raw(accounts.c.due_date, sa.String()),  # SQLite's text, or the driver's date
    _raw(accounts.c.amount_due, sa.BigInteger()),
    _raw(accounts.c.amount_paid, sa.BigInteger()),
    accounts.c.timezones,
    accounts.c.country,
    accounts.c.name,
    accounts.c.phone,
    accounts.c.email,
    accounts.c.language,
    accounts.c.product,
    accounts.c.currency,
    accounts.c.status,
    accounts.c.flags,
    accounts.c.emergency_contacts,
    _raw(accounts.c.phone_valid, sa.Integer()),  # 0/1 on SQLite, bool on PostgreSQL
)
_STATUSES = {s.value: s for s in AccountStatus}
#: Stored text -> enum member by dict lookup: the enum constructors cost more than the rest
#: of a history row's mapping.
_CHANNELS = {c.value: c for c in Channel}
_OUTCOMES = {o.value: o for o in Outcome}
_PROMISE_STATUSES = {s.value: s for s in PromiseStatus}


@cache
def _split_zones(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@cache
def _split_flags(text: str) -> frozenset[Flag]:
    try:
        return frozenset(Flag(f) for f in text.split(";") if f)
    except ValueError as exc:
        raise StoreError(f"the store holds an unknown account flag: {exc}") from exc


@lru_cache(maxsize=4096)
def _iso_date(text: str) -> date:
    return date.fromisoformat(text)


def _account(row: Sequence[Any], case_flags: Mapping[str, frozenset[Flag]]) -> Account:
    """An ``Account`` from a row of ``_ACCOUNT_COLUMNS`` plus its case-work flags (from
    ``case_flags``, by account id). The row is unpacked, never read by column name: a
    SQLAlchemy ``Row``'s attribute costs ten times its index (0.5 us: a failed lookup first)."""
    (account_id, due, amount_due, amount_paid, zones, country, name, phone, email, language,
     product, currency, status, flags, emergency, phone_valid) = row  # fmt: skip
    merged = _split_flags(flags)
    if case_flags and (extra := case_flags.get(account_id)):
        merged = merged | extra
    return _new_account(
        account_id,
        due if isinstance(due, date) else _iso_date(due),
        from_stored(amount_due),
        from_stored(amount_paid),
        _split_zones(zones),
        country,
        name,
        phone,
        email,
        language,
        product,
        currency,
        _STATUSES[status],
        merged,
        tuple(emergency.split(";")) if emergency else (),
        bool(phone_valid),
    )


_new_account = positional_builder(Account)  # every field, in order
_new_past_contact = positional_builder(PastContact)


def _past_contact(row: Sequence[Any]) -> PastContact:
    """A ``PastContact`` from a row of ``Store._performed_query``: ``performed_at`` as the
    driver gives it, UTC already on PostgreSQL (the session's time zone), naive UTC on
    SQLite."""
    account_id, channel, rule, at, outcome, status, target, due = row
    if at.tzinfo is not UTC:
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    try:
        if outcome is not None:
            result = _OUTCOMES[outcome]
        else:
            result = Outcome.FAILED if status == "failed" else Outcome.SENT
        return _new_past_contact(account_id, _CHANNELS[channel], rule, at, result, target, due)
    except KeyError as exc:
        raise StoreError(f"the store holds an unknown channel or outcome: {exc}") from exc


def _chunks(ids: Collection[str]) -> Iterator[list[str]]:
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _IN_CHUNK):
        yield ordered[start : start + _IN_CHUNK]


@dataclass(frozen=True, slots=True)
class _IdFilter:
    """Which accounts a history query reads: these ids, or the ids from ``low`` to ``high``
    (both included), or (neither) every account."""

    ids: Sequence[str] | None = None
    low: str | None = None
    high: str | None = None

    def terms(self, column: sa.ColumnElement[str]) -> list[sa.ColumnElement[bool]]:
        if self.ids is not None:
            return [column.in_(self.ids)]
        if self.low is not None and self.high is not None:
            return [column.between(self.low, self.high)]
        return []


def _promise_match(since: datetime) -> sa.ColumnElement[bool]:
    """The promises history reads: pending ones, and those broken recently enough for a
    broken-promise follow-up."""
    p = promises.c
    recent = since.date() - timedelta(days=_BROKEN_PROMISE_DAYS)
    return sa.or_(
        p.status == PromiseStatus.PENDING.value,
        sa.and_(p.status == PromiseStatus.BROKEN.value, p.promised_date >= recent),
    )


def _promise(row: Sequence[Any]) -> Promise:
    """A ``Promise`` from a row of ``Store._promises_query`` (unpacked, as in ``_account``)."""
    key, account_id, amount, promised_date, status, paid_before = row
    try:
        return Promise(
            account_id, amount, promised_date, _PROMISE_STATUSES[status], paid_before, key
        )
    except KeyError as exc:
        raise StoreError(f"the store holds an unknown promise status: {exc}") from exc


def _in_range(column: sa.ColumnElement[str], id_range: IdRange) -> list[sa.ColumnElement[bool]]:
    low, high = id_range
    terms = []
    if low is not None:
        terms.append(column >= low)
    if high is not None:
        terms.append(column < high)
    return terms


def _flags_active_at(now: datetime) -> sa.ColumnElement[bool]:
    f = account_flags.c
    return sa.and_(f.since <= now, sa.or_(f.until.is_(None), f.until > now))


# --- upsert -------------------------------------------------------------------------------

#: Columns an import may change. ``phone_valid`` is the store's own knowledge (a wrong
#: number found by a call): an import keeps it, unless the phone number itself changed.
_IMPORTED = tuple(
    c.name
    for c in accounts.columns
    if c.name not in ("account_id", "phone_valid", "created_at", "updated_at")
)


def _effective_status(stored: str, new: str) -> str:
    """Hand-over is decided by remind, not by the lender's file: "active" does not undo it."""
    return stored if stored == "handed_over" and new == "active" else new


def _upsert_statement(dialect: str, staging: str | None = None) -> sa.Insert:
    """INSERT .. ON CONFLICT DO UPDATE .. WHERE <an imported column differs>: the SQL twin
    of ``_differs`` (which decides the counts), so a concurrent writer cannot be clobbered
    with stale values and an identical row is never rewritten. With ``staging`` (a table of
    the same columns) the rows come from it: ``INSERT .. SELECT``."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(accounts)
    if staging is not None:
        names = [c.name for c in accounts.columns]
        source = sa.table(staging, *(sa.column(n) for n in names))
        stmt = stmt.from_select(names, sa.select(*(source.c[n] for n in names)))
    new = stmt.excluded
    values: dict[str, Any] = {name: new[name] for name in _IMPORTED}
    handed_over: sa.ColumnElement[str] = sa.literal_column("'handed_over'")
    active: sa.ColumnElement[str] = sa.literal_column("'active'")
    values["status"] = sa.case(
        (sa.and_(accounts.c.status == handed_over, new.status == active), handed_over),
        else_=new.status,
    )
    values["phone_valid"] = sa.case(
        (accounts.c.phone.is_distinct_from(new.phone), new.phone_valid),
        else_=accounts.c.phone_valid,
    )
    changed = sa.or_(*(accounts.c[name].is_distinct_from(values[name]) for name in _IMPORTED))
    values["updated_at"] = new.updated_at
    return stmt.on_conflict_do_update(
        index_elements=[accounts.c.account_id], set_=values, where=changed
    )


#: The account upsert's row: every column of ``accounts``, in table order (the two
#: timestamps last). ``AccountRows.encode`` makes the row without the timestamps.
_ROW = tuple(c.name for c in accounts.columns)
_STAMPS = ("created_at", "updated_at")
_KEYED = _ROW[: -len(_STAMPS)]
#: The imported columns of an encoded row (``_IMPORTED`` order), and where its status is.
_imported_of = operator.itemgetter(*(_KEYED.index(name) for name in _IMPORTED))
_STATUS_AT = _IMPORTED.index("status")
#: Columns with few distinct values in a file (due dates, a flag): their bind processors,
#: pure functions of the value, are memoised.
_FEW_VALUES = frozenset({"due_date", "phone_valid"})


class AccountRows:
    """``Account`` -> one row of the account upsert, as the driver of one SQL dialect takes
    it: ``account_id`` and the other columns in table order, without the two timestamps,
    each value passed through its column type's bind processor, exactly as a Core insert of
    the same account would bind it. Rows are plain tuples (cheap to pickle: a parse worker
    process of the importer makes them, ``AccountImport.add_rows`` writes them).

    ``for_driver`` builds one from a SQLAlchemy driver name alone (``sqlite``,
    ``postgresql+psycopg``: ``store.engine.url.drivername``) with no connection, so another
    process makes the same rows as ``AccountImport`` would."""

    def __init__(self, dialect: sa.Dialect) -> None:
        processors = [
            accounts.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _KEYED
        ]
        self._process = tuple(
            (i, lru_cache(maxsize=4096)(p) if _KEYED[i] in _FEW_VALUES else p)
            for i, p in enumerate(processors)
            if p is not None
        )

    @classmethod
    def for_driver(cls, drivername: str) -> AccountRows:
        dialect: sa.Dialect = sa.engine.URL.create(drivername).get_dialect()()
        return cls(dialect)

    def encode(self, account: Account) -> tuple[Any, ...]:
        """The row of ``account``. Raises ``ValueError`` for an amount with more than four
        decimal places (``ScaledDecimal``; the importer rejects such rows first)."""
        return self.row(
            account_id=account.account_id,
            due_date=account.due_date,
            amount_due=account.amount_due,
            amount_paid=account.amount_paid,
            timezones=account.timezones,
            country=account.country,
            name=account.name,
            phone=account.phone,
            email=account.email,
            language=account.language,
            product=account.product,
            currency=account.currency,
            status=account.status,
            flags=account.flags,
            emergency_contacts=account.emergency_contacts,
            phone_valid=account.phone_valid,
        )

    def row(
        self,
        *,
        account_id: str,
        due_date: date,
        amount_due: Decimal,
        amount_paid: Decimal,
        timezones: tuple[str, ...],
        country: str,
        name: str | None,
        phone: str | None,
        email: str | None,
        language: str,
        product: str,
        currency: str,
        status: AccountStatus,
        flags: frozenset[Flag],
        emergency_contacts: tuple[str, ...],
        phone_valid: bool = True,
    ) -> tuple[Any, ...]:
        """``encode(Account(**fields))`` without making the ``Account``: the importer's
        parse workers call this with what ``Account`` would be made of (its keywords; a
        frozen dataclass costs more to build than the whole row)."""
        values = [
            account_id,
            name,
            phone,
            email,
            " ".join(timezones),
            country,
            language,
            product,
            due_date,
            amount_due,
            amount_paid,
            currency,
            status.value,
            ";".join(sorted(flags)),
            ";".join(emergency_contacts),
            phone_valid,
        ]
        for i, process in self._process:
            values[i] = process(values[i])
        return tuple(values)


class _BulkUpsert:
    """The account upsert as driver SQL, made once per import: SQLAlchemy's per-row
    parameter handling cost as much as SQLite's own work. Rows come already encoded
    (``AccountRows``); the two timestamps, the same for every row, are converted once per
    batch."""

    def __init__(self, conn: Connection) -> None:
        dialect = conn.dialect
        compiled = _upsert_statement(dialect.name).compile(dialect=dialect)
        names = tuple(compiled.positiontup or ()) if compiled.positional else _ROW
        if set(names) != set(_ROW) or (compiled.positional and names != _ROW):
            raise StoreError("internal: the account upsert binds unexpected parameters")
        self._sql = compiled.string
        self._positional = compiled.positional
        self._stamp = accounts.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
        # PostgreSQL: rows go in with COPY to a staging table, then one INSERT .. SELECT
        # (an executemany runs one statement per row: 117 s for 1M accounts)
        self._from_staging: str | None = None
        if dialect.name == "postgresql":
            staging = f"remind_staging_{accounts.name}"
            self._from_staging = (
                _upsert_statement(dialect.name, staging).compile(dialect=dialect).string
            )

    def execute(self, conn: Connection, rows: list[tuple[Any, ...]], now: datetime) -> None:
        """Upsert ``rows`` (``AccountRows.encode`` tuples), created/updated at ``now``."""
        stamp = now if self._stamp is None else self._stamp(now)
        stamps = (stamp, stamp)
        if self._from_staging is not None:
            staging = staging_table(conn, accounts)
            copy_values(conn, staging, _ROW, (row + stamps for row in rows))
            conn.exec_driver_sql(self._from_staging)
        elif self._positional:
            conn.exec_driver_sql(self._sql, [row + stamps for row in rows])
        else:  # pragma: no cover - both supported dialects bind positionally or COPY
            conn.exec_driver_sql(
                self._sql, [dict(zip(_ROW, row + stamps, strict=True)) for row in rows]
            )


def _differs(stored: tuple[Any, ...], row: tuple[Any, ...]) -> bool:
    """Whether an import of the encoded ``row`` would change the ``stored`` one (raw values
    of ``account_id`` then ``_IMPORTED``, as the driver returns them): the Python twin of
    the upsert's WHERE, which compares the same stored and bound values."""
    new = _imported_of(row)
    old = stored[1:]
    if new == old:
        return False
    status = _effective_status(old[_STATUS_AT], new[_STATUS_AT])
    if status == new[_STATUS_AT]:
        return True
    return (*new[:_STATUS_AT], status, *new[_STATUS_AT + 1 :]) != old


#: The stored side of ``_differs`` (``account_id`` then ``_IMPORTED``), read with driver
#: SQL: raw values as the driver returns them, so they compare with the encoded rows as the
#: database compares them, and no SQLAlchemy expansion of thousands of ids per batch.
_STORED_COLUMNS = ", ".join(f'"{name}"' for name in ("account_id", *_IMPORTED))


#: PostgreSQL: the ids go as one text parameter split by the server (psycopg dumps a list
#: element by element in Python) on a character no account id holds (ids are printable).
_ID_SEPARATOR = "\x1f"


def _stored_sql(dialect: str, count: int) -> str:
    """The driver SQL reading the stored rows of ``count`` account ids (PostgreSQL: 0 for
    ids joined by ``_ID_SEPARATOR``, -1 for a list)."""
    select = f'SELECT {_STORED_COLUMNS} FROM "{accounts.name}" WHERE "account_id"'
    if dialect == "postgresql":
        if count == 0:
            return f"{select} = ANY(string_to_array(%s, chr({ord(_ID_SEPARATOR)})))"
        return f"{select} = ANY(%s)"  # one array parameter
    return f"{select} IN ({', '.join('?' * count)})"


class AccountImport:
    """Upserts accounts inside one open transaction (see ``Store.importing``).

    ``add`` (``Account`` values) and ``add_rows`` (the same, already encoded by
    ``AccountRows``) may be called any number of times; rows are applied in order, exactly
    as if each were upserted alone (an id seen twice is inserted, then updated). Per batch,
    the stored rows are read first: new and changed rows are written, identical ones are
    not touched. The counts are exact unless another connection writes the same accounts
    meanwhile. Nothing is visible to other connections until the ``Store.importing`` block
    ends without ``rollback()``.
    """

    def __init__(self, conn: Connection, now: datetime, batch_size: int) -> None:
        self._conn = conn
        self._now = now
        self._batch_size = batch_size
        self._dialect = conn.dialect.name
        self._upsert = _BulkUpsert(conn)
        self._encoder = AccountRows(conn.dialect)
        self._stored_sql: dict[int, str] = {}
        self._counts = UpsertCounts()
        self.rolled_back = False

    @property
    def counts(self) -> UpsertCounts:
        """Totals over every ``add`` so far."""
        return self._counts

    def add(self, batch: Iterable[Account]) -> UpsertCounts:
        """Upsert ``batch``; return what it did (also added to ``counts``). Raises
        ``StoreError`` (the ``importing`` block then rolls everything back), e.g. for an
        amount with more than four decimal places."""
        encode = self._encoder.encode
        try:
            rows = [encode(account) for account in batch]
        except ValueError as exc:  # ScaledDecimal: more than four decimal places
            raise StoreError(f"cannot import accounts: {exc}") from exc
        return self.add_rows(rows)

    def add_rows(self, rows: Iterable[tuple[Any, ...]]) -> UpsertCounts:
        """``add`` for rows already encoded by ``AccountRows`` (for this store's driver)."""
        if self.rolled_back:
            raise StoreError("this import was rolled back; start a new one")
        done = UpsertCounts()
        pending: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            if row[0] in pending or len(pending) >= self._batch_size:
                done += self._flush(pending)
                pending = {}
            pending[row[0]] = row
        if pending:
            done += self._flush(pending)
        self._counts += done
        return done

    def rollback(self) -> None:
        """Undo every ``add`` of this import; the ``importing`` block then ends quietly."""
        self.rolled_back = True

    def _flush(self, pending: dict[str, tuple[Any, ...]]) -> UpsertCounts:
        with db_errors("cannot import accounts"):
            stored = self._stored(list(pending))
            inserted = [row for key, row in pending.items() if key not in stored]
            updated = [
                row for key, row in pending.items() if key in stored and _differs(stored[key], row)
            ]
            if inserted or updated:
                self._upsert.execute(self._conn, inserted + updated, self._now)
        return UpsertCounts(
            inserted=len(inserted),
            updated=len(updated),
            unchanged=len(pending) - len(inserted) - len(updated),
        )

    def _stored(self, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """The stored rows of ``ids`` (as ``_differs`` takes them), by account_id."""
        found: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            params: tuple[Any, ...]
            if self._dialect == "postgresql":
                joined = _ID_SEPARATOR.join(chunk)
                if joined.count(_ID_SEPARATOR) == len(chunk) - 1 and "" not in chunk:
                    key, params = 0, (joined,)
                else:  # an id that the joined form cannot carry
                    key, params = -1, (chunk,)
            else:
                key, params = len(chunk), tuple(chunk)
            sql = self._stored_sql.get(key)
            if sql is None:
                sql = self._stored_sql[key] = _stored_sql(self._dialect, key)
            for row in self._fetch(sql, params):
                found[row[0]] = row
        return found

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` as the driver's own tuples, on this import's connection (no
        ``Row`` per row); driver errors become ``StoreError``."""
        raw = self._conn.connection.dbapi_connection
        if raw is None:  # pragma: no cover - a checked-out connection always has one
            raise StoreError("cannot import accounts: the connection is closed")
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        except self._conn.dialect.loaded_dbapi.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise StoreError(f"cannot import accounts: {first}") from exc
        finally:
            cursor.close()


# --- the store ----------------------------------------------------------------------------


class Store:
    """remind's tables behind a small API of value types. Not thread-safe to share a single
    iteration of ``candidate_accounts``; otherwise each call uses its own connection."""

    def __init__(self, engine: Engine, location: tuple[str, str | None] | None = None) -> None:
        """Wrap an engine; use ``Store.open`` instead, which also checks the schema."""
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})
        self._location = location

    # -- lifecycle --

    @classmethod
    def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        check_schema: bool = True,
        upgrade_command: str = UPGRADE_COMMAND,
    ) -> Store:
        """Open the store at ``url`` (``sqlite:///FILE`` or ``postgresql+psycopg://...``).

        ``schema`` sets PostgreSQL's search_path (the URL may say ``?options=-csearch_path=X``
        instead). With ``check_schema`` (the default) the schema must be at the migrations'
        head: a new or empty SQLite file is created and migrated on the spot; otherwise a
        store behind head raises ``SchemaBehindError`` whose message names the current and
        required revisions and ``upgrade_command``. Raises ``StoreError`` when the database
        cannot be reached or read, holds unrelated tables, or is newer than this code.
        """
        store = cls(_make_engine(url, schema), (url, schema))
        try:
            if check_schema:
                store._ensure_schema(upgrade_command)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release every connection. The store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for migrations, tests and tools; queries belong here."""
        return self._engine

    @property
    def writer(self) -> Engine:
        """The engine for transactions that write: ``with store.writer.begin() as conn``.
        The same pool as ``engine``; on SQLite its transactions begin ``IMMEDIATE``, so one
        that reads before it writes never fails because another writer committed
        meanwhile (``_sqlite_pragmas``)."""
        return self._writer

    @property
    def location(self) -> tuple[str, str | None] | None:
        """``(url, schema)`` another process can ``Store.open`` to reach the same data, or
        ``None`` (a store not opened by URL, or an in-memory SQLite database)."""
        if self._location is None:
            return None
        url = sa.make_url(self._location[0])
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return None
        return self._location

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    # -- schema --

    def current_revision(self) -> str | None:
        """The schema revision in force, or ``None`` (empty database, or migrated to base)."""
        with db_errors("cannot read the store's schema revision"), self._engine.connect() as c:
            return MigrationContext.configure(c).get_current_revision()

    def upgrade(self) -> str:
        """Migrate the schema to head (``alembic upgrade head``) in one transaction; return
        the revision now in force. Creates the PostgreSQL schema named by ``schema=`` if
        missing. Raises ``StoreError`` if a migration fails (nothing is then changed)."""
        with db_errors("cannot upgrade the store schema"), self._writer.begin() as conn:
            self._create_pg_schema(conn)
            command.upgrade(alembic_config(conn), "head")
        return self.current_revision() or "base"

    def _create_pg_schema(self, conn: Connection) -> None:
        if conn.dialect.name != "postgresql":
            return
        if conn.scalar(sa.text("SELECT current_schema()")) is not None:
            return
        path = str(conn.scalar(sa.text("SHOW search_path")))
        first = path.split(",")[0].strip().strip('"')
        if not _IDENTIFIER.fullmatch(first) or first == "$user":
            raise StoreError(f"search_path {path!r} names no schema that exists; create it")
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{first}"'))

    def _ensure_schema(self, upgrade_command: str) -> None:
        head = head_revision()
        with db_errors("cannot read the store's schema"), self._engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            inspector = sa.inspect(conn)
            versioned = inspector.has_table("alembic_version")
            has_tables = bool(inspector.get_table_names())
        if current == head:
            return
        if current is None and not has_tables and self.backend == "sqlite":
            self.upgrade()
            return
        if current is None and has_tables and not versioned:
            raise StoreError(
                "the database holds tables but no alembic_version: it is not a remind store"
            )
        if current is not None and not _known_revision(current):
            raise StoreError(
                f"the store's schema is at revision {current}, unknown to this remind "
                f"(it needs {head}): is the store newer than the installed remind?"
            )
        raise SchemaBehindError(
            f"the store's schema is at revision {current or 'none (empty)'}, "
            f"this remind needs {head}: run `{upgrade_command}`"
        )

    # -- accounts --

    def candidate_accounts(
        self,
        first_day: date,
        last_day: date,
        *,
        days_before_due: int,
        max_dpd: int,
        now: datetime,
        batch_size: int = 10_000,
    ) -> Generator[list[Account], None, None]:
        """Yield, in batches of at most ``batch_size`` ordered by account_id, every account
        the planner may have to contact for the days ``first_day..last_day``: status active,
        ``amount_paid < amount_due``, and ``due_date`` within
        ``[first_day - max_dpd - 1, last_day + days_before_due + 1]`` (one extra day each side
        for borrowers whose zone is a day off UTC). ``flags`` are the imported flags plus the
        ``account_flags`` in force at ``now``. Holds one connection (and, on SQLite, one read
        snapshot) until exhausted or ``close()``d. Raises ``StoreError`` while iterating."""
        require_aware(now, "now")
        low = first_day - timedelta(days=max_dpd + 1)
        high = last_day + timedelta(days=days_before_due + 1)
        where = sa.and_(
            accounts.c.status == AccountStatus.ACTIVE.value,
            accounts.c.due_date.between(low, high),
            accounts.c.amount_paid < accounts.c.amount_due,
        )
        stmt = sa.select(*_ACCOUNT_COLUMNS).where(where).order_by(accounts.c.account_id)
        return self._accounts_from(stmt, now=now, batch_size=batch_size)

    def accounts_due_on(
        self,
        due_dates: Collection[date],
        *,
        due_until: date | None,
        now: datetime,
        id_range: IdRange = ALL_IDS,
        batch_size: int = 10_000,
    ) -> Generator[list[Account], None, None]:
        """Like ``candidate_accounts`` but for an exact selection: active, unpaid accounts
        whose ``due_date`` is one of ``due_dates`` or on or before ``due_until`` (None: no
        such range), and whose account_id is in ``id_range``. The planner knows on which due
        dates a rule can fire; asking for just those reads a fraction of the window. Same
        batching, flags and errors, but in no particular order."""
        require_aware(now, "now")
        a = accounts.c
        dates = sorted(set(due_dates))
        due = [
            a.status == AccountStatus.ACTIVE.value,
            a.amount_paid < a.amount_due,
            *_in_range(a.account_id, id_range),
        ]
        # One select per index range, not one OR'ed filter: with the OR, SQLite reads every
        # active account (most of the table) through the status index to find one in six.
        stmt: sa.Select[Any] | sa.CompoundSelect[Any] = sa.select(*_ACCOUNT_COLUMNS).where(
            a.due_date.in_(dates), *due
        )
        if due_until is not None:
            past = sa.select(*_ACCOUNT_COLUMNS).where(
                a.due_date <= due_until, a.due_date.not_in(dates), *due
            )
            stmt = sa.union_all(stmt, past)
        # In no particular order: sorting the selection by account_id cost the server 0.1-0.2 s
        # at 1M accounts (a sort spilling to disk before the first row), and the plan sorts
        # its contacts anyway.
        return self._accounts_from(stmt, now=now, batch_size=batch_size)

    def accounts_with_promises(
        self,
        *,
        since: datetime,
        now: datetime,
        id_range: IdRange = ALL_IDS,
        loaded: Collection[str] = (),
    ) -> list[Account]:
        """The active, unpaid accounts in ``id_range`` holding a promise that
        ``history(..., since=since)`` reads (pending, or broken recently), whatever their
        due date, ordered by account_id; flags as in ``candidate_accounts``. Accounts whose
        id is in ``loaded`` (the caller has them already) are left out unread. Raises
        ``StoreError``."""
        require_aware(since, "since")
        p = promises.c
        stmt = (
            sa.select(p.account_id)
            .where(_promise_match(since), *_in_range(p.account_id, id_range))
            .distinct()
        )
        with db_errors("cannot read promises"), self._engine.connect() as conn:
            holders = [key for key in conn.execute(stmt).scalars() if key not in loaded]
        found = self.accounts_by_id(holders, now=now)
        return [
            found[key]
            for key in sorted(found)
            if found[key].status is AccountStatus.ACTIVE and not found[key].paid_in_full
        ]

    def account_id_splits(self, parts: int, *, min_per_part: int) -> list[str]:
        """The account ids that cut the accounts table into up to ``parts`` account_id
        ranges of about equal size and at least ``min_per_part`` accounts each, in order
        (``[]``: one range will do). Exact on SQLite (offsets along the primary key); on
        PostgreSQL, where an offset walks the heap (1.9 s at 1M accounts), the quantiles of a
        repeatable 1% sample of the rows (0.3 s; within 1% of the exact cut at 1M). Raises
        ``StoreError``."""
        key = accounts.c.account_id
        per_part = max(min_per_part, 1)
        with db_errors("cannot read accounts"), self._engine.connect() as conn:
            sample: list[str] = []
            if self.backend == "postgresql":
                sampled = "SELECT account_id FROM accounts TABLESAMPLE BERNOULLI (1) REPEATABLE (7)"
                sample = sorted(conn.execute(sa.text(sampled)).scalars())
            if len(sample) >= _SPLIT_SAMPLE_COUNTS:  # a large table: counted from the sample
                total = len(sample) * 100
            else:
                total = conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one()
            parts = min(parts, total // per_part)
            if parts < 2:
                return []
            if len(sample) >= _SPLIT_SAMPLE_MIN:
                cuts = [sample[len(sample) * n // parts] for n in range(1, parts)]
            else:
                cuts = [
                    conn.execute(
                        sa.select(key).order_by(key).offset(total * n // parts).limit(1)
                    ).scalar_one()
                    for n in range(1, parts)
                ]
        return sorted(set(cuts))

    def account(self, account_id: str, *, now: datetime) -> Account | None:
        """The account with this id in any status, flags merged as in ``candidate_accounts``,
        or ``None``. Raises ``StoreError``."""
        require_aware(now, "now")
        where = accounts.c.account_id == account_id
        with db_errors("cannot read the account"), self._engine.connect() as conn:
            extra = self._active_flags(conn, now, account_id)
            row = conn.execute(sa.select(*_ACCOUNT_COLUMNS).where(where)).one_or_none()
        return None if row is None else _account(row, extra)

    def accounts_by_id(self, account_ids: Collection[str], *, now: datetime) -> dict[str, Account]:
        """The accounts with these ids, in any status, flags merged as in
        ``candidate_accounts``; unknown ids are absent. Raises ``StoreError``."""
        require_aware(now, "now")
        found: dict[str, Account] = {}
        with db_errors("cannot read accounts"), self._engine.connect() as conn:
            extra = self._active_flags(conn, now)
            for ids in _chunks(account_ids):
                stmt = sa.select(*_ACCOUNT_COLUMNS).where(accounts.c.account_id.in_(ids))
                for row in conn.execute(stmt):
                    account = _account(row, extra)
                    found[account.account_id] = account
        return found

    def _accounts_from(
        self, stmt: sa.Select[Any] | sa.CompoundSelect[Any], *, now: datetime, batch_size: int
    ) -> Generator[list[Account], None, None]:
        with db_errors("cannot read accounts"), self._engine.connect() as conn:
            extra = self._active_flags(conn, now)
            with conn.execution_options(yield_per=batch_size).execute(stmt) as result:
                for part in result.partitions():
                    yield [_account(row, extra) for row in part]

    @staticmethod
    def _active_flags(
        conn: Connection, now: datetime, account_id: str | None = None
    ) -> dict[str, frozenset[Flag]]:
        """Case-work flags in force at ``now``, by account (all accounts, or one). The
        table is small (flags set by hand), so it is read whole rather than joined."""
        f = account_flags.c
        stmt = sa.select(f.account_id, f.flag).where(_flags_active_at(now))
        if account_id is not None:
            stmt = stmt.where(f.account_id == account_id)
        found: defaultdict[str, set[str]] = defaultdict(set)
        for key, flag in conn.execute(stmt):
            found[key].add(flag)
        return {key: _split_flags(";".join(sorted(names))) for key, names in found.items()}

    def upsert_accounts(self, accounts_: Iterable[Account], *, now: datetime) -> UpsertCounts:
        """Insert or update ``accounts_`` by account_id in one transaction; return the counts.

        A row identical to the stored one is left alone (``updated_at`` too), so importing
        the same file twice changes nothing. An update never turns ``handed_over`` back into
        ``active`` and keeps ``phone_valid`` unless the phone number changed. Raises
        ``StoreError`` (nothing is then written)."""
        with self.importing(now=now) as imp:
            imp.add(accounts_)
        return imp.counts

    @contextmanager
    def importing(
        self, *, now: datetime, batch_size: int = UPSERT_BATCH
    ) -> Iterator[AccountImport]:
        """One transaction for a streamed import: ``with store.importing(now=...) as imp:``
        then ``imp.add(batch)`` any number of times. Commits when the block ends, unless
        ``imp.rollback()`` was called or an exception escapes (then nothing is written).
        On PostgreSQL a commit that changed many rows refreshes the table's statistics
        (``_refresh_statistics``).

        The transaction begins with the first batch's first statement, not with the block:
        on SQLite it holds the write lock (``Store.writer``), which other writers should not
        wait on while the first rows are still being read or checked."""
        require_aware(now, "now")
        with db_errors("cannot import accounts"), self._writer.connect() as conn:
            imp = AccountImport(conn, now, batch_size)
            try:
                yield imp
            except BaseException:
                conn.rollback()
                raise
            if imp.rolled_back:
                conn.rollback()
                return
            conn.commit()
            if self.backend == "postgresql":
                self._refresh_statistics(conn, imp.counts.inserted + imp.counts.updated)

    @staticmethod
    def _refresh_statistics(conn: Connection, changed: int) -> None:
        """``ANALYZE accounts`` after an import that changed as many rows as autovacuum
        waits for (50 and a tenth of the table), at once, whether autovacuum is on or not:
        the plan that follows an import selects accounts by due date, and with the counts
        and due dates of before (or none, on a table never analysed) PostgreSQL expected 41
        rows where 78,318 came back. Measured on a 1M store never analysed: a plan shard's
        account query took 324 ms, 182 ms after ``ANALYZE``."""
        rows = conn.scalar(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = 'accounts'::regclass")
        )
        if changed >= 50 + 0.1 * max(rows or 0, 0):
            conn.execute(sa.text("ANALYZE accounts"))
            conn.commit()

    # -- history --

    def history(
        self, account_ids: Collection[str] | None, *, since: datetime
    ) -> dict[str, AccountHistory]:
        """What happened to these accounts (``None``: every account), keyed by account_id:
        contacts performed at or after ``since`` (status sent or failed, or carrying an
        outcome), oldest first; every pending promise and those broken in the month before
        ``since``, earliest promised date first; the emergency contacts removed for good.
        Accounts with none of these are absent. Raises ``StoreError``.

        More ids than fit one ``IN`` list (a plan's selection) are read as the one id range
        from the lowest to the highest, keeping the rows of these accounts: one pass instead
        of a query per few thousand ids."""
        require_aware(since, "since")
        if account_ids is not None and not account_ids:
            return {}
        wanted: set[str] | None = None
        filters: list[_IdFilter]
        if account_ids is None:
            filters = [_IdFilter()]
        elif len(wanted := set(account_ids)) > _IN_CHUNK:
            filters = [_IdFilter(low=min(wanted), high=max(wanted))]
        else:
            wanted, filters = None, [_IdFilter(ids=ids) for ids in _chunks(account_ids)]
        found_contacts: defaultdict[str, list[PastContact]] = defaultdict(list)
        found_promises: defaultdict[str, list[Promise]] = defaultdict(list)
        found_removed: defaultdict[str, set[str]] = defaultdict(set)
        with db_errors("cannot read contact history"), self._engine.connect() as conn:
            for where in filters:
                for row in conn.execute(self._performed_query(since, where)).all():
                    if wanted is None or row[0] in wanted:
                        found_contacts[row[0]].append(_past_contact(row))
                for row in conn.execute(self._promises_query(where, since)):
                    if wanted is None or row[1] in wanted:  # account_id
                        found_promises[row[1]].append(_promise(row))
                for account_id, target in conn.execute(self._removed_query(where)):
                    if wanted is None or account_id in wanted:
                        found_removed[account_id].add(target)
        keys = found_contacts.keys() | found_promises.keys() | found_removed.keys()
        return {
            key: AccountHistory(
                tuple(found_contacts.get(key, ())),
                tuple(found_promises.get(key, ())),
                frozenset(found_removed.get(key, ())),
            )
            for key in sorted(keys)
        }

    @staticmethod
    def _performed_query(since: datetime, where: _IdFilter) -> sa.Select[Any]:
        c = contacts.c
        stmt = sa.select(
            c.account_id, c.channel, c.rule, _raw(c.performed_at, sa.DateTime(timezone=True)),
            c.outcome, c.status, c.target, c.due_date,
        ).where(
            c.performed_at >= since,
            sa.or_(c.status.in_(_PERFORMED_STATUSES), c.outcome.is_not(None)),
            *where.terms(c.account_id),
        )  # fmt: skip
        return stmt.order_by(c.account_id, c.performed_at, c.contact_id)

    @staticmethod
    def _promises_query(where: _IdFilter, since: datetime) -> sa.Select[Any]:
        """Pending promises, and broken ones recent enough for a follow-up rule."""
        p = promises.c
        stmt = sa.select(
            p.id, p.account_id, p.amount, p.promised_date, p.status, p.paid_before
        ).where(_promise_match(since), *where.terms(p.account_id))
        return stmt.order_by(p.account_id, p.promised_date, p.id)

    @staticmethod
    def _removed_query(where: _IdFilter) -> sa.Select[Any]:
        """Emergency contacts removed for good (objected, or a wrong number): any age."""
        o = outcomes.c
        stmt = sa.select(o.account_id, o.target).where(
            o.result.in_((Outcome.THIRD_PARTY_OBJECTED.value, Outcome.WRONG_NUMBER.value)),
            o.target != "borrower",
            *where.terms(o.account_id),
        )
        return stmt.distinct()

    # -- writes used by case work, the dispatcher, tests and benches --

    def record_audit(
        self,
        kind: str,
        *,
        at: datetime,
        account_id: str | None = None,
        contact_id: str | None = None,
        rule: str | None = None,
        channel: str | None = None,
        policy_version: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Append one event to the audit log (never updated or deleted). ``detail`` is
        stored as JSON (non-JSON values as their ``str``). Raises ``StoreError``."""
        require_aware(at, "at")
        row = {
            "at": at,
            "kind": kind,
            "account_id": account_id,
            "contact_id": contact_id,
            "rule": rule,
            "channel": channel,
            "policy_version": policy_version,
            "detail": json.dumps(dict(detail or {}), sort_keys=True, default=str),
        }
        self._insert(audit_log, row, "cannot write the audit log")

    def add_performed_contact(
        self, contact: PastContact, *, contact_id: str, now: datetime
    ) -> None:
        """Record ``contact`` as performed: status ``failed`` if its outcome is FAILED, else
        ``sent``; ``performed_at = contact.at``. For seeding history (tests, benches, agents'
        results). Raises ``StoreError`` (unknown account, duplicate contact_id)."""
        require_aware(contact.at, "contact.at")
        require_aware(now, "now")
        row = {
            "contact_id": contact_id,
            "account_id": contact.account_id,
            "channel": contact.channel.value,
            "rule": contact.rule,
            "target": contact.target,
            "due_date": contact.due_date,
            "step": 0,
            "window_start": contact.at,
            "window_end": contact.at,
            "template": "",
            "priority": 0,
            "sla_risk": False,
            "status": "failed" if contact.outcome is Outcome.FAILED else "sent",
            "outcome": contact.outcome.value,
            "attempts": 1,
            "performed_at": contact.at,
            "created_at": now,
            "updated_at": now,
        }
        self._insert(contacts, row, "cannot record a contact")

    def add_promise(self, promise: Promise, *, now: datetime) -> None:
        """Record a promise to pay (closed at ``now`` unless pending). Raises ``StoreError``
        (unknown account, amount with more than four decimal places)."""
        require_aware(now, "now")
        row = {
            "account_id": promise.account_id,
            "amount": promise.amount,
            "promised_date": promise.promised_date,
            "paid_before": promise.paid_before,
            "status": promise.status.value,
            "created_at": now,
            "closed_at": None if promise.status is PromiseStatus.PENDING else now,
        }
        self._insert(promises, row, "cannot record a promise")

    def add_flag(
        self,
        account_id: str,
        flag: Flag,
        *,
        since: datetime,
        until: datetime | None,
        source: str,
        note: str = "",
    ) -> None:
        """Put ``flag`` on the account from ``since`` until ``until`` (``None``: until
        lifted). Raises ``ValueError`` if ``until <= since``; ``StoreError`` for an unknown
        account or the same (account, flag, since) twice."""
        require_aware(since, "since")
        require_aware(until, "until")
        if until is not None and until <= since:
            raise ValueError("until must be later than since")
        row = {
            "account_id": account_id,
            "flag": Flag(flag).value,
            "since": since,
            "until": until,
            "source": source,
            "note": note,
        }
        self._insert(account_flags, row, "cannot add the flag")

    def _insert(self, table: sa.Table, row: Mapping[str, object], action: str) -> None:
        with db_errors(action), self._writer.begin() as conn:
            conn.execute(table.insert(), dict(row))


def open_store(settings: Settings) -> Store:
    """Open the store ``settings`` names, checking its schema; the upgrade hint names the
    same config file. Raises ``SchemaBehindError`` or ``StoreError``."""
    return Store.open(
        settings.store_url,
        upgrade_command=f"{UPGRADE_COMMAND} --config {settings.config_path}",
    )
