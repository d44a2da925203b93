"""Shared helpers for the benchmarks in ``bench/``.

Each benchmark is one script run from the repo root (``.venv/bin/python bench/<script>.py``).
The script's parent process prepares inputs (the portfolio CSV, a fresh store) and runs every
measured *phase* in a fresh child process (the same script with ``--phase NAME``), so the
peak RSS a phase reports (``ru_maxrss`` of that child) is that phase's own, not the maximum
of everything the run did before. A child prints one JSON line prefixed with ``PHASE_TAG``;
anything else it prints passes through.

A phase can be run by hand, e.g. under ``python -m cProfile``: the parent prints the exact
child command line with ``--show-commands``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py` without the editable install
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from scheduler.importer import Defaults  # noqa: E402
from scheduler.sample import generate_portfolio, write_csv  # noqa: E402
from scheduler.store import Store, drop_schema  # noqa: E402

OUT = REPO / "bench" / "out"
PG_URL = os.environ.get("REMIND_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
PHASE_TAG = "@@bench-phase@@ "

#: A fixed "today" (a Monday), so runs and cached files are comparable from day to day.
DEFAULT_TODAY = date(2026, 11, 23)
DEFAULT_SEED = 7
#: The portfolio mix: 10% overdue (DPD 1..100), the rest due over a monthly billing cycle.
OVERDUE_SHARE = 0.1
AHEAD_DAYS = 30
#: The evening run: 20:00 in Shanghai (the ops zone of config.toml) on ``today``.
RUN_TIME_UTC = dtime(12, 0)
#: What the shipped config.toml says an empty column means.
DEFAULTS = Defaults(timezone="Asia/Shanghai", country="CN", language="zh-CN", currency="CNY")


def run_instant(today: date) -> datetime:
    """The ``now`` of a benchmark run: ``today`` at 12:00 UTC (20:00 Asia/Shanghai)."""
    return datetime.combine(today, RUN_TIME_UTC, tzinfo=UTC)


# --- measuring ----------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size now (``VmRSS``), or 0.0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, ``perf_counter``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """Profile the block with cProfile when ``path`` is given: dump the stats there and print
    the top entries (cumulative, then own time) to stderr. A no-op otherwise."""
    if not path:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue(), file=sys.stderr)


def combine(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several runs of one phase as one: the median of every ``*_s`` time, the maximum of
    every ``*rss*`` figure, the rest from the first run; ``spread`` holds each time's
    (min, max)."""
    merged = dict(runs[0])
    spread: dict[str, tuple[float, float]] = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if key.endswith("_s") and isinstance(value, float):
            merged[key] = statistics.median(values)
            spread[key] = (min(values), max(values))
        elif "rss" in key and isinstance(value, float):
            merged[key] = max(values)
    merged["spread"] = spread
    merged["runs"] = len(runs)
    return merged


# --- phases in child processes ------------------------------------------------------------


def run_phase(
    script: Path, phase: str, params: Mapping[str, Any], *, show_command: bool = False
) -> dict[str, Any]:
    """Run ``script --phase phase --params JSON`` in a fresh interpreter; return the JSON
    object the child printed after ``PHASE_TAG``. Raises ``RuntimeError`` if it failed."""
    command = [sys.executable, str(script), "--phase", phase, "--params", json.dumps(params)]
    if show_command:
        print("$ " + " ".join(_quote(c) for c in command), file=sys.stderr)
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    found = None
    for line in done.stdout.splitlines():
        if line.startswith(PHASE_TAG):
            found = json.loads(line[len(PHASE_TAG) :])
        else:
            print(line, file=sys.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"phase {phase!r} failed (exit {done.returncode})")
    return found


def _quote(text: str) -> str:
    return text if text.replace("-", "").replace("_", "").isalnum() else f"'{text}'"


def phase_main(phases: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """If the command line is ``--phase NAME --params JSON``, run that phase, print its
    result for the parent and return True; otherwise return False (the parent's run)."""
    if "--phase" not in sys.argv:
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=sorted(phases), required=True)
    parser.add_argument("--params", required=True)
    args = parser.parse_args()
    result = phases[args.phase](json.loads(args.params))
    result.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    print(PHASE_TAG + json.dumps(result, default=str), flush=True)
    return True


# --- inputs -------------------------------------------------------------------------------


def portfolio_csv(n: int, *, seed: int, today: date) -> Path:
    """The generated portfolio of ``n`` accounts as an import CSV under ``bench/out``, made
    once per (n, seed, today, mix) and reused afterwards."""
    name = (
        f"portfolio-n{n}-seed{seed}-{today.isoformat()}"
        f"-overdue{int(OVERDUE_SHARE * 100)}-ahead{AHEAD_DAYS}.csv"
    )
    path = OUT / name
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    print(f"generating {path.relative_to(REPO)} ...", file=sys.stderr)
    rows = generate_portfolio(n, today, seed, overdue_share=OVERDUE_SHARE, ahead_days=AHEAD_DAYS)
    write_csv(rows, partial)
    partial.replace(path)
    return path


@dataclass(frozen=True, slots=True)
class StoreRef:
    """Where a benchmark store lives: a URL and, on PostgreSQL, its own schema."""

    backend: str
    url: str
    schema: str | None = None

    def open(self) -> Store:
        return Store.open(self.url, schema=self.schema)

    def as_params(self) -> dict[str, Any]:
        return {"backend": self.backend, "url": self.url, "schema": self.schema}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> StoreRef:
        return cls(params["backend"], params["url"], params.get("schema"))


@contextmanager
def fresh_store(backend: str, *, keep: bool = False) -> Iterator[StoreRef]:
    """A new, migrated, empty store: a SQLite file in a new temporary folder, or a new
    PostgreSQL schema ``bench_<hex>``. Removed afterwards unless ``keep``."""
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="remind-bench-"))
        ref = StoreRef("sqlite", f"sqlite:///{folder / 'remind.db'}")
        Store.open(ref.url).close()  # a new SQLite file is migrated on open
        try:
            yield ref
        finally:
            if keep:
                print(f"kept the store: {ref.url}", file=sys.stderr)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return
    schema = f"bench_{secrets.token_hex(5)}"
    ref = StoreRef("postgres", PG_URL, schema)
    store = Store.open(PG_URL, schema=schema, check_schema=False)
    try:
        store.upgrade()  # creates the schema, then migrates it
    finally:
        store.close()
    try:
        yield ref
    finally:
        if keep:
            print(f"kept the store: {PG_URL} schema {schema}", file=sys.stderr)
        else:
            drop_schema(PG_URL, schema)


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a plain libpq one for ``psycopg``."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlite_path(url: str) -> str:
    return sa.make_url(url).database or ""


def sqlite_text(value: date | datetime) -> str:
    """A date or an instant as the store writes it on SQLite (instants as naive UTC text),
    for the raw-driver baselines' parameters."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value.isoformat()


def raw_sqlite(url: str) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection with the pragmas the store uses (WAL, NORMAL sync),
    in autocommit mode (the caller sends BEGIN/COMMIT)."""
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


# --- the machine --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
    }
    with suppress(ValueError, OSError):
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    return info


def code_version() -> str:
    """What was measured: the commit, and a digest of the package sources as they are on disk
    (other work may be uncommitted), e.g. ``a3d918e, sources 5f1c0e2a9b3d (3 files differ)``."""
    digest = hashlib.sha256()
    for path in sorted(REPO.glob("*/**/*.py")):
        if path.parts[len(REPO.parts)] in ("scheduler", "policies", "channels"):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else "?"

    changed = git("status", "--porcelain", "--", "scheduler", "policies", "channels")
    count = len(changed.splitlines()) if changed != "?" else "?"
    return f"{git('rev-parse', '--short', 'HEAD')}, sources {digest.hexdigest()[:12]} " + (
        f"({count} files differ from the commit)" if count else "(clean)"
    )


def postgres_version() -> str:
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(sa.text("SHOW server_version")))
    finally:
        engine.dispose()


# --- processes ----------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far; 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_of(pid: int) -> float:
    """Peak resident set size (``VmHWM``) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL server process on the machine, by pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "postgres":
                    found[int(proc.name)] = cpu_seconds(int(proc.name))
            except OSError:
                continue
    return found


# --- reporting ----------------------------------------------------------------------------


@dataclass
class Report:
    """One benchmark run: measured rows, ratios, counts and context; printed as a table or
    as JSON."""

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        phase: str,
        seconds: float,
        *,
        rows: int | None = None,
        peak_rss_mib: float | None = None,
        note: str = "",
    ) -> None:
        self.rows.append(
            {
                "phase": phase,
                "wall_s": round(seconds, 3),
                "rows": rows,
                "rows_per_s": round(rows / seconds) if rows and seconds > 0 else None,
                "peak_rss_mib": peak_rss_mib,
                "note": note,
            }
        )

    def emit(self, *, as_json: bool) -> None:
        if as_json:
            payload = {
                "title": self.title,
                "rows": self.rows,
                "ratios": self.ratios,
                "facts": self.facts,
            }
            print(json.dumps(payload, indent=2, default=str))
            return
        print(self.render())

    def render(self) -> str:
        headers = ("phase", "wall s", "rows", "rows/s", "peak RSS MiB", "note")
        body = [
            (
                r["phase"],
                f"{r['wall_s']:.3f}",
                _number(r["rows"]),
                _number(r["rows_per_s"]),
                "" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.1f}",
                r["note"],
            )
            for r in self.rows
        ]
        lines = [self.title, ""]
        lines += _aligned(headers, body, right=(1, 2, 3, 4))
        if self.ratios:
            lines.append("")
            width = max(len(k) for k in self.ratios)
            lines += [f"{k:<{width}}  {v:.2f}x" for k, v in self.ratios.items()]
        if self.facts:
            lines.append("")
            width = max(len(k) for k in self.facts)
            lines += [f"{k:<{width}}  {_fact(v)}" for k, v in self.facts.items()]
        return "\n".join(lines)


def _number(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _fact(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items())
    return str(value)


def _aligned(
    headers: Sequence[str], body: Sequence[Sequence[str]], *, right: Sequence[int]
) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)]


def base_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--accounts", type=int, default=100_000, help="portfolio size")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--today", type=date.fromisoformat, default=DEFAULT_TODAY,
        help=f"the portfolio's and the run's today (default {DEFAULT_TODAY})",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the benchmark store (prints where it is)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="run the measured phases N times; report the median time and the highest RSS",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="add one untimed run under cProfile; stats go to bench/out/*.prof",
    )  # fmt: skip
    parser.add_argument(
        "--show-commands", action="store_true", help="print each phase's command line"
    )
    return parser
