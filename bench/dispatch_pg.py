"""Dispatch throughput with several ``remind run`` daemons on one PostgreSQL store, against
the loopback HTTP gateway, every outcome recorded.

    .venv/bin/python bench/dispatch_pg.py --daemons 3 --contacts 20000 [--concurrency 8]
        [--batch 200] [--dispatch-every 2.0] [--profile] [--json] [--keep]

Untimed set-up: a fresh PostgreSQL schema ``bench_<hex>`` (dropped at the end), N accounts
whose SMS is due at 12:30 Shanghai time, their plan for that one day (N SMS), the gateway as
its own process (``GatewayProcess``).

Measured:

* ``remind``: D real ``remind run`` processes (``--now`` 12:30, a config whose
  ``[channels.sms]`` points at the gateway) are started on the empty store and left until
  each has logged ``daemon.ready`` (start-up and their first, empty, plan tick are done).
  Then the accounts are upserted, planned and materialised into the queue by this script
  (untimed, one transaction), and the daemons drain it: claim ``FOR UPDATE SKIP LOCKED``
  with a lease, re-check, render, POST, record + audit, a JSON log line per contact (to a
  file). The accounts come only then: on a store that has them at start, the leader's first
  plan tick plans and queues them itself while the other daemons are still starting.
  ``dispatch_every_seconds`` is the shipped 2.0 (``--dispatch-every``): every daemon has a
  lane per channel the policies use (SMS, email, call, letter), and the idle lanes' claims
  cost the database: at the tests' 0.2 s, PostgreSQL's CPU in the window doubled.
  The window runs from the gateway's first delivery (its request log's ``time``,
  ``time.monotonic()``, the same clock in every process) to the last ``contact.settled``
  (``sent``) line any daemon logged (structlog's real-clock UTC timestamp, written after
  the settle transaction committed), i.e. from the first send to the last recorded one.
  The store's ``performed_at`` is not used: it is each daemon's ``--now`` clock (12:30
  plus the time since *that* process built its clock), whose origins differ by the
  daemons' start-up skew.
* ``baseline``: D processes, each POSTing its N/D share with one ``httpx.Client`` from the
  same number of threads, then writing N/D status updates (psycopg ``executemany``) and
  N/D audit rows (``COPY``) into bare tables: the least a dispatcher must do. Wall from
  the first process's start to the last one's end. A POST that fails in httpcore's pool
  (EBADF, see ``baseline_worker``) is retried with the same key and counted.

Reported: wall s, contacts/s, the ratio to the baseline, CPU ms per contact of the
dispatching processes and of the gateway process, CPU of the PostgreSQL server processes
and of the whole machine over the window (is the client, the server or the machine the
limit?), peak RSS per process, and each daemon's share of the sends. Then it checks, and
exits 1 otherwise: every contact recorded ``sent`` once, one ``sent`` audit event each, the
gateway delivered each idempotency key exactly once, and the daemons' logs add up to N.

``--profile`` samples the first daemon with py-spy during the window (``pip install
py-spy``; the collapsed stacks go to ``bench/out/dispatch_pg-d0.txt`` and a summary of the
busiest functions is printed). py-spy takes CPU of its own: profiled runs are not figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORKER_TAG = "@@baseline-worker@@ "

import httpx  # noqa: E402
import psycopg  # noqa: E402

# --- the baseline's processes (before the heavy imports: they need none of remind) ------


def baseline_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One baseline process (``--baseline-worker JSON``, which imports only httpx and
    psycopg): connect, say ready, wait for ``go`` on stdin, then POST its share and write
    its share of status updates and audit rows; say done, wait, close."""
    first, last, concurrency = params["first"], params["last"], params["concurrency"]
    # No caps and no keep-alive expiry (the threads bound the connections): httpcore
    # 1.0.9's pool can close an idle connection it has already handed to a waiting request
    # (at max_connections, past max_keepalive_connections, or once idle for
    # keepalive_expiry), and that request then fails with EBADF mid-read
    # (encode/httpcore#1110). Seen here under load; what still fails is retried with the
    # same key (the gateway delivers it once) and counted.
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=None, keepalive_expiry=None
    )
    client = httpx.Client(limits=limits, timeout=30)
    db = psycopg.connect(params["libpq"], options=f"-csearch_path={params['schema']}")
    sms = f"{params['gateway']}/sms"
    retried = []

    def post(i: int) -> str:
        key = f"{params['prefix']}{i}"
        body = {"to": "+8613812345678", "text": "x" * 120, "reference": key}
        for attempt in range(3):
            try:
                reply = client.post(sms, headers={"Idempotency-Key": key}, json=body)
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
                retried.append(key)
        reply.raise_for_status()
        return str(reply.json()["id"])

    with ThreadPoolExecutor(concurrency) as pool:  # threads started before the clock runs
        list(pool.map(lambda _: None, range(concurrency)))
        print("ready", flush=True)
        sys.stdin.readline()
        started, cpu = time.monotonic(), time.process_time()
        refs = list(pool.map(post, range(first, last)))
    with db.transaction(), db.cursor() as cur:
        cur.executemany(
            "UPDATE bare_contacts SET status = 'sent', provider_ref = %s, performed_at = now()"
            " WHERE contact_id = %s",
            [(ref, f"k{i}") for i, ref in zip(range(first, last), refs, strict=True)],
        )
        with cur.copy("COPY bare_audit (at, kind, contact_id, detail) FROM STDIN") as copy:
            at = datetime.now(UTC)
            for i, ref in zip(range(first, last), refs, strict=True):
                copy.write_row((at, "sent", f"k{i}", json.dumps({"provider_ref": ref})))
    ended, cpu = time.monotonic(), time.process_time() - cpu
    print("done", flush=True)  # the parent reads the server's CPU while the session lives
    sys.stdin.readline()
    db.close()
    client.close()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child would report
    # its parent's peak
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if "VmHWM" in ln]
    rss = int(hwm[0].split()[1]) / 1024
    return {"started": started, "ended": ended, "contacts": last - first, "cpu_s": cpu,
            "peak_rss_mib": rss, "retried": len(retried)}  # fmt: skip


if __name__ == "__main__" and sys.argv[1:2] == ["--baseline-worker"]:
    print(WORKER_TAG + json.dumps(baseline_worker(json.loads(sys.argv[2]))), flush=True)
    sys.exit(0)

import sqlalchemy as sa  # noqa: E402

from bench.common import (  # noqa: E402
    OUT,
    TICK,
    code_version,
    cpu_seconds,
    fresh_store,
    libpq_url,
    peak_rss_mib,
    peak_rss_of,
    postgres_cpu,
)
from scheduler.config import load_settings  # noqa: E402
from scheduler.daemon import load_rulebook  # noqa: E402
from scheduler.models import Channel, Horizon, PlannedContact  # noqa: E402
from scheduler.planner import plan  # noqa: E402
from scheduler.planning import load_for_plan  # noqa: E402
from scheduler.queue import ContactQueue  # noqa: E402
from scheduler.store import Store  # noqa: E402
from scheduler.tables import audit_log, contacts  # noqa: E402
from tests.factories import account, local, shipped_policies  # noqa: E402
from tests.support.daemon import DaemonProcess, write_config  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402

DUE = date(2026, 11, 23)
NOON = local(DUE - timedelta(days=1), "12:30", "Asia/Shanghai").astimezone(UTC)
CHANNELS = """
[channels.sms]
type = "sms_http"
url = "{gateway}/sms"
concurrency = {concurrency}
[channels.email]
type = "outbox"
path = "outbox-email.jsonl"
[channels.call]
type = "call_queue"
[channels.letter]
type = "outbox"
path = "outbox-letter.jsonl"
"""


class Failed(Exception):
    """A check failed: the run proves nothing (exit 1)."""


# --- processes: CPU, memory, who listens ---------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(p) for p in task.read_text().split()]
            except OSError:
                continue
    return found


def listener_pid(url: str) -> int:
    """The process listening on ``url``'s TCP port (found through /proc, so whatever the
    gateway's implementation, its CPU can be measured)."""
    port = urlsplit(url).port
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    raise Failed(f"no process is listening on {url}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


@dataclass
class Sample:
    """CPU counters at one instant: the given processes (with descendants), PostgreSQL's
    server processes and the machine."""

    at: float
    procs: dict[int, float]
    postgres: dict[int, float]
    busy: tuple[float, float]
    own: float

    @classmethod
    def take(cls, pids: Iterable[int]) -> Sample:
        procs = {p: sum(cpu_seconds(d) for d in descendants(p)) for p in pids}
        own = time.process_time()
        return cls(time.monotonic(), procs, postgres_cpu(), machine_busy(), own)

    def since(self, start: Sample) -> dict[str, Any]:
        pg = sum(v - start.postgres.get(pid, 0.0) for pid, v in self.postgres.items())
        busy = self.busy[0] - start.busy[0]
        total = self.busy[1] - start.busy[1]
        return {
            "wall_s": self.at - start.at,
            "cpu_s": {p: v - start.procs.get(p, 0.0) for p, v in self.procs.items()},
            "postgres_cpu_s": pg,
            "machine_busy_share": busy / total if total else 0.0,
            "machine_busy_s": busy,
            "own_cpu_s": self.own - start.own,
        }


def account_cpu(window: Mapping[str, Any], pids: Sequence[int], gateway: int) -> dict[str, float]:
    """Where the machine's CPU went in a window, seconds: the dispatching processes, the
    gateway, PostgreSQL, this script (polling), and the rest (other users' work, kernel
    time not charged to a process), of ``cores * wall`` available."""
    cpu = window["cpu_s"]
    ours = {
        "dispatchers": sum(cpu[p] for p in pids),
        "gateway": cpu[gateway],
        "postgres": window["postgres_cpu_s"],
        "this_script": window["own_cpu_s"],
    }
    ours["other"] = max(0.0, window["machine_busy_s"] - sum(ours.values()))
    ours["available"] = window["wall_s"] * len(os.sched_getaffinity(0))
    return {k: round(v, 2) for k, v in ours.items()}


def wall_offset() -> float:
    """``time.time() - time.monotonic()`` (to put log timestamps on the monotonic clock)."""
    best = None
    for _ in range(5):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) / 2)
    assert best is not None
    return best[1]


# --- set-up -------------------------------------------------------------------------------


def progress(text: str) -> None:
    """A time-stamped progress line on stderr (the figures go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def schema_url(url: str, schema: str) -> str:
    """A store URL that puts ``remind`` (a config file has no schema key) in ``schema``."""
    return f"{url}?options=-csearch_path%3D{schema}"


def seed(store: Store, n: int) -> list[PlannedContact]:
    """N accounts due tomorrow, and their plan for today at 12:30 (one SMS each)."""
    store.upsert_accounts(
        [account(f"D{i:07d}", due_date=DUE, email=None) for i in range(n)], now=NOON
    )
    policies = shipped_policies()
    horizon = Horizon(NOON.date(), 1)
    accounts, history = load_for_plan(store, policies, horizon, NOON, None)
    planned = plan(NOON, accounts, history, policies, horizon).planned
    due = [c for c in planned if c.channel is Channel.SMS and c.window_start <= NOON]
    if len(due) != n or len(planned) != n:
        raise Failed(f"expected {n} SMS due now, the plan has {len(due)} of {len(planned)}")
    return list(planned)


# --- the baseline -------------------------------------------------------------------------


def baseline(
    url: str, schema: str, gateway: str, gateway_pid: int, n: int, workers: int, concurrency: int
) -> dict[str, Any]:
    with psycopg.connect(libpq_url(url), options=f"-csearch_path={schema}") as db:
        db.execute(
            "CREATE TABLE bare_contacts (contact_id TEXT PRIMARY KEY,"
            " status TEXT DEFAULT 'planned',"
            " provider_ref TEXT, performed_at TIMESTAMPTZ)"
        )
        db.execute(
            "CREATE TABLE bare_audit (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ, kind TEXT,"
            " contact_id TEXT, detail TEXT)"
        )
        with db.cursor() as cur, cur.copy("COPY bare_contacts (contact_id) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"k{i}",))
    bounds = [n * w // workers for w in range(workers + 1)]
    progress(f"baseline: {workers} process(es), {n:,} POSTs + writes")
    procs = []
    for w in range(workers):
        params = {"libpq": libpq_url(url), "schema": schema, "gateway": gateway,
                  "first": bounds[w], "last": bounds[w + 1], "concurrency": concurrency,
                  "prefix": "base-"}  # fmt: skip
        command = [sys.executable, __file__, "--baseline-worker", json.dumps(params)]
        procs.append(subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))  # fmt: skip
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise Failed("a baseline process did not start")
    pids = [proc.pid for proc in procs]
    before = Sample.take([gateway_pid, *pids])
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "done":
            raise Failed(f"a baseline process failed (exit {proc.wait()})")
    window = Sample.take([gateway_pid, *pids]).since(before)
    results = []
    for proc in procs:
        out, _ = proc.communicate("bye\n", timeout=60)
        tagged = [line for line in out.splitlines() if line.startswith(WORKER_TAG)]
        if proc.returncode != 0 or not tagged:
            raise Failed(f"a baseline process failed (exit {proc.returncode})")
        results.append(json.loads(tagged[-1][len(WORKER_TAG) :]))
    with psycopg.connect(libpq_url(url), options=f"-csearch_path={schema}") as db:
        sent = db.execute("SELECT count(*) FROM bare_contacts WHERE status = 'sent'").fetchone()
        audited = db.execute("SELECT count(*) FROM bare_audit").fetchone()
    if (sent, audited) != ((n,), (n,)):
        raise Failed(f"baseline: {sent} sent and {audited} audit rows of {n}")
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "processes": workers,
        "wall_s": wall,
        "per_s": n / wall,
        "cpu_ms_per_contact": 1000 * sum(window["cpu_s"][p] for p in pids) / n,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        "gateway_cpu_ms_per_request": 1000 * window["cpu_s"][gateway_pid] / n,
        "postgres_cpu_s": window["postgres_cpu_s"],
        "machine_busy_share": window["machine_busy_share"],
        "cpu_account": account_cpu(window, pids, gateway_pid),
        "retried": sum(r["retried"] for r in results),
    }


# --- remind: the daemons ------------------------------------------------------------------


def _events(log: Path, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and (kinds is None or any(k in line for k in kinds)):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def _sent_count(store: Store) -> int:
    with store.engine.connect() as conn:
        stmt = sa.select(sa.func.count()).where(contacts.c.status == "sent")
        return int(conn.execute(stmt).scalar_one())


def remind_run(
    folder: Path,
    store: Store,
    url: str,
    gateway: GatewayProcess,
    gateway_pid: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    n = args.contacts
    config = write_config(
        folder, store_url=url,
        channels=CHANNELS.format(gateway=gateway.url, concurrency=args.concurrency),
        daemon=f"batch_size = {args.batch}\nwatch_every_seconds = 30\n"
        f"dispatch_every_seconds = {args.dispatch_every}\n",
    )  # fmt: skip
    version = load_rulebook(load_settings(config)).version
    progress(f"remind: starting {args.daemons} daemon(s) on the empty store")
    daemons = [DaemonProcess(config, NOON, folder / f"d{i}.log") for i in range(args.daemons)]
    spy: subprocess.Popen[bytes] | None = None
    try:
        for d in daemons:
            d.wait_for(lambda d=d: bool(_events(d.log_path, ["daemon.ready"])), timeout=120)
        time.sleep(0.5)  # the lanes have ticked; measure what idle ticking costs
        pids = [d.proc.pid for d in daemons]
        idle0 = Sample.take(pids)
        time.sleep(max(1.5, args.dispatch_every))
        idle = Sample.take(pids).since(idle0)
        # the accounts come now: had they been there at start, the leader's first plan
        # tick would have planned and queued them while the others were still starting
        progress(f"daemons ready; seeding and planning {n:,} accounts (untimed)")
        planned = seed(store, n)
        if args.profile:
            spy = _start_profile(pids[0])
        inserted, _ = ContactQueue(store).materialise(planned, now=NOON, policy_version=version)
        if inserted != n:
            raise Failed(f"materialised {inserted} of {n}")
        progress(f"{n:,} contacts queued; the daemons drain them")
        before = Sample.take([*pids, gateway_pid])
        deadline = time.monotonic() + max(120.0, n / 50)
        while (done := _sent_count(store)) < n:
            if time.monotonic() > deadline:
                raise Failed(f"only {done} of {n} sent after {max(120.0, n / 50):.0f} s")
            for d in daemons:
                if d.proc.poll() is not None:
                    raise Failed(f"a daemon exited {d.proc.returncode}:\n{d.tail()}")
            time.sleep(args.poll)
        window = Sample.take([*pids, gateway_pid]).since(before)
        rss = [peak_rss_of(p) for p in pids]
        profile = _stop_profile(spy) if spy else None
        spy = None
        progress("all sent; stopping the daemons")
        for d in daemons:  # all at once, and once: each drains on its own
            d.signal(signal.SIGTERM)
        codes = [d.proc.wait(60) for d in daemons]
        for d in daemons:
            d.stop()  # closes its log (the process has exited: no second signal)
    finally:
        if spy is not None:
            spy.kill()
            spy.wait()
        for d in daemons:
            if d.proc.poll() is None:
                d.kill()
    if codes != [0] * len(daemons):
        raise Failed(f"daemons exited {codes}")
    deliveries = gateway.deliveries()
    requests = gateway.requests()
    offset = wall_offset()
    shares, last_sent = [], []
    for d in daemons:
        sent = [e for e in _events(d.log_path, ['"contact.settled"'])
                if e.get("event_kind") == "sent"]  # fmt: skip
        shares.append(len(sent))
        if sent:
            stamp = max(datetime.fromisoformat(e["timestamp"]) for e in sent)
            last_sent.append(stamp.timestamp() - offset)
    first_delivery = min(r["time"] for r in deliveries)
    wall = max(last_sent) - first_delivery
    verify(store, n, deliveries, requests, shares)
    cpu = window["cpu_s"]
    return {
        "processes": args.daemons,
        "wall_s": wall,
        "per_s": n / wall,
        "gateway_span_s": max(r["time"] for r in deliveries) - first_delivery,
        "seen_s": window["wall_s"],
        "cpu_ms_per_contact": 1000 * sum(cpu[p] for p in pids) / n,
        "cpu_s_per_daemon": [round(cpu[p], 2) for p in pids],
        "idle_cpu_ms_per_s": 1000 * sum(idle["cpu_s"].values()) / idle["wall_s"] / len(pids),
        "peak_rss_mib": max(rss),
        "peak_rss_mib_per_daemon": [round(r) for r in rss],
        "gateway_cpu_ms_per_request": 1000 * cpu[gateway_pid] / len(requests),
        "postgres_cpu_s": window["postgres_cpu_s"],
        "machine_busy_share": window["machine_busy_share"],
        "cpu_account": account_cpu(window, pids, gateway_pid),
        "shares": shares,
        "requests": len(requests),
        "duplicates": sum(1 for r in requests if r.get("duplicate")),
        "profile": profile,
    }


def verify(
    store: Store,
    n: int,
    deliveries: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    shares: Sequence[int],
) -> None:
    """Every contact sent exactly once, by the store, the audit log, the gateway and the
    daemons' logs; raises ``Failed`` otherwise."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(contacts.c.contact_id, contacts.c.status)).all()
        audited = [
            r[0]
            for r in conn.execute(
                sa.select(audit_log.c.contact_id).where(audit_log.c.kind == "sent")
            )
        ]
    problems = []
    statuses = Counter(r.status for r in rows)
    if statuses != {"sent": n}:
        problems.append(f"contacts by status {dict(statuses)}, expected {{'sent': {n}}}")
    ids = {r.contact_id for r in rows}
    if len(audited) != n or set(audited) != ids:
        problems.append(f"{len(audited)} 'sent' audit events for {len(set(audited))} contacts")
    keys = [d["key"] for d in deliveries]
    if len(keys) != n or set(keys) != ids:
        problems.append(
            f"the gateway delivered {len(keys)} messages for {len(set(keys))} keys; "
            f"{len(set(keys) - ids)} keys are not contacts"
        )
    refused = Counter(r["status"] for r in requests if r["status"] != 200)
    if refused:
        problems.append(f"the gateway answered {dict(refused)} (no faults were set)")
    if sum(shares) != n:
        problems.append(f"the daemons logged {sum(shares)} sends ({list(shares)}), not {n}")
    if problems:
        raise Failed("; ".join(problems))


def _start_profile(pid: int) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise Failed("--profile needs py-spy (pip install py-spy)")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "dispatch_pg-d0.txt"
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--gil",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    return proc


def _stop_profile(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    return summarise_profile(OUT / "dispatch_pg-d0.txt")


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive and own shares of py-spy's collapsed stacks, by function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [f.split(" (")[0] + " " + _where(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = lambda c: [(f, round(100 * s / total, 1)) for f, s in c.most_common(top)]  # noqa: E731
    return {"samples": total, "path": str(path), "inclusive": share(inclusive), "own": share(own)}


def _where(frame: str) -> str:
    """``file.py`` of a py-spy frame ``name (path/file.py:line)``."""
    inside = frame.partition(" (")[2].rstrip(")")
    return Path(inside.rsplit(":", 1)[0]).name if inside else ""


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", type=int, default=3, help="dispatching processes")
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8, help="send threads per process")
    parser.add_argument("--batch", type=int, default=200, help="the daemons' batch_size")
    parser.add_argument(
        "--dispatch-every", type=float, default=2.0, metavar="S",
        help="the daemons' dispatch_every_seconds (default 2.0, the shipped default)",
    )  # fmt: skip
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between store polls")
    parser.add_argument("--profile", action="store_true", help="py-spy the first daemon")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.daemons < 1 or args.contacts < args.daemons:
        parser.error("need --daemons >= 1 and --contacts >= --daemons")
    folder = Path(tempfile.mkdtemp(prefix="remind-dispatch-pg-"))
    try:
        result = run(args, folder)
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print(f"daemon logs kept in {folder}", file=sys.stderr)
        raise SystemExit(1) from None
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        result["logs"] = str(folder)
    if args.json:
        print(json.dumps(result))
    else:
        print(render(result))


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    load = os.getloadavg()  # before this run adds its own
    progress(f"a new PostgreSQL schema, the gateway; {args.contacts:,} contacts")
    with fresh_store("postgres") as ref, GatewayProcess() as gateway:
        assert ref.schema is not None
        gateway_pid = listener_pid(gateway.url)
        store = ref.open()
        try:
            base = baseline(ref.url, ref.schema, gateway.url, gateway_pid, args.contacts,
                            args.daemons, args.concurrency)  # fmt: skip
            gateway.reset()
            ours = remind_run(folder, store, schema_url(ref.url, ref.schema), gateway,
                              gateway_pid, args)  # fmt: skip
        finally:
            store.close()
        progress("verified; dropping the schema")
    return {
        "contacts": args.contacts, "daemons": args.daemons, "concurrency": args.concurrency,
        "batch": args.batch, "dispatch_every_s": args.dispatch_every, "code": code_version(),
        "load_average": load, "remind": ours, "baseline": base,
        "ratio_wall": ours["wall_s"] / base["wall_s"], "bench_peak_rss_mib": peak_rss_mib(),
        "verified": True,
    }  # fmt: skip


def render(result: Mapping[str, Any]) -> str:
    ours, base = result["remind"], result["baseline"]
    n = result["contacts"]
    lines = [
        f"dispatch, PostgreSQL, {n:,} SMS, {result['daemons']} daemon(s), concurrency "
        f"{result['concurrency']} each, batch {result['batch']}, dispatch tick "
        f"{result['dispatch_every_s']} s; code {result['code']}; load average before "
        + "/".join(f"{v:.1f}" for v in result["load_average"]),
        "",
        "             wall s  contacts/s  CPU ms/contact  gateway CPU ms/req  postgres CPU s"
        "  machine busy  peak RSS MiB (max)",
    ]
    for name, r in (("remind", ours), ("baseline", base)):
        lines.append(
            f"  {name:9} {r['wall_s']:8.2f}  {r['per_s']:10,.0f}  {r['cpu_ms_per_contact']:14.2f}"
            f"  {r['gateway_cpu_ms_per_request']:18.3f}  {r['postgres_cpu_s']:14.2f}"
            f"  {100 * r['machine_busy_share']:11.0f}%  {r['peak_rss_mib']:18.0f}"
        )
    share = ", ".join(f"d{i} {s:,} ({100 * s / n:.1f}%)" for i, s in enumerate(ours["shares"]))
    lines += [
        "",
        f"  ratio remind/baseline (wall): {result['ratio_wall']:.2f}x",
        f"  remind window: first gateway delivery -> last recorded send; gateway first -> last "
        f"delivery {ours['gateway_span_s']:.2f} s; store seen all sent after "
        f"{ours['seen_s']:.2f} s (poll)",
        f"  sends by daemon: {share}",
        f"  daemon CPU s: {ours['cpu_s_per_daemon']}; idle ticking "
        f"{ours['idle_cpu_ms_per_s']:.1f} ms/s per daemon; peak RSS per daemon "
        f"{ours['peak_rss_mib_per_daemon']} MiB",
        f"  gateway: {ours['requests']:,} requests, {ours['duplicates']} duplicates refused; "
        f"every contact sent once (store, audit, gateway, logs): verified; baseline POSTs "
        f"retried after a transport error: {base.get('retried', 0)}",
    ]
    for name, r in (("remind", ours), ("baseline", base)):
        c = r["cpu_account"]
        lines.append(
            f"  CPU s in the {name} window: dispatchers {c['dispatchers']}, gateway "
            f"{c['gateway']}, postgres {c['postgres']}, this script {c['this_script']}, "
            f"other {c['other']} (of {c['available']} available)"
        )
    profile = ours.get("profile")
    if profile:
        lines += ["", f"  py-spy, daemon d0, {profile['samples']:,} samples ({profile['path']}):"]
        lines += ["    inclusive:"] + [f"      {p:5.1f}%  {f}" for f, p in profile["inclusive"]]
        lines += ["    own:"] + [f"      {p:5.1f}%  {f}" for f, p in profile["own"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
