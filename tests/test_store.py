"""The store's contract, run over every backend (see conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scheduler.errors import SchemaBehindError, StoreError
from scheduler.models import (
    Account,
    AccountStatus,
    Channel,
    Flag,
    Outcome,
    PastContact,
    Promise,
    PromiseStatus,
)
from scheduler.store import Store, UpsertCounts, alembic_config, head_revision
from scheduler.tables import accounts, audit_log, contacts, metadata

SHANGHAI = timezone(timedelta(hours=8))


def acct(account_id: str = "A1", **fields: object) -> Account:
    values: dict[str, object] = {
        "due_date": date(2026, 11, 21),
        "amount_due": Decimal("1000.00"),
        "timezones": ("Asia/Shanghai",),
        "country": "CN",
        "phone": "+8613812345678",
        "currency": "CNY",
    }
    values.update(fields)
    return Account(account_id, **values)  # type: ignore[arg-type]


def stamps(store: Store, account_id: str) -> tuple[datetime, datetime]:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(accounts.c.created_at, accounts.c.updated_at).where(
                accounts.c.account_id == account_id
            )
        ).one()
    return row.created_at, row.updated_at


# --- schema -------------------------------------------------------------------------------


def test_migrations_create_the_schema_the_tables_describe(store: Store) -> None:
    assert store.current_revision() == head_revision()
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_new_sqlite_file_is_created_with_its_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "remind.db"
    with Store.open(f"sqlite:///{path}") as store:
        assert path.is_file()
        assert store.current_revision() == head_revision()


def test_store_behind_head_is_refused_with_the_fix(empty_db: Callable[..., Store]) -> None:
    # Given a store migrated to head, then downgraded to base
    with empty_db(check_schema=False) as store:
        assert store.upgrade() == head_revision()
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
    # When it is opened again, Then it is refused with the revisions and the command
    with pytest.raises(SchemaBehindError) as info:
        empty_db()
    message = str(info.value)
    assert head_revision() in message
    assert "none" in message
    assert "run `remind db upgrade`" in message
    # And after an upgrade it opens
    with empty_db(check_schema=False) as store:
        store.upgrade()
    empty_db().close()


@pytest.mark.postgres
def test_empty_postgres_is_not_created_implicitly(pg_url: str, empty_pg_schema: str) -> None:
    with pytest.raises(SchemaBehindError, match="remind db upgrade"):
        Store.open(pg_url, schema=empty_pg_schema)
    url = f"{pg_url}?options=-csearch_path%3D{empty_pg_schema}"
    with Store.open(url, check_schema=False) as store:
        store.upgrade()
    with Store.open(url) as store, store.engine.connect() as conn:
        assert sa.inspect(conn).has_table("accounts")


@pytest.mark.postgres
def test_postgres_sessions_run_in_utc_and_keep_the_urls_options(
    pg_url: str, pg_schema: str
) -> None:
    url = f"{pg_url}?options=-cstatement_timeout%3D4321"
    with Store.open(url, schema=pg_schema) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "4321ms"
        assert conn.exec_driver_sql("SHOW search_path").scalar() == pg_schema
        stamp = conn.exec_driver_sql("SELECT now()").scalar()
    assert stamp.tzinfo is UTC  # as psycopg gives it: nothing to convert


def test_schema_newer_than_the_code_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        with pytest.raises(StoreError, match="9999") as info:
            _reopen(store)
        assert not isinstance(info.value, SchemaBehindError)
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE alembic_version SET version_num = '{head_revision()}'"))


def _reopen(store: Store) -> Store:
    """Open the same database as ``store`` again (same URL; same search_path on PG)."""
    url = store.engine.url.render_as_string(hide_password=False)
    if store.backend == "postgresql":
        with store.engine.connect() as conn:
            schema = conn.scalar(sa.text("SELECT current_schema()"))
        return Store.open(url, schema=str(schema))
    return Store.open(url)


def test_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE things (id INTEGER)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not a remind store"):
        Store.open(f"sqlite:///{path}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1:1/test?connect_timeout=2",
        "mysql://root@localhost/x",
        "not a url",
    ],
)
def test_unusable_store_urls_raise_store_error(url: str) -> None:
    with pytest.raises(StoreError):
        Store.open(url)


# --- accounts: upsert ---------------------------------------------------------------------


def test_second_identical_upsert_changes_nothing(store: Store, now: datetime) -> None:
    batch = [acct("A1"), acct("A2", flags=frozenset({Flag.NO_SMS, Flag.DISPUTE}))]
    assert store.upsert_accounts(batch, now=now) == UpsertCounts(inserted=2)
    before = stamps(store, "A2")

    counts = store.upsert_accounts(batch, now=now + timedelta(hours=1))

    assert counts == UpsertCounts(unchanged=2)
    assert stamps(store, "A2") == before


def test_payment_updates_the_row_and_its_updated_at(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct("A1"), acct("A2")], now=now)
    later = now + timedelta(days=1)

    counts = store.upsert_accounts([acct("A1", amount_paid=Decimal("400")), acct("A2")], now=later)

    assert counts == UpsertCounts(updated=1, unchanged=1)
    assert stamps(store, "A1") == (now, later)
    found = store.account("A1", now=later)
    assert found is not None
    assert found.amount_paid == Decimal("400")


def test_same_id_twice_in_one_call_is_applied_in_order(store: Store, now: datetime) -> None:
    rows = [acct("A1"), acct("A1", amount_paid=Decimal(5)), acct("A1", amount_paid=Decimal(5))]
    assert store.upsert_accounts(rows, now=now) == UpsertCounts(1, 1, 1)
    found = store.account("A1", now=now)
    assert found is not None
    assert found.amount_paid == Decimal(5)


def test_import_does_not_undo_a_hand_over(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct("A1")], now=now)
    with store.engine.begin() as conn:
        conn.execute(accounts.update().values(status="handed_over"))

    assert store.upsert_accounts([acct("A1")], now=now) == UpsertCounts(unchanged=1)
    closed = acct("A1", status=AccountStatus.CLOSED)
    assert store.upsert_accounts([closed], now=now) == UpsertCounts(updated=1)


def test_import_keeps_phone_valid_unless_the_phone_changes(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct("A1")], now=now)
    with store.engine.begin() as conn:
        conn.execute(accounts.update().values(phone_valid=False))

    store.upsert_accounts([acct("A1", amount_paid=Decimal(1))], now=now)
    found = store.account("A1", now=now)
    assert found is not None
    assert not found.phone_valid

    store.upsert_accounts([acct("A1", amount_paid=Decimal(1), phone="+8613912345678")], now=now)
    found = store.account("A1", now=now)
    assert found is not None
    assert found.phone_valid


def test_rolled_back_import_writes_nothing(store: Store, now: datetime) -> None:
    with store.importing(now=now, batch_size=2) as imp:
        imp.add([acct("A1"), acct("A2"), acct("A3")])
        assert imp.counts == UpsertCounts(inserted=3)
        imp.rollback()
    assert store.account("A1", now=now) is None


def test_error_inside_an_import_rolls_it_back(store: Store, now: datetime) -> None:
    with pytest.raises(RuntimeError), store.importing(now=now) as imp:
        imp.add([acct("A1")])
        raise RuntimeError("boom")
    assert store.account("A1", now=now) is None


@pytest.mark.parametrize(
    "amount", ["0.3", "0.1000", "1234567890123.4567", "0", "99999999.9999", "0.0001"]
)
def test_amounts_round_trip_exactly(store: Store, now: datetime, amount: str) -> None:
    due = Decimal("0.1") + Decimal("0.2") + Decimal(amount)
    store.upsert_accounts([acct("A1", amount_due=due, amount_paid=Decimal(amount))], now=now)
    found = store.account("A1", now=now)
    assert found is not None
    assert (found.amount_due, found.amount_paid) == (due, Decimal(amount))
    assert found.balance == Decimal("0.3")


def test_amount_with_five_decimals_is_refused(store: Store, now: datetime) -> None:
    with pytest.raises(StoreError, match="decimal places"):
        store.upsert_accounts([acct("A1", amount_due=Decimal("1.00001"))], now=now)
    assert store.account("A1", now=now) is None


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="aware"):
        store.upsert_accounts([acct("A1")], now=datetime(2026, 1, 1))


# --- accounts: reading --------------------------------------------------------------------

FIRST = date(2026, 11, 21)
LAST = date(2026, 11, 22)
BEFORE, MAX_DPD = 3, 30
LOW = FIRST - timedelta(days=MAX_DPD + 1)
HIGH = LAST + timedelta(days=BEFORE + 1)


def candidates(store: Store, now: datetime, batch_size: int = 10_000) -> list[Account]:
    batches = list(
        store.candidate_accounts(
            FIRST, LAST, days_before_due=BEFORE, max_dpd=MAX_DPD, now=now, batch_size=batch_size
        )
    )
    assert all(0 < len(b) <= batch_size for b in batches)
    return [a for b in batches for a in b]


def test_candidates_are_active_unpaid_and_due_in_range(store: Store, now: datetime) -> None:
    day = timedelta(days=1)
    store.upsert_accounts(
        [
            acct("in-low", due_date=LOW),
            acct("in-high", due_date=HIGH),
            acct("out-low", due_date=LOW - day),
            acct("out-high", due_date=HIGH + day),
            acct("partly-paid", amount_paid=Decimal("999.99")),
            acct("paid", amount_paid=Decimal("1000")),
            acct("overpaid", amount_paid=Decimal("1000.01")),
            acct("closed", status=AccountStatus.CLOSED),
        ],
        now=now,
    )
    store.upsert_accounts([acct("handed")], now=now)
    with store.engine.begin() as conn:
        conn.execute(
            accounts.update().where(accounts.c.account_id == "handed").values(status="handed_over")
        )

    ids = [a.account_id for a in candidates(store, now, batch_size=2)]

    assert ids == ["in-high", "in-low", "partly-paid"]


def test_accounts_due_on_exact_dates_or_past_the_handover_line(store: Store, now: datetime) -> None:
    d = date(2026, 11, 24)
    store.upsert_accounts(
        [
            acct("pre3", due_date=d + timedelta(days=3)),
            acct("pre2", due_date=d + timedelta(days=2)),
            acct("old", due_date=d - timedelta(days=120)),
            acct("old-paid", due_date=d - timedelta(days=120), amount_paid=Decimal("1000")),
            acct("dpd1", due_date=d - timedelta(days=1)),
        ],
        now=now,
    )
    wanted = {d + timedelta(days=3), d - timedelta(days=1)}
    due = store.accounts_due_on(wanted, due_until=d - timedelta(days=91), now=now, batch_size=2)
    assert sorted(a.account_id for batch in due for a in batch) == ["dpd1", "old", "pre3"]
    only = store.accounts_due_on(wanted, due_until=None, now=now)
    assert sorted(a.account_id for batch in only for a in batch) == ["dpd1", "pre3"]


def test_candidate_flags_merge_imported_and_case_work_flags(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct("A1", flags=frozenset({Flag.NO_SMS})), acct("A2")], now=now)
    hour = timedelta(hours=1)
    store.add_flag("A1", Flag.DISPUTE, since=now - hour, until=None, source="case")
    store.add_flag("A1", Flag.CEASE, since=now - 2 * hour, until=now, source="case")  # expired
    store.add_flag("A1", Flag.COMPLAINT, since=now + hour, until=None, source="case")  # future
    store.add_flag("A2", Flag.LEGAL_HOLD, since=now - hour, until=now + hour, source="legal")

    found = {a.account_id: a.flags for a in candidates(store, now)}

    assert found == {"A1": {Flag.NO_SMS, Flag.DISPUTE}, "A2": {Flag.LEGAL_HOLD}}
    assert store.account("A1", now=now + 2 * hour) == replace(
        acct("A1"), flags=frozenset({Flag.NO_SMS, Flag.DISPUTE, Flag.COMPLAINT})
    )


def test_account_returns_any_status_with_every_field(store: Store, now: datetime) -> None:
    full = acct(
        "A1",
        timezones=("America/Chicago", "America/Denver"),
        name="李雷",
        email="li@example.cn",
        language="zh-CN",
        product="loan",
        status=AccountStatus.CLOSED,
        emergency_contacts=("+8613912345678", "+8613712345678"),
    )
    store.upsert_accounts([full], now=now)
    assert store.account("A1", now=now) == full
    assert store.account("nope", now=now) is None


# --- history ------------------------------------------------------------------------------


def test_history_groups_performed_contacts_and_pending_promises(
    store: Store, now: datetime
) -> None:
    store.upsert_accounts([acct("A1"), acct("A2"), acct("A3")], now=now)
    since = now - timedelta(days=7)
    call = PastContact("A1", Channel.CALL, "first", since, Outcome.NO_ANSWER)
    sms = PastContact("A1", Channel.SMS, "pre", now, due_date=date(2026, 11, 21))
    old = PastContact("A1", Channel.SMS, "pre", since - timedelta(microseconds=1))
    failed = PastContact("A2", Channel.SMS, "pre", now, Outcome.FAILED, target="+8613912345678")
    for n, contact in enumerate([sms, call, old, failed]):
        store.add_performed_contact(contact, contact_id=f"c{n}", now=now)
    _add_planned_contact(store, "A3", now)
    pending = Promise("A3", Decimal("500.5"), date(2026, 11, 25))
    store.add_promise(pending, now=now)
    store.add_promise(replace(pending, status=PromiseStatus.KEPT), now=now)

    everything = store.history(None, since=since)

    assert everything == store.history(["A1", "A2", "A3", "A4"], since=since)
    assert everything["A1"].contacts == (call, sms)
    assert everything["A2"].contacts == (failed,)
    assert everything["A3"].contacts == ()
    assert everything["A3"].promises == (pending,)
    assert set(store.history(["A2"], since=since)) == {"A2"}
    assert store.history([], since=since) == {}
    assert set(store.history(None, since=now + timedelta(microseconds=1))) == {"A3"}


def _add_planned_contact(store: Store, account_id: str, now: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            contacts.insert().values(
                contact_id="planned-1", account_id=account_id, channel="sms", rule="pre",
                target="borrower", window_start=now, window_end=now + timedelta(hours=1),
                status="planned", created_at=now, updated_at=now, performed_at=now,
            )
        )  # fmt: skip


def test_datetimes_come_back_aware_utc(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct("A1")], now=now.astimezone(SHANGHAI))
    at = datetime(2026, 11, 20, 21, 40, tzinfo=SHANGHAI)
    store.add_performed_contact(PastContact("A1", Channel.CALL, "r", at), contact_id="c", now=now)

    (contact,) = store.history(["A1"], since=at)["A1"].contacts

    assert contact.at == at
    assert contact.at.tzinfo == UTC
    assert stamps(store, "A1") == (now, now)
    assert all(t.tzinfo == UTC for t in stamps(store, "A1"))


def test_flag_for_unknown_account_or_bad_interval_is_refused(store: Store, now: datetime) -> None:
    with pytest.raises(StoreError):
        store.add_flag("nobody", Flag.CEASE, since=now, until=None, source="case")
    store.upsert_accounts([acct("A1")], now=now)
    with pytest.raises(ValueError, match="later"):
        store.add_flag("A1", Flag.CEASE, since=now, until=now, source="case")


def test_audit_events_are_appended_with_json_detail(store: Store, now: datetime) -> None:
    store.record_audit("accounts_import", at=now, detail={"file": "a.csv", "rows": 3})
    store.record_audit("sent", at=now, account_id="A1", contact_id="c1", rule="r", channel="sms")

    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).all()

    assert [r.kind for r in rows] == ["accounts_import", "sent"]
    assert json.loads(rows[0].detail) == {"file": "a.csv", "rows": 3}
    assert rows[1].account_id == "A1"
    assert rows[0].at == now


def test_candidates_closed_early_release_the_connection(store: Store, now: datetime) -> None:
    store.upsert_accounts([acct(f"A{i}") for i in range(5)], now=now)
    batches = store.candidate_accounts(
        FIRST, LAST, days_before_due=BEFORE, max_dpd=MAX_DPD, now=now, batch_size=2
    )
    assert [a.account_id for a in next(batches)] == ["A0", "A1"]
    batches.close()
    assert store.upsert_accounts([acct("A9")], now=now) == UpsertCounts(inserted=1)
