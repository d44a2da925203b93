"""The dispatcher's claim and settle over a deep queue, against the same drain done with the
one-query claim a hand-written dispatcher would use, in the same run.

    .venv/bin/python bench/claim.py [--store postgres|sqlite] [--due 20000] [--later 200000]
        [--priorities 6] [--batch 200] [--json]

Untimed set-up: a fresh store, 1,000 accounts, ``--due`` planned SMS due now (in the two
hours before it, spread over ``--priorities`` priorities 10, 20, ...) and ``--later`` not
yet due (from a minute to 3 days after it, the daemon's horizon) at a priority above them
all: tomorrow's and the day after's first-24h contacts, the rows an index-ordered walk has
to pass. Rows are inserted directly.

Measured, one process, one connection at a time (the server's CPU is in the wall time):

* ``remind``: ``ContactQueue.claim_due(limit=batch)`` and then ``settle`` (``sent``, one
  audit row each) of every batch, until nothing is due.
* ``baseline``: the same drain with the raw driver (psycopg or sqlite3) on the same table
  and indexes, the rows put back to ``planned`` first (and vacuumed on PostgreSQL). Each
  batch is one ``UPDATE ... WHERE contact_id IN (SELECT ... due ... ORDER BY priority DESC,
  next_attempt_at LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING``, then the same settle
  ``UPDATE`` (``executemany``) and an audit row each into a bare table.

Reports wall s, contacts/s, ms per claim and per settle, the PostgreSQL server's CPU, peak
RSS and the ratio remind/baseline. It checks that both drains took every due contact once.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from bench.common import (  # noqa: E402
    fresh_store,
    libpq_url,
    peak_rss_mib,
    postgres_cpu,
    raw_sqlite,
    sqlite_text,
)
from scheduler.bulk import insert_rows  # noqa: E402
from scheduler.models import Channel  # noqa: E402
from scheduler.queue import ContactQueue, Settlement  # noqa: E402
from scheduler.store import Store  # noqa: E402
from scheduler.tables import audit_log, contacts  # noqa: E402
from tests.factories import account  # noqa: E402

NOW = datetime(2026, 11, 22, 4, 30, tzinfo=UTC)  # 12:30 in Shanghai
LEASE = timedelta(minutes=2)
ACCOUNTS = 1_000


def seed(store: Store, due: int, later: int, priorities: int) -> None:
    store.upsert_accounts([account(f"A{i:04d}") for i in range(ACCOUNTS)], now=NOW)
    rng = random.Random(7)
    top = 10 * priorities + 10
    with store.writer.begin() as conn:
        for first in range(0, due + later, 20_000):  # in parts: the peak RSS is the drains'
            rows = []
            for i in range(first, min(first + 20_000, due + later)):
                if i < due:
                    at = NOW - timedelta(seconds=rng.randint(0, 7200))
                    priority = 10 * rng.randint(1, priorities)
                else:
                    at, priority = NOW + timedelta(seconds=rng.randint(60, 3 * 86400)), top
                rows.append({
                    "contact_id": f"c{i:08d}", "account_id": f"A{i % ACCOUNTS:04d}",
                    "channel": "sms", "rule": "first_overdue_sms", "target": "borrower",
                    "due_date": date(2026, 11, 21), "step": 1, "window_start": at,
                    "window_end": at + timedelta(hours=9), "template": "first_overdue",
                    "priority": priority, "sla_risk": False, "status": "planned",
                    "attempts": 0, "next_attempt_at": at, "policy_version": "b",
                    "created_at": NOW, "updated_at": NOW,
                })  # fmt: skip
            insert_rows(conn, contacts, rows)
    _maintain(store)


def _maintain(store: Store) -> None:
    """Fresh statistics (and, on PostgreSQL, no dead rows) before a drain."""
    if store.backend == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE contacts")
    else:
        with store.writer.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def reset(store: Store) -> None:
    c = contacts.c
    with store.writer.begin() as conn:
        conn.execute(
            contacts.update().where(c.status != "planned").values(
                status="planned", reason=None, attempts=0, next_attempt_at=c.window_start,
                provider_ref=None, performed_at=None, lease_owner=None, lease_until=None,
            )
        )  # fmt: skip
        conn.execute(audit_log.delete())
    _maintain(store)


Batch = Sequence[tuple[str, str]]  # (contact_id, account_id) of each contact claimed


def drain(
    take: Callable[[], Batch], write: Callable[[Batch], object], *, postgres: bool
) -> dict[str, Any]:
    """Claim with ``take`` and settle with ``write`` until a claim comes back empty."""
    claim_s = settle_s = 0.0
    claims = 0
    taken: list[str] = []
    cpu = _pg_cpu() if postgres else 0.0
    started = time.perf_counter()
    while True:
        before = time.perf_counter()
        batch = take()
        claimed = time.perf_counter()
        claim_s += claimed - before
        claims += 1
        if not batch:
            break
        write(batch)
        settle_s += time.perf_counter() - claimed
        taken += [cid for cid, _ in batch]
    wall = time.perf_counter() - started
    return {
        "wall_s": wall, "contacts": len(taken), "distinct": len(set(taken)), "claims": claims,
        "claim_ms": 1000 * claim_s / claims, "settle_ms": 1000 * settle_s / max(claims - 1, 1),
        "postgres_cpu_s": _pg_cpu() - cpu if postgres else None,
    }  # fmt: skip


def _pg_cpu() -> float:
    return sum(postgres_cpu().values())


def remind_drain(store: Store, batch: int) -> dict[str, Any]:
    queue = ContactQueue(store)

    def take() -> Batch:
        claimed = queue.claim_due(Channel.SMS, "bench", now=NOW, lease_seconds=120, limit=batch)
        return [(c.contact_id, c.account_id) for c in claimed]

    def write(claimed: Batch) -> None:
        done = [
            Settlement(cid, aid, "sent", "sent", 1, provider_ref=f"p-{cid}",
                       rule="first_overdue_sms", channel="sms")
            for cid, aid in claimed
        ]  # fmt: skip
        queue.settle("bench", done, now=NOW, policy_version="b")

    return drain(take, write, postgres=store.backend == "postgresql")


_CLAIM = (
    "UPDATE contacts SET status = 'claimed', lease_owner = {p}, lease_until = {p},"
    " updated_at = {p} WHERE contact_id IN (SELECT contact_id FROM contacts"
    " WHERE channel = 'sms' AND ((status = 'planned' AND next_attempt_at <= {p})"
    " OR (status = 'claimed' AND lease_until < {p}))"
    " ORDER BY priority DESC, next_attempt_at LIMIT {p}{lock}) RETURNING contact_id, account_id"
)
_SETTLE = (
    "UPDATE contacts SET status = 'sent', reason = 'sent', attempts = 1,"
    " next_attempt_at = NULL, provider_ref = {p}, performed_at = {p}, lease_owner = NULL,"
    " lease_until = NULL, updated_at = {p} WHERE contact_id = {p} AND lease_owner = {p}"
)
_AUDIT_DDL = (
    "CREATE TABLE bare_audit (at {ts}, kind TEXT, account_id TEXT, contact_id TEXT, rule TEXT,"
    " channel TEXT, policy_version TEXT, detail TEXT)"
)


def baseline_drain(url: str, schema: str | None, batch: int) -> dict[str, Any]:
    if schema is None:
        return _sqlite_drain(url, batch)
    with psycopg.connect(libpq_url(url), options=f"-csearch_path={schema}") as db:
        db.execute(_AUDIT_DDL.format(ts="TIMESTAMPTZ"))
        db.commit()
        claim = _CLAIM.format(p="%s", lock=" FOR UPDATE SKIP LOCKED")
        settle = _SETTLE.format(p="%s")
        until = NOW + LEASE

        def take() -> Batch:
            with db.transaction():
                return db.execute(claim, ("bench", until, NOW, NOW, NOW, batch)).fetchall()

        def write(claimed: Batch) -> None:
            with db.transaction(), db.cursor() as cur:
                cur.executemany(settle, [(f"p-{c}", NOW, NOW, c, "bench") for c, _ in claimed])
                with cur.copy("COPY bare_audit FROM STDIN") as copy:
                    for cid, aid in claimed:
                        copy.write_row((NOW, "sent", aid, cid, "first_overdue_sms", "sms", "b",
                                        "{}"))  # fmt: skip

        return drain(take, write, postgres=True)


def _sqlite_drain(url: str, batch: int) -> dict[str, Any]:
    db = raw_sqlite(url)
    db.execute(_AUDIT_DDL.format(ts="TEXT"))
    claim = _CLAIM.format(p="?", lock="")
    settle = _SETTLE.format(p="?")
    now, until = sqlite_text(NOW), sqlite_text(NOW + LEASE)

    def take() -> Batch:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(claim, ("bench", until, now, now, now, batch)).fetchall()
        db.execute("COMMIT")
        return rows

    def write(claimed: Batch) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(settle, [(f"p-{c}", now, now, c, "bench") for c, _ in claimed])
        db.executemany("INSERT INTO bare_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(now, "sent", a, c, "first_overdue_sms", "sms", "b", "{}")
                        for c, a in claimed])  # fmt: skip
        db.execute("COMMIT")

    try:
        return drain(take, write, postgres=False)
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--due", type=int, default=20_000, help="planned SMS due now")
    parser.add_argument("--later", type=int, default=200_000, help="planned, not yet due")
    parser.add_argument("--priorities", type=int, default=6, help="of the due contacts")
    parser.add_argument("--batch", type=int, default=200, help="contacts per claim")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with fresh_store(args.store) as ref:
        store = ref.open()
        try:
            seed(store, args.due, args.later, args.priorities)
            ours = remind_drain(store, args.batch)
            reset(store)
        finally:
            store.close()
        base = baseline_drain(ref.url, ref.schema, args.batch)
    for name, r in (("remind", ours), ("baseline", base)):
        if r["contacts"] != args.due or r["distinct"] != args.due:
            raise SystemExit(f"{name} took {r['contacts']:,} contacts ({r['distinct']:,} "
                             f"distinct) of {args.due:,} due")  # fmt: skip
    result = {
        "store": args.store, "due": args.due, "later": args.later,
        "priorities": args.priorities, "batch": args.batch, "remind": ours, "baseline": base,
        "ratio": ours["wall_s"] / base["wall_s"], "peak_rss_mib": round(peak_rss_mib(), 1),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"claim and settle, {args.store}, {args.due:,} due over {args.priorities} "
          f"priorities + {args.later:,} not yet due above them, batch {args.batch}")  # fmt: skip
    print(f"  {'':9} {'wall s':>7} {'contacts/s':>11} {'ms/claim':>9} {'ms/settle':>10} "
          f"{'postgres CPU s':>15}")  # fmt: skip
    for name, r in (("remind", ours), ("baseline", base)):
        cpu = "" if r["postgres_cpu_s"] is None else f"{r['postgres_cpu_s']:.2f}"
        print(f"  {name:9} {r['wall_s']:7.2f} {r['contacts'] / r['wall_s']:11,.0f} "
              f"{r['claim_ms']:9.2f} {r['settle_ms']:10.2f} {cpu:>15}")  # fmt: skip
    print(f"  ratio remind/baseline (wall): {result['ratio']:.2f}x; every due contact taken "
          f"once by each; peak RSS {result['peak_rss_mib']:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
