"""``[daemon] dispatch_processes``: one daemon, several dispatching processes, as a real
``remind run`` on a real SQLite file against the loopback gateway."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, date, timedelta
from pathlib import Path

from channels.base import Message
from channels.outbox import OutboxChannel
from scheduler.config import load_settings
from scheduler.daemon import build_lanes
from scheduler.models import Channel
from tests.factories import account, local
from tests.support.daemon import (
    DaemonProcess,
    audit_rows,
    contact_rows,
    remind,
    seed,
    statuses,
    write_config,
)
from tests.support.gateway import LoopbackGateway

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


def _children(daemon: DaemonProcess) -> list[int]:
    return [e["pid"] for e in daemon.events() if e.get("event") == "workers.started"]


def _ready_children(daemon: DaemonProcess) -> int:
    return sum(e.get("event") == "workers.ready" for e in daemon.events())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent, the daemon, has not reaped it)
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


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
    with LoopbackGateway(faults={"slow_ms": 200}) as gateway:
        config = _config(tmp_path, gateway.url)
        url = _seeded(tmp_path, config)
        # Given a daemon with two dispatching processes (itself and one child; the gateway
        # is slow until the child has started, so the daemon cannot finish alone)
        daemon = DaemonProcess(config, NOON, tmp_path / "daemon.log")
        daemon.wait_for(lambda: _ready_children(daemon) == 1)
        gateway.set_faults({"slow_ms": 5})
        daemon.wait_for(lambda: statuses(url).get("sent", 0) >= N)
        children = _children(daemon)
        # When it is stopped with SIGTERM
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 30
        # Then every contact was sent and delivered exactly once
        _sent_once(url, gateway)
    # by both processes (each logs the sends it settled under its own owner id)
    owners = Counter(
        e["owner"] for e in daemon.events()
        if e.get("event") == "contact.settled" and e.get("event_kind") == "sent"
    )  # fmt: skip
    assert len(children) == 1 and len(owners) == 2
    assert sum(owners.values()) == N
    assert any(owner.endswith(f":{children[0]}") for owner in owners)
    # and the child stopped with the daemon, releasing nothing it still held
    assert not _alive(children[0])
    stopped = [e for e in daemon.events() if e.get("event") == "workers.stopped"]
    assert stopped and stopped[0]["released"] == 0


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
        assert not any(_alive(pid) for pid in children)
        # and a restarted daemon is not refused, and finishes the work with nothing doubled
        gateway.set_faults({"slow_ms": 5})
        second = DaemonProcess(config, NOON, tmp_path / "second.log")
        second.wait_for(lambda: statuses(url).get("sent", 0) >= N, timeout=90)
        assert second.stop() == 0
        _sent_once(url, gateway)


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
