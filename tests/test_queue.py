"""The contacts table as a work queue, over SQLite and PostgreSQL: materialising is
idempotent, a claim leases each contact to one claimer, settling records and releases
together, and only the lease holder can settle."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from policies.outcomes import OutcomeEffects
from scheduler.cases import CaseFile, Recorded
from scheduler.models import (
    Channel,
    Outcome,
    OutcomeRecord,
    PlannedContact,
    Reason,
    SuppressedContact,
)
from scheduler.queue import ContactQueue, QueuedContact, Settlement
from scheduler.store import Store
from scheduler.tables import audit_log, contacts
from tests.factories import account

NOW = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # 10:30 in Shanghai


def planned(
    n: int, *, start: datetime = NOW, channel: Channel = Channel.SMS, priority: int = 40
) -> list[PlannedContact]:
    return [
        PlannedContact(
            contact_id=f"c{channel.value}{i:05d}",
            account_id=f"A{i % 10}",
            channel=channel,
            rule="pre_due_sms_1d",
            target="borrower",
            due_date=date(2026, 11, 23),
            step=0,
            window_start=start,
            window_end=start + timedelta(hours=9),
            template="pre_due",
            priority=priority,
        )
        for i in range(n)
    ]


def seed(store: Store) -> ContactQueue:
    store.upsert_accounts([account(f"A{i}") for i in range(10)], now=NOW)
    return ContactQueue(store)


def rows(store: Store) -> dict[str, sa.Row[tuple[object, ...]]]:
    with store.engine.connect() as conn:
        return {r.contact_id: r for r in conn.execute(sa.select(contacts))}


def audit_kinds(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [r.kind for r in conn.execute(sa.select(audit_log.c.kind))]


def test_materialising_twice_inserts_once(store: Store) -> None:
    queue = seed(store)
    missed = SuppressedContact(
        "A1", Channel.SMS, "pre_due_sms_3d", "borrower", NOW - timedelta(hours=9),
        NOW - timedelta(hours=1), Reason.WINDOW_PASSED, "window passed", contact_id="cmissed",
    )  # fmt: skip
    assert queue.materialise(planned(5), [missed], now=NOW, policy_version="v1") == (5, 1)
    assert queue.materialise(planned(5), [missed], now=NOW, policy_version="v2") == (0, 0)
    stored = rows(store)
    assert len(stored) == 6
    assert stored["cmissed"].status == "missed" and stored["cmissed"].reason == "window_passed"
    assert {r.policy_version for r in stored.values()} == {"v1"}
    assert sorted(audit_kinds(store)) == ["missed"] + ["planned"] * 5


def test_a_claim_leases_due_contacts_once_until_the_lease_expires(store: Store) -> None:
    queue = seed(store)
    later = planned(2, start=NOW + timedelta(hours=1), channel=Channel.EMAIL)
    queue.materialise(planned(3) + later, now=NOW, policy_version="v")
    first = queue.claim_due(Channel.SMS, "a", now=NOW, lease_seconds=60, limit=10)
    assert len(first) == 3
    assert queue.claim_due(Channel.SMS, "b", now=NOW, lease_seconds=60, limit=10) == []
    # email is not due until its window opens
    assert queue.claim_due(Channel.EMAIL, "b", now=NOW, lease_seconds=60, limit=10) == []
    later = NOW + timedelta(seconds=61)
    taken_over = queue.claim_due(Channel.SMS, "b", now=later, lease_seconds=60, limit=10)
    assert {c.contact_id for c in taken_over} == {c.contact_id for c in first}
    # the first holder's lease is gone: its settlement changes nothing
    done = [Settlement(c.contact_id, c.account_id, "sent", "sent", 1) for c in first]
    assert queue.settle("a", done, now=later, policy_version="v") == 0
    assert queue.settle("b", done, now=later, policy_version="v") == 3
    assert {r.status for r in rows(store).values() if r.channel == "sms"} == {"sent"}


def test_a_claim_takes_expired_leases_then_the_highest_priority_then_the_earliest_due(
    store: Store,
) -> None:
    queue = seed(store)

    def contacts_at(tag: str, priority: int, *minutes: int) -> list[PlannedContact]:
        made = planned(len(minutes), priority=priority)
        return [
            replace(c, contact_id=f"{tag}{i}", window_start=NOW + timedelta(minutes=m))
            for i, (c, m) in enumerate(zip(made, minutes, strict=True))
        ]

    low = contacts_at("low", 10, -50)
    mid = contacts_at("mid", 40, -30, -40, -10, -20)  # due in the order mid1, mid0, mid3, mid2
    high = contacts_at("high", 80, -5, -1)
    not_yet = contacts_at("later", 100, 1, 30)  # the highest priority, but not due at NOW
    queue.materialise(low + mid + high + not_yet, now=NOW, policy_version="v")

    def ids(claimed: list[QueuedContact]) -> set[str]:
        return {c.contact_id for c in claimed}

    # a holder dies with the lowest-priority contact leased for a minute
    assert ids(queue.claim_due(Channel.SMS, "dead", now=NOW - timedelta(minutes=45),
                               lease_seconds=60, limit=1)) == {"low0"}  # fmt: skip
    take = functools.partial(queue.claim_due, Channel.SMS, "me", now=NOW, lease_seconds=3600)
    assert ids(take(limit=2)) == {"low0", "high0"}  # its expired lease first
    assert ids(take(limit=3)) == {"high1", "mid1", "mid0"}
    assert ids(take(limit=10)) == {"mid3", "mid2"}
    later = take(now=NOW + timedelta(minutes=30), limit=10)
    assert ids(later) == {"later0", "later1"}


def test_settling_records_outcome_and_releases_in_one_go(store: Store) -> None:
    queue = seed(store)
    queue.materialise(planned(3), now=NOW, policy_version="v")
    a, b, c = queue.claim_due(Channel.SMS, "me", now=NOW, lease_seconds=60, limit=10)
    retry_at = NOW + timedelta(minutes=5)
    moved = (NOW + timedelta(hours=2), NOW + timedelta(hours=3))
    queue.settle("me", [
        Settlement(a.contact_id, a.account_id, "sent", "sent", 1, provider_ref="p-1"),
        Settlement(b.contact_id, b.account_id, "planned", "retry", 1, next_attempt_at=retry_at,
                   error="HTTP 503"),
        Settlement(c.contact_id, c.account_id, "planned", "moved", 0,
                   next_attempt_at=moved[0], window=moved),
    ], now=NOW, policy_version="v")  # fmt: skip
    stored = rows(store)
    sent, retry, move = stored[a.contact_id], stored[b.contact_id], stored[c.contact_id]
    assert (sent.status, sent.provider_ref, sent.performed_at) == ("sent", "p-1", NOW)
    assert sent.lease_owner is None and sent.lease_until is None
    assert (retry.status, retry.attempts, retry.next_attempt_at) == ("planned", 1, retry_at)
    assert retry.last_error == "HTTP 503" and retry.performed_at is None
    assert (move.window_start, move.window_end) == moved
    # the retry is due again at its time, not before
    assert queue.claim_due(Channel.SMS, "me", now=NOW, lease_seconds=60, limit=10) == []
    again = queue.claim_due(Channel.SMS, "me", now=retry_at, lease_seconds=60, limit=10)
    assert [x.contact_id for x in again] == [b.contact_id] and again[0].attempts == 1


def test_a_settlement_batch_changes_only_the_rows_its_owner_still_holds(store: Store) -> None:
    queue = seed(store)
    queue.materialise(planned(4), now=NOW, policy_version="v")
    mine = queue.claim_due(Channel.SMS, "a", now=NOW, lease_seconds=600, limit=2)
    theirs = queue.claim_due(Channel.SMS, "b", now=NOW, lease_seconds=600, limit=2)
    batch = [Settlement(c.contact_id, c.account_id, "sent", "sent", 1, provider_ref=f"p-{i}")
             for i, c in enumerate([*mine, theirs[0]])]  # fmt: skip
    assert queue.settle("a", batch, now=NOW, policy_version="v") == 2
    stored = rows(store)
    assert {stored[c.contact_id].provider_ref for c in mine} == {"p-0", "p-1"}
    assert {stored[c.contact_id].status for c in mine} == {"sent"}
    held = stored[theirs[0].contact_id]
    assert (held.status, held.lease_owner, held.provider_ref) == ("claimed", "b", None)


def test_release_puts_claimed_contacts_back(store: Store) -> None:
    queue = seed(store)
    queue.materialise(planned(4), now=NOW, policy_version="v")
    queue.claim_due(Channel.SMS, "me", now=NOW, lease_seconds=600, limit=2)
    queue.claim_due(Channel.SMS, "other", now=NOW, lease_seconds=600, limit=2)
    assert queue.release("me", now=NOW) == 2
    assert len(queue.claim_due(Channel.SMS, "x", now=NOW, lease_seconds=600, limit=10)) == 2
    assert queue.release_all(now=NOW) == 4


def test_concurrent_claimers_never_share_a_contact(store: Store) -> None:
    queue = seed(store)
    queue.materialise(planned(300), now=NOW, policy_version="v")
    got: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        mine: list[str] = []
        while batch := queue.claim_due(Channel.SMS, name, now=NOW, lease_seconds=600, limit=7):
            mine += [c.contact_id for c in batch]
        got[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [cid for ids in got.values() for cid in ids]
    assert len(every) == len(set(every)) == 300


def test_agents_take_call_tasks_once_and_record_outcomes_once(store: Store) -> None:
    queue = seed(store)
    queue.materialise(planned(2, channel=Channel.CALL), now=NOW, policy_version="v")
    claimed = queue.claim_due(Channel.CALL, "d", now=NOW, lease_seconds=60, limit=10)
    queue.settle("d", [Settlement(c.contact_id, c.account_id, "sent", "sent", 1,
                                  provider_ref=f"queue:{c.contact_id}") for c in claimed],
                 now=NOW, policy_version="v")  # fmt: skip
    first = queue.next_call("ann", now=NOW)
    second = queue.next_call("bob", now=NOW)
    assert first and second and first.contact_id != second.contact_id
    assert queue.next_call("cat", now=NOW) is None
    assert len(queue.open_calls(now=NOW)) == 2
    cases = CaseFile(store)
    account = store.account(first.account_id, now=NOW)
    assert account is not None

    def report(result: Outcome, at: datetime) -> Recorded:
        record = OutcomeRecord(
            first.account_id, at, Channel.CALL, result, target=first.target,
            contact_id=first.contact_id, rule=first.rule, source="calls agent:ann",
        )  # fmt: skip
        [done] = cases.record_outcomes([(record, account, OutcomeEffects())], now=at,
                                       policy_version="v")  # fmt: skip
        return done

    assert report(Outcome.NO_ANSWER, NOW) is Recorded.RECORDED
    assert report(Outcome.PROMISE, NOW + timedelta(minutes=1)) is Recorded.NO_TASK
    assert [c.contact_id for c in queue.open_calls(now=NOW)] == [second.contact_id]
    history = store.history(["A0", "A1"], since=NOW - timedelta(days=1))
    outcomes = {p.outcome for h in history.values() for p in h.contacts}
    assert Outcome.NO_ANSWER in outcomes
    with store.engine.connect() as conn:
        detail = conn.execute(
            sa.select(audit_log.c.detail).where(audit_log.c.kind == "outcome")
        ).scalar_one()
    assert json.loads(detail)["source"] == "calls agent:ann"


def test_daemon_state_is_upserted(store: Store) -> None:
    queue = seed(store)
    queue.set_state({"tick.plan": "1"}, owner="a", now=NOW)
    queue.set_state({"tick.plan": "2", "planned_through": "2026-11-23"}, owner="b", now=NOW)
    state = queue.state()
    assert (state["tick.plan"].value, state["tick.plan"].owner) == ("2", "b")
    assert state["planned_through"].value == "2026-11-23"
