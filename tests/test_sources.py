"""Account sources against real parts: a lender's database (a SQLite file of its own, and
PostgreSQL in a schema of its own) whose rows change between runs, and a drop folder that
receives files. What ops notice: which rows were read, the watermark, where files end up,
which contacts a payment cancelled, and what a failed run records."""

from __future__ import annotations

import csv
import json
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.config import SourceSettings, load_settings
from scheduler.errors import ConfigError
from scheduler.importer import Defaults
from scheduler.models import Horizon
from scheduler.planner import plan
from scheduler.planning import load_for_plan
from scheduler.queue import ContactQueue
from scheduler.sources import SourceLedger, SourceRun, SourceRunner
from scheduler.store import Store, drop_schema
from scheduler.tables import audit_log, contacts
from tests.conftest import PG_URL, require_postgres
from tests.factories import local, shipped_policies

DUE = date(2026, 11, 23)
ZONE = "Asia/Shanghai"
MORNING = local(DUE - timedelta(days=1), "08:30", ZONE).astimezone(UTC)
DEFAULTS = Defaults(timezone=ZONE, country="CN", language="zh-CN", currency="CNY")
COLUMNS = "account_id, name, phone, due_date, amount_due, amount_paid, updated_at"


# --- a lender's database ------------------------------------------------------------------


@dataclass
class LenderDb:
    """The lender's own table ``loans``, on SQLite or PostgreSQL, that the source reads."""

    url: str
    table: str  # qualified on PostgreSQL
    engine: sa.Engine

    def add(self, account_id: str, *, at: datetime, paid: str = "0", due: date = DUE) -> None:
        self.run(
            f"INSERT INTO {self.table} VALUES (:id, 'Li Lei', '+8613812345678', :due, "
            "'1000.00', :paid, :at)",
            id=account_id, due=due, paid=paid, at=self.stamp(at),
        )  # fmt: skip

    def pay(self, account_id: str, *, at: datetime, paid: str = "1000.00") -> None:
        self.run(f"UPDATE {self.table} SET amount_paid = :paid, updated_at = :at "
                 "WHERE account_id = :id", id=account_id, paid=paid, at=self.stamp(at))  # fmt: skip

    def run(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def stamp(self, at: datetime) -> Any:
        # SQLite keeps the lender's text timestamps; PostgreSQL a real timestamptz
        return at.strftime("%Y-%m-%d %H:%M:%S") if self.engine.dialect.name == "sqlite" else at

    def source(self, **fields: Any) -> SourceSettings:
        values: dict[str, Any] = {
            "name": "loans", "kind": "sql", "every_seconds": 60.0, "url": self.url,
            "query": f"SELECT {COLUMNS} FROM {self.table}", "watermark_column": "updated_at",
            "batch_size": 2,
        }  # fmt: skip
        values.update(fields)
        return SourceSettings(**values)


def _sqlite_lender(tmp_path: Path) -> Iterator[LenderDb]:
    path = tmp_path / "lender" / "loans.db"
    path.parent.mkdir()
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE loans (account_id TEXT PRIMARY KEY, name TEXT, phone TEXT, "
            "due_date TEXT, amount_due TEXT, amount_paid TEXT, updated_at TEXT)"
        ))  # fmt: skip
    yield LenderDb(f"sqlite:///{path}", "loans", engine)
    engine.dispose()


def _pg_lender() -> Iterator[LenderDb]:
    require_postgres()
    schema = f"lender_{secrets.token_hex(5)}"
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(
            f"CREATE TABLE {schema}.loans (account_id text PRIMARY KEY, name text, phone text, "
            "due_date date, amount_due numeric(12,2), amount_paid numeric(12,2), "
            "updated_at timestamptz NOT NULL)"
        ))  # fmt: skip
    yield LenderDb(PG_URL, f"{schema}.loans", engine)
    engine.dispose()
    drop_schema(PG_URL, schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def lender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LenderDb]:
    """The lender's database: a SQLite file of its own, or a PostgreSQL schema of its own."""
    yield from _sqlite_lender(tmp_path) if request.param == "sqlite" else _pg_lender()


@pytest.fixture
def pg_lender() -> Iterator[LenderDb]:
    yield from _pg_lender()


def runner(
    store: Store, source: SourceSettings, environ: dict[str, str] | None = None
) -> SourceRunner:
    return SourceRunner(source, store, defaults=DEFAULTS, environ=environ or {})


def materialise_plan(store: Store, now: datetime) -> int:
    """What the daemon's plan tick does: plan today and tomorrow, insert planned contacts."""
    policies = shipped_policies()
    horizon = Horizon(now.astimezone(UTC).date(), 2)
    accounts, history = load_for_plan(store, policies, horizon, now, None)
    result = plan(now, accounts, history, policies, horizon)
    return ContactQueue(store).materialise(result.planned, now=now, policy_version="test")[0]


def contact_states(store: Store, account_id: str) -> set[tuple[str, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(contacts.c.status, contacts.c.reason).where(
                contacts.c.account_id == account_id
            )
        )
        return {(r.status, r.reason) for r in rows}


def last_run(store: Store, name: str = "loans") -> SourceRun:
    found = SourceLedger(store).status([name])[0].last
    assert found is not None
    return found


# --- sql ------------------------------------------------------------------------------------


def test_only_changed_rows_are_read_and_a_payment_there_stops_the_planned_sms(
    store: Store, lender: LenderDb
) -> None:
    # Given the lender's table holds three accounts due tomorrow
    t0 = MORNING - timedelta(days=1)
    for account_id in ("L1", "L2", "L3"):
        lender.add(account_id, at=t0)
    loans = runner(store, lender.source())
    # When the source runs for the first time, it reads everything (in batches of 2)
    first = loans.run(MORNING)
    assert (first.ok, first.rows_read, first.upserted, first.rejected) == (True, 3, 3, 0)
    assert first.watermark is not None and first.watermark.startswith(t0.strftime("%Y-%m-%d"))
    assert materialise_plan(store, MORNING) > 0
    assert contact_states(store, "L2") == {("planned", None)}
    # And when L2 pays in the lender's system, the next run reads that one row only
    paid_at = MORNING + timedelta(minutes=5)
    lender.pay("L2", at=paid_at)
    second = loans.run(MORNING + timedelta(minutes=10))
    assert (second.ok, second.rows_read, second.upserted) == (True, 1, 1)
    assert second.watermark is not None and second.watermark > first.watermark
    # Then L2's planned contacts are recorded skipped "paid" before any dispatch, with audit
    assert contact_states(store, "L2") == {("skipped", "paid")}
    assert second.cancelled == len(planned_ids(store, "L2", "skipped"))
    assert contact_states(store, "L1") == {("planned", None)}
    with store.engine.connect() as conn:
        events = conn.execute(
            sa.select(audit_log.c.kind, audit_log.c.detail).where(
                audit_log.c.account_id == "L2", audit_log.c.kind == "skipped"
            )
        ).all()
    assert len(events) == second.cancelled and '"reason": "paid"' in events[0].detail
    # And a run with nothing new reads nothing and keeps the watermark
    third = loans.run(MORNING + timedelta(minutes=20))
    assert (third.ok, third.rows_read, third.watermark) == (True, 0, second.watermark)
    # And every run is recorded
    status = SourceLedger(store).status(["loans"])[0]
    assert status.last is not None and status.last.rows_read == 0
    assert status.last_success == MORNING + timedelta(minutes=20)
    loans.close()


def planned_ids(store: Store, account_id: str, status: str) -> list[str]:
    with store.engine.connect() as conn:
        return list(
            conn.scalars(
                sa.select(contacts.c.contact_id).where(
                    contacts.c.account_id == account_id, contacts.c.status == status
                )
            )
        )


def test_a_bad_row_is_rejected_with_its_account_and_the_good_ones_are_in(
    store: Store, lender: LenderDb
) -> None:
    lender.add("G1", at=MORNING)
    lender.run(
        f"INSERT INTO {lender.table} VALUES ('B1', 'x', '12345', :due, '1000', '0', :at)",
        due=DUE, at=lender.stamp(MORNING),
    )  # fmt: skip
    result = runner(store, lender.source()).run(MORNING)
    assert (result.ok, result.rows_read, result.upserted, result.rejected) == (True, 2, 1, 1)
    assert result.rejected_ids == ("B1",)
    assert store.account("G1", now=MORNING) is not None
    assert store.account("B1", now=MORNING) is None


def _paid_with_planned_contacts(store: Store, lender: LenderDb) -> SourceRunner:
    """L1 and L2 read and planned at MORNING, then L2 paid in the lender's system."""
    for account_id in ("L1", "L2"):
        lender.add(account_id, at=MORNING - timedelta(days=1))
    loans = runner(store, lender.source())
    assert loans.run(MORNING).ok and materialise_plan(store, MORNING) > 0
    lender.pay("L2", at=MORNING + timedelta(minutes=5))
    return loans


def _refuse_skips(store: Store) -> tuple[str, str]:
    """SQL that makes the store refuse every contact update to ``skipped`` (a real failure
    inside the store), and the SQL that lifts it."""
    if store.backend == "sqlite":
        return (
            "CREATE TRIGGER refuse_skips BEFORE UPDATE OF status ON contacts "
            "WHEN NEW.status = 'skipped' BEGIN SELECT RAISE(ABORT, 'skips refused'); END",
            "DROP TRIGGER refuse_skips",
        )
    return (
        "CREATE FUNCTION refuse_skips() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'skips refused'; END $$; "
        "CREATE TRIGGER refuse_skips BEFORE UPDATE ON contacts FOR EACH ROW "
        "WHEN (NEW.status = 'skipped') EXECUTE FUNCTION refuse_skips()",
        "DROP TRIGGER refuse_skips ON contacts; DROP FUNCTION refuse_skips()",
    )


def test_a_writer_is_not_kept_waiting_while_a_run_waits_for_its_first_rows(
    store: Store, tmp_path: Path
) -> None:
    lender = next(_sqlite_lender(tmp_path))
    lender.add("W1", at=MORNING)
    # Given the lender's database answers only after 3 s (another session holds it locked)
    locked, held = threading.Event(), 3.0

    def lock_lender() -> None:
        conn = sqlite3.connect(lender.url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(held)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=lock_lender)
    holder.start()
    locked.wait(5)
    found: list[SourceRun] = []
    loans = runner(store, lender.source())
    run = threading.Thread(target=lambda: found.append(loans.run(MORNING)))
    run.start()
    time.sleep(0.5)  # the run has started and waits for its first row
    # When another writer of the store (a lane recording a send) writes meanwhile
    started = time.monotonic()
    ContactQueue(store).set_state({"tick": "1"}, owner="lane", now=MORNING)
    waited = time.monotonic() - started
    run.join(15)
    holder.join(5)
    loans.close()
    # Then it goes through at once, and the run imports once the lender answers
    assert waited < held / 2, f"the write waited {waited:.1f} s for the run's write lock"
    assert found and (found[0].ok, found[0].upserted) == (True, 1)


def test_a_cancellation_that_failed_is_made_by_the_next_run(store: Store, lender: LenderDb) -> None:
    loans = _paid_with_planned_contacts(store, lender)
    refuse, lift = _refuse_skips(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(refuse)
    # Given the run that reads L2's payment fails to cancel its contacts
    failed = loans.run(MORNING + timedelta(minutes=10))
    assert (failed.ok, failed.rows_read, failed.cancelled) == (False, 1, 0)
    assert failed.error is not None and "skips refused" in failed.error
    assert contact_states(store, "L2") == {("planned", None)}
    with store.engine.begin() as conn:
        conn.exec_driver_sql(lift)
    # When the next run finds nothing new in the lender's table
    retry = loans.run(MORNING + timedelta(minutes=20))
    # Then it cancels L2's planned contacts all the same, and only those
    assert (retry.ok, retry.rows_read) == (True, 0)
    assert contact_states(store, "L2") == {("skipped", "paid")}
    assert retry.cancelled == len(planned_ids(store, "L2", "skipped")) > 0
    assert contact_states(store, "L1") == {("planned", None)}
    # and the run after a good one looks at its own rows only
    assert loans.run(MORNING + timedelta(minutes=30)).cancelled == 0
    loans.close()


def test_a_writer_committing_while_a_run_cancels_does_not_fail_the_run(
    store: Store, lender: LenderDb
) -> None:
    loans = _paid_with_planned_contacts(store, lender)
    # Given another writer (a dispatch tick, another source) commits just after the run has
    # read which contacts to cancel and before it writes
    other = threading.Thread(
        target=ContactQueue(store).set_state, args=({"tick": "1"},),
        kwargs={"owner": "other", "now": MORNING},
    )  # fmt: skip

    def between(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "JOIN accounts" in statement and other.ident is None:  # the first time only
            other.start()
            other.join(1)  # SQLite: it waits for the run's write lock, so it is still waiting

    sa.event.listen(store.engine, "after_cursor_execute", between)
    try:
        run = loans.run(MORNING + timedelta(minutes=10))
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", between)
    other.join(15)
    # Then the run still cancels L2's contacts, and the other write is in too
    assert other.ident is not None, "the cancellation's read was not seen"
    assert (run.ok, run.error) == (True, None)
    assert contact_states(store, "L2") == {("skipped", "paid")}
    assert ContactQueue(store).state()["tick"].value == "1"
    loans.close()


def test_the_lender_file_moved_away_fails_the_run_and_the_next_one_catches_up(
    store: Store, tmp_path: Path
) -> None:
    lender = next(_sqlite_lender(tmp_path))
    lender.add("M1", at=MORNING)
    loans = runner(store, lender.source())
    assert loans.run(MORNING).rows_read == 1
    # Given the lender's file is moved away (their system is down) ...
    db_file = Path(lender.url.removeprefix("sqlite:///"))
    aside = db_file.with_name("aside.db")
    db_file.rename(aside)
    failed = loans.run(MORNING + timedelta(minutes=1))
    # Then the run fails, says why, keeps the watermark and creates no empty database
    assert not failed.ok and failed.error is not None
    assert "unable to open database file" in failed.error
    assert failed.watermark == loans.run(MORNING + timedelta(minutes=1)).watermark
    assert not db_file.exists()
    assert last_run(store).error is not None
    # When it comes back with a payment recorded meanwhile
    aside.rename(db_file)
    lender.pay("M1", at=MORNING + timedelta(minutes=2))
    back = loans.run(MORNING + timedelta(minutes=3))
    # Then the next run reads it
    assert (back.ok, back.rows_read, back.upserted) == (True, 1, 1)
    account = store.account("M1", now=MORNING)
    assert account is not None and account.paid_in_full
    assert SourceLedger(store).status(["loans"])[0].last_success == MORNING + timedelta(minutes=3)


@pytest.mark.postgres
def test_postgres_source_failing_mid_run_imports_nothing_and_the_next_run_catches_up(
    store: Store, pg_lender: LenderDb
) -> None:
    # Given five accounts, read in batches of two by a query that fails on the fifth row
    for n in range(1, 6):
        lender_at = MORNING + timedelta(seconds=n)
        pg_lender.add(f"P{n}", at=lender_at)
    query = (f"SELECT {COLUMNS}, 1 / (CASE WHEN account_id = 'P5' AND amount_paid = 0 "
             f"THEN 0 ELSE 1 END) AS probe FROM {pg_lender.table}")  # fmt: skip
    loans = runner(store, pg_lender.source(query=query))
    # When the run breaks after two batches were already upserted in our transaction
    broken = loans.run(MORNING + timedelta(minutes=1))
    # Then nothing of it is in the store and the watermark did not move
    assert not broken.ok and broken.error is not None and "division by zero" in broken.error
    assert broken.watermark is None and store.account("P1", now=MORNING) is None
    # And when the table is renamed away (the view is gone) the run fails as well
    pg_lender.run(f"ALTER TABLE {pg_lender.table} RENAME TO loans_away")
    gone = loans.run(MORNING + timedelta(minutes=2))
    assert not gone.ok and gone.error is not None and "does not exist" in gone.error
    # When the table is back and the bad row fixed, the next run reads everything
    schema = pg_lender.table.split(".")[0]
    pg_lender.run(f"ALTER TABLE {schema}.loans_away RENAME TO loans")
    pg_lender.pay("P5", at=MORNING + timedelta(seconds=30), paid="10")
    back = loans.run(MORNING + timedelta(minutes=3))
    assert (back.ok, back.rows_read, back.upserted) == (True, 5, 5)
    assert back.watermark is not None and "00:30:30" in back.watermark
    loans.close()


@pytest.mark.postgres
def test_a_closed_port_fails_fast_and_a_password_comes_from_the_environment(
    store: Store, pg_lender: LenderDb
) -> None:
    source = pg_lender.source(url="postgresql+psycopg://root@127.0.0.1:1/test",
                              password_env="LENDER_DB_PASSWORD")  # fmt: skip
    loans = runner(store, source, environ={"LENDER_DB_PASSWORD": "not-in-config"})
    failed = loans.run(MORNING)
    assert not failed.ok and failed.error is not None
    assert "not-in-config" not in failed.error
    with pytest.raises(ConfigError, match="LENDER_DB_PASSWORD"):
        runner(store, source, environ={})


def test_a_query_without_the_import_columns_is_a_failed_run(store: Store, tmp_path: Path) -> None:
    lender = next(_sqlite_lender(tmp_path))
    lender.add("Q1", at=MORNING)
    source = lender.source(query=f"SELECT account_id, updated_at FROM {lender.table}")
    result = runner(store, source).run(MORNING)
    assert not result.ok and result.error is not None
    assert "due_date, amount_due" in result.error


def test_a_run_in_progress_shows_as_running_not_failed(store: Store) -> None:
    ledger = SourceLedger(store)
    ledger.start("loans", now=MORNING)
    status = ledger.status(["loans"])[0]
    assert status.running and status.last is None and status.last_success is None


def test_a_failure_stays_shown_while_the_next_run_is_under_way(
    store: Store, tmp_path: Path
) -> None:
    # Given a source whose last run failed
    lender = next(_sqlite_lender(tmp_path))
    source = lender.source(query=f"SELECT account_id, updated_at FROM {lender.table}")
    assert not runner(store, source).run(MORNING).ok
    # When the next run has started but not finished
    SourceLedger(store).start(source.name, now=MORNING + timedelta(minutes=1))
    # Then the status shows the failure, and that a run is under way
    status = SourceLedger(store).status([source.name])[0]
    assert status.running and status.last is not None and not status.last.ok
    assert status.last.started == MORNING


# --- folder ---------------------------------------------------------------------------------

HEADER = "account_id,phone,due_date,amount_due,amount_paid\n"


def folder_source(path: Path, settle: float = 30.0) -> SourceSettings:
    return SourceSettings(name="nightly", kind="folder", every_seconds=60.0, path=path,
                          settle_seconds=settle)  # fmt: skip


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_a_file_written_slowly_is_not_read_until_it_is_complete(store: Store, inbox: Path) -> None:
    nightly = runner(store, folder_source(inbox, settle=30))
    rows = [f"N{n},+8613812345678,{DUE},1000.00,0\n" for n in range(6)]
    target = inbox / "accounts-20261122.csv"
    at = MORNING
    # Given a file arriving in chunks, a run a minute after each chunk
    with target.open("w") as handle:
        for chunk in (HEADER + rows[0], *rows[1:]):
            handle.write(chunk)
            handle.flush()
            at += timedelta(minutes=1)
            result = nightly.run(at)
            # Then nothing is read while it grows
            assert (result.ok, result.rows_read, result.files) == (True, 0, ())
    assert store.account("N0", now=at) is None and target.exists()
    # When it has stayed the same for the settle time (seen by two runs 30 s apart)
    assert nightly.run(at + timedelta(seconds=10)).rows_read == 0
    done = nightly.run(at + timedelta(seconds=40))
    # Then it is imported once, whole, and moved to processed/
    assert (done.ok, done.rows_read, done.upserted, done.files) == (True, 6, 6, (target.name,))
    assert not target.exists() and (inbox / "processed" / target.name).is_file()
    assert nightly.run(at + timedelta(minutes=5)).rows_read == 0
    assert last_run(store, "nightly").watermark == target.name


def test_a_temporary_name_is_never_read_until_renamed(store: Store, inbox: Path) -> None:
    nightly = runner(store, folder_source(inbox, settle=0))
    part = inbox / "accounts.csv.part"
    part.write_text(HEADER + f"T1,+8613812345678,{DUE},1000.00,0\n")
    (inbox / ".accounts.csv").write_text(HEADER)  # rsync's temporary name
    assert nightly.run(MORNING).rows_read == 0
    assert nightly.run(MORNING + timedelta(hours=1)).rows_read == 0
    part.rename(inbox / "accounts.csv")
    assert nightly.run(MORNING + timedelta(hours=1, seconds=1)).upserted == 1


def test_a_file_with_bad_rows_ends_in_rejected_with_its_rejects(store: Store, inbox: Path) -> None:
    nightly = runner(store, folder_source(inbox, settle=0))
    (inbox / "today.csv").write_text(
        HEADER + f"R1,+8613812345678,{DUE},1000.00,0\n"
        f"R2,+8613812345678,not-a-date,1000.00,0\nR3,+8613812345678,{DUE},500,0\n"
    )
    result = nightly.run(MORNING)
    assert (result.ok, result.rows_read, result.upserted, result.rejected) == (True, 3, 2, 1)
    assert result.rejected_ids == ("R2",)
    assert (inbox / "rejected" / "today.csv").is_file() and not (inbox / "today.csv").exists()
    with (inbox / "rejected" / "today.rejects.csv").open() as handle:
        rejects = list(csv.DictReader(handle))
    assert [(r["account_id"], r["row"], r["column"]) for r in rejects] == [("R2", "3", "due_date")]
    assert store.account("R1", now=MORNING) is not None
    assert store.account("R3", now=MORNING) is not None
    assert not (inbox / "processed" / "today.csv").exists()


def test_a_file_unusable_as_a_whole_is_set_aside_with_the_reason(store: Store, inbox: Path) -> None:
    nightly = runner(store, folder_source(inbox, settle=0))
    (inbox / "broken.csv").write_text("account_id,phone\nX1,+8613812345678\n")
    (inbox / "good.csv").write_text(HEADER + f"G1,+8613812345678,{DUE},1000.00,0\n")
    result = nightly.run(MORNING)
    # the good file still went in; the run reports the bad one
    assert result.upserted == 1 and not result.ok and result.error is not None
    assert "broken.csv" in result.error and "missing required column" in result.error
    assert (inbox / "rejected" / "broken.csv").is_file()
    assert "due_date" in (inbox / "rejected" / "broken.error.txt").read_text()
    assert (inbox / "processed" / "good.csv").is_file()


def test_the_same_name_dropped_again_keeps_both_files(store: Store, inbox: Path) -> None:
    nightly = runner(store, folder_source(inbox, settle=0))
    (inbox / "daily.csv").write_text(HEADER + f"D1,+8613812345678,{DUE},1000.00,0\n")
    nightly.run(MORNING)
    (inbox / "daily.csv").write_text(HEADER + f"D1,+8613812345678,{DUE},1000.00,1000.00\n")
    second = nightly.run(MORNING + timedelta(days=1))
    assert second.upserted == 1
    kept = sorted(p.name for p in (inbox / "processed").iterdir())
    assert len(kept) == 2 and kept[0].startswith("daily.2026") and "daily.csv" in kept


def test_a_missing_drop_folder_is_a_failed_run_and_the_next_run_after_it_works(
    store: Store, tmp_path: Path
) -> None:
    nightly = runner(store, folder_source(tmp_path / "not-yet", settle=0))
    failed = nightly.run(MORNING)
    assert not failed.ok and failed.error is not None and "does not exist" in failed.error
    (tmp_path / "not-yet").mkdir()
    shutil.copy(_write(tmp_path / "a.csv", f"F1,+8613812345678,{DUE},1000.00,0\n"),
                tmp_path / "not-yet" / "a.csv")  # fmt: skip
    assert nightly.run(MORNING + timedelta(minutes=1)).upserted == 1


def _write(path: Path, rows: str) -> Path:
    path.write_text(HEADER + rows)
    return path


# --- config ---------------------------------------------------------------------------------


def _config(tmp_path: Path, sources: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[ops]\ntimezone = "Asia/Shanghai"\n{sources}')
    return path


def test_sources_in_config_toml(tmp_path: Path) -> None:
    path = _config(tmp_path, (
        '[[sources]]\nname = "loans"\nkind = "sql"\ncron = "*/5 * * * *"\n'
        'url = "sqlite:///lender/loans.db"\nquery = "SELECT * FROM loans;"\n'
        'watermark_column = "updated_at"\npassword_env = "X"\n'
        '[[sources]]\nname = "nightly"\nkind = "folder"\nevery_seconds = 60\npath = "inbox"\n'
        "settle_seconds = 5\nenabled = false\n"
    ))  # fmt: skip
    loans, nightly = load_settings(path, env={}).sources
    assert (loans.kind, loans.cron, loans.schedule) == ("sql", "*/5 * * * *", "cron */5 * * * *")
    assert loans.url == f"sqlite:///{tmp_path / 'lender' / 'loans.db'}"
    assert loans.query == "SELECT * FROM loans" and loans.password_env == "X"
    assert (nightly.path, nightly.settle_seconds, nightly.enabled) == (tmp_path / "inbox", 5.0,
                                                                       False)  # fmt: skip
    assert nightly.schedule == "every 60 s"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "ftp"', "kind must be"),
        ('kind = "folder"\npath = "x"', "exactly one of every_seconds and cron"),
        ('kind = "folder"\npath = "x"\nevery_seconds = 1\ncron = "* * * * *"', "exactly one"),
        ('kind = "folder"\npath = "x"\ncron = "every day"', "sources.s1.cron"),
        ('kind = "folder"\nevery_seconds = 1', "path"),
        ('kind = "folder"\npath = "x"\nevery_seconds = 1\nquery = "SELECT 1"', "unknown key"),
        ('kind = "sql"\nevery_seconds = 1\nurl = "postgresql://ro:hunter2@db/x"\nquery = "q"',
         "holds a password"),
        ('kind = "sql"\nevery_seconds = 1\nurl = "sqlite:///x.db"', "query is required"),
        ('kind = "sql"\nevery_seconds = 1\nurl = "sqlite:///x.db"\nquery = "q"\n'
         'watermark_column = "a; DROP"', "watermark_column"),
        ('kind = "folder"\npath = "x"\nevery_seconds = "60"', "wrong type"),
    ],
)  # fmt: skip
def test_a_bad_source_is_refused_with_its_key(tmp_path: Path, table: str, message: str) -> None:
    path = _config(tmp_path, f'[[sources]]\nname = "s1"\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_two_sources_with_one_name_are_refused(tmp_path: Path) -> None:
    one = '[[sources]]\nname = "a"\nkind = "folder"\npath = "x"\nevery_seconds = 1\n'
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(_config(tmp_path, one + one), env={})


# --- the commands ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`sources run` configures structlog and the root logger for its process: undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_remind_sources_lists_them_and_sources_run_says_how_it_went(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = _config(tmp_path, (
        f'[store]\nurl = "sqlite:///{tmp_path / "remind.db"}"\n'
        f'[[sources]]\nname = "nightly"\nkind = "folder"\nevery_seconds = 60\n'
        f'path = "{inbox}"\nsettle_seconds = 0\n'
        '[[sources]]\nname = "loans"\nkind = "sql"\nevery_seconds = 60\nenabled = false\n'
        f'url = "sqlite:///{tmp_path / "gone.db"}"\nquery = "SELECT * FROM loans"\n'
    ))  # fmt: skip
    cli = CliRunner()

    def remind(*args: str) -> Any:
        return cli.invoke(app, [*args, "--config", str(config)])

    listed = remind("sources", "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert [(s["name"], s["last_run"]) for s in json_of(listed.output)] == [
        ("nightly", None), ("loans", None)
    ]  # fmt: skip
    (inbox / "a.csv").write_text(HEADER + f"C1,+8613812345678,{DUE},1000.00,0\nC2,x,y,z,0\n")
    ran = remind("sources", "run", "nightly")
    assert ran.exit_code == 1, ran.output  # one row rejected
    assert "2 rows read, 1 upserted, 1 rejected" in ran.output and "C2" in ran.output
    assert remind("sources", "run", "loans").exit_code == 4  # the disabled one runs on demand
    assert remind("sources", "run", "nope").exit_code == 2
    after = {s["name"]: s for s in json_of(remind("sources", "--format", "json").output)}
    assert after["nightly"]["last_run"]["rejected"] == 1 and after["nightly"]["last_error"] is None
    assert "unable to open database file" in after["loans"]["last_error"]
    table = remind("sources")
    assert table.exit_code == 0 and "FAILED" in table.output and "(disabled)" in table.output


def json_of(text: str) -> Any:
    return json.loads(text)
