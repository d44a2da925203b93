"""More dispatch processes for one daemon: ``[daemon] dispatch_processes = N``.

One Python interpreter runs every send, re-check, render and record of a daemon under one
interpreter lock, so a daemon's dispatch rate is bounded by one core (about 500-700
contacts/s to an HTTP gateway on the machines we measure). With ``dispatch_processes = N``
the daemon starts N-1 dispatch-only children (``python -m scheduler.workers``); each
claims, re-checks, sends and records through the same ``Dispatcher`` and the same leases as
the daemon itself, so no contact is sent twice and none is lost, exactly as with several
daemons on one PostgreSQL store. Planning, the SLA watch, sources, metrics and systemd's
notify protocol stay in the daemon (the children never plan and never talk to systemd).

What the daemon promises about its children:

* each child is owner ``HOST:PID`` of its own leases; a child that dies leaves leases that
  expire after ``lease_seconds`` (then any dispatching process claims them again), and the
  daemon starts a new child in its place after a backoff (``RestartBackoff``: 1 s, doubling
  for a child that keeps dying, up to 60 s; never giving up, since the daemon dispatches
  meanwhile and the children are only extra capacity);
* a child holds the daemon's SQLite single-instance lock (the descriptor is passed on), so a
  restarted daemon cannot release leases that an old child still works on;
* a child ends when the daemon ends: SIGTERM from the daemon at shutdown (it drains like
  the daemon: stop claiming, finish sends for up to ``drain_seconds``, release the rest,
  exit 0), and on Linux SIGTERM from the kernel when the daemon dies (``PR_SET_PDEATHSIG``);
  elsewhere it notices within ``dispatch_every_seconds`` that its parent is gone;
* SIGHUP is passed on: each child reloads the policies and templates itself and keeps its
  previous ones when the new are invalid;
* a channel's ``rate_per_second`` is the provider's limit for the whole daemon: each of the
  N processes keeps to ``rate_per_second / N``;
* what a child settles reaches the daemon's Prometheus counters: after recording a batch the
  child writes one JSON line per channel and outcome (a ``Tally``) to a pipe the daemon
  reads (``--report-fd``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO

import structlog

from scheduler.config import Settings, load_settings
from scheduler.dispatcher import Rulebook, next_dispatch
from scheduler.errors import ConfigError, PolicyError, RemindError, StoreError
from scheduler.logs import configure_logging, install_stack_dumps
from scheduler.metrics import Tally, tally
from scheduler.models import Channel
from scheduler.queue import Settlement
from scheduler.store import Store, open_store

__all__ = ["DispatchWorkers", "RestartBackoff", "main"]

log = structlog.get_logger("remind.workers")

_PR_SET_PDEATHSIG = 1
#: A child's exit codes, as the CLI's: an invalid config or policy, any other remind error.
_EXIT_INVALID, _EXIT_ERROR = 2, 3


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    """When a dispatch child that exited is started again: ``first_seconds`` after its first
    exit in a row, doubling with each further one up to ``max_seconds``, for as long as it
    keeps exiting (never given up: the daemon dispatches meanwhile). An exit after the child
    stayed up ``stable_seconds`` starts a new row."""

    first_seconds: float = 1.0
    max_seconds: float = 60.0
    stable_seconds: float = 300.0

    def after_exit(self, failures: int, uptime_seconds: float) -> tuple[int, float]:
        """A child that had exited ``failures`` times in a row before this run exits after
        ``uptime_seconds``: returns its exits in a row now and the seconds until its restart."""
        failures = 1 if uptime_seconds >= self.stable_seconds else failures + 1
        return failures, min(self.max_seconds, self.first_seconds * 2.0 ** min(failures - 1, 32))


@dataclass(slots=True)
class _Slot:
    """One child's place: its process (None while it waits to start), when that started
    (the timer's reading), its exits in a row, and when it is due to start (again)."""

    index: int
    child: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None

    def ended(self, now: float, backoff: RestartBackoff) -> float:
        """Its process exited (or could not start) at ``now``: schedule the next start and
        return the seconds until then."""
        self.failures, delay = backoff.after_exit(self.failures, now - self.started)
        self.child, self.restart_at = None, now + delay
        return delay


class DispatchWorkers:
    """The daemon's dispatch-only children: ``start(report)``, ``check()`` (note the ones that
    exited, start the ones due), ``due()`` (whether ``check()`` has work), ``reload()``
    (SIGHUP each), ``stop(timeout)`` (SIGTERM each, wait, then SIGKILL).

    ``count`` children run ``python -m scheduler.workers`` with the daemon's config file,
    log level and clock (``clock()`` at start is passed as ``--now`` when ``pinned``), and
    the descriptors in ``pass_fds`` (the SQLite single-instance lock). Their log lines go
    to ``log`` (default: the daemon's own stdout, so journald gets both). A child that exits
    is started again as ``backoff`` says, measured on ``timer`` (seconds, monotonic)."""

    def __init__(
        self,
        settings: Settings,
        *,
        count: int,
        clock: Callable[[], datetime],
        pinned: bool = False,
        log_level: str = "info",
        pass_fds: Sequence[int] = (),
        log: IO[str] | None = None,
        backoff: RestartBackoff = RestartBackoff(),
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.count = count
        self.clock = clock
        self.pinned = pinned
        self.log_level = log_level
        self.pass_fds = tuple(pass_fds)
        self.backoff = backoff
        self.timer = timer
        self.slots = [_Slot(i + 1) for i in range(count)]
        self._report: Callable[[Tally], None] | None = None
        self._readers: list[threading.Thread] = []

    def _command(self, index: int) -> list[str]:
        command = [
            sys.executable, "-m", "scheduler.workers",
            "--config", str(self.settings.config_path), "--parent", str(os.getpid()),
            "--index", str(index), "--processes", str(self.count + 1),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.pinned:
            command += ["--now", self.clock().isoformat()]
        return command

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        """Start child ``index``, with a report pipe when there is a ``report`` to feed.
        Raises ``OSError`` when it cannot be started."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        command, fds = self._command(index), self.pass_fds
        read, write = os.pipe() if self._report is not None else (-1, -1)
        if write >= 0:
            command, fds = [*command, "--report-fd", str(write)], (*fds, write)
        try:
            child = subprocess.Popen(
                command, env=env, pass_fds=fds, stdout=self.log,
                stderr=subprocess.STDOUT if self.log is not None else None,
            )  # fmt: skip
        except BaseException:
            if read >= 0:
                os.close(read)
            raise
        finally:
            if write >= 0:
                os.close(write)  # the child holds it now: EOF here when the child ends
        if read >= 0 and self._report is not None:
            self._listen(read, index, self._report)
        log.info("workers.started", index=index, pid=child.pid)
        return child

    def _listen(self, fd: int, index: int, report: Callable[[Tally], None]) -> None:
        """Feed ``report`` each ``Tally`` child ``index`` writes to ``fd``, until it ends."""

        def read() -> None:
            with open(fd, "rb") as pipe:
                for line in pipe:
                    try:
                        counted = Tally(**json.loads(line))
                    except (ValueError, TypeError):
                        text = line[:200].decode(errors="replace")
                        log.warning("workers.bad_report", index=index, line=text)
                        continue
                    try:
                        report(counted)
                    except Exception:  # this thread must keep reading: logged in full
                        log.exception("workers.report_crashed", index=index)

        thread = threading.Thread(target=read, name=f"workers-report-{index}", daemon=True)
        thread.start()
        self._readers = [t for t in self._readers if t.is_alive()] + [thread]

    @property
    def pids(self) -> list[int]:
        return [s.child.pid for s in self.slots if s.child is not None]

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [s.child for s in self.slots if s.child is not None and s.child.poll() is None]

    def start(self, report: Callable[[Tally], None] | None = None) -> None:
        """Start every child; each feeds ``report`` with what it settles (none: no reports)."""
        self._report = report
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> bool:
        now = self.timer()
        slot.started = now
        try:
            slot.child = self._spawn(slot.index)
        except OSError as exc:
            delay = slot.ended(now, self.backoff)
            log.error("workers.start_failed", index=slot.index, error=str(exc),
                      exits_in_a_row=slot.failures, restart_in_seconds=delay)  # fmt: skip
            return False
        slot.restart_at = None
        return True

    def due(self) -> bool:
        """Whether ``check()`` has something to do: a child exited, or a start is due."""
        now = self.timer()
        return any(
            (s.child is not None and s.child.poll() is not None)
            or (s.restart_at is not None and now >= s.restart_at)
            for s in self.slots
        )

    def check(self) -> int:
        """Note each child that exited (logged with its exit code or signal and when it will
        be started again) and start each one whose time has come; returns how many started."""
        now = self.timer()
        started = 0
        for slot in self.slots:
            if slot.child is not None and (code := slot.child.poll()) is not None:
                self._exited(slot, slot.child.pid, code, now)
            if slot.restart_at is not None and now >= slot.restart_at:
                started += self._start(slot)
        return started

    def _exited(self, slot: _Slot, pid: int, code: int, now: float) -> None:
        uptime = now - slot.started
        delay = slot.ended(now, self.backoff)
        how = {"exit_code": code} if code >= 0 else {"signal": _signal_name(-code)}
        log.warning(
            "workers.exited", index=slot.index, pid=pid, **how, uptime_seconds=round(uptime, 1),
            exits_in_a_row=slot.failures, restart_in_seconds=delay,
        )  # fmt: skip

    def reload(self) -> None:
        self._signal(signal.SIGHUP)

    def _signal(self, signum: int) -> None:
        for child in self._running():
            child.send_signal(signum)

    def stop(self, timeout: float) -> bool:
        """SIGTERM every child and wait up to ``timeout`` seconds in all; SIGKILL those
        still running then. True when every child exited by itself. Their last reports are
        read (for up to what is left of ``timeout``)."""
        running = self._running()
        self._signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                clean = False
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return clean


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --- the child ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (a no-op elsewhere). Linux sends it each
    time the parent *thread* exits: a SIGKILLed daemon's threads exit one by one and this
    process is handed from one to the next, so it may get several SIGTERMs over a few ms."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _Reporter:
    """The child's end of the report pipe: after each recorded batch, one JSON ``Tally`` line
    per channel and outcome. The pipe does not block: a send never waits on the daemon's
    counters, and a line that does not fit (the daemon not reading) is dropped and logged.
    Each line is one ``write`` of under ``PIPE_BUF`` bytes, so lines from several lanes
    never interleave. A daemon that is gone (a broken pipe) is logged once; this process
    stops soon after anyway."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd

    def __call__(self, settled: Sequence[Settlement]) -> None:
        for t in tally(settled):
            fd = self._fd
            if fd is None:
                return
            try:
                os.write(fd, json.dumps(asdict(t)).encode() + b"\n")
            except BlockingIOError:
                log.warning("workers.report_dropped", channel=t.channel, outcome=t.outcome,
                            contacts=t.contacts)  # fmt: skip
            except OSError as exc:
                self._fd = None
                log.warning("workers.report_failed", error=str(exc))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)


class _Child:
    """One dispatch-only process: a thread per lane claiming and sending until stopped."""

    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], datetime], processes: int,
        parent: int, report: _Reporter | None = None,
    ) -> None:  # fmt: skip
        from scheduler.daemon import build_lanes, dispatcher_for, load_rulebook, policy_channels

        self.settings = settings
        self.parent = parent
        self.stop = threading.Event()  # set by the main thread only, never by a handler
        self._stopping = False  # set by SIGTERM's and SIGINT's handler, which must take no lock
        self._reload = False  # set by SIGHUP's handler, which must take no lock
        self._book = load_rulebook(settings)
        lanes = build_lanes(settings, clock, policy_channels(self._book), processes=processes)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.dispatcher = dispatcher_for(
            settings, store=store, lanes=lanes, rulebook=lambda: self._book, clock=clock,
            owner=self.owner, stop=self.stop, on_settled=report,
        )  # fmt: skip

    def run(self) -> int:
        self._install_signals()
        threads = [
            threading.Thread(target=self._lane, args=(kind,), name=f"dispatch-{kind}")
            for kind in self.dispatcher.lanes
        ]
        for thread in threads:
            thread.start()
        log.info("workers.ready", owner=self.owner, lanes=[k.value for k in self.dispatcher.lanes])
        checked = time.monotonic()
        while not self._stopping:
            time.sleep(0.1)
            if time.monotonic() - checked < self.settings.daemon.dispatch_every_seconds:
                continue
            checked = time.monotonic()
            if os.getppid() != self.parent:
                log.warning("workers.orphaned", owner=self.owner)
                break
            if self._reload:
                self._reload = False
                self._reload_rulebook()
        self.stop.set()
        deadline = time.monotonic() + self.settings.daemon.drain_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            left = self.dispatcher.queue.release(self.owner, now=datetime.now(UTC))
        except StoreError as exc:
            log.error("workers.release_failed", owner=self.owner, error=str(exc))
            left = -1
        log.info("workers.stopped", owner=self.owner, released=left)
        self.dispatcher.close()
        return 0

    def _install_signals(self) -> None:
        """SIGTERM and SIGINT ask the main loop to stop (within 0.1 s), SIGHUP to reload;
        SIGUSR1 writes every thread's stack (``dump_stacks``, which takes no lock). The other
        handlers only set flags that loop polls.
        Python runs a handler on the main thread between any two bytecodes, whichever thread
        the kernel delivered the signal to (blocking it on the main thread does not help), so
        one that set ``stop`` itself could run while the main thread, or a handler for an
        earlier SIGTERM, holds the Event's lock inside ``stop.set()``, and wait for that
        lock forever, the lanes with it (``stop.wait`` takes it too). Several SIGTERMs are
        what a SIGKILLed daemon sends (see ``_die_with_parent``)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._hup)
        install_stack_dumps()

    def _request_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload = True

    def _lane(self, kind: Channel) -> None:
        while not self.stop.is_set():
            try:
                self.dispatcher.dispatch(kind)
            except RemindError as exc:
                log.error("tick.failed", tick=f"dispatch.{kind.value}", error=str(exc))
            except Exception:  # like a daemon tick: logged in full, tried again
                log.exception("tick.crashed", tick=f"dispatch.{kind.value}")
            now = time.time()
            self.stop.wait(next_dispatch(now, self.settings.daemon.dispatch_every_seconds) - now)

    def _reload_rulebook(self) -> None:
        from scheduler.daemon import load_rulebook

        try:
            book: Rulebook = load_rulebook(load_settings(self.settings.config_path))
        except (PolicyError, RemindError) as exc:
            log.error("reload.rejected", owner=self.owner, problem=str(exc))
            return
        self._book = book
        log.info("reload.done", owner=self.owner, policy_version=book.version)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.workers", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--now", type=datetime.fromisoformat, default=None)
    parser.add_argument("--report-fd", type=int, default=None)
    args = parser.parse_args(argv)
    _die_with_parent()
    configure_logging(level=args.log_level)
    if os.getppid() != args.parent:  # the daemon died before we got here
        return 0
    if args.now is not None:
        from scheduler.daemon import offset_clock

        clock = offset_clock(args.now.astimezone(UTC))
    else:

        def clock() -> datetime:
            return datetime.now(UTC)

    report = _Reporter(args.report_fd) if args.report_fd is not None else None
    try:
        settings = load_settings(args.config)  # read again: it may have changed since
        with open_store(settings) as store:
            return _Child(settings, store, clock, args.processes, args.parent, report).run()
    except RemindError as exc:
        log.error("workers.failed", index=args.index, error=str(exc))
        return _EXIT_INVALID if isinstance(exc, ConfigError | PolicyError) else _EXIT_ERROR
    finally:
        if report is not None:
            report.close()


if __name__ == "__main__":
    sys.exit(main())
