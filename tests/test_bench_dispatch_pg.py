"""``bench/dispatch_pg.py``: a small run end to end (real daemons, a real PostgreSQL schema,
the gateway as its own process) passes its own exactly-once checks, and those checks do
catch a message delivered twice. Speed is not asserted here; the benchmark measures it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.dispatch_pg import NOON, Failed, seed, verify
from scheduler.models import Channel
from scheduler.queue import ContactQueue, Settlement
from scheduler.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.postgres
def test_a_small_run_sends_every_contact_once(pg_url: str) -> None:
    # Given 200 SMS due and two daemons, When the benchmark runs
    done = subprocess.run(
        [sys.executable, "bench/dispatch_pg.py", "--contacts", "200", "--daemons", "2",
         "--concurrency", "4", "--batch", "50", "--dispatch-every", "0.2", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "REMIND_BENCH_PG_URL": pg_url},
    )  # fmt: skip
    # Then it passes its checks (it exits 1 when a contact is not sent exactly once)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["verified"] is True
    ours = result["remind"]
    assert sum(ours["shares"]) == 200 and len(ours["shares"]) == 2
    assert ours["requests"] == 200 and ours["duplicates"] == 0
    assert ours["wall_s"] > 0 and result["baseline"]["processes"] == 2


def test_the_checks_fail_on_a_message_delivered_twice(tmp_path: Path) -> None:
    # Given a store whose 20 contacts were all recorded sent
    with Store.open(f"sqlite:///{tmp_path / 'remind.db'}") as store:
        planned = seed(store, 20)
        queue = ContactQueue(store)
        queue.materialise(planned, now=NOON, policy_version="t")
        claimed = queue.claim_due(Channel.SMS, "me", now=NOON, lease_seconds=60, limit=20)
        queue.settle(
            "me",
            [Settlement(c.contact_id, c.account_id, "sent", "sent", 1, provider_ref="gw")
             for c in claimed],
            now=NOON, policy_version="t",
        )  # fmt: skip
        keys = [{"key": c.contact_id} for c in claimed]
        ok = [{"status": 200}] * 20
        verify(store, 20, keys, ok, [20])  # as it should be: no complaint
        # When the gateway delivered one key twice, Then the checks say so
        with pytest.raises(Failed, match="delivered 21 messages for 20 keys"):
            verify(store, 20, [*keys, keys[0]], ok, [20])
        # and when the daemons' logs do not add up
        with pytest.raises(Failed, match="logged 19 sends"):
            verify(store, 20, keys, ok, [10, 9])
