"""A plan made in shards (``[planner] workers``) is exactly the plan one process makes:
on a real SQLite file and on PostgreSQL, through ``plan_from_store`` and ``remind dry-run``;
a failing or dying worker gives a clear error and leaves no process behind."""

from __future__ import annotations

import gc
import io
import multiprocessing
import os
import random
import weakref
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from scheduler import planning
from scheduler.cli import app
from scheduler.config import load_settings
from scheduler.daemon import Daemon, load_rulebook
from scheduler.errors import RemindError, StoreError
from scheduler.importer import Defaults, import_accounts
from scheduler.models import Flag, Horizon, Plan, contact_id
from scheduler.notify import Notifier
from scheduler.planner import merge_plans, merge_shard_plans, plan
from scheduler.planning import load_for_plan, plan_from_store
from scheduler.report import write_jsonl
from scheduler.sample import generate_portfolio, write_csv
from scheduler.store import Store
from scheduler.tables import accounts, contacts, outcomes, promises
from tests.factories import copy_policies, shipped_policies
from tests.support.daemon import write_config

TODAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai
HORIZON = Horizon(TODAY + timedelta(days=1), days=2)
DEFAULTS = Defaults(timezone="Asia/Shanghai", country="CN", language="zh-CN", currency="CNY")
ACCOUNTS = 1_500


@pytest.fixture
def shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard even a small store (the real threshold keeps small ones in-process), and have
    forked workers send their plans back in many parts."""
    monkeypatch.setattr(planning, "SHARD_MIN_ACCOUNTS", 1)
    monkeypatch.setattr(planning, "_PART", 37)


@pytest.fixture
def portfolio(store: Store, tmp_path: Path) -> Store:
    """A sample portfolio (30% overdue) with a history touching every branch of the load:
    calls and SMS with outcomes, pending and broken promises (some on accounts no due date
    brings in), emergency contacts removed for good, case-work flags."""
    csv_path = tmp_path / "portfolio.csv"
    write_csv(generate_portfolio(ACCOUNTS, TODAY, 11, overdue_share=0.3, ahead_days=10), csv_path)
    report = import_accounts(store, csv_path, defaults=DEFAULTS, now=NOW)
    assert report.counts.inserted == ACCOUNTS
    _seed_history(store)
    return store


def _seed_history(store: Store) -> None:
    rng = random.Random(5)
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(
                accounts.c.account_id, accounts.c.due_date, accounts.c.emergency_contacts
            ).order_by(accounts.c.account_id)
        ).all()
        contact_rows: list[dict[str, Any]] = []
        promise_rows: list[dict[str, Any]] = []
        outcome_rows: list[dict[str, Any]] = []
        for account_id, due, emergency in rows:
            draw = rng.random()
            if due < TODAY:
                for n in range(rng.randint(1, 3)):
                    at = NOW - timedelta(hours=rng.uniform(2, 24 * 9), minutes=n)
                    channel, rule = rng.choice((("call", "early_call"), ("sms", "early_sms")))
                    outcome = rng.choice(("no_answer", "conversation", "promise", "busy", None))
                    contact_rows.append({
                        "contact_id": contact_id(account_id, rule, due, n, "borrower"),
                        "account_id": account_id, "channel": channel, "rule": rule,
                        "target": "borrower", "due_date": due, "step": n, "window_start": at,
                        "window_end": at, "template": "", "priority": 0, "sla_risk": False,
                        "status": rng.choice(("sent", "failed")), "outcome": outcome,
                        "attempts": 1, "performed_at": at, "created_at": at, "updated_at": at,
                    })  # fmt: skip
                if emergency and draw < 0.2:
                    outcome_rows.append({
                        "account_id": account_id, "at": NOW - timedelta(days=3),
                        "channel": "call", "result": "third_party_objected",
                        "target": emergency.split(";")[0], "source": "test", "recorded_at": NOW,
                    })  # fmt: skip
            if draw < 0.15:  # pending, or broken (recently or long ago), on any account
                status = rng.choice(("pending", "broken", "broken", "kept"))
                promise_rows.append({
                    "account_id": account_id, "amount": Decimal(rng.randrange(10, 500)),
                    "promised_date": TODAY + timedelta(days=rng.randint(-50, 5)),
                    "status": status, "created_at": NOW - timedelta(days=10),
                    "closed_at": None if status == "pending" else NOW, "paid_before": 0,
                })  # fmt: skip
        conn.execute(contacts.insert(), contact_rows)
        conn.execute(promises.insert(), promise_rows)
        conn.execute(outcomes.insert(), outcome_rows)
    for account_id, _, _ in rows[::97]:
        store.add_flag(account_id, Flag.DISPUTE, since=NOW - timedelta(days=1), until=None,
                       source="test")  # fmt: skip


def _jsonl(result: Plan) -> str:
    buffer = io.StringIO()
    write_jsonl(result, buffer, show_suppressed=True)
    return buffer.getvalue()


def _in_one_process(store: Store) -> tuple[int, Plan]:
    policies = shipped_policies()
    found, history = load_for_plan(store, policies, HORIZON, NOW, None)
    return len(found), plan(NOW, found, history, policies, HORIZON)


@pytest.mark.usefixtures("shards")
@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_plan_is_exactly_the_single_process_plan(portfolio: Store, workers: int) -> None:
    policies = shipped_policies()
    count, single = _in_one_process(portfolio)
    assert len(single.planned) > 200 and single.suppressed and single.handover
    assert plan_from_store(portfolio, policies, HORIZON, NOW, workers=1) == (count, single)
    assert len(portfolio.account_id_splits(workers, min_per_part=1)) == workers - 1
    sharded_count, sharded = plan_from_store(
        portfolio, policies, HORIZON, NOW, workers=workers, context="fork"
    )
    assert (sharded_count, sharded) == (count, single)
    assert _jsonl(sharded) == _jsonl(single)
    assert not multiprocessing.active_children()


@pytest.mark.usefixtures("shards")
def test_forkserver_workers_plan_the_same(portfolio: Store) -> None:
    """The daemon's way of starting workers (safe beside its threads)."""
    _, single = _in_one_process(portfolio)
    _, sharded = plan_from_store(
        portfolio, shipped_policies(), HORIZON, NOW, workers=2, context="forkserver"
    )
    assert _jsonl(sharded) == _jsonl(single)


def test_small_stores_and_unshareable_stores_plan_in_process(portfolio: Store) -> None:
    # below SHARD_MIN_ACCOUNTS a shard (the real threshold) there is nothing to split
    assert portfolio.account_id_splits(4, min_per_part=planning.SHARD_MIN_ACCOUNTS) == []
    assert Store(portfolio.engine).location is None
    memory = Store.open("sqlite://")
    try:
        assert memory.location is None
    finally:
        memory.close()


def test_merge_plans_of_shards_keeps_plan_order(portfolio: Store) -> None:
    policies = shipped_policies()
    found, history = load_for_plan(portfolio, policies, HORIZON, NOW, None)
    whole = plan(NOW, found, history, policies, HORIZON)
    ordered = sorted(found, key=lambda a: a.account_id)
    parts = [plan(NOW, ordered[n::3], history, policies, HORIZON) for n in range(3)]
    assert merge_plans(parts) == whole


def test_merge_shard_plans_of_id_ranges_in_order_keeps_plan_order(portfolio: Store) -> None:
    policies = shipped_policies()
    found, history = load_for_plan(portfolio, policies, HORIZON, NOW, None)
    whole = plan(NOW, found, history, policies, HORIZON)
    ordered = sorted(found, key=lambda a: a.account_id)
    cuts = [0, len(ordered) // 3, 2 * len(ordered) // 3, len(ordered)]
    parts = [plan(NOW, ordered[a:b], history, policies, HORIZON) for a, b in pairwise(cuts)]
    starts = [c.window_start for c in whole.planned]
    assert len(set(starts)) < len(starts) / 2  # many contacts share a start: ties are ordered
    assert merge_shard_plans(parts) == whole
    assert merge_shard_plans(parts[::-1]) != whole  # it relies on the parts' order


def test_history_of_many_ids_is_read_as_one_range(
    portfolio: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = NOW - timedelta(days=40)
    everything = portfolio.history(None, since=since)
    wanted = sorted(everything)[5:-5:2]
    chunked = portfolio.history(wanted, since=since)  # IN lists of _IN_CHUNK ids
    monkeypatch.setattr("scheduler.store._IN_CHUNK", 10)  # now more ids than one IN list
    assert portfolio.history(wanted, since=since) == chunked
    assert chunked == {key: everything[key] for key in wanted}
    assert any(h.removed_contacts for h in chunked.values())
    assert any(h.promises for h in chunked.values())


def test_accounts_with_promises_are_active_unpaid_holders(portfolio: Store) -> None:
    since = NOW - timedelta(days=20)
    holders = {k for k, h in portfolio.history(None, since=since).items() if h.promises}
    found = portfolio.accounts_with_promises(since=since, now=NOW)
    assert [a.account_id for a in found] == sorted(a.account_id for a in found)
    assert {a.account_id for a in found} <= holders
    assert all(a.status.value == "active" and not a.paid_in_full for a in found)
    everyone = portfolio.accounts_by_id(holders, now=NOW)
    assert len(found) == sum(
        1 for a in everyone.values() if a.status.value == "active" and not a.paid_in_full
    )
    low = sorted(holders)[len(holders) // 2]
    upper = portfolio.accounts_with_promises(since=since, now=NOW, id_range=(low, None))
    assert upper == [a for a in found if a.account_id >= low]
    loaded = {a.account_id for a in found[::2]}
    rest = portfolio.accounts_with_promises(since=since, now=NOW, loaded=loaded)
    assert loaded and rest == [a for a in found if a.account_id not in loaded] != []


def _dying_worker(task: object) -> object:
    os._exit(3)


def _failing_worker(task: object) -> object:
    raise StoreError("cannot read accounts: the disk went away")


@pytest.mark.usefixtures("shards")
def test_a_worker_that_dies_is_a_clear_error(
    portfolio: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "_plan_shard", _dying_worker)  # a forked worker runs this
    with pytest.raises(RemindError, match=r"worker for shard 2 of 2 died \(exit code 3\)"):
        plan_from_store(portfolio, shipped_policies(), HORIZON, NOW, workers=2, context="fork")
    assert not multiprocessing.active_children()


@pytest.mark.usefixtures("shards")
def test_a_worker_error_is_raised_here(portfolio: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning, "_plan_shard", _failing_worker)
    with pytest.raises(StoreError, match="the disk went away"):
        plan_from_store(portfolio, shipped_policies(), HORIZON, NOW, workers=3, context="fork")
    assert not multiprocessing.active_children()


@pytest.fixture
def sqlite_config(portfolio: Store, tmp_path: Path) -> Iterator[Path]:
    if portfolio.backend != "sqlite":
        pytest.skip("the CLI test runs on the SQLite file")
    copy_policies(tmp_path / "policies")
    url, _ = portfolio.location or ("", None)
    base = (
        f'[store]\nurl = "{url}"\n[ops]\ntimezone = "Asia/Shanghai"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\n'
        '[policy]\ndir = "policies"\n'
    )
    (tmp_path / "w1.toml").write_text(base + "[planner]\nworkers = 1\n")
    (tmp_path / "w2.toml").write_text(base + "[planner]\nworkers = 2\n")
    yield tmp_path


@pytest.mark.usefixtures("shards")
def test_dry_run_json_lines_are_the_same_with_two_workers(sqlite_config: Path) -> None:
    outputs = {}
    for name in ("w1", "w2"):
        for fmt in ("json", "csv"):
            result = CliRunner().invoke(app, [
                "dry-run", "--format", fmt, "--show-suppressed", "--now", NOW.isoformat(),
                "--config", str(sqlite_config / f"{name}.toml"),
            ])  # fmt: skip
            assert result.exit_code == 0, result.output
            outputs[name, fmt] = result.stdout
    assert outputs["w1", "json"].count("\n") > 200
    assert outputs["w1", "json"] == outputs["w2", "json"]
    assert outputs["w1", "csv"] == outputs["w2", "csv"]


def _daemon_plan(store: Store, folder: Path, workers: int) -> list[tuple[Any, ...]]:
    """The contact rows one daemon plan tick materialises with ``workers``, then removed."""
    config = write_config(folder, store_url="sqlite:///unused.db", channels="")
    config.write_text(config.read_text() + f"\n[planner]\nworkers = {workers}\n")
    settings = load_settings(config)
    daemon = Daemon(
        settings=settings, store=store, lanes={}, rulebook=load_rulebook(settings),
        clock=lambda: NOW, notifier=Notifier.from_environ({}), owner="test",
    )  # fmt: skip
    try:
        daemon.tick_plan()
    finally:
        daemon.close()
    c = contacts.c
    made = c.status.in_(("planned", "missed"))
    with store.engine.begin() as conn:
        rows = conn.execute(
            sa.select(c.contact_id, c.status, c.window_start, c.window_end, c.rule, c.target)
            .where(made)
            .order_by(c.contact_id)
        ).all()
        conn.execute(contacts.delete().where(made))
    return [tuple(r) for r in rows]


@pytest.mark.usefixtures("shards")
def test_the_daemon_plan_tick_materialises_the_same_in_shards(
    portfolio: Store, tmp_path: Path
) -> None:
    _daemon_plan(portfolio, tmp_path / "first", 1)  # settles the promises: same input after
    single = _daemon_plan(portfolio, tmp_path / "one", 1)
    assert len(single) > 200
    assert _daemon_plan(portfolio, tmp_path / "two", 2) == single
    assert not multiprocessing.active_children()


def test_the_collector_is_paused_for_the_plan_and_restored(portfolio: Store) -> None:
    assert gc.isenabled()
    with planning.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RemindError), planning.collector_paused():
        raise RemindError("boom")
    assert gc.isenabled()
    gc.disable()
    try:  # a caller's own choice stands
        plan_from_store(portfolio, shipped_policies(), HORIZON, NOW, workers=1)
        assert not gc.isenabled()
    finally:
        gc.enable()


class _Node:
    me: object = None


def test_after_a_plan_the_collector_leaves_its_objects_alone_until_the_next_plan() -> None:
    # (re-enabled with a plan alive, the collector would scan all of it at once)
    assert gc.isenabled()
    try:
        with planning.collector_paused():
            made = [[n] for n in range(10_000)]
            cycle = _Node()
            cycle.me = cycle  # garbage with a cycle, which only the collector frees
            gone = weakref.ref(cycle)
            del cycle
        assert gc.isenabled() and gc.get_freeze_count() >= len(made)
        gc.collect()
        assert gone() is not None  # frozen: not scanned
        # When the next plan starts, what the last one left is thawed and collected
        with planning.collector_paused():
            assert gone() is None
    finally:
        gc.unfreeze()
