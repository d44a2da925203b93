"""Plan materialisation: what the daemon's plan tick does, timed step by step, against the
same rows written with the raw driver in the same run.

    .venv/bin/python bench/materialise.py --accounts 20000 [--store sqlite|postgres] [--days 2]

N accounts due tomorrow (SMS and email both possible) are upserted into a fresh store
(untimed). Then, timed: ``load_for_plan`` (accounts and history), ``plan`` (pure), and
``ContactQueue.materialise`` (contact rows ``ON CONFLICT DO NOTHING`` plus one ``planned``
audit row each, one transaction; ``COPY`` through a staging table on PostgreSQL). The
baseline writes the same number of contact rows and audit rows into two bare tables of the
same columns with the raw driver (``executemany`` on SQLite, ``COPY`` on PostgreSQL), so the
ratio is materialise against the least any writer must do. Prints wall seconds, rows/s,
peak RSS and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from bench.common import fresh_store, libpq_url, peak_rss_mib, raw_sqlite  # noqa: E402
from scheduler.models import Horizon  # noqa: E402
from scheduler.planner import plan  # noqa: E402
from scheduler.planning import load_for_plan  # noqa: E402
from scheduler.queue import ContactQueue  # noqa: E402
from tests.factories import account, local, shipped_policies  # noqa: E402

DUE = date(2026, 11, 23)
NOON = local(DUE - timedelta(days=1), "12:30", "Asia/Shanghai").astimezone(UTC)
_COLUMNS = (
    "contact_id", "account_id", "channel", "rule", "target", "due_date", "step",
    "window_start", "window_end", "template", "priority", "sla_risk", "status", "attempts",
    "next_attempt_at", "policy_version", "created_at", "updated_at",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--days", type=int, default=2, help="horizon in days from today")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with fresh_store(args.store) as ref:
        store = ref.open()
        try:
            store.upsert_accounts(
                [account(f"M{i:07d}", due_date=DUE) for i in range(args.accounts)], now=NOON
            )
            result = measure(store, args.days)
        finally:
            store.close()
        result["baseline"] = baseline(ref.url, ref.schema, result["rows"])
    result["ratio"] = result["materialise_s"] / result["baseline"]["wall_s"]
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result.update(store=args.store, accounts=args.accounts, days=args.days)
    if args.json:
        print(json.dumps(result))
        return
    print(f"materialise, {args.store}, {args.accounts:,} accounts, {args.days} days")
    print(f"  load_for_plan  {result['load_s']:7.2f} s")
    print(f"  plan           {result['plan_s']:7.2f} s  {result['rows']:,} contacts")
    rate = result["rows"] / result["materialise_s"]
    print(f"  materialise    {result['materialise_s']:7.2f} s  {rate:,.0f} contacts/s "
          "(+ as many audit rows)")  # fmt: skip
    print(f"  baseline       {result['baseline']['wall_s']:7.2f} s  "
          f"({result['baseline']['how']}, same rows into bare tables)")  # fmt: skip
    print(f"  ratio materialise/baseline {result['ratio']:.1f}x; peak RSS "
          f"{result['peak_rss_mib']:.0f} MiB")  # fmt: skip


def measure(store: Any, days: int) -> dict[str, Any]:
    policies = shipped_policies()
    horizon = Horizon(NOON.date(), days)
    started = time.perf_counter()
    accounts, history = load_for_plan(store, policies, horizon, NOON, None)
    loaded = time.perf_counter()
    result = plan(NOON, accounts, history, policies, horizon)
    planned = time.perf_counter()
    inserted, _ = ContactQueue(store).materialise(result.planned, now=NOON, policy_version="b")
    done = time.perf_counter()
    if inserted != len(result.planned):
        raise SystemExit(f"materialised {inserted} of {len(result.planned)}")
    return {
        "load_s": loaded - started, "plan_s": planned - loaded,
        "materialise_s": done - planned, "rows": inserted,
    }  # fmt: skip


def _rows(n: int) -> list[tuple[Any, ...]]:
    return [
        (f"c{i:024x}", f"M{i % 10_000_000:07d}", "sms", "pre_due_sms_1d", "borrower", DUE, -1,
         NOON, NOON + timedelta(hours=8), "pre_due", 10, False, "planned", 0, NOON, "b",
         NOON, NOON)
        for i in range(n)
    ]  # fmt: skip


def baseline(url: str, schema: str | None, n: int) -> dict[str, Any]:
    rows = _rows(n)
    audit = [(NOON, "planned", r[1], r[0], r[3], r[2], "b", "{}") for r in rows]
    contacts_ddl = (
        "CREATE TABLE bare_contacts (contact_id TEXT PRIMARY KEY, account_id TEXT, channel TEXT,"
        " rule TEXT, target TEXT, due_date DATE, step INT, window_start TIMESTAMPTZ,"
        " window_end TIMESTAMPTZ, template TEXT, priority INT, sla_risk BOOLEAN, status TEXT,"
        " attempts INT, next_attempt_at TIMESTAMPTZ, policy_version TEXT,"
        " created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)"
    )
    audit_ddl = (
        "CREATE TABLE bare_audit (at TIMESTAMPTZ, kind TEXT, account_id TEXT, contact_id TEXT,"
        " rule TEXT, channel TEXT, policy_version TEXT, detail TEXT)"
    )
    started = time.perf_counter()
    if schema is None:
        db = raw_sqlite(url)
        db.execute(contacts_ddl)
        db.execute(audit_ddl)
        db.execute("BEGIN")
        marks = ", ".join("?" * len(_COLUMNS))
        db.executemany(f"INSERT OR IGNORE INTO bare_contacts VALUES ({marks})", rows)
        db.executemany("INSERT INTO bare_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", audit)
        db.execute("COMMIT")
        db.close()
        how = "sqlite3 executemany"
    else:
        with psycopg.connect(libpq_url(url), options=f"-csearch_path={schema}") as db:
            db.execute(contacts_ddl)
            db.execute(audit_ddl)
            with db.cursor() as cur:
                with cur.copy(f"COPY bare_contacts ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with cur.copy("COPY bare_audit FROM STDIN") as copy:
                    for row in audit:
                        copy.write_row(row)
        how = "psycopg COPY"
    return {"wall_s": time.perf_counter() - started, "how": how}


if __name__ == "__main__":
    main()
