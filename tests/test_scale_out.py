"""Several ``remind run`` processes on one PostgreSQL store: every daemon dispatches, one
plans and watches, and a daemon that dies hands both over without losing or doubling a
contact. Real processes, a real PostgreSQL schema of the test's own, the loopback gateway
as its own process."""

from __future__ import annotations

import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.leader import AdvisoryLeader
from scheduler.store import Store
from tests.factories import account, local
from tests.support.daemon import (
    DaemonProcess,
    audit_rows,
    contact_rows,
    remind,
    statuses,
    write_config,
)
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.postgres

DUE = date(2026, 11, 23)
ZONE = "Asia/Shanghai"
NOON = local(DUE - timedelta(days=1), "12:30", ZONE)
N = 20_000
CHANNELS = """
[channels.sms]
type = "sms_http"
url = "{GW}/sms"
concurrency = 8
[channels.email]
type = "outbox"
path = "outbox-email.jsonl"
[channels.call]
type = "call_queue"
[channels.letter]
type = "outbox"
path = "outbox-letter.jsonl"
"""


def schema_url(pg_url: str, schema: str) -> str:
    return f"{pg_url}?options=-csearch_path%3D{schema}"


def leading(daemon: DaemonProcess) -> bool | None:
    """Whether the daemon's last word on the lead was that it has it (None: no word)."""
    changes = [e["leading"] for e in daemon.events() if e.get("event") == "leader.changed"]
    return changes[-1] if changes else None


def test_three_daemons_one_killed_one_stopped_every_contact_once(
    tmp_path: Path, pg_url: str, empty_pg_schema: str
) -> None:
    # Given 20,000 SMS due now in a PostgreSQL store, a gateway that sometimes refuses, and
    # three daemons on that store
    url = schema_url(pg_url, empty_pg_schema)
    config = write_config(
        tmp_path, store_url=url,
        channels=CHANNELS,
        daemon="batch_size = 200\nlease_seconds = 10\nretry_base_seconds = 1\n"
               "retry_max_seconds = 2\nplan_days = 1\n",
    )  # fmt: skip
    assert remind(config, "db", "upgrade").returncode == 0
    with Store.open(url) as store:
        store.upsert_accounts(
            [account(f"P{i:05d}", due_date=DUE, email=None) for i in range(N)], now=NOON
        )
    faults = {"rate_429": 0.01, "rate_500": 0.01, "retry_after": 1, "seed": 3}
    with GatewayProcess(faults=faults, log=tmp_path / "gateway.jsonl") as gateway:
        config.write_text(config.read_text().replace("{GW}", gateway.url))
        daemons = [DaemonProcess(config, NOON, tmp_path / f"d{n}.log") for n in range(3)]
        for d in daemons:
            d.wait_for(lambda d=d: leading(d) is not None, timeout=60)
        # exactly one of them plans
        leaders = [d for d in daemons if leading(d)]
        assert len(leaders) == 1
        first_leader = leaders[0]
        first_leader.wait_for(lambda: _done(url) > 0, timeout=240)
        # When, mid-run, the leader is SIGKILLed and one of the others gets SIGTERM
        first_leader.wait_for(lambda: len(gateway.deliveries()) >= 3_000, timeout=120)
        first_leader.kill()
        others = [d for d in daemons if d is not first_leader]
        stopped, survivor = others
        time.sleep(0.5)
        assert stopped.stop(timeout=40) == 0  # SIGTERM: drains and exits 0
        # Then the survivor takes the lead, plans, and finishes the work
        survivor.wait_for(lambda: leading(survivor) is True, timeout=60)
        survivor.wait_for(lambda: statuses(url).get("sent", 0) == N, timeout=240)
        planner = _state(url, "planner")
        assert planner is not None and planner.endswith(f":{survivor.proc.pid}")
        assert survivor.stop() == 0
        delivered = [d["key"] for d in gateway.deliveries()]
        requests = gateway.requests()
    # every contact recorded sent exactly once, by some daemon; none delivered twice
    rows = contact_rows(url, "status", "window_start")
    today = Counter(r.status for r in rows if r.window_start <= NOON + timedelta(hours=8))
    assert today == {"sent": N}
    assert {r.status for r in rows if r.window_start > NOON + timedelta(hours=8)} == {"planned"}
    sent_events = [r.contact_id for r in audit_rows(url, "sent")]
    assert len(sent_events) == len(set(sent_events)) == N
    assert len(delivered) == len(set(delivered)) == N
    assert set(delivered) == set(sent_events)
    # all three did part of it (their logs say so), and the gateway did refuse now and then
    sent_by = Counter(
        n for n in range(3)
        for line in (tmp_path / f"d{n}.log").read_text().splitlines()
        if '"event_kind": "sent"' in line
    )  # fmt: skip
    assert set(sent_by) == {0, 1, 2} and sum(sent_by.values()) >= N - 3_000
    assert {429, 500} <= {r["status"] for r in requests}


def test_the_lead_is_free_again_when_its_holder_goes(pg_url: str, empty_pg_schema: str) -> None:
    # Given two daemons' leaderships on one schema, and one on another schema
    url = schema_url(pg_url, empty_pg_schema)
    with Store.open(url, check_schema=False) as a, Store.open(url, check_schema=False) as b:
        first, second = AdvisoryLeader(a.engine), AdvisoryLeader(b.engine)
        elsewhere = sa.create_engine(pg_url)
        other = AdvisoryLeader(elsewhere)
        try:
            # When the first takes the lead, the second cannot; another schema is apart
            assert first.acquire() and first.acquire()
            assert not second.acquire()
            assert other.acquire()
            # When the first's connection dies (as with a killed process), the lead is free
            assert first._conn is not None
            pid = first._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with b.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            deadline = time.monotonic() + 10
            while not second.acquire() and time.monotonic() < deadline:
                time.sleep(0.1)
            # Then the second leads, and the first knows it does not
            assert second.acquire()
            assert not first.acquire()
        finally:
            for leader in (first, second, other):
                leader.release()
            elsewhere.dispose()


def _done(url: str) -> int:
    counts = statuses(url)
    return sum(v for k, v in counts.items() if k != "planned")


def _state(url: str, key: str) -> str | None:
    with Store.open(url) as store, store.engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT value FROM daemon_state WHERE name = :k"), {"k": key}
        ).scalar()
    return None if value is None else str(value)
