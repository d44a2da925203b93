"""``remind run``: the ticks, the signals, and systemd's notify protocol.

APScheduler only drives ticks; the schedule itself is the contacts table.

* **plan** (every ``plan_every_seconds``, and at start): plan the borrower-local days from
  the last day already planned (catch-up after downtime) through ``plan_days`` ahead, and
  materialise the result: planned contacts as ``planned`` rows, contacts whose window
  passed while nobody planned them as ``missed``. Ids are stable, so this is idempotent.
* **dispatch** (every ``dispatch_every_seconds``, on the multiples of it since the epoch,
  one job per channel): see ``scheduler.dispatcher``. A job keeps going while contacts are
  due.
* **watch** (every ``watch_every_seconds``): first-24h contacts still unsent at their
  deadline are recorded as SLA breaches (once each); queue gauges; the daemon-state row.
* **source.NAME** (each enabled ``[[sources]]`` entry, on its own interval or cron, on a
  pool of its own so a hanging lender database never delays dispatch): see
  ``scheduler.sources``. A failing source is recorded and retried at its next run.

Signals: SIGTERM/SIGINT stop claiming, let in-flight sends finish for up to
``drain_seconds``, release what is left, and exit 0. SIGHUP reloads config.toml's policy
directory and the templates; an invalid reload is logged with file, key and line and the
previous rulebook stays in force. SIGUSR1 writes every thread's stack to stderr (the
journal), in the daemon and in each dispatch child: for a process that seems stuck.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import undefined

from channels.registry import factory
from policies import load_policies
from scheduler.cases import CaseFile
from scheduler.config import Settings
from scheduler.diff import summary_fields
from scheduler.dispatcher import (
    Dispatcher,
    Lane,
    RetrySettings,
    Rulebook,
    first_contact_rules,
    next_dispatch,
)
from scheduler.errors import ConfigError, PolicyError, RemindError, StoreError
from scheduler.leader import Leadership, leadership_for
from scheduler.logs import install_stack_dumps
from scheduler.metrics import Metrics
from scheduler.models import Channel, Horizon, Reason
from scheduler.notify import Notifier
from scheduler.planner import sla_deadline
from scheduler.planning import compare_policies, plan_from_store
from scheduler.queue import ContactQueue, Settlement
from scheduler.render import Templates, template_dirs
from scheduler.sources import SourceRun, SourceRunner
from scheduler.store import Store
from scheduler.workers import DispatchWorkers

__all__ = [
    "Daemon",
    "build_lanes",
    "dispatcher_for",
    "load_rulebook",
    "offset_clock",
    "policy_channels",
    "single_instance_lock",
]

log = structlog.get_logger("remind.daemon")
#: How many borrower-local days back a catch-up plan reaches at most.
MAX_CATCH_UP_DAYS = 14


def load_rulebook(settings: Settings, policy_dir: Path | None = None) -> Rulebook:
    """Policies and templates from ``policy_dir`` (default: config's), shipped templates as
    the fallback. Raises ``PolicyError`` with every problem."""
    directory = (policy_dir or settings.policy_dir).resolve()
    policies = load_policies(directory)
    templates = Templates.load(template_dirs(directory), default_language=settings.default_language)
    return Rulebook(policies, templates, settings.lender_name)


def build_lanes(
    settings: Settings, clock: Callable[[], datetime], kinds: set[Channel], *, processes: int = 1
) -> dict[Channel, Lane]:
    """One lane per channel kind the policies use, from ``[channels.KIND]``; with
    ``processes`` dispatching processes each lane keeps to its share of the provider's rate.
    Raises ``ConfigError`` for a missing table, an unknown adapter type or bad adapter
    options."""
    lanes: dict[Channel, Lane] = {}
    for kind in sorted(kinds):
        cs = settings.channels.get(kind.value)
        if cs is None:
            raise ConfigError(
                f"{settings.config_path}: the policies use {kind.value} but there is no "
                f"[channels.{kind.value}] table saying which adapter sends it"
            )
        make = factory(cs.type)
        try:
            adapter = make(name=cs.type, clock=clock, **cs.options)
        except TypeError as exc:
            raise ConfigError(f"{settings.config_path}: channels.{kind.value}: {exc}") from exc
        lanes[kind] = Lane(kind, adapter, cs.concurrency, cs.rate_per_second / processes)
    return lanes


def dispatcher_for(
    settings: Settings,
    *,
    store: Store,
    lanes: Mapping[Channel, Lane],
    rulebook: Callable[[], Rulebook],
    clock: Callable[[], datetime],
    owner: str,
    stop: threading.Event,
    on_settled: Callable[[Sequence[Settlement]], None] | None = None,
) -> Dispatcher:
    """A ``Dispatcher`` with ``[daemon]``'s batch, lease and retry settings (the daemon's
    own, and each dispatch child's)."""
    d = settings.daemon
    return Dispatcher(
        store=store, lanes=lanes, rulebook=rulebook, clock=clock, owner=owner,
        batch_size=d.batch_size, lease_seconds=d.lease_seconds,
        retry=RetrySettings(
            max_attempts=d.max_attempts, short_retries=d.short_retries,
            base_seconds=d.retry_base_seconds, max_seconds=d.retry_max_seconds,
        ),
        stop=stop, on_settled=on_settled,
    )  # fmt: skip


class single_instance_lock:  # used as a context manager: named like one
    """An exclusive lock beside a SQLite store file, so a second daemon on the same file is
    refused with a clear message (PostgreSQL stores need none)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._handle: IO[str] | None = None

    def __enter__(self) -> single_instance_lock:
        if self._store.backend != "sqlite":
            return self
        database = self._store.engine.url.database or ""
        if database in ("", ":memory:"):
            return self
        path = Path(database + ".lock")
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"another remind daemon ({holder}) is running on {database}; a SQLite store "
                "serves one daemon: stop it, or use PostgreSQL for several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    @property
    def fds(self) -> tuple[int, ...]:
        """The lock's descriptor (none off SQLite), for child processes to hold it too."""
        return () if self._handle is None else (self._handle.fileno(),)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()


class _NotBusyNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


class Daemon:
    """The long-running service. Parts are passed in; ``run()`` blocks until stopped."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        lanes: Mapping[Channel, Lane],
        rulebook: Rulebook,
        clock: Callable[[], datetime],
        notifier: Notifier | None = None,
        owner: str | None = None,
        reload: Callable[[], Rulebook] | None = None,
        leader: Leadership | None = None,
        sources: Mapping[str, SourceRunner] | None = None,
        workers: DispatchWorkers | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.sources = dict(sources or {})
        self.store = store
        self.queue = ContactQueue(store)
        self.clock = clock
        self.notifier = notifier or Notifier.from_environ()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._rulebook = rulebook
        self._reload = reload
        self.leader = leader or leadership_for(store.engine)
        self._leading: bool | None = None  # not asked yet
        self.drained = True  # False when a tick outlived the drain at shutdown
        self.metrics = Metrics()
        self.stop = threading.Event()  # set by the main thread only, never by a handler
        self._stop_requested = False  # set by SIGTERM's and SIGINT's handler
        self._reload_requested = False  # set by SIGHUP's handler
        self._woken = False  # set by signal handlers, which must take no lock
        self._ready = False
        self._last_dispatch = time.monotonic()
        self.dispatcher = dispatcher_for(
            settings, store=store, lanes=lanes, rulebook=lambda: self._rulebook, clock=clock,
            owner=self.owner, stop=self.stop, on_settled=self.metrics.count,
        )  # fmt: skip

    @property
    def rulebook(self) -> Rulebook:
        return self._rulebook

    # -- ticks --

    def tick_plan(self) -> tuple[int, int]:
        """Materialise the plan (see the module docstring); returns (planned, missed) rows
        inserted."""
        if not self._lead():
            return 0, 0
        started = time.monotonic()
        now = self.clock()
        book = self._rulebook
        state = self.queue.state()
        today = now.astimezone(UTC).date()
        first = today  # earlier borrower-local days were planned by earlier ticks
        done = state.get("planned_through")
        if done is not None:  # after downtime, catch up from the first day never planned
            resume = datetime.fromisoformat(done.value).date() + timedelta(days=1)
            first = max(min(first, resume), today - timedelta(days=MAX_CATCH_UP_DAYS))
        last = today + timedelta(days=self.settings.daemon.plan_days)
        horizon = Horizon(first, (last - first).days + 1)
        kept, broken = CaseFile(self.store).settle_promises(
            book.policies, now=now, policy_version=book.version
        )
        if kept or broken:
            log.info("promises.settled", kept=kept, broken=broken)
        # worker processes start from a fork server: this process runs other threads
        considered, result = plan_from_store(
            self.store, book.policies, horizon, now,
            workers=self.settings.planner.workers, context="forkserver",
        )  # fmt: skip
        missed = [s for s in result.suppressed if s.reason is Reason.WINDOW_PASSED]
        inserted = self.queue.materialise(
            result.planned, missed, now=now, policy_version=book.version
        )
        self.queue.set_state(
            {"planned_through": last.isoformat(), "tick.plan": now.isoformat(),
             "planner": self.owner},
            owner=self.owner, now=now,
        )  # fmt: skip
        self._ticked("plan", started)
        log.info(
            "tick.plan", days=horizon.days, accounts=considered, planned=inserted[0],
            missed=inserted[1], policy_version=book.version,
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        return inserted

    def tick_dispatch(self, kind: Channel) -> int:
        started = time.monotonic()
        self._last_dispatch = started
        settled = self.dispatcher.dispatch(kind)
        self._last_dispatch = time.monotonic()
        if settled:
            log.info("tick.dispatch", channel=kind.value, settled=settled)
        self._ticked(f"dispatch.{kind.value}", started)
        return settled

    def tick_watch(self) -> int:
        """Record SLA breaches of first-24h contacts still unsent at their deadline; refresh
        the queue gauges. Returns how many breaches were newly recorded. Only the leader
        watches; a follower that finds the lead free takes it here and plans at once."""
        was_leading = self._leading
        if not self._lead():
            return 0
        if was_leading is False:  # took over from a leader that went: plan at once
            self.tick_plan()
        started = time.monotonic()
        now = self.clock()
        rules = first_contact_rules(self._rulebook.policies)
        open_ = self.queue.open_first_contacts(rules)
        accounts = self.store.accounts_by_id({c.account_id for c in open_}, now=now)
        late = [
            c for c in open_
            if c.account_id in accounts and sla_deadline(accounts[c.account_id]) < now
        ]  # fmt: skip
        known = self.queue.audited("sla_breach", {c.contact_id for c in late})
        new = [c for c in late if c.contact_id not in known]
        self.queue.record_events(
            [
                {"kind": "sla_breach", "account_id": c.account_id, "contact_id": c.contact_id,
                 "rule": c.rule, "channel": c.channel.value,
                 "policy_version": self._rulebook.version,
                 "detail": {"deadline": sla_deadline(accounts[c.account_id]).isoformat(),
                            "status": "not yet sent"}}
                for c in new
            ],
            now=now,
        )  # fmt: skip
        for c in new:
            self.metrics.sla_breaches.inc()
            log.warning("sla.breach", contact_id=c.contact_id, account_id=c.account_id,
                        rule=c.rule, channel=c.channel.value)  # fmt: skip
        self.metrics.set_depth(self.queue.depth())
        self.queue.set_state({"tick.watch": now.isoformat()}, owner=self.owner, now=now)
        self._ticked("watch", started)
        return len(new)

    def _lead(self) -> bool:
        """Whether this daemon plans and watches now (see ``scheduler.leader``)."""
        leading = self.leader.acquire()
        if leading != self._leading:
            log.info("leader.changed", owner=self.owner, leading=leading)
            self._leading = leading
        return leading

    def tick_source(self, name: str) -> SourceRun | None:
        """Run one account source now (``SourceRunner.run`` records and logs it, and never
        raises for a failing source). Only the leader reads sources (None elsewhere): one
        reader per drop folder and per watermark."""
        if not self._lead():
            return None
        started = time.monotonic()
        result = self.sources[name].run(self.clock())
        if result.ok:
            self._ticked(f"source.{name}", started)
        return result

    def add_source_jobs(self, scheduler: BackgroundScheduler, start: datetime) -> None:
        """One job per source on its interval (first run at ``start``) or cron (in the ops
        zone), on an executor of its own; coalesced, one instance at a time, and run late
        rather than skipped (``misfire_grace_time``: one interval, or an hour for cron)."""
        if not self.sources:
            return
        scheduler.add_executor(JobPool(len(self.sources)), "sources")
        for name, runner in self.sources.items():
            source = runner.source
            trigger: BaseTrigger
            if source.cron is not None:
                zone = ZoneInfo(self.settings.ops_timezone)
                trigger, grace, first = CronTrigger.from_crontab(source.cron, zone), 3600, undefined
            else:
                every = source.every_seconds or 60.0
                trigger, grace, first = IntervalTrigger(seconds=every), max(60, int(every)), start
            scheduler.add_job(
                self._guarded(f"source.{name}", partial(self.tick_source, name)), trigger,
                id=f"source.{name}", executor="sources", coalesce=True, max_instances=1,
                misfire_grace_time=grace, next_run_time=first,
            )  # fmt: skip

    def _ticked(self, tick: str, started: float) -> None:
        self.metrics.tick_seconds.labels(tick).observe(time.monotonic() - started)
        self.metrics.tick_last.labels(tick).set(time.time())

    def _guarded(self, name: str, tick: Callable[[], object]) -> Callable[[], None]:
        """A tick as an APScheduler job: errors are logged and the next run tries again."""

        def job() -> None:
            if self._stop_requested or self.stop.is_set():
                return
            try:
                tick()
            except RemindError as exc:
                log.error("tick.failed", tick=name, error=str(exc))
            except Exception:  # a tick must not kill the daemon; logged in full, retried next run
                log.exception("tick.crashed", tick=name)

        return job

    # -- running --

    def run_once(self) -> dict[str, int]:
        """Each enabled source once, one plan, dispatch until nothing is due, one watch; for
        cron and tests."""
        for name in self.sources:
            self._guarded(f"source.{name}", partial(self.tick_source, name))()
        planned, missed = self.tick_plan()
        settled = sum(self.tick_dispatch(kind) for kind in self.dispatcher.lanes)
        breaches = self.tick_watch()
        return {"planned": planned, "missed": missed, "settled": settled, "breaches": breaches}

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
        self._install_signals()
        released = self.queue.release(self.owner, now=self.clock())
        if self.store.backend == "sqlite":
            released += self.queue.release_all(now=self.clock())
        if released:
            log.info("leases.released", contacts=released, why="previous run ended uncleanly")
        if self.settings.daemon.metrics_port:
            self.metrics.serve(self.settings.daemon.metrics_port)
        scheduler = self._scheduler()
        self._guarded("plan", self.tick_plan)()
        if self.workers is not None:
            self.workers.start(report=self.metrics.add)  # their sends count here too
        self._ready = True
        self.notifier.ready(status="planning done; dispatching")
        log.info("daemon.ready", owner=self.owner, lanes=[k.value for k in self.dispatcher.lanes])
        scheduler.start()
        try:
            self._serve()
        finally:
            self._shutdown(scheduler)
        return 0

    def _scheduler(self) -> BackgroundScheduler:
        d = self.settings.daemon
        # a tick longer than its interval is normal under load: not a warning every 0.2 s
        logging.getLogger("apscheduler.scheduler").addFilter(_NotBusyNoise())
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": JobPool(len(self.dispatcher.lanes) + 2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        start = datetime.now(UTC)
        scheduler.add_job(
            self._guarded("plan", self.tick_plan),
            "interval",
            seconds=d.plan_every_seconds,
            id="plan",
            next_run_time=start + timedelta(seconds=d.plan_every_seconds),
        )
        scheduler.add_job(
            self._guarded("watch", self.tick_watch),
            "interval",
            seconds=d.watch_every_seconds,
            id="watch",
            next_run_time=start,
        )
        # on the clock's grid, so every daemon sees contacts coming due at the same moment
        every = d.dispatch_every_seconds
        first_dispatch = datetime.fromtimestamp(next_dispatch(start.timestamp(), every), UTC)
        for kind in self.dispatcher.lanes:
            scheduler.add_job(
                self._guarded(f"dispatch.{kind.value}", partial(self.tick_dispatch, kind)),
                "interval", seconds=every, id=f"dispatch.{kind.value}",
                next_run_time=first_dispatch,
            )  # fmt: skip
        self.add_source_jobs(scheduler, start)
        return scheduler

    def _serve(self) -> None:
        interval = self.notifier.watchdog_interval or 5.0
        children = self.workers.due if self.workers is not None else None
        while not self._stop_requested:
            self._nap(min(interval, 5.0), until=children)  # a child exited or is due to start
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if self.workers is not None and not self._stop_requested:
                self.workers.check()
            if self._healthy():
                self.notifier.watchdog()
        self.stop.set()

    def _nap(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Sleep up to ``seconds``, waking within 0.1 s of a signal or of ``until()`` being
        true. Polls a flag instead of waiting on an Event: a handler setting an Event the
        main thread is waiting on can deadlock on the Event's lock (the handler runs on the
        main thread)."""
        deadline = time.monotonic() + seconds
        while not self._woken and time.monotonic() < deadline:
            if until is not None and until():
                break
            time.sleep(0.1)
        self._woken = False

    def _healthy(self) -> bool:
        """Dispatch ran recently: jobs are being scheduled (a hung store or a wedged pool
        stops the watchdog pings, and systemd restarts us)."""
        limit = max(60.0, 10 * self.settings.daemon.dispatch_every_seconds)
        return time.monotonic() - self._last_dispatch < limit

    def reload(self) -> bool:
        """Load the policies and templates again; keep the old ones if the new are invalid."""
        if self._reload is None:
            return False
        if self.workers is not None:
            self.workers.reload()  # each child reloads for itself, keeping its old on error
        self.notifier.reloading()
        try:
            book = self._reload()
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("reload.rejected", file=problem.file, key=problem.key,
                          line=problem.line, problem=problem.message)  # fmt: skip
            log.error("reload.kept_previous", policy_version=self._rulebook.version)
            self.notifier.ready(status="reload rejected; previous policy in force")
            return False
        except RemindError as exc:
            log.error("reload.rejected", problem=str(exc))
            self.notifier.ready(status="reload rejected; previous policy in force")
            return False
        old, previous = self._rulebook.version, self._rulebook
        self._rulebook = book
        log.info("reload.done", policy_version=book.version, previous=old)
        threading.Thread(  # two dry-runs may outlast the watchdog: not on this thread
            target=self._log_reload_diff, args=(previous, book), name="reload-diff", daemon=True
        ).start()
        self.notifier.ready(status=f"policy {book.version} in force")
        return True

    def _log_reload_diff(self, old: Rulebook, new: Rulebook) -> None:
        """Log what the reload changes in tomorrow's plan (ops zone) as one ``reload.diff``
        event: the summary ``remind policy diff`` prints."""
        now = self.clock()
        day = now.astimezone(ZoneInfo(self.settings.ops_timezone)).date() + timedelta(days=1)
        try:
            diff = compare_policies(self.store, old.policies, new.policies, Horizon(day), now)
        except RemindError as exc:
            log.warning("reload.diff_failed", error=str(exc))
            return
        log.info("reload.diff", day=day.isoformat(), policy_version=new.version,
                 previous=old.version, **summary_fields(diff))  # fmt: skip

    def _shutdown(self, scheduler: BackgroundScheduler) -> None:
        self.notifier.stopping()
        log.info("daemon.stopping", drain_seconds=self.settings.daemon.drain_seconds)
        drain = self.settings.daemon.drain_seconds
        drained = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        drained.start()
        children_clean = self.workers.stop(drain) if self.workers is not None else True
        drained.join(drain)
        self.drained = not drained.is_alive()
        if not children_clean:
            log.warning("workers.killed", why="a dispatch process outlived the drain")
        with suppress(StoreError):
            left = self.queue.release(self.owner, now=self.clock())
            log.info("daemon.stopped", released=left, drained=self.drained)
        self.close()

    def close(self) -> None:
        """Give up the lead, close the channels and the sources (after ``run_once`` or
        ``run``)."""
        self.leader.release()
        self.dispatcher.close()
        for runner in self.sources.values():
            runner.close()

    def _install_signals(self) -> None:
        """The handlers only set flags the main loop polls (``_nap``): Python runs a handler
        on the main thread between any two bytecodes, so one that set ``stop`` could run
        inside an earlier handler's ``stop.set()`` (a second SIGTERM) and wait for the
        Event's lock forever. The main thread sets ``stop`` when it sees the flag. SIGUSR1's
        ``dump_stacks`` takes no lock, so it writes the stacks itself."""

        def stop(_signum: int, _frame: FrameType | None) -> None:
            self._stop_requested = True
            self._woken = True

        def hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True
            self._woken = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        install_stack_dumps()


def policy_channels(book: Rulebook) -> set[Channel]:
    """The channel kinds some enabled rule of the policies uses."""
    return {r.channel for p in book.policies.policies for r in p.rule if r.enabled}


def offset_clock(start: datetime) -> Callable[[], datetime]:
    """A clock that reads ``start`` now and runs on in real time (``remind run --now``)."""
    origin = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - origin)
