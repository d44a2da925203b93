"""Dispatch throughput: sustained sends per second to the loopback HTTP gateway, with every
outcome recorded, on SQLite (one daemon's dispatcher).

    .venv/bin/python bench/dispatch.py --contacts 20000 --concurrency 16

The gateway runs as its own process (``python -m tests.support.gateway``). The script seeds
N accounts due tomorrow (SMS only), materialises the plan in the morning, then measures:

* ``remind``: ``Dispatcher.dispatch(sms)`` at 12:30 until nothing is due: claim with lease,
  re-check (re-plan), render, POST with Idempotency-Key, record + audit, per batch;
* ``baseline``: the same N POSTs from the same number of threads with one httpx client,
  plus the same N status updates and N audit rows written with raw sqlite3 ``executemany``
  (the least any dispatcher must do), measured in the same run.

Prints wall seconds, contacts/s, peak RSS (this process) and the ratio remind/baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.common import cpu_seconds, peak_rss_mib, peak_rss_of  # noqa: E402
from channels.sms_http import SmsHttpChannel  # noqa: E402
from scheduler.config import load_settings  # noqa: E402
from scheduler.daemon import Daemon, load_rulebook  # noqa: E402
from scheduler.dispatcher import Lane  # noqa: E402
from scheduler.logs import configure_logging  # noqa: E402
from scheduler.models import Channel  # noqa: E402
from scheduler.notify import Notifier  # noqa: E402
from scheduler.store import Store  # noqa: E402
from scheduler.tables import contacts  # noqa: E402
from scheduler.workers import DispatchWorkers  # noqa: E402
from tests.factories import account, local  # noqa: E402
from tests.support.daemon import write_config  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402

DUE = date(2026, 11, 23)
MORNING = local(DUE - timedelta(days=1), "09:00", "Asia/Shanghai").astimezone(UTC)
NOON = local(DUE - timedelta(days=1), "12:30", "Asia/Shanghai").astimezone(UTC)


def remind_run(
    folder: Path, gateway_url: str, n: int, concurrency: int, batch: int, processes: int = 1
) -> dict[str, float]:
    url = f"sqlite:///{folder / 'remind.db'}"
    lanes = (
        f'[channels.sms]\ntype = "sms_http"\nurl = "{gateway_url}/sms"\n'
        f"concurrency = {concurrency}\ntimeout_seconds = 10\n"
        '[channels.email]\ntype = "outbox"\npath = "outbox-email.jsonl"\n'
        '[channels.call]\ntype = "call_queue"\n'
        '[channels.letter]\ntype = "outbox"\npath = "outbox-letter.jsonl"\n'
    )
    daemon_keys = f"batch_size = {batch}\ndispatch_processes = {processes}\n"
    config = write_config(folder, store_url=url, channels=lanes, daemon=daemon_keys)
    settings = load_settings(config)
    store = Store.open(url)
    store.upsert_accounts(
        [account(f"B{i:07d}", due_date=DUE, email=None) for i in range(n)], now=MORNING
    )
    clock = [MORNING]
    sms = SmsHttpChannel(url=f"{gateway_url}/sms", timeout_seconds=10)
    daemon = Daemon(
        settings=settings, store=store, lanes={Channel.SMS: Lane(Channel.SMS, sms, concurrency)},
        rulebook=load_rulebook(settings), clock=lambda: clock[0],
        notifier=Notifier.from_environ({}), owner="bench",
    )  # fmt: skip
    # the other dispatching processes start (and sit idle) before anything is due
    workers = DispatchWorkers(settings, count=processes - 1, clock=lambda: NOON, pinned=True,
                              log=(folder / "workers.log").open("w"))  # fmt: skip
    workers.start()
    _wait_ready(folder / "workers.log", processes - 1)
    daemon.tick_plan()
    clock[0] = NOON
    started, cpu = time.perf_counter(), time.process_time()
    children_cpu = sum(cpu_seconds(pid) for pid in workers.pids)
    settled = daemon.dispatcher.dispatch(Channel.SMS)
    while _open_contacts(store):  # the children's last batches
        time.sleep(0.01)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    cpu += sum(cpu_seconds(pid) for pid in workers.pids) - children_cpu
    children_rss = max((peak_rss_of(pid) for pid in workers.pids), default=0.0)
    workers.stop(30)
    sent = sum(1 for r in _statuses(store) if r == "sent")
    daemon.close()
    store.close()
    return {
        "contacts": sent, "wall_s": wall, "per_s": sent / wall, "by_this_process": settled,
        "cpu_ms_per_contact": 1000 * cpu / sent, "children_peak_rss_mib": children_rss,
    }  # fmt: skip


def _wait_ready(log: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count('"workers.ready"') < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"dispatch processes did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def _open_contacts(store: Store) -> int:
    """Contacts due now and not settled yet (planned or claimed), today's only."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(
            contacts.c.status.in_(("planned", "claimed")),
            contacts.c.next_attempt_at <= NOON,
        )).scalar_one())  # fmt: skip


def _statuses(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [r.status for r in conn.execute(
            sa.select(contacts.c.status).where(contacts.c.window_start <= NOON))]  # fmt: skip


def baseline(folder: Path, gateway_url: str, n: int, concurrency: int) -> dict[str, float]:
    db = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE c (id TEXT PRIMARY KEY, status TEXT, ref TEXT, at TEXT)")
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, cid TEXT, kind TEXT, detail TEXT)")
    db.executemany("INSERT INTO c VALUES (?, 'planned', NULL, NULL)",
                   [(f"k{i}",) for i in range(n)])  # fmt: skip
    client = httpx.Client(limits=httpx.Limits(max_connections=concurrency))

    def post(i: int) -> str:
        key = f"base-{i}"
        body = {"to": "+8613812345678", "text": "x" * 120, "reference": key}
        r = client.post(f"{gateway_url}/sms", headers={"Idempotency-Key": key}, json=body)
        return str(r.json()["id"])

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        refs = list(pool.map(post, range(n)))
    db.execute("BEGIN")
    db.executemany("UPDATE c SET status='sent', ref=?, at='now' WHERE id=?",
                   [(ref, f"k{i}") for i, ref in enumerate(refs)])  # fmt: skip
    db.executemany("INSERT INTO a (cid, kind, detail) VALUES (?, 'sent', '{}')",
                   [(f"k{i}",) for i in range(n)])  # fmt: skip
    db.execute("COMMIT")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.close()
    return {"contacts": n, "wall_s": wall, "per_s": n / wall, "cpu_ms_per_contact": 1000 * cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="dispatching processes ([daemon] dispatch_processes)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # as under systemd: one JSON line per contact, here to /dev/null (the cost stays in)
    configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    with tempfile.TemporaryDirectory() as tmp, GatewayProcess() as gateway:
        folder = Path(tmp)
        base = baseline(folder, gateway.url, args.contacts, args.concurrency)
        ours = remind_run(
            folder, gateway.url, args.contacts, args.concurrency, args.batch, args.processes
        )
        delivered = len(gateway.deliveries())
    result = {
        "contacts": args.contacts, "concurrency": args.concurrency, "batch": args.batch,
        "processes": args.processes,
        "remind": ours, "baseline": base, "ratio_wall": ours["wall_s"] / base["wall_s"],
        "peak_rss_mib": peak_rss_mib(), "gateway_deliveries": delivered,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"dispatch, SQLite, {args.contacts} SMS, {args.processes} process(es), "
          f"concurrency {args.concurrency} each, batch {args.batch}")  # fmt: skip
    for name in ("remind", "baseline"):
        r = result[name]
        print(
            f"  {name:9} {r['wall_s']:7.2f} s  {r['per_s']:8.0f} contacts/s"  # type: ignore[index]
            f"  {r['cpu_ms_per_contact']:5.2f} ms CPU/contact"  # type: ignore[index]
            + (" (all dispatching processes)" if name == "remind" else " (one process)")
        )
    print(
        f"  ratio remind/baseline (wall): {result['ratio_wall']:.2f}x; "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB; gateway deliveries {delivered}"
    )


if __name__ == "__main__":
    main()
