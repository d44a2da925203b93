"""Run ``remind`` as a real process against a real store: write a config, seed accounts,
start/stop/kill the daemon, read what it recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import sqlalchemy as sa

from scheduler.models import Account
from scheduler.store import Store
from scheduler.tables import audit_log, contacts

REPO = Path(__file__).resolve().parents[2]
REMIND = [sys.executable, "-m", "scheduler.cli"]


def config_url(store: Store) -> str:
    """The ``[store] url`` that opens ``store`` again from a config.toml: on PostgreSQL
    with the test's schema as the connection's search_path."""
    url = store.engine.url.render_as_string(hide_password=False)
    if store.backend == "postgresql":
        with store.engine.connect() as conn:
            schema = conn.scalar(sa.text("SELECT current_schema()"))
        url += f"?options=-csearch_path%3D{schema}"
    return url


def write_config(
    folder: Path,
    *,
    store_url: str,
    channels: str,
    policy_dir: Path | None = None,
    daemon: str = "",
) -> Path:
    """A config.toml in ``folder`` with the given ``[channels.*]`` tables (TOML text);
    ``daemon`` adds ``[daemon]`` lines or overrides the quick test defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    quick = {"dispatch_every_seconds": "0.2", "watch_every_seconds": "1",
             "lease_seconds": "30", "plan_every_seconds": "3600"}  # fmt: skip
    given = {line.split("=")[0].strip() for line in daemon.splitlines() if "=" in line}
    defaults = "".join(f"{k} = {v}\n" for k, v in quick.items() if k not in given)
    path.write_text(
        f'[store]\nurl = "{store_url}"\n'
        '[ops]\ntimezone = "Asia/Shanghai"\nlender_name = "Example Finance"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\n'
        'language = "zh-CN"\ncurrency = "CNY"\n'
        f'[policy]\ndir = "{policy_dir or REPO / "policies"}"\n'
        f"[daemon]\n{defaults}{daemon}\n{channels}\n"
    )
    return path


def seed(store_url: str, accounts: Iterable[Account], now: datetime) -> None:
    with Store.open(store_url) as store:
        store.upsert_accounts(accounts, now=now)


def remind(
    config: Path,
    *args: str,
    now: datetime | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run one ``remind`` command to completion."""
    pinned = ["--now", now.isoformat()] if now else []
    return subprocess.run(
        [*REMIND, *args, "--config", str(config), *pinned],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


class DaemonProcess:
    """``remind run`` in the background; its JSON log lines go to ``log_path``. Every one
    still running when its test ends is killed (``kill_leftovers``, an autouse fixture), so
    a failed test never leaves a daemon polling a dropped store."""

    live: ClassVar[set[DaemonProcess]] = set()

    def __init__(self, config: Path, now: datetime, log_path: Path,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.log_path = log_path
        self._log = log_path.open("a")
        self.proc = subprocess.Popen(
            [*REMIND, "run", "--config", str(config), "--now", now.isoformat()],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        DaemonProcess.live.add(self)

    @classmethod
    def kill_leftovers(cls) -> None:
        for daemon in list(cls.live):
            if daemon.proc.poll() is None:
                daemon.kill()
            daemon._log.close()
        cls.live.clear()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:  # the line being written
                    continue
        return found

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting; daemon log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def contact_rows(store_url: str, *columns: str) -> list[sa.Row[Any]]:
    with Store.open(store_url) as store, store.engine.connect() as conn:
        cols: Sequence[Any] = [contacts.c[c] for c in columns] if columns else [contacts]
        return list(conn.execute(sa.select(*cols)))


def statuses(store_url: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in contact_rows(store_url, "status"):
        found[row.status] = found.get(row.status, 0) + 1
    return found


def audit_rows(store_url: str, kind: str | None = None) -> list[sa.Row[Any]]:
    with Store.open(store_url) as store, store.engine.connect() as conn:
        stmt = sa.select(audit_log)
        if kind:
            stmt = stmt.where(audit_log.c.kind == kind)
        return list(conn.execute(stmt))


def settled_metric(port: int, labels: str) -> float | None:
    """``remind_contacts_settled_total{labels}`` as a daemon's /metrics on ``port`` serves
    it (``None``: not served yet, or no such series)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f"remind_contacts_settled_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return None
