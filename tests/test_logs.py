"""Logs never carry a full phone number, email address or name; each line and each stack
dump (SIGUSR1) is written whole."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import structlog

from scheduler import logs
from scheduler.logs import configure_logging, dump_stacks, mask_pii
from tests.support.daemon import REPO


def test_addresses_and_names_are_masked_wherever_they_appear() -> None:
    event = mask_pii(None, "info", {
        "event": "contact.settled",
        "to": "+8613812345678",
        "name": "王伟",
        "error": "gateway said: number +86 138 1234 5678 invalid; cc wang.wei@example.cn",
        "contact_id": "c0123456789abcdef",
        "account_id": "ACC-000123",
    })  # fmt: skip
    assert event["to"] == "+86…5678"
    assert event["name"] == "王…"
    assert "13812345678" not in event["error"].replace(" ", "")
    assert "wang.wei@" not in event["error"] and "w…@example.cn" in event["error"]
    assert event["contact_id"] == "c0123456789abcdef" and event["account_id"] == "ACC-000123"


def test_configured_logging_writes_masked_json_lines() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(level="info", stream=out)
    try:
        structlog.get_logger("t").info("contact.settled", to="+14155550123", outcome="sent")
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "contact.settled" and lines[0]["level"] == "info"
    assert lines[0]["to"] == "+14…0123" and lines[0]["timestamp"].endswith("Z")


class _Writes(io.StringIO):
    """A stream that keeps what each ``write`` call was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_log_line_reaches_the_stream_in_one_write() -> None:
    # (the daemon and its dispatch children share stdout: a line written in two parts
    # lets another process's line land in between, and both are lost to a JSON reader)
    out = _Writes()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(level="info", stream=out)
    try:
        structlog.get_logger("t").info("contact.settled", outcome="sent")
        logging.getLogger("apscheduler.scheduler").warning("job missed by %s", "2 s")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    assert len(out.calls) == 2, out.calls
    for call in out.calls:
        assert call.endswith("\n") and call.count("\n") == 1, call
        assert json.loads(call)["level"] in {"info", "warning"}


_LOG_LINES = """
import sys, structlog
from scheduler.logs import configure_logging
configure_logging(level="info")
log = structlog.get_logger("t")
for i in range(3000):
    log.info("contact.settled", owner=sys.argv[1], n=i)
"""


def test_two_processes_logging_to_one_file_leave_every_line_whole(tmp_path: Path) -> None:
    # Given two processes appending JSON lines to one file, unbuffered as under systemd
    path = tmp_path / "journal.log"
    with path.open("a") as shared:
        procs = [
            subprocess.Popen([sys.executable, "-c", _LOG_LINES, owner], stdout=shared,
                             cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            for owner in ("daemon", "child")
        ]  # fmt: skip
        assert [p.wait(60) for p in procs] == [0, 0]
    # Then every line is one whole event
    lines = path.read_text().splitlines()
    owners = Counter(json.loads(line)["owner"] for line in lines)
    assert owners == {"daemon": 3000, "child": 3000}


def test_a_stack_dump_shows_every_thread_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(logs.os, "write", lambda fd, data: writes.append((fd, data)) or len(data))
    parked, release = threading.Event(), threading.Event()

    def waiting_for_the_operator() -> None:
        parked.set()
        release.wait(10)

    thread = threading.Thread(target=waiting_for_the_operator)
    thread.start()
    parked.wait(10)
    try:
        alive = [t.ident for t in threading.enumerate()]
        dump_stacks()
    finally:
        release.set()
        thread.join()
    assert len(writes) == 1 and writes[0][0] == 2  # one write, to stderr
    text = writes[0][1].decode()
    assert len(alive) >= 2 and all(f"0x{ident:016x}" in text for ident in alive)
    assert "in waiting_for_the_operator" in text
    current = text.split("Current thread", 1)[1].split("\n\n", 1)[0]
    assert "in test_a_stack_dump_shows_every_thread_in_one_write" in current


_STORM = """
import os, signal, sys, threading, time
from scheduler.logs import dump_stacks
signal.signal(signal.SIGUSR1, dump_stacks)
stop = time.monotonic() + 3
def deep(n):
    return deep(n - 1) if n else sum(range(50))
def busy():
    while time.monotonic() < stop:
        deep(30)
def churn():
    while time.monotonic() < stop:
        t = threading.Thread(target=deep, args=(20,)); t.start(); t.join()
threads = [threading.Thread(target=busy) for _ in range(4)]
threads += [threading.Thread(target=churn) for _ in range(8)]
for t in threads:
    t.start()
while time.monotonic() < stop:
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.0002)
for t in threads:
    t.join()
print("carried on")
"""


def test_stack_dumps_asked_for_while_threads_come_and_go_never_crash_the_process() -> None:
    # faulthandler.register(SIGUSR1), which remind used before, crashed this script with
    # SIGSEGV in 1-2 of 6 runs (python/cpython#116008); a dispatch child died so in CI
    done = subprocess.run([sys.executable, "-c", _STORM], cwd=REPO, capture_output=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == b"carried on", done.stderr[-2000:]
    assert done.stderr.count(b"(most recent call first):") > 50
