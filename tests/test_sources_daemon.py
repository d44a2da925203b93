"""``remind run`` with account sources, as a real process: a real SQLite store, the lender's
database as a SQLite file of its own, a drop folder, and the loopback SMS gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler.store import Store
from scheduler.tables import source_runs
from tests.factories import local
from tests.support.daemon import DaemonProcess, contact_rows, remind, write_config
from tests.support.gateway import LoopbackGateway

DUE = date(2026, 11, 23)
TODAY = DUE - timedelta(days=1)
ZONE = "Asia/Shanghai"
EARLY = local(TODAY, "08:30", ZONE)  # after quiet hours, before the 09:00 due-day SMS window
AT_NINE = local(TODAY, "09:00", ZONE)
ENV = {"TEST_SMS_TOKEN": "s3cret"}


@pytest.fixture
def gateway() -> Iterator[LoopbackGateway]:
    with LoopbackGateway() as gw:
        yield gw


class Lender:
    """The lender's database: a SQLite file with a ``loans`` view-like table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
        self.run("CREATE TABLE loans (account_id TEXT PRIMARY KEY, phone TEXT, due_date TEXT, "
                 "amount_due TEXT, amount_paid TEXT, updated_at TEXT NOT NULL)")  # fmt: skip
        self.clock = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)

    def run(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def tick(self) -> str:
        self.clock += timedelta(minutes=1)
        return self.clock.strftime("%Y-%m-%d %H:%M:%S")

    def add(self, account_id: str, due: date = DUE) -> None:
        self.run("INSERT INTO loans VALUES (:id, '+8613812345678', :due, '800.00', '0', :at)",
                 id=account_id, due=due.isoformat(), at=self.tick())  # fmt: skip

    def pay(self, account_id: str) -> None:
        self.run("UPDATE loans SET amount_paid = amount_due, updated_at = :at "
                 "WHERE account_id = :id", id=account_id, at=self.tick())  # fmt: skip


def config_for(tmp_path: Path, gateway: LoopbackGateway, lender: Path, inbox: Path) -> Path:
    return write_config(
        tmp_path,
        store_url=f"sqlite:///{tmp_path / 'remind.db'}",
        channels=(
            f'[channels.sms]\ntype = "sms_http"\nurl = "{gateway.url}/sms"\n'
            'token_env = "TEST_SMS_TOKEN"\ntimeout_seconds = 2\n'
            '[channels.email]\ntype = "outbox"\npath = "outbox-email.jsonl"\n'
            '[channels.call]\ntype = "call_queue"\n'
            '[channels.letter]\ntype = "outbox"\npath = "outbox-letter.jsonl"\n'
            '[[sources]]\nname = "loans"\nkind = "sql"\nevery_seconds = 0.5\n'
            f'url = "sqlite:///{lender}"\nwatermark_column = "updated_at"\n'
            'query = "SELECT * FROM loans"\n'
            '[[sources]]\nname = "nightly"\nkind = "folder"\nevery_seconds = 0.5\n'
            f'path = "{inbox}"\nsettle_seconds = 2.5\n'
        ),
    )


def runs(url: str, name: str) -> list[sa.Row[Any]]:
    with Store.open(url) as store, store.engine.connect() as conn:
        stmt = sa.select(source_runs).where(source_runs.c.source == name)
        return list(conn.execute(stmt.order_by(source_runs.c.id)))


def test_sources_feed_the_daemon_and_a_lender_outage_never_stops_dispatch(
    tmp_path: Path, gateway: LoopbackGateway
) -> None:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    lender = Lender(tmp_path / "lender.db")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = config_for(tmp_path, gateway, lender.path, inbox)
    # Given the lender's system holds three accounts due today and four due tomorrow, read
    # and planned at 08:30 (`run --once` runs the sources first)
    for account_id in ("D1", "D2", "D3"):
        lender.add(account_id, due=TODAY)
    for account_id in ("S1", "S2", "S3", "S4"):
        lender.add(account_id)
    first = remind(config, "run", "--once", now=EARLY, env=ENV)
    assert first.returncode == 0, first.stderr
    assert len({r.account_id for r in contact_rows(url, "account_id")}) == 7
    assert gateway.deliveries() == []
    # and S2 pays in the lender's system
    lender.pay("S2")
    # When the daemon runs
    daemon = DaemonProcess(config, EARLY, tmp_path / "early.log", env=ENV)

    def states(*accounts: str) -> set[tuple[str, str, str | None]]:
        return {(r.account_id, r.status, r.reason)
                for r in contact_rows(url, "account_id", "status", "reason")
                if r.account_id in accounts}  # fmt: skip

    # Then its source brings the payment in and S2's planned SMS is recorded skipped "paid"
    # by the source run, not by a dispatch tick (its window opens tomorrow)
    daemon.wait_for(lambda: states("S2") == {("S2", "skipped", "paid")}, timeout=30)
    assert {s for _, s, _ in states("S1", "S3", "S4")} == {"planned"}
    assert daemon.stop() == 0
    # Given the lender's database is down (its file moved away) when the 09:00 SMS are due
    aside = lender.path.with_name("lender-aside.db")
    lender.path.rename(aside)
    daemon = DaemonProcess(config, AT_NINE, tmp_path / "nine.log", env=ENV)
    # Then the source's runs fail and the daemon keeps dispatching: the three SMS go
    daemon.wait_for(lambda: sum(bool(r.error) for r in runs(url, "loans")) >= 2, timeout=30)
    daemon.wait_for(lambda: len(gateway.deliveries()) == 3, timeout=30)
    assert {a for a, s, _ in states("D1", "D2", "D3") if s == "sent"} == {"D1", "D2", "D3"}
    assert runs(url, "loans")[-1].error is not None and not lender.path.exists()
    # and `remind status` shows the source's failure and its last success
    status = remind(config, "status", "--format", "json", env=ENV)
    loans = {s["name"]: s for s in json.loads(status.stdout)["sources"]}["loans"]
    assert loans["last_run"]["ok"] is False and loans["last_success"] is not None
    assert "unable to open database file" in loans["last_error"]
    # When a file arrives in the drop folder meanwhile, written slowly in chunks
    rows = [f"F{n},+8613812345678,{DUE},500.00,0\n" for n in range(8)]
    with (inbox / "tonight.csv").open("w") as handle:
        handle.write("account_id,phone,due_date,amount_due,amount_paid\n")
        for row in rows:
            handle.write(row)
            handle.flush()
            time.sleep(0.3)  # well under settle_seconds between two writes
    # and the lender's database comes back with an account recorded while it was down
    aside.rename(lender.path)
    lender.add("S5")
    # Then the next run catches up, and the file is read once, whole, after it was complete
    daemon.wait_for(lambda: _account_known(url, "S5"), timeout=30)
    daemon.wait_for(lambda: (inbox / "processed" / "tonight.csv").exists(), timeout=30)
    nightly = [r for r in runs(url, "nightly") if r.rows_read]
    assert [(r.rows_read, r.upserted, r.rejected) for r in nightly] == [(8, 8, 0)]
    daemon.wait_for(lambda: runs(url, "loans")[-1].error is None, timeout=10)
    assert daemon.stop() == 0
    events = {e.get("event") for e in daemon.events()}
    assert {"source.run", "source.failed"} <= events
    assert len(gateway.deliveries()) == 3


def _account_known(url: str, account_id: str) -> bool:
    with Store.open(url) as store:
        return store.account(account_id, now=datetime.now(UTC)) is not None
