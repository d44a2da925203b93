"""Account sources: the daemon reads due and overdue accounts from the lender's own systems.

A ``[[sources]]`` table in config.toml names one source; ``SourceRunner.run(now)`` runs it
once and returns a frozen ``SourceRun``. Every run goes through the importer's checks and
upsert (``importer.import_rows`` / ``importer.import_accounts``), exactly as
``remind accounts import``, and then:

* records one ``source_runs`` row (started, finished, rows read, upserted, rejected,
  contacts cancelled, watermark, error) and logs one event (``source.run`` or
  ``source.failed``);
* settles as ``skipped`` the ``planned`` contacts of accounts the run found paid (reason
  ``paid``) or closed (``closed``), before the next dispatch tick (``ContactQueue.skip_paid``);
  the accounts of failed runs since the last successful one are looked at again, so a
  cancellation that failed is made by the next run.

Kinds:

* ``sql``: ``query`` is wrapped as ``SELECT * FROM (query) WHERE wm > :last ORDER BY wm``
  (``wm`` = ``watermark_column``), streamed in batches of ``batch_size`` (bounded memory,
  also on the first run, which reads everything). The largest watermark read is kept in
  ``source_state`` once the run's upsert has committed, so the next run reads only rows
  changed since. The connection is read-only (SQLite ``mode=ro``; PostgreSQL ``SET
  TRANSACTION READ ONLY``) and not pooled: each run connects afresh.
* ``folder``: each regular file in ``path`` whose name is not temporary (``.part``, ``.tmp``,
  ``.filepart``, ``.partial``, or a leading ``.``) and whose size and mtime have been seen
  unchanged for ``settle_seconds`` (measured on the ``now`` of successive runs, so a file
  written slowly is never read half-way) is imported once, then moved to ``processed/``,
  or to ``rejected/`` with its rejects beside it (``rejected/<stem>.rejects.csv``). A file
  unusable as a whole (no header, not UTF-8, unknown extension) goes to ``rejected/`` with
  ``<stem>.error.txt``; a file that cannot be read at all stays and is tried again.

A run that fails (the database is down, the folder is unreadable) is recorded with its
error and never raises: the daemon and the other sources carry on, and the next scheduled
run tries again from the stored watermark. Errors are mapped to ``SourceError`` in one
place (``_source_errors``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from channels.secrets import read_secret
from scheduler.config import Settings, SourceSettings
from scheduler.errors import ConfigError, ImportFileError, RemindError, SourceError, StoreError
from scheduler.importer import (
    REQUIRED_COLUMNS,
    Defaults,
    ImportReport,
    import_accounts,
    import_rows,
    rejects_path_for,
)
from scheduler.queue import ContactQueue
from scheduler.store import Store, db_errors, require_aware
from scheduler.tables import source_runs, source_state

__all__ = [
    "TEMPORARY_SUFFIXES",
    "SourceLedger",
    "SourceRun",
    "SourceRunner",
    "SourceStatus",
    "build_runners",
    "decode_watermark",
    "encode_watermark",
]

log = structlog.get_logger("remind.sources")

#: Names a drop folder never reads: files still being written under a temporary name.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".partial")
_ERROR_CHARS = 500


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRun:
    """What one run of one source did. ``error`` is ``None`` when it succeeded; a run with
    rejected rows succeeded (the rows are counted and, for a folder, written beside the file).
    ``watermark`` is the SQL watermark reached (or kept), or the last file a folder imported.
    """

    source: str
    kind: str
    started: datetime
    finished: datetime
    rows_read: int = 0
    upserted: int = 0
    rejected: int = 0
    cancelled: int = 0
    watermark: str | None = None
    error: str | None = None
    files: tuple[str, ...] = ()
    rejected_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A source's last finished run and its last successful one, as ``remind status`` shows
    them. ``running``: a later run has not finished (it is in progress, or its process died
    and the next run will supersede it); ``last`` stays the last one that did, so a failure
    does not look cured while the next attempt is under way."""

    source: str
    last: SourceRun | None
    last_success: datetime | None
    running: bool = False


def encode_watermark(value: object) -> tuple[str, str]:
    """A watermark value as (text, type) for the store; ``decode_watermark`` reverses it."""
    if isinstance(value, datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, date):
        return value.isoformat(), "date"
    if isinstance(value, bool):
        return str(int(value)), "int"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, float):
        return repr(value), "float"
    return str(value), "str"


def decode_watermark(text: str, kind: str) -> object:
    """The value ``encode_watermark`` stored as ``(text, kind)``."""
    readers: dict[str, Any] = {
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "int": int,
        "decimal": Decimal,
        "float": float,
    }
    return readers.get(kind, str)(text)


# --- the records: source_runs and source_state ----------------------------------------------


@dataclass
class _State:
    watermark: str | None = None
    watermark_type: str | None = None
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)


class SourceLedger:
    """The ``source_runs`` and ``source_state`` tables of ``store``. Raises ``StoreError``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine
        self._writer = store.writer

    def start(self, source: str, *, now: datetime) -> int:
        """Insert a run row started at ``now`` (not finished); return its id."""
        require_aware(now, "now")
        row = {"source": source, "started": now, "rows_read": 0, "upserted": 0, "rejected": 0,
               "cancelled": 0}  # fmt: skip
        with db_errors("cannot record a source run"), self._writer.begin() as conn:
            result = conn.execute(source_runs.insert().returning(source_runs.c.id), row)
            return int(result.scalar_one())

    def finish(self, run_id: int, run: SourceRun) -> None:
        """Record what run ``run_id`` did."""
        values = {
            "finished": run.finished, "rows_read": run.rows_read, "upserted": run.upserted,
            "rejected": run.rejected, "cancelled": run.cancelled, "watermark": run.watermark,
            "error": run.error,
        }  # fmt: skip
        stmt = source_runs.update().where(source_runs.c.id == run_id).values(**values)
        with db_errors("cannot record a source run"), self._writer.begin() as conn:
            conn.execute(stmt)

    def unsettled_since(self, source: str) -> datetime | None:
        """When the oldest run of ``source`` since its last successful one started (all
        its runs count while none has succeeded; ``None``: no run recorded). A failed run
        may have imported rows and then failed to cancel their paid contacts: accounts
        updated since then are looked at again."""
        r = source_runs.c
        last_ok = (
            sa.select(sa.func.max(r.started))
            .where(r.source == source, r.error.is_(None), r.finished.is_not(None))
            .scalar_subquery()
        )
        stmt = sa.select(sa.func.min(r.started)).where(
            r.source == source, sa.or_(last_ok.is_(None), r.started > last_ok)
        )
        with db_errors("cannot read source runs"), self._engine.connect() as conn:
            found: datetime | None = conn.scalar(stmt)
            return found

    def state(self, source: str) -> _State:
        s = source_state.c
        stmt = sa.select(s.watermark, s.watermark_type, s.files).where(s.source == source)
        with db_errors("cannot read the source state"), self._engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()
        if row is None:
            return _State()
        return _State(row.watermark, row.watermark_type, json.loads(row.files or "{}"))

    def save_state(self, source: str, state: _State, *, now: datetime) -> None:
        row = {"source": source, "watermark": state.watermark,
               "watermark_type": state.watermark_type,
               "files": json.dumps(state.files, sort_keys=True), "updated_at": now}  # fmt: skip
        insert = postgresql.insert if self._store.backend == "postgresql" else sqlite.insert
        stmt = insert(source_state).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source"],
            set_={k: stmt.excluded[k] for k in ("watermark", "watermark_type", "files",
                                                 "updated_at")},
        )  # fmt: skip
        with db_errors("cannot write the source state"), self._writer.begin() as conn:
            conn.execute(stmt)

    def status(self, sources: list[str]) -> list[SourceStatus]:
        """Each named source's last finished run, last successful run's start, and whether a
        later run is unfinished, in that order."""
        r = source_runs.c
        found: list[SourceStatus] = []
        with db_errors("cannot read source runs"), self._engine.connect() as conn:
            for name in sources:
                newest = sa.select(source_runs).where(r.source == name)
                newest = newest.order_by(r.started.desc(), r.id.desc()).limit(1)
                latest = conn.execute(newest).one_or_none()
                last = conn.execute(newest.where(r.finished.is_not(None))).one_or_none()
                success = conn.scalar(
                    sa.select(sa.func.max(r.started)).where(
                        r.source == name, r.error.is_(None), r.finished.is_not(None)
                    )
                )
                running = latest is not None and latest.finished is None
                run = None if last is None else _run(last)
                found.append(SourceStatus(name, run, success, running))
        return found


def _run(row: Any) -> SourceRun:
    """A recorded run (its ``kind`` is not recorded: the config says it)."""
    return SourceRun(
        source=row.source, kind="", started=row.started, finished=row.finished or row.started,
        rows_read=row.rows_read, upserted=row.upserted, rejected=row.rejected,
        cancelled=row.cancelled, watermark=row.watermark, error=row.error,
    )  # fmt: skip


# --- error mapping ----------------------------------------------------------------------


@contextmanager
def _source_errors(name: str) -> Iterator[None]:
    """Map what reading a source raises (driver, SQLAlchemy, file system) to ``SourceError``."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        text = str(exc.orig).strip()
        raise SourceError(f"{name}: {text.splitlines()[0] if text else repr(exc)}") from exc
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"{name}: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise SourceError(f"{name}: {exc}") from exc


@dataclass
class _Tally:
    """What a run has done so far (kept on failure: files already imported stay imported)."""

    rows_read: int = 0
    upserted: int = 0
    rejected: int = 0
    watermark: str | None = None
    files: list[str] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, report: ImportReport) -> None:
        self.rows_read += report.rows_read
        self.upserted += report.counts.inserted + report.counts.updated
        self.rejected += report.rejected
        self.rejected_ids += report.rejected_ids


# --- sql ------------------------------------------------------------------------------------


class _SqlSource:
    """Reads a lender's database view through a read-only, unpooled SQLAlchemy engine."""

    def __init__(self, source: SourceSettings, environ: Mapping[str, str] | None) -> None:
        self.source = source
        url = sa.make_url(source.url)
        if source.password_env or source.password_credential:
            secret = read_secret(
                f"sources.{source.name}", env=source.password_env,
                credential=source.password_credential, environ=environ,
            )  # fmt: skip
            url = url.set(password=secret)
        self.engine = _read_only_engine(url)

    def read(self, store: Store, ledger: SourceLedger, tally: _Tally, *,
             defaults: Defaults, now: datetime) -> None:  # fmt: skip
        state = ledger.state(self.source.name)
        after = None
        if state.watermark is not None and state.watermark_type is not None:
            after = decode_watermark(state.watermark, state.watermark_type)
        tally.watermark = state.watermark
        highest: list[object] = []
        rows = self._rows(after, highest)
        try:
            report = import_rows(store, rows, label=f"source:{self.source.name}",
                                 defaults=defaults, now=now,
                                 batch_size=self.source.batch_size)  # fmt: skip
        finally:
            rows.close()  # the source's connection, also when the store failed midway
        tally.add(report)
        if highest:
            state.watermark, state.watermark_type = encode_watermark(highest[0])
            tally.watermark = state.watermark
            ledger.save_state(self.source.name, state, now=now)

    def _rows(self, after: object, highest: list[object]) -> Generator[dict[str, Any], None, None]:
        """The query's rows past ``after`` as dicts (lower-case keys), streamed; keeps the
        largest watermark seen in ``highest[0]``. Raises ``SourceError`` while iterating."""
        column = self.source.watermark_column
        sql = f"SELECT * FROM ({self.source.query}) AS remind_source"
        params: dict[str, object] = {}
        if column is not None:
            if after is not None:
                sql += f" WHERE remind_source.{column} > :after"
                params["after"] = after
            sql += f" ORDER BY remind_source.{column}"
        name = f"source {self.source.name}"
        with _source_errors(name), self.engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            options = conn.execution_options(stream_results=True,
                                              yield_per=self.source.batch_size)  # fmt: skip
            result = options.execute(sa.text(sql), params)
            names = result.keys()
            keys = [k.lower() for k in names]
            self._check_columns(keys)
            at = keys.index(column) if column is not None else -1
            for part in result.partitions():
                for values in part:
                    mark = values[at] if at >= 0 else None
                    if mark is not None and (not highest or mark > highest[0]):
                        highest[:] = [mark]
                    yield dict(zip(keys, values, strict=True))

    def _check_columns(self, keys: list[str]) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in keys]
        column = self.source.watermark_column
        if column is not None and column not in keys:
            missing.append(f"{column} (the watermark_column)")
        if missing:
            raise SourceError(
                f"source {self.source.name}: the query returns no column(s) "
                f"{', '.join(missing)} (it returns: {', '.join(keys) or 'nothing'})"
            )

    def close(self) -> None:
        self.engine.dispose()


def _read_only_engine(url: sa.URL) -> Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            raise ConfigError("a sql source on SQLite needs a file: sqlite:////path/to/file.db")
        # mode=ro: a file moved away is an error, never a new empty database
        target = f"sqlite:///file:{quote(database)}?mode=ro&uri=true"
        return sa.create_engine(target, poolclass=sa.pool.NullPool)
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        connect_args["connect_timeout"] = 10
    try:
        return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use source URL {url.drivername!r}: {exc}") from exc


# --- folder ---------------------------------------------------------------------------------


class _FolderSource:
    """A drop folder: settled files are imported once, then moved aside."""

    def __init__(self, source: SourceSettings) -> None:
        if source.path is None:  # config.py requires it; typed as optional for sql sources
            raise ConfigError(f"sources.{source.name}: a folder source needs path")
        self.source = source
        self.inbox = source.path
        self.processed = source.path / "processed"
        self.rejected = source.path / "rejected"

    def read(self, store: Store, ledger: SourceLedger, tally: _Tally, *,
             defaults: Defaults, now: datetime) -> None:  # fmt: skip
        state = ledger.state(self.source.name)
        tally.watermark = state.watermark
        with _source_errors(f"source {self.source.name}"):
            if not self.inbox.is_dir():
                raise SourceError(f"source {self.source.name}: drop folder {self.inbox} "
                                  "does not exist or is not a folder")  # fmt: skip
            self.processed.mkdir(exist_ok=True)
            self.rejected.mkdir(exist_ok=True)
            ready, state.files = self._settled(state.files, now)
        try:
            for path in ready:
                if self._import(store, path, tally, defaults=defaults, now=now):
                    state.watermark = tally.watermark = path.name
        finally:
            ledger.save_state(self.source.name, state, now=now)

    def _settled(
        self, seen: dict[str, dict[str, int | str]], now: datetime
    ) -> tuple[list[Path], dict[str, dict[str, int | str]]]:
        """The files ready to import (oldest first) and what to remember of the others:
        each file's size and mtime and since when (``now`` of a run) they were unchanged."""
        ready: list[tuple[int, str, Path]] = []
        waiting: dict[str, dict[str, int | str]] = {}
        settle = timedelta(seconds=self.source.settle_seconds)
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False) or _temporary(entry.name):
                    continue
                info = entry.stat(follow_symlinks=False)
                prev = seen.get(entry.name, {})
                since = now
                if (prev.get("size"), prev.get("mtime_ns")) == (info.st_size, info.st_mtime_ns):
                    since = datetime.fromisoformat(str(prev["since"]))
                if now - since >= settle:
                    ready.append((info.st_mtime_ns, entry.name, Path(entry.path)))
                waiting[entry.name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns,
                                       "since": since.isoformat()}  # fmt: skip
        return [path for _, _, path in sorted(ready)], waiting

    def _import(self, store: Store, path: Path, tally: _Tally, *,
                defaults: Defaults, now: datetime) -> bool:  # fmt: skip
        """Import one settled file and move it aside; False if it was not imported: unusable
        as a whole (moved to ``rejected/`` with ``<stem>.error.txt``) or unreadable (it stays
        and the next run tries again). Either error is added to ``tally.errors``."""
        name = f"source {self.source.name}"
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        done_to = _free_name(self.processed, path.name, stamp)
        rejected_to = _free_name(self.rejected, path.name, stamp)
        try:
            report = import_accounts(
                store, path, defaults=defaults, now=now, fmt=self.source.format,
                batch_size=self.source.batch_size, rejects_path=rejects_path_for(rejected_to),
            )  # fmt: skip
        except ImportFileError as exc:
            if isinstance(exc.__cause__, OSError):  # unreadable: leave it, try again next run
                tally.errors.append(f"{path.name}: {exc}")
                return False
            with _source_errors(name):  # unusable as a whole: set aside with the reason
                (self.rejected / f"{rejected_to.stem}.error.txt").write_text(
                    f"{exc}\n", encoding="utf-8"
                )
                os.replace(path, rejected_to)
            tally.errors.append(f"{path.name}: {exc} (moved to rejected/)")
            tally.files.append(path.name)
            return False
        tally.add(report)
        tally.files.append(path.name)
        with _source_errors(name):
            os.replace(path, rejected_to if report.rejected else done_to)
        return True

    def close(self) -> None:
        """Nothing to release."""


def _temporary(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def _free_name(folder: Path, name: str, stamp: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<stamp><suffix>`` when that is taken (a file of
    the same name was dropped before)."""
    target = folder / name
    if not target.exists() and not rejects_path_for(target).exists():
        return target
    base = Path(name)
    return folder / f"{base.stem}.{stamp}{base.suffix}"


# --- the runner -------------------------------------------------------------------------------


class SourceRunner:
    """Runs one source against ``store`` (see the module docstring). Built by
    ``build_runners``; the password of a sql source is read then (``ConfigError`` if it is
    missing). ``run`` never raises for a failing source; it may be called from any thread,
    but not twice at once for the same source (the daemon's job has ``max_instances=1``)."""

    def __init__(
        self,
        source: SourceSettings,
        store: Store,
        *,
        defaults: Defaults,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self._store = store
        self._defaults = defaults
        self._ledger = SourceLedger(store)
        self._queue = ContactQueue(store)
        self._kind: _SqlSource | _FolderSource = (
            _SqlSource(source, environ) if source.kind == "sql" else _FolderSource(source)
        )

    @property
    def name(self) -> str:
        return self.source.name

    def run(self, now: datetime) -> SourceRun:
        """Run the source once at ``now``: read, import, cancel what payments made
        unnecessary, record the run row and log one event. Returns what happened; a failure
        is in ``SourceRun.error``, never raised (if even the run row cannot be written, the
        store is down: that is logged and returned too)."""
        require_aware(now, "now")
        started = time.monotonic()
        tally = _Tally()
        cancelled = 0
        error: str | None = None
        try:
            run_id: int | None = self._ledger.start(self.name, now=now)
        except StoreError as exc:
            run_id, error = None, f"cannot record the run: {exc}"
        if run_id is not None:
            try:
                self._kind.read(self._store, self._ledger, tally, defaults=self._defaults,
                                now=now)  # fmt: skip
            except RemindError as exc:
                tally.errors.append(str(exc))
            except Exception as exc:  # a bug must not stop the daemon: recorded, logged in full
                log.exception("source.crashed", source=self.name)
                tally.errors.append(f"unexpected {type(exc).__name__}: {exc}")
            cancelled, cancel_error = self._cancel_paid(now)
            tally.errors += [cancel_error] if cancel_error else []
            error = "; ".join(tally.errors)[:_ERROR_CHARS] or None
        result = SourceRun(
            source=self.name, kind=self.source.kind, started=now,
            finished=now + timedelta(seconds=time.monotonic() - started),
            rows_read=tally.rows_read, upserted=tally.upserted, rejected=tally.rejected,
            cancelled=cancelled, watermark=tally.watermark, error=error,
            files=tuple(tally.files), rejected_ids=tuple(tally.rejected_ids),
        )  # fmt: skip
        if run_id is not None:
            try:
                self._ledger.finish(run_id, result)
            except StoreError as exc:
                result = _with_error(result, f"cannot record the run: {exc}")
        _log(result)
        return result

    def _cancel_paid(self, now: datetime) -> tuple[int, str | None]:
        """Skip the planned contacts of accounts this run, or a failed run since the last
        good one, found paid or closed (a cancellation that failed is retried next run)."""
        note = f"payment or closure arrived through source {self.name}"
        try:
            since = min(now, self._ledger.unsettled_since(self.name) or now)
            skipped = self._queue.skip_paid(changed_since=since, now=now, note=note)
        except StoreError as exc:
            return 0, str(exc)
        for s in skipped:
            log.info("contact.settled", event_kind=s.event, contact_id=s.contact_id,
                     account_id=s.account_id, rule=s.rule, channel=s.channel,
                     outcome=s.status, reason=s.reason, source=self.name)  # fmt: skip
        return len(skipped), None

    def close(self) -> None:
        self._kind.close()


def _with_error(run: SourceRun, error: str) -> SourceRun:
    joined = f"{run.error}; {error}" if run.error else error
    return replace(run, error=joined[:_ERROR_CHARS])


def _log(run: SourceRun) -> None:
    fields = {
        "source": run.source, "kind": run.kind, "rows_read": run.rows_read,
        "upserted": run.upserted, "rejected": run.rejected, "cancelled": run.cancelled,
        "watermark": run.watermark,
        "seconds": round((run.finished - run.started).total_seconds(), 3),
    }  # fmt: skip
    if run.files:
        fields["files"] = list(run.files)
    if run.rejected_ids:
        fields["rejected_accounts"] = list(run.rejected_ids)
    if run.ok:
        log.info("source.run", **fields)
    else:
        log.error("source.failed", error=run.error, **fields)


def build_runners(
    settings: Settings,
    store: Store,
    *,
    names: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, SourceRunner]:
    """A runner for each source of ``settings`` (only ``names`` if given, enabled or not;
    else the enabled ones). Raises ``ConfigError`` for an unknown name or a missing
    secret."""
    known = {s.name: s for s in settings.sources}
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"{settings.config_path}: no source named {', '.join(unknown)} "
                f"(configured: {', '.join(known) or 'none'})"
            )
        chosen = [known[n] for n in names]
    else:
        chosen = [s for s in settings.sources if s.enabled]
    defaults = Defaults.from_settings(settings)
    return {s.name: SourceRunner(s, store, defaults=defaults, environ=environ) for s in chosen}
