"""Dry-run benchmark: what ``remind dry-run`` does for tomorrow over a store of N accounts,
against ONE raw SQL query selecting the same rows, in the same run.

    .venv/bin/python bench/dryrun_bench.py --accounts 100000 [--store sqlite|postgres] [--json]

The store (fresh, removed at the end unless ``--keep``) is prepared untimed, in its own
child process: ``import_accounts`` of the cached portfolio CSV (10% overdue, the rest due
over the next 30 days), then seeded history, bulk-inserted with SQLAlchemy Core:

* one performed contact for every account whose due date is before today (any status, paid
  or not), at a random time in the 7 days before ``now`` (never before the account became
  overdue): DPD 1 ``first_overdue_call``; DPD 2-30 ``early_call`` or ``early_sms``; later
  ``late_call``. SMS outcome ``sent``; call outcomes no_answer 50%, busy 10%, voicemail 10%,
  conversation 15%, promise 10%, refused 5%; status ``sent``; target the borrower;
* for each ``promise`` outcome, a pending promise to pay in 1-7 days.

Then, each in a fresh child process (its own peak RSS):

* ``baseline``: raw ``sqlite3`` / ``psycopg``: one UNION ALL query returning the accounts
  ``load_for_plan`` asks the store for (active, ``amount_paid < amount_due``, and either one
  of the due dates it asks for or, when a broken-promise rule is enabled, a promise in the
  history: the filter is built from the arguments ``load_for_plan`` passes, recorded by
  running it against a stand-in store), the case-work flags in force, the contacts
  performed since the same ``since``, the promises history reads (pending, and broken ones
  of the month before ``since``) and the emergency contacts removed for good;
  ``fetchall()`` into tuples. No ORDER BY, no value mapping. remind reads the same history
  rows and keeps those of the accounts it selected: the run fails if the baseline's
  accounts, and its history rows of those accounts, differ from what remind loaded.
* ``remind``: (setup) load the shipped policies and open the store; then, as
  ``remind dry-run`` does, ``planning.plan_from_store`` with ``--workers`` shards (default:
  what config.toml without ``[planner] workers`` gives here), worker processes forked;
  with ``--workers 1`` it is timed as its two steps, (a) ``load_for_plan`` and (b)
  ``scheduler.planner.plan``. Total = setup + the plan. Then, timed apart,
  ``report.write_jsonl`` (planned contacts, as ``--format json``) to a ``StringIO``. Peak
  RSS is read before rendering, and again after it; with workers, the largest worker's
  peak is shown too (the sum bounds what the dry-run held at once). The counts the check
  needs are read after the measurements.

``--repeat N`` runs baseline and remind N times, alternately, and reports the medians.
``--profile`` adds one more ``remind`` run under cProfile (not timed): the stats go to
``bench/out/dryrun-<N>-<store>.prof`` and the top entries are printed.
"""

from __future__ import annotations

import io
import random
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from common import (
    DEFAULTS,
    OUT,
    REPO,
    Report,
    StoreRef,
    Timer,
    base_arguments,
    code_version,
    combine,
    current_rss_mib,
    fresh_store,
    libpq_url,
    machine,
    peak_rss_mib,
    phase_main,
    portfolio_csv,
    postgres_version,
    profiled,
    raw_sqlite,
    run_instant,
    run_phase,
    sqlite_path,
    sqlite_text,
)

from policies import load_policies
from scheduler.config import PlannerSettings
from scheduler.importer import import_accounts
from scheduler.models import Horizon, contact_id
from scheduler.planner import plan
from scheduler.planning import collector_paused, load_for_plan, plan_from_store
from scheduler.report import summarise, write_jsonl
from scheduler.store import _BROKEN_PROMISE_DAYS
from scheduler.tables import accounts, contacts, promises

SCRIPT = Path(__file__).resolve()
#: config.toml's [ops] timezone: "tomorrow" is tomorrow there.
OPS_ZONE = ZoneInfo("Asia/Shanghai")
POLICY_DIR = REPO / "policies"
SEED_BATCH = 10_000
_CALL_OUTCOMES = (
    ("no_answer", 50), ("busy", 10), ("voicemail", 10), ("conversation", 15), ("promise", 10),
    ("refused", 5),
)  # fmt: skip


def tomorrow(now: datetime) -> Horizon:
    """The horizon of ``remind dry-run`` (default ``--date tomorrow``) at ``now``."""
    return Horizon(now.astimezone(OPS_ZONE).date() + timedelta(days=1))


# --- prepare (child process, untimed) -----------------------------------------------------


def phase_prepare(params: dict[str, Any]) -> dict[str, Any]:
    ref = StoreRef.from_params(params["store"])
    now = datetime.fromisoformat(params["now"])
    store = ref.open()
    try:
        with Timer() as import_timer:
            report = import_accounts(store, Path(params["csv"]), defaults=DEFAULTS, now=now)
        with Timer() as seed_timer, store.engine.begin() as conn:
            seeded = seed_history(conn, date.fromisoformat(params["today"]), now, params["seed"])
    finally:
        store.close()
    return {
        "import_s": import_timer.seconds,
        "imported": report.counts.inserted,
        "rejected": report.rejected,
        "seed_s": seed_timer.seconds,
        **seeded,
    }


def seed_history(conn: sa.Connection, today: date, now: datetime, seed: int) -> dict[str, int]:
    """Insert the history described in the module docstring; return the row counts."""
    rng = random.Random(seed)
    overdue = conn.execute(
        sa.select(accounts.c.account_id, accounts.c.due_date)
        .where(accounts.c.due_date < today)
        .order_by(accounts.c.account_id)
    ).all()
    counts = Counter[str]()
    contact_rows: list[dict[str, Any]] = []
    promise_rows: list[dict[str, Any]] = []
    for account_id, due in overdue:
        contact, promise = _history_rows(rng, account_id, due, today, now)
        contact_rows.append(contact)
        if promise is not None:
            promise_rows.append(promise)
        if len(contact_rows) >= SEED_BATCH:
            counts += _flush(conn, contact_rows, promise_rows)
            contact_rows, promise_rows = [], []
    counts += _flush(conn, contact_rows, promise_rows)
    return {"seeded_contacts": counts["contacts"], "seeded_promises": counts["promises"]}


def _history_rows(
    rng: random.Random, account_id: str, due: date, today: date, now: datetime
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    dpd = (today - due).days
    if dpd == 1:
        rule, channel = "first_overdue_call", "call"
    elif dpd <= 30:
        rule, channel = rng.choice((("early_call", "call"), ("early_sms", "sms")))
    else:
        rule, channel = "late_call", "call"
    hours_back = rng.uniform(1, min(7 * 24, 24 * dpd - 6))
    at = (now - timedelta(hours=hours_back)).replace(microsecond=0)
    if channel == "sms":
        outcome = "sent"
    else:
        names, weights = zip(*_CALL_OUTCOMES, strict=True)
        outcome = rng.choices(names, weights)[0]
    step = dpd - int(hours_back // 24)
    contact = {
        "contact_id": contact_id(account_id, rule, due, step, "borrower"),
        "account_id": account_id, "channel": channel, "rule": rule, "target": "borrower",
        "due_date": due, "step": step, "window_start": at, "window_end": at, "template": "",
        "priority": 0, "sla_risk": False, "status": "sent", "outcome": outcome, "attempts": 1,
        "performed_at": at, "created_at": at, "updated_at": at,
    }  # fmt: skip
    promise = None
    if outcome == "promise":
        promise = {
            "account_id": account_id, "amount": Decimal(rng.randrange(100, 5_000)),
            "promised_date": today + timedelta(days=rng.randint(1, 7)), "status": "pending",
            "created_at": at, "closed_at": None,
        }  # fmt: skip
    return contact, promise


def _flush(
    conn: sa.Connection, contact_rows: list[dict[str, Any]], promise_rows: list[dict[str, Any]]
) -> Counter[str]:
    if contact_rows:
        conn.execute(contacts.insert(), contact_rows)
    if promise_rows:
        conn.execute(promises.insert(), promise_rows)
    return Counter(contacts=len(contact_rows), promises=len(promise_rows))


# --- remind (child process) ---------------------------------------------------------------


def phase_remind(params: dict[str, Any]) -> dict[str, Any]:
    """The dry-run, timed step by step (see the module docstring)."""
    ref = StoreRef.from_params(params["store"])
    now = datetime.fromisoformat(params["now"])
    horizon = tomorrow(now)
    workers = params["workers"]
    rss_start = current_rss_mib()
    split: dict[str, float] = {}
    cpu_start = time.process_time()
    with profiled(params.get("profile")):
        with Timer() as setup:
            policies = load_policies(POLICY_DIR)
            store = ref.open()
        try:
            if workers == 1:  # what plan_from_store does then, timed step by step
                with collector_paused():
                    with Timer() as load:
                        found, history = load_for_plan(store, policies, horizon, now, None)
                    rss_loaded = current_rss_mib()
                    with Timer() as planning:
                        result = plan(now, found, history, policies, horizon)
                split = {"load_s": load.seconds, "plan_s": planning.seconds}
                work_s = load.seconds + planning.seconds
                split["rss_after_load_mib"] = round(rss_loaded, 1)
            else:
                with Timer() as work:
                    _, result = plan_from_store(
                        store, policies, horizon, now, workers=workers, context="fork"
                    )
                work_s = work.seconds
        finally:
            store.close()
    peak_planned = peak_rss_mib()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_workers = children.ru_maxrss / 1024
    cpu_s = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
    buffer = io.StringIO()
    with Timer() as render:
        write_jsonl(result, buffer, show_suppressed=False)
    summary = summarise(result)
    peak_rendered = peak_rss_mib()
    if workers != 1:  # untimed, after the measurements: what was loaded, for the check
        store = ref.open()
        try:
            found, history = load_for_plan(store, policies, horizon, now, None)
        finally:
            store.close()
    return {
        "workers": workers,
        "setup_s": setup.seconds,
        "work_s": work_s,
        **split,
        "total_s": setup.seconds + work_s,
        "cpu_s": cpu_s,
        "render_s": render.seconds,
        "render_lines": buffer.getvalue().count("\n"),
        "render_mib": round(len(buffer.getvalue().encode()) / 2**20, 1),
        "horizon": horizon.first_day.isoformat(),
        "accounts_considered": len(found),
        "history_accounts": len(history),
        "history_contacts": sum(len(h.contacts) for h in history.values()),
        "history_promises": sum(len(h.promises) for h in history.values()),
        "history_removed": sum(len(h.removed_contacts) for h in history.values()),
        "planned": len(result.planned),
        "suppressed": len(result.suppressed),
        "handover": len(result.handover),
        "sla_risks": summary.sla_risks,
        "planned_by_channel": dict(Counter(c.channel.value for c in result.planned)),
        "suppressed_by_reason": dict(summary.suppressed.most_common()),
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(peak_planned, 1),
        "peak_rss_workers_mib": round(peak_workers, 1),
        "peak_rss_after_render_mib": round(peak_rendered, 1),
    }


# --- baseline (child process) -------------------------------------------------------------

# One row layout for every branch: kind, account_id, then typed slots (NULL where unused).
# accounts: d=due_date m1=amount_due m2=amount_paid t1..t11 b=phone_valid
# flags:    t1=flag;  contacts: d=due_date t1..t5=channel,rule,outcome,status,target ts;
# promises: d=promised_date m1=amount m2=paid_before t1=status;  removed: t1=target.
_NULLS = {n: ", ".join(["NULL"] * n) for n in range(1, 12)}
#: The promises ``Store.history`` reads: pending, and broken ones recent enough for a
#: broken-promise follow-up (``:recent`` = ``since``'s date less ``_BROKEN_PROMISE_DAYS``).
PROMISE_MATCH = "status = 'pending' OR (status = 'broken' AND promised_date >= :recent)"
_ACCOUNT_BRANCH = """
SELECT 'a', a.account_id, due_date, amount_due, amount_paid, timezones, country, name, phone,
       email, language, product, currency, a.status, flags, emergency_contacts, phone_valid,
       CAST(NULL AS TIMESTAMP WITH TIME ZONE)
  FROM {source}
 WHERE a.status = 'active' AND amount_paid < amount_due AND ({match})
UNION ALL"""
BASELINE_SQL = f"""{{account_branches}}
SELECT 'f', account_id, NULL, NULL, NULL, flag, {_NULLS[10]}, NULL, NULL
  FROM account_flags WHERE since <= :now AND (until IS NULL OR until > :now)
UNION ALL
SELECT 'c', account_id, due_date, NULL, NULL, channel, rule, outcome, status, target,
       {_NULLS[6]}, NULL, performed_at
  FROM contacts
 WHERE performed_at >= :since AND (status IN ('sent', 'failed') OR outcome IS NOT NULL)
UNION ALL
SELECT 'p', account_id, promised_date, amount, paid_before, status, {_NULLS[10]}, NULL, NULL
  FROM promises WHERE {PROMISE_MATCH}
UNION ALL
SELECT 'r', account_id, NULL, NULL, NULL, target, {_NULLS[10]}, NULL, NULL
  FROM (SELECT DISTINCT account_id, target FROM outcomes
         WHERE result IN ('third_party_objected', 'wrong_number') AND target <> 'borrower') r
"""


class _RecordingStore:
    """Stands in for the store in ``load_for_plan`` and records what it asks for, so the
    baseline selects exactly the rows the real call selects, whichever store method the
    current ``load_for_plan`` uses."""

    def __init__(self) -> None:
        self.asked: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.asked[name] = (args, kwargs)
            return {} if name == "history" else iter(())

        return record


def baseline_selection(now: datetime) -> tuple[str, dict[str, Any]]:
    """The baseline's SQL (``:name`` parameters) and its parameters: the account selection
    and the history ``since`` that ``load_for_plan`` asks the store for."""
    recorder = _RecordingStore()
    load_for_plan(recorder, load_policies(POLICY_DIR), tomorrow(now), now, None)  # type: ignore[arg-type]
    _, history_kwargs = recorder.asked["history"]
    since = history_kwargs["since"]
    params: dict[str, Any] = {
        "since": since, "now": now, "recent": since.date() - timedelta(days=_BROKEN_PROMISE_DAYS)
    }  # fmt: skip
    (dates,), kwargs = recorder.asked["accounts_due_on"]
    names = [f"d{i}" for i in range(len(dates))]
    params.update(zip(names, sorted(dates), strict=True))
    on_dates = f"due_date IN ({', '.join(':' + n for n in names)})"
    # one branch per index range, as Store.accounts_due_on reads them (an OR'ed filter
    # reads every active account)
    branches = _ACCOUNT_BRANCH.format(source="accounts a", match=on_dates)
    match = on_dates
    if kwargs.get("due_until") is not None:
        params["until"] = kwargs["due_until"]
        branches += _ACCOUNT_BRANCH.format(
            source="accounts a", match=f"due_date <= :until AND NOT ({on_dates})"
        )
        match = f"{on_dates} OR due_date <= :until"
    if "accounts_with_promises" in recorder.asked:
        # the broken-promise follow-ups: the active, unpaid accounts with a promise in the
        # history that the due dates did not bring in; a second branch driven from the
        # (few) promises, as one OR'ed filter would probe them for every active account
        source = (
            f"(SELECT DISTINCT account_id FROM promises WHERE {PROMISE_MATCH}) p "
            "CROSS JOIN accounts a"
        )
        branches += _ACCOUNT_BRANCH.format(
            source=source, match=f"a.account_id = p.account_id AND NOT ({match})"
        )
    return BASELINE_SQL.format(account_branches=branches), params


def phase_baseline(params: dict[str, Any]) -> dict[str, Any]:
    ref = StoreRef.from_params(params["store"])
    now = datetime.fromisoformat(params["now"])
    sql, bounds = baseline_selection(now)
    rss_start = current_rss_mib()
    if ref.backend == "sqlite":
        seconds, rows = _baseline_sqlite(ref, sql, bounds)
    else:
        seconds, rows = _baseline_postgres(ref, sql, bounds)
    kinds = Counter(row[0] for row in rows)
    # untimed, for the check: remind reads the same history rows and keeps those of the
    # accounts it selected
    selected = {row[1] for row in rows if row[0] == "a"}
    kept = Counter(row[0] for row in rows if row[0] in "cpr" and row[1] in selected)
    return {
        "wall_s": seconds,
        "rows": len(rows),
        "accounts": kinds["a"],
        "flags": kinds["f"],
        "contacts": kinds["c"],
        "promises": kinds["p"],
        "removed": kinds["r"],
        "selected_contacts": kept["c"],
        "selected_promises": kept["p"],
        "selected_removed": kept["r"],
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def _baseline_sqlite(
    ref: StoreRef, sql: str, bounds: dict[str, Any]
) -> tuple[float, list[tuple[Any, ...]]]:
    bound = {k: sqlite_text(v) for k, v in bounds.items()}
    with Timer() as timer:
        conn = raw_sqlite(ref.url)
        try:
            rows = conn.execute(sql, bound).fetchall()
        finally:
            conn.close()
    return timer.seconds, rows


def _baseline_postgres(
    ref: StoreRef, sql: str, bounds: dict[str, Any]
) -> tuple[float, list[tuple[Any, ...]]]:
    import psycopg

    sql = re.sub(r":(\w+)", r"%(\1)s", sql)
    with Timer() as timer:
        options = f"-csearch_path={ref.schema}"
        with psycopg.connect(libpq_url(ref.url), options=options) as conn:
            rows = conn.execute(sql, bounds).fetchall()
    return timer.seconds, rows


def phase_warm(params: dict[str, Any]) -> dict[str, Any]:
    """Untimed, before every timed phase: bring the store into the page cache, so that
    neither the baseline nor remind pays for pages the machine dropped since the last run
    (this VM reclaims the cache in the background: a cold baseline ran 1.2-1.8 s against a
    warm 1.15 s). SQLite: read the database file and its WAL; PostgreSQL: run the baseline
    query once (its pages, and remind's, are those of the same tables)."""
    ref = StoreRef.from_params(params["store"])
    if ref.backend == "sqlite":
        path = Path(sqlite_path(ref.url))
        read = 0
        for part in (path, path.with_name(path.name + "-wal")):
            if part.exists():
                with part.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        read += len(chunk)
        return {"read_bytes": read}
    sql, bounds = baseline_selection(datetime.fromisoformat(params["now"]))
    _, rows = _baseline_postgres(ref, sql, bounds)
    return {"rows": len(rows)}


PHASES = {
    "prepare": phase_prepare,
    "remind": phase_remind,
    "baseline": phase_baseline,
    "warm": phase_warm,
}


# --- the run (parent process) -------------------------------------------------------------


def main() -> None:
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--use-store", metavar="URL",
        help="skip preparing: use a store an earlier --keep run left (same --seed and "
        "--today; its backend is the URL's, its size the store's); on PostgreSQL give "
        "--schema too",
    )  # fmt: skip
    parser.add_argument("--schema", help="the PostgreSQL schema of --use-store")
    parser.add_argument(
        "--workers", type=int, default=PlannerSettings().workers,
        help="[planner] workers (default: as config.toml without the key: "
        f"{PlannerSettings().workers} here)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.use_store:
        args.store = "postgres" if args.use_store.startswith("postgresql") else "sqlite"
    now = run_instant(args.today)
    show = args.show_commands
    with _store(args) as ref:
        params: dict[str, Any] = {
            "store": ref.as_params(), "now": now.isoformat(), "workers": args.workers
        }  # fmt: skip
        prep = None
        if args.use_store:  # the report names the store's size, not --accounts
            args.accounts = _stored_accounts(ref)
        else:
            csv_path = portfolio_csv(args.accounts, seed=args.seed, today=args.today)
            prep_params = {
                **params, "csv": str(csv_path), "today": args.today.isoformat(), "seed": args.seed
            }  # fmt: skip
            prep = run_phase(SCRIPT, "prepare", prep_params, show_command=show)
        base_runs, dry_runs = [], []
        for _ in range(args.repeat):  # alternate, so slow spells hit both alike
            run_phase(SCRIPT, "warm", params, show_command=show)
            base_runs.append(run_phase(SCRIPT, "baseline", params, show_command=show))
            run_phase(SCRIPT, "warm", params, show_command=show)
            dry_runs.append(run_phase(SCRIPT, "remind", params, show_command=show))
        base, dry = combine(base_runs), combine(dry_runs)
        if args.profile:
            OUT.mkdir(parents=True, exist_ok=True)
            path = OUT / f"dryrun-{args.accounts}-{args.store}.prof"
            run_phase(SCRIPT, "remind", {**params, "profile": str(path)}, show_command=show)
            print(f"profile written to {path.relative_to(REPO)}", file=sys.stderr)
    report = _report(args, base, dry, prep)
    report.emit(as_json=args.json)
    problems = _check(base, dry)
    if problems:
        print("\n".join(f"CHECK FAILED: {p}" for p in problems), file=sys.stderr)
        raise SystemExit(1)


def _stored_accounts(ref: StoreRef) -> int:
    store = ref.open()
    try:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one())
    finally:
        store.close()


@contextmanager
def _store(args: Any) -> Iterator[StoreRef]:
    if args.use_store:
        backend = args.store
        yield StoreRef(backend, args.use_store, args.schema if backend == "postgres" else None)
        return
    with fresh_store(args.store, keep=args.keep) as ref:
        yield ref


def _report(
    args: Any, base: dict[str, Any], dry: dict[str, Any], prep: dict[str, Any] | None
) -> Report:
    report = Report(
        f"dryrun_bench: {args.accounts:,} accounts ({int(100 * 0.1)}% overdue), {args.store}, "
        f"plan for {dry['horizon']} at {run_instant(args.today).isoformat()}"
    )
    considered = dry["accounts_considered"]
    report.add(
        "baseline: one SQL query", base["wall_s"], rows=base["rows"],
        peak_rss_mib=base["peak_rss_mib"],
        note=f"{base['accounts']:,} accounts + {base['contacts']:,} contacts + "
        f"{base['promises']:,} promises + {base['flags']:,} flags + {base['removed']:,} removed",
    )  # fmt: skip
    report.add("setup: policies, open store", dry["setup_s"])
    if dry["workers"] == 1:
        report.add(
            "(a) load_for_plan", dry["load_s"], rows=considered,
            note=f"RSS after load {dry['rss_after_load_mib']:.0f} MiB",
        )  # fmt: skip
        report.add("(b) plan", dry["plan_s"], rows=considered, note="accounts planned")
    else:
        report.add(
            f"(a+b) plan_from_store, {dry['workers']} shards", dry["work_s"], rows=considered,
            peak_rss_mib=dry["peak_rss_workers_mib"],
            note="load and plan in each shard at once; RSS: the largest worker",
        )  # fmt: skip
    report.add(
        "(c) total dry-run", dry["total_s"], rows=considered, peak_rss_mib=dry["peak_rss_mib"],
        note=f"{dry['planned']:,} planned, {dry['suppressed']:,} suppressed, "
        f"{dry['handover']:,} hand-over",
    )  # fmt: skip
    report.add(
        "render JSON Lines", dry["render_s"], rows=dry["render_lines"],
        peak_rss_mib=dry["peak_rss_after_render_mib"],
        note=f"{dry['render_mib']} MiB to StringIO, apart from the total",
    )  # fmt: skip
    report.ratios["total / baseline"] = dry["total_s"] / base["wall_s"]
    if dry["workers"] == 1:
        report.ratios["load_for_plan / baseline"] = dry["load_s"] / base["wall_s"]
    else:
        peak_sum = dry["peak_rss_mib"] + dry["peak_rss_workers_mib"]
        report.facts["peak RSS, this process + largest worker (MiB)"] = round(peak_sum)
    facts = report.facts
    facts["CPU s of the dry-run (this process + workers)"] = round(dry["cpu_s"], 2)
    facts["accounts considered"] = considered
    facts["history loaded"] = (
        f"{dry['history_contacts']:,} contacts, {dry['history_promises']:,} promises "
        f"over {dry['history_accounts']:,} accounts"
    )
    facts["planned by channel"] = dry["planned_by_channel"]
    facts["suppressed by reason"] = dry["suppressed_by_reason"]
    facts["first-24h at SLA risk"] = dry["sla_risks"]
    facts["interpreter RSS before work (MiB)"] = dry["rss_start_mib"]
    if prep is not None:
        facts["prepared (untimed)"] = (
            f"import {prep['import_s']:.1f} s ({prep['imported']:,} accounts), seeding "
            f"{prep['seed_s']:.1f} s ({prep['seeded_contacts']:,} contacts, "
            f"{prep['seeded_promises']:,} promises)"
        )
    if args.repeat > 1:
        low, high = dry["spread"]["total_s"]
        b_low, b_high = base["spread"]["wall_s"]
        facts["repeats"] = (
            f"{args.repeat} runs, medians shown; total {low:.2f}-{high:.2f} s, "
            f"baseline {b_low:.2f}-{b_high:.2f} s"
        )
    facts["machine"] = machine()
    facts["code"] = code_version()
    if args.store == "postgres":
        facts["postgresql"] = postgres_version()
    facts["command"] = " ".join([".venv/bin/python", "bench/dryrun_bench.py", *sys.argv[1:]])
    return report


def _check(base: dict[str, Any], dry: dict[str, Any]) -> list[str]:
    """The baseline must select what remind loaded, or the ratio compares different work."""
    pairs = (
        ("accounts", base["accounts"], dry["accounts_considered"]),
        ("contacts", base["selected_contacts"], dry["history_contacts"]),
        ("promises", base["selected_promises"], dry["history_promises"]),
        ("removed emergency contacts", base["selected_removed"], dry["history_removed"]),
    )
    return [
        f"baseline selected {b:,} {what}, remind loaded {r:,}" for what, b, r in pairs if b != r
    ]


if __name__ == "__main__":
    if not phase_main(PHASES):
        main()
