"""Import benchmark: ``import_accounts`` of a generated portfolio into a fresh store, against a
raw-SQL baseline loading the same file in the same run.

    .venv/bin/python bench/import_bench.py --accounts 100000 [--store sqlite|postgres] [--json]

Phases, each in its own child process (so each peak RSS is that phase's own):

* ``baseline``: the floor for getting these rows into the database, no validation. SQLite:
  ``csv.reader`` rows straight into ``sqlite3`` ``executemany`` INSERT, one transaction, into
  a bare table (the 15 CSV columns as TEXT, ``account_id`` PRIMARY KEY, no other index) in a
  separate file with the store's pragmas (WAL, synchronous=NORMAL). PostgreSQL: the file
  streamed through ``COPY bare_accounts FROM STDIN (FORMAT csv, HEADER)`` into the same kind
  of table (dates as ``date``, amounts as ``numeric``) in the benchmark's schema.
* ``import``: ``scheduler.importer.import_accounts`` into the fresh, empty store (parse,
  validate, phone zones, upsert, audit event), with ``--parse-workers N`` worker processes
  checking rows (default: what ``remind accounts import`` uses, ``[import] parse_workers``
  = 2; 1 checks them in the importing process). Peak RSS is the importing process's; the
  workers' is shown apart (the largest one), and the total counts every worker at that.
* ``reimport``: the same file again; every row must come back ``unchanged``.

The store is new for each run (a SQLite file in a temporary folder, or a PostgreSQL schema
``bench_<hex>``) and removed at the end unless ``--keep``. The portfolio CSV is cached in
``bench/out``. Ratios are remind's wall time over the baseline's. ``--repeat N`` repeats the
three phases in N new stores and reports medians; ``--profile`` adds one untimed import
under cProfile into another new store (stats in ``bench/out/import-<N>-<store>.prof``).
"""

from __future__ import annotations

import csv
import resource
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

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
)

from scheduler.config import DEFAULT_PARSE_WORKERS
from scheduler.importer import ACCOUNT_COLUMNS, import_accounts

SCRIPT = Path(__file__).resolve()
BARE_TABLE = "bare_accounts"
_PG_TYPES = {"due_date": "date", "amount_due": "numeric", "amount_paid": "numeric"}


# --- phases (child processes) -------------------------------------------------------------


def phase_import(params: dict[str, Any]) -> dict[str, Any]:
    """Time ``import_accounts`` of the file into the store (opening the store excluded)."""
    ref = StoreRef.from_params(params["store"])
    path = Path(params["csv"])
    now = datetime.fromisoformat(params["now"])
    workers = int(params["parse_workers"])
    rss_start = current_rss_mib()
    store = ref.open()
    cpu_start = _cpu_seconds()
    try:
        with profiled(params.get("profile")), Timer() as timer:
            report = import_accounts(store, path, defaults=DEFAULTS, now=now, parse_workers=workers)
    finally:
        store.close()
    cpu_main, cpu_workers = (
        end - start for end, start in zip(_cpu_seconds(), cpu_start, strict=True)
    )
    worker_rss = (
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers > 1 else 0.0
    )
    return {
        "wall_s": timer.seconds,
        "rows": report.rows_read,
        "rejected": report.rejected,
        "inserted": report.counts.inserted,
        "updated": report.counts.updated,
        "unchanged": report.counts.unchanged,
        "committed": report.committed,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "worker_peak_rss_mib": round(worker_rss, 1),
        "total_peak_rss_mib": round(
            peak_rss_mib() + (workers if workers > 1 else 0) * worker_rss, 1
        ),
        "cpu_main_s": round(cpu_main, 2),
        "cpu_workers_s": round(cpu_workers, 2),
    }


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its ended children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def phase_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """Time the raw load of the same file (see the module docstring)."""
    path = Path(params["csv"])
    rss_start = current_rss_mib()
    if params["backend"] == "sqlite":
        seconds, rows = _baseline_sqlite(params["baseline_url"], path)
    else:
        seconds, rows = _baseline_postgres(params["store"], path)
    return {
        "wall_s": seconds,
        "rows": rows,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def _baseline_sqlite(url: str, path: Path) -> tuple[float, int]:
    conn = raw_sqlite(url)
    columns = ", ".join(
        f"{c} TEXT PRIMARY KEY" if c == "account_id" else f"{c} TEXT" for c in ACCOUNT_COLUMNS
    )
    conn.execute(f"CREATE TABLE {BARE_TABLE} ({columns})")
    marks = ", ".join("?" * len(ACCOUNT_COLUMNS))
    try:
        with Timer() as timer, path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            if tuple(header) != ACCOUNT_COLUMNS:
                raise SystemExit(f"unexpected header in {path}: {header}")
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO {BARE_TABLE} VALUES ({marks})", reader)
            conn.execute("COMMIT")
        rows = conn.execute(f"SELECT count(*) FROM {BARE_TABLE}").fetchone()[0]
    finally:
        conn.close()
    return timer.seconds, rows


def _baseline_postgres(store: dict[str, Any], path: Path) -> tuple[float, int]:
    import psycopg

    columns = ", ".join(
        f"{c} text PRIMARY KEY" if c == "account_id" else f"{c} {_PG_TYPES.get(c, 'text')}"
        for c in ACCOUNT_COLUMNS
    )
    options = f"-csearch_path={store['schema']}"
    with psycopg.connect(libpq_url(store["url"]), options=options) as conn:
        conn.execute(f"CREATE TABLE {BARE_TABLE} ({columns})")
        conn.commit()
        copy_sql = f"COPY {BARE_TABLE} FROM STDIN (FORMAT csv, HEADER true)"
        with Timer() as timer:
            with conn.cursor() as cur, cur.copy(copy_sql) as copy, path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    copy.write(block)
            conn.commit()
        row = conn.execute(f"SELECT count(*) FROM {BARE_TABLE}").fetchone()
        conn.execute(f"DROP TABLE {BARE_TABLE}")
        conn.commit()
    return timer.seconds, int(row[0]) if row else 0


PHASES = {"import": phase_import, "reimport": phase_import, "baseline": phase_baseline}


# --- the run (parent process) -------------------------------------------------------------


def main() -> None:
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--parse-workers", type=int, default=DEFAULT_PARSE_WORKERS, metavar="N",
        help="import with N parse worker processes (1: checked in-process; default "
        f"{DEFAULT_PARSE_WORKERS}, as remind accounts import)",
    )  # fmt: skip
    args = parser.parse_args()
    csv_path = portfolio_csv(args.accounts, seed=args.seed, today=args.today)
    _warm(csv_path)
    now = run_instant(args.today)
    report = Report(
        f"import_bench: {args.accounts:,} accounts, {args.store}, file {csv_path.name} "
        f"({csv_path.stat().st_size / 2**20:.0f} MiB)"
    )
    show = args.show_commands
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "import": [], "reimport": []}
    for _ in range(args.repeat):  # each repeat in a new store
        with fresh_store(args.store, keep=args.keep) as ref:
            params = _params(args, ref, csv_path, now)
            for phase, done in runs.items():
                done.append(run_phase(SCRIPT, phase, params, show_command=show))
    if args.profile:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"import-{args.accounts}-{args.store}.prof"
        with fresh_store(args.store) as ref:
            params = {**_params(args, ref, csv_path, now), "profile": str(path)}
            run_phase(SCRIPT, "import", params, show_command=show)
        print(f"profile written to {path.relative_to(REPO)}", file=sys.stderr)
    base, first, again = (combine(runs[k]) for k in ("baseline", "import", "reimport"))
    baseline_note = (
        "sqlite3 executemany, bare table" if args.store == "sqlite" else "COPY FROM STDIN"
    )
    report.add(
        "baseline (raw SQL)", base["wall_s"], rows=base["rows"],
        peak_rss_mib=base["peak_rss_mib"], note=baseline_note,
    )  # fmt: skip
    report.add(
        "import (fresh store)", first["wall_s"], rows=first["rows"],
        peak_rss_mib=first["peak_rss_mib"], note=_counts(first),
    )  # fmt: skip
    report.add(
        "re-import (same file)", again["wall_s"], rows=again["rows"],
        peak_rss_mib=again["peak_rss_mib"], note=_counts(again),
    )  # fmt: skip
    report.facts["parse workers"] = (
        f"{args.parse_workers}" if args.parse_workers > 1 else "1 (rows checked in-process)"
    )
    for name, result in (("import", first), ("re-import", again)):
        report.facts[f"{name}: CPU s (importing process / workers)"] = (
            f"{result['cpu_main_s']:.1f} / {result['cpu_workers_s']:.1f}"
        )
        report.facts[f"{name}: peak RSS MiB (importing / largest worker / total)"] = (
            f"{result['peak_rss_mib']:.0f} / {result['worker_peak_rss_mib']:.0f} / "
            f"{result['total_peak_rss_mib']:.0f}"
        )
    report.ratios["import / baseline"] = first["wall_s"] / base["wall_s"]
    report.ratios["re-import / baseline"] = again["wall_s"] / base["wall_s"]
    report.facts["interpreter RSS before work (MiB)"] = first["rss_start_mib"]
    if args.repeat > 1:
        report.facts["repeats"] = f"{args.repeat} runs, medians shown; " + ", ".join(
            f"{name} {r['spread']['wall_s'][0]:.2f}-{r['spread']['wall_s'][1]:.2f} s"
            for name, r in (("baseline", base), ("import", first), ("re-import", again))
        )
    report.facts["machine"] = machine()
    report.facts["code"] = code_version()
    if args.store == "postgres":
        report.facts["postgresql"] = postgres_version()
    report.facts["command"] = " ".join([".venv/bin/python", "bench/import_bench.py", *sys.argv[1:]])
    report.emit(as_json=args.json)
    problems = _check(args.accounts, first, again)
    if problems:
        print("\n".join(f"CHECK FAILED: {p}" for p in problems), file=sys.stderr)
        raise SystemExit(1)


def _params(args: Any, ref: StoreRef, csv_path: Path, now: datetime) -> dict[str, Any]:
    return {
        "store": ref.as_params(),
        "csv": str(csv_path),
        "now": now.isoformat(),
        "backend": args.store,
        "baseline_url": _baseline_url(ref),
        "parse_workers": args.parse_workers,
    }


def _baseline_url(ref: StoreRef) -> str:
    if ref.backend != "sqlite":
        return ""
    return f"sqlite:///{Path(sqlite_path(ref.url)).with_name('baseline.db')}"


def _counts(result: dict[str, Any]) -> str:
    return (
        f"inserted {result['inserted']:,}, updated {result['updated']:,}, "
        f"unchanged {result['unchanged']:,}, rejected {result['rejected']:,}"
    )


def _check(n: int, first: dict[str, Any], again: dict[str, Any]) -> list[str]:
    problems = []
    if first["rows"] != n or first["rejected"] or first["inserted"] != n:
        problems.append(f"the first import should insert all {n:,} rows: {_counts(first)}")
    if again["updated"] or again["inserted"] or again["unchanged"] != n:
        problems.append(f"the re-import should leave all {n:,} rows unchanged: {_counts(again)}")
    return problems


def _warm(path: Path) -> None:
    """Read the file once so every phase finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass


if __name__ == "__main__":
    if not phase_main(PHASES):
        main()
