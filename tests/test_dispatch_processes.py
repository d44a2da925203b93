"""``[daemon] dispatch_processes``: one daemon, several dispatching processes, as a real
``remind run`` on a real SQLite file against the loopback gateway."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from channels.base import Message
from channels.outbox import OutboxChannel
from scheduler.config import load_settings
from scheduler.daemon import build_lanes
from scheduler.metrics import Tally, tally
from scheduler.models import Channel
from scheduler.queue import Settlement
from scheduler.store import open_store
from scheduler.workers import DispatchWorkers, RestartBackoff, _Child
from tests.factories import account, local
from tests.support.daemon import (
    DaemonProcess,
    audit_rows,
    contact_rows,
    remind,
    seed,
    settled_metric,
    statuses,
    write_config,
)
from tests.support.gateway import LoopbackGateway
from tests.support.signals import own_handlers, sigterm_inside_set
from tests.support.smtp import free_port

DUE = date(2026, 11, 23)
ZONE = "Asia/Shanghai"
MORNING = local(DUE - timedelta(days=1), "09:00", ZONE)
NOON = local(DUE - timedelta(days=1), "12:30", ZONE)
N = 600


def _config(tmp_path: Path, gateway_url: str, processes: int = 2, extra: str = "") -> Path:
    return write_config(
        tmp_path, store_url=f"sqlite:///{tmp_path / 'remind.db'}",
        channels=(
            f'[channels.sms]\ntype = "sms_http"\nurl = "{gateway_url}/sms"\nconcurrency = 4\n'
            '[channels.email]\ntype = "outbox"\npath = "outbox-email.jsonl"\n'
            '[channels.call]\ntype = "call_queue"\n'
            '[channels.letter]\ntype = "outbox"\npath = "outbox-letter.jsonl"\n'
        ),
        daemon=f"dispatch_processes = {processes}\nbatch_size = 25\n{extra}",
    )  # fmt: skip


def _seeded(tmp_path: Path, config: Path) -> str:
    url = f"sqlite:///{tmp_path / 'remind.db'}"
    seed(url, [account(f"P{i:04d}", due_date=DUE, email=None) for i in range(N)], MORNING)
    assert remind(config, "run", "--once", now=MORNING).returncode == 0
    return url


def _children_started(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == "workers.started"]


def _children(daemon: DaemonProcess) -> list[int]:
    return [e["pid"] for e in _children_started(daemon)]


def _ready_children(daemon: DaemonProcess) -> int:
    return sum(e.get("event") == "workers.ready" for e in daemon.events())


def _exits(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == "workers.exited"]


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def _until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent, the daemon, has not reaped it)
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _stacks(daemon: DaemonProcess, pids: list[int]) -> str:
    """What ``pids`` (remind processes logging to ``daemon``'s log) are doing: SIGUSR1 makes
    each write its threads' stacks there."""
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    time.sleep(1)
    return f"processes {pids} still running; their stacks:\n" + daemon.log_path.read_text()[-8000:]


def _dumps_stacks(daemon: DaemonProcess, pid: int, frame: str) -> None:
    """Send ``pid`` SIGUSR1 until its stacks in ``daemon``'s log show ``frame``, asking
    again each second, as an operator would, for at most 30 s."""
    deadline = time.monotonic() + 30
    while frame not in daemon.log_path.read_text():
        assert time.monotonic() < deadline, f"no {frame!r} in {pid}'s stacks:\n{daemon.tail()}"
        os.kill(pid, signal.SIGUSR1)
        time.sleep(1)


def test_sigusr1_prints_every_threads_stack_and_the_daemon_goes_on(tmp_path: Path) -> None:
    with LoopbackGateway() as gateway:
        config = _config(tmp_path, gateway.url)
        url = _seeded(tmp_path, config)
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: _ready_children(daemon) == 1)
        # When an operator asks the daemon, then its child, where they are
        # Then each writes its threads' stacks to the log (the journal under systemd): the
        # daemon's main thread serving, the child's lane threads dispatching
        child = _children(daemon)[0]
        _dumps_stacks(daemon, daemon.proc.pid, "in _serve")
        _dumps_stacks(daemon, child, "in _lane")
        # and go on: the child was not stopped, every contact is sent, both stop cleanly
        daemon.wait_for(lambda: statuses(url).get("sent", 0) >= N)
        assert _exits(daemon) == [] and _children(daemon) == [child]
        assert daemon.stop() == 0
        assert not _alive(child)


def _sent_once(url: str, gateway: LoopbackGateway) -> list[str]:
    rows = contact_rows(url, "contact_id", "status", "window_start")
    today = [r for r in rows if r.window_start < NOON.astimezone(UTC) + timedelta(hours=12)]
    assert len(today) == N and {r.status for r in today} == {"sent"}
    sent_events = [r.contact_id for r in audit_rows(url, "sent")]
    assert len(sent_events) == len(set(sent_events)) == N
    delivered = [d["key"] for d in gateway.deliveries()]
    assert len(delivered) == len(set(delivered)) == N
    assert set(delivered) == set(sent_events)
    return sent_events


def test_two_processes_share_the_work_send_each_contact_once_and_stop_together(
    tmp_path: Path,
) -> None:
    port = free_port()
    with LoopbackGateway(faults={"slow_ms": 200}) as gateway:
        config = _config(tmp_path, gateway.url, extra=f"metrics_port = {port}\n")
        url = _seeded(tmp_path, config)
        # Given a daemon with two dispatching processes (itself and one child; the gateway
        # is slow until the child has started, so the daemon cannot finish alone)
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: _ready_children(daemon) == 1)
        gateway.set_faults({"slow_ms": 5})
        daemon.wait_for(lambda: statuses(url).get("sent", 0) >= N)
        children = _children(daemon)
        # (and the daemon's Prometheus endpoint counts every send, the child's too)
        sent = 'channel="sms",outcome="sent"'
        daemon.wait_for(lambda: settled_metric(port, sent) == N, timeout=10)
        # When it is stopped with SIGTERM
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 30, f"stopped after {time.monotonic() - started} s"
        # Then every contact was sent and delivered exactly once
        _sent_once(url, gateway)
    # by both processes (each logs the sends it settled under its own owner id)
    owners = Counter(
        e["owner"] for e in daemon.events()
        if e.get("event") == "contact.settled" and e.get("event_kind") == "sent"
    )  # fmt: skip
    assert len(children) == 1 and len(owners) == 2, (children, owners)  # seen failing once
    assert sum(owners.values()) == N, owners
    assert any(owner.endswith(f":{children[0]}") for owner in owners), (children, owners)
    # and the child stopped with the daemon, releasing nothing it still held
    assert not _alive(children[0]), _stacks(daemon, children)
    stopped = [e for e in daemon.events() if e.get("event") == "workers.stopped"]
    assert stopped and stopped[0]["released"] == 0, stopped


def test_a_killed_daemon_takes_its_children_along_and_a_restart_finishes_the_work(
    tmp_path: Path,
) -> None:
    with LoopbackGateway(faults={"slow_ms": 100}) as gateway:
        config = _config(tmp_path, gateway.url, processes=3)
        url = _seeded(tmp_path, config)
        # Given a daemon with two children, SIGKILLed while it sends
        first = DaemonProcess(config, NOON, tmp_path / "first.log")
        first.wait_for(lambda: _ready_children(first) == 2)
        first.wait_for(lambda: len(gateway.deliveries()) >= 100)
        children = _children(first)
        first.kill()
        assert len(gateway.deliveries()) < N
        # Then the children end too (the kernel tells them their parent died)
        deadline = time.monotonic() + 40
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        stuck = [pid for pid in children if _alive(pid)]
        assert not stuck, _stacks(first, stuck)
        # and a restarted daemon is not refused, and finishes the work with nothing doubled
        gateway.set_faults({"slow_ms": 5})
        second = DaemonProcess(config, NOON, tmp_path / "second.log")
        second.wait_for(lambda: statuses(url).get("sent", 0) >= N, timeout=90)
        assert second.stop() == 0
        _sent_once(url, gateway)


def test_a_sigterm_arriving_while_the_child_sets_its_stop_event_does_not_hang_it(
    tmp_path: Path,
) -> None:
    """A SIGKILLed daemon's child gets SIGTERM once per daemon thread that exits (Linux sends
    PDEATHSIG each time the parent thread exits). Python runs each handler on the main thread
    between two bytecodes, so one can run inside ``stop.set()`` while the main thread (or the
    handler for the SIGTERM before) holds the Event's lock: a handler taking that lock waited
    forever, and the lanes with it (seen once in CI: a child still alive 40 s after its
    daemon was killed; its stacks, reproduced, show the nested handler in ``set``)."""
    settings = load_settings(_config(tmp_path, "http://127.0.0.1:9"))
    with open_store(settings) as store, own_handlers():
        child = _Child(settings, store, lambda: NOON, 2, parent=os.getppid())
        child._install_signals()
        # Given the child's main thread inside stop.set(), holding the Event's lock,
        # when another SIGTERM arrives, then its handler returns at once, without the lock
        assert sigterm_inside_set(child.stop), "the SIGTERM handler waited on stop's lock"
        # and the child stops as for any SIGTERM: it drains (nothing here) and exits 0
        with capture_logs() as logs:
            assert child.run() == 0
        assert [e["released"] for e in logs if e["event"] == "workers.stopped"] == [0]


def test_a_child_that_dies_is_replaced(tmp_path: Path) -> None:
    with LoopbackGateway() as gateway:
        config = _config(tmp_path, gateway.url)
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: len(_children(daemon)) == 1)
        # When the child is killed
        os.kill(_children(daemon)[0], signal.SIGKILL)
        # Then the daemon logs it and starts another
        daemon.wait_for(lambda: len(_children(daemon)) == 2, timeout=30)
        assert any(e.get("event") == "workers.exited" for e in daemon.events())
        assert daemon.stop() == 0


def test_a_child_that_crashes_leaves_its_stacks_in_the_log_and_is_replaced(
    tmp_path: Path,
) -> None:
    with LoopbackGateway() as gateway:
        config = _config(tmp_path, gateway.url)
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: _ready_children(daemon) == 1)
        # When the child crashes (a fault in C code)
        os.kill(_children(daemon)[0], signal.SIGSEGV)
        daemon.wait_for(lambda: len(_children(daemon)) == 2, timeout=30)
        # Then its threads' stacks, lanes included, are in the log (the journal) before it
        # dies, and the daemon logs the exit and starts another
        log = daemon.log_path.read_text()
        assert "Fatal Python error: Segmentation fault" in log and "in _lane" in log
        exits = [e for e in daemon.events() if e.get("event") == "workers.exited"]
        assert [e["signal"] for e in exits] == ["SIGSEGV"]
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("failures", "uptime", "after"),
    [
        (0, 0.4, (1, 1.0)),  # the first exit: 1 s
        (1, 0.4, (2, 2.0)),
        (2, 0.4, (3, 4.0)),
        (6, 12.0, (7, 60.0)),  # 64 s, capped
        (50_000, 0.4, (50_001, 60.0)),  # months of failing: still 60 s
        (7, 299.9, (8, 60.0)),
        (7, 300.0, (1, 1.0)),  # up 5 minutes: a new row
    ],
)
def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_stable_run(
    failures: int, uptime: float, after: tuple[int, float]
) -> None:
    assert RestartBackoff().after_exit(failures, uptime) == after


def test_a_child_failing_at_start_is_restarted_only_when_its_backoff_is_over(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9")
    settings = load_settings(config)
    # Given a config.toml broken after it was loaded: each child reads it again, and fails
    config.write_text("[daemon\n")
    now = [100.0]
    with (tmp_path / "children.log").open("w") as out, capture_logs() as logs:
        workers = DispatchWorkers(settings, count=1, clock=lambda: NOON, log=out,
                                  timer=lambda: now[0])  # fmt: skip
        workers.start()
        for expected in (1.0, 2.0, 4.0, 8.0):
            # When the child has exited, the exit is noted but no child starts yet
            _until(workers.due)
            assert workers.check() == 0
            exited = [e for e in logs if e["event"] == "workers.exited"][-1]
            assert exited["restart_in_seconds"] == expected and exited["exit_code"] == 2
            # nor until the backoff is over, on the workers' own timer
            now[0] += expected - 0.5
            assert not workers.due() and workers.check() == 0
            now[0] += 0.5
            assert workers.due() and workers.check() == 1
        # and a child that exits after 5 minutes up waits 1 s again
        now[0] += 300
        _until(workers.due)
        assert workers.check() == 0
        exited = [e for e in logs if e["event"] == "workers.exited"][-1]
        assert exited["restart_in_seconds"] == 1.0 and exited["exits_in_a_row"] == 1
        assert workers.stop(5)
    assert "not valid TOML" in (tmp_path / "children.log").read_text()


def test_a_child_that_keeps_failing_is_restarted_ever_later_and_comes_back_once_fixed(
    tmp_path: Path,
) -> None:
    with LoopbackGateway() as gateway:
        config = _config(tmp_path, gateway.url)
        good = config.read_text()
        # Given a daemon with one dispatch child
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: _ready_children(daemon) == 1)
        # When config.toml is broken by an edit, and then the child dies
        config.write_text(good.replace("[daemon]", "[daemon", 1))
        os.kill(_children(daemon)[0], signal.SIGKILL)
        daemon.wait_for(lambda: len(_exits(daemon)) >= 4, timeout=60)
        # Then each new child fails at start (its config is invalid: exit code 2), and the
        # daemon starts the next one 1, 2, then 4 s after each exit, as it logs, not at once
        exits, starts = _exits(daemon)[:4], _children_started(daemon)[1:]
        assert exits[0]["signal"] == "SIGKILL"
        assert [e["exit_code"] for e in exits[1:]] == [2, 2, 2]
        assert [e["restart_in_seconds"] for e in exits] == [1, 2, 4, 8]
        for exited, started in zip(exits, starts, strict=False):
            waited = (_at(started) - _at(exited)).total_seconds()
            assert exited["restart_in_seconds"] - 0.05 < waited < exited["restart_in_seconds"] + 2
        failed = [e for e in daemon.events() if e.get("event") == "workers.failed"]
        assert "not valid TOML" in failed[0]["error"]
        # and once config.toml is fixed, the next start (8 s after the last exit) stays up
        config.write_text(good)
        daemon.wait_for(lambda: _ready_children(daemon) == 2, timeout=30)
        assert daemon.stop() == 0


def test_a_recorded_batch_is_reported_as_counts_by_channel_and_outcome() -> None:
    def settled(channel: str, event: str, breach: bool = False) -> Settlement:
        return Settlement("c", "A", "sent", event, 1, sla_breach=breach, channel=channel)

    batch = [settled("sms", "sent"), settled("sms", "sent", breach=True),
             settled("sms", "skipped"), settled("email", "sent")]  # fmt: skip
    assert sorted(tally(batch), key=lambda t: (t.channel, t.outcome)) == [
        Tally("email", "sent", 1), Tally("sms", "sent", 2, sla_breaches=1),
        Tally("sms", "skipped", 1),
    ]  # fmt: skip


def test_each_process_keeps_to_its_share_of_the_provider_rate(tmp_path: Path) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9")
    rated = "concurrency = 4\nrate_per_second = 30\n"
    config.write_text(config.read_text().replace("concurrency = 4\n", rated))
    settings = load_settings(config)
    whole = build_lanes(settings, lambda: NOON, {Channel.SMS})
    shared = build_lanes(settings, lambda: NOON, {Channel.SMS}, processes=3)
    assert whole[Channel.SMS].rate_per_second == 30
    assert shared[Channel.SMS].rate_per_second == 10
    for lanes in (whole, shared):
        lanes[Channel.SMS].close()


def test_outbox_files_shared_by_two_writers_keep_one_line_per_contact(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    # Given two writers on one file (two dispatching processes), each having read it once
    first, second = OutboxChannel(path), OutboxChannel(path)
    message = Message("c1", "A1", Channel.SMS, "+8613812345678", "hello")
    first.send(Message("c0", "A0", Channel.SMS, "+8613812345678", "hi"))
    second.send(Message("c0", "A0", Channel.SMS, "+8613812345678", "hi"))
    # When both are handed the same contact (a resend after the first one's crash)
    first.send(message)
    second.send(message)
    # Then the file holds it once
    ids = [line.split('"contact_id": "')[1].split('"')[0] for line in path.read_text().splitlines()]
    assert ids == ["c0", "c1"]
