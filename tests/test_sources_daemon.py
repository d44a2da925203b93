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
ZONE = "Asia/Shanghai"
MORNING = local(DUE - timedelta(days=1), "09:00", ZONE)
#: Ten seconds before the pre-due SMS windows open (10:00 local): time for the first source
#: run to bring a payment in before any SMS may go.
BEFORE_TEN = local(DUE - timedelta(days=1), "10:00", ZONE) - timedelta(seconds=10)
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

    def add(self, account_id: str) -> None:
        self.run("INSERT INTO loans VALUES (:id, '+8613812345678', :due, '800.00', '0', :at)",
                 id=account_id, due=DUE.isoformat(), at=self.tick())  # fmt: skip

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
            f'path = "{inbox}"\nsettle_seconds = 1.5\n'
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
    # Given the lender's system holds four accounts due tomorrow, read and planned at 09:00
    for account_id in ("S1", "S2", "S3", "S4"):
        lender.add(account_id)
    first = remind(config, "run", "--once", now=MORNING, env=ENV)
    assert first.returncode == 0, first.stderr
    assert {r.account_id for r in contact_rows(url, "account_id")} == {"S1", "S2", "S3", "S4"}
    assert gateway.deliveries() == []
    # and S2 pays in the lender's system before 10:00
    lender.pay("S2")
    # When the daemon runs from ten seconds before the SMS windows open
    daemon = DaemonProcess(config, BEFORE_TEN, tmp_path / "daemon.log", env=ENV)

    def skipped_paid() -> set[str]:
        return {r.account_id for r in contact_rows(url, "account_id", "status", "reason")
                if (r.status, r.reason) == ("skipped", "paid")}  # fmt: skip

    # Then its source brings the payment in and S2's SMS is cancelled before any SMS went
    daemon.wait_for(lambda: skipped_paid() == {"S2"}, timeout=20)
    assert gateway.deliveries() == []
    # When the lender's database goes away (its file moved: their system is down)
    aside = lender.path.with_name("lender-aside.db")
    lender.path.rename(aside)
    daemon.wait_for(lambda: any(r.error for r in runs(url, "loans")), timeout=20)
    # Then the daemon keeps dispatching: the three SMS go at 10:00, S2's does not
    daemon.wait_for(lambda: len(gateway.deliveries()) == 3, timeout=30)
    assert not lender.path.exists()  # (still down while they went)
    sent = {r.account_id for r in contact_rows(url, "account_id", "status") if r.status == "sent"}
    assert sent == {"S1", "S3", "S4"}
    # and `remind status` shows the source's failure
    status = remind(config, "status", "--format", "json", env=ENV)
    loans = {s["name"]: s for s in json.loads(status.stdout)["sources"]}["loans"]
    assert loans["last_run"]["ok"] is False
    assert "unable to open database file" in loans["last_error"]
    assert loans["last_success"] is not None
    # When a file arrives in the drop folder meanwhile, written slowly in chunks
    rows = [f"F{n},+8613812345678,{DUE},500.00,0\n" for n in range(8)]
    with (inbox / "tonight.csv").open("w") as handle:
        handle.write("account_id,phone,due_date,amount_due,amount_paid\n")
        for row in rows:
            handle.write(row)
            handle.flush()
            time.sleep(0.3)  # less than settle_seconds between two writes
    # and the lender's database comes back with a new account recorded while it was down
    aside.rename(lender.path)
    lender.add("S5")
    # Then the next run catches up, and the whole file is read once, after it was complete
    daemon.wait_for(lambda: _account_known(url, "S5"), timeout=20)
    daemon.wait_for(lambda: (inbox / "processed" / "tonight.csv").exists(), timeout=20)
    nightly = [r for r in runs(url, "nightly") if r.rows_read]
    assert [(r.rows_read, r.upserted, r.rejected) for r in nightly] == [(8, 8, 0)]
    daemon.wait_for(lambda: runs(url, "loans")[-1].error is None, timeout=10)
    assert daemon.stop() == 0
    events = [e for e in daemon.events() if e.get("event") in ("source.run", "source.failed")]
    assert {e["event"] for e in events} == {"source.run", "source.failed"}
    assert len(gateway.deliveries()) == 3


def _account_known(url: str, account_id: str) -> bool:
    with Store.open(url) as store:
        return store.account(account_id, now=datetime.now(UTC)) is not None
