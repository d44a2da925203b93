"""Jurisdiction presets (policies/presets/*.toml) a policy file extends, and the caps and
holds they bring: unanswered call attempts per day to one number, and no contact with an
emergency contact who objected."""

from __future__ import annotations

from datetime import date, time, timedelta
from pathlib import Path

import pytest

from policies import check_policies, load_policies
from policies.rules import CapLedger
from policies.schema import Caps
from scheduler.models import AccountHistory, Channel, Horizon, Outcome, PastContact, Reason
from scheduler.planner import plan
from tests.factories import account, copy_policies, evening_before, local

DAY = date(2026, 11, 24)  # a Tuesday, no holiday in CN or US
SH = "Asia/Shanghai"


def with_preset(tmp_path: Path, preset: str, extra: str = "") -> Path:
    """The shipped default with its [quiet_hours] and [caps] left to ``preset``."""
    copy_policies(tmp_path)
    path = tmp_path / "default.toml"
    text = path.read_text()
    start, end = text.index("[quiet_hours]"), text.index("[suppressions]")
    text = text[:start] + extra + text[end:]
    text = text.replace("products = []", f'products = []\nextends = "presets/{preset}"', 1)
    path.write_text(text)
    return tmp_path


def test_the_cn_preset_gives_its_hours_caps_and_third_party_rule(tmp_path: Path) -> None:
    policy = load_policies(with_preset(tmp_path, "cn")).default
    assert (policy.quiet_hours.start, policy.quiet_hours.end) == (time(22), time(8))
    caps = policy.caps
    assert (caps.call_attempts_per_day, caps.connected_calls_per_day) == (6, 3)
    assert (caps.call_attempts_per_7_days, caps.conversation_cooldown_days) == (0, 0)
    assert policy.policy.name == "default" and policy.rule  # the file's own [policy] and rules


def test_the_us_regf_preset_gives_its_hours_and_call_caps(tmp_path: Path) -> None:
    policy = load_policies(with_preset(tmp_path, "us-regf")).default
    assert (policy.quiet_hours.start, policy.quiet_hours.end) == (time(21), time(8))
    assert (policy.caps.call_attempts_per_7_days, policy.caps.conversation_cooldown_days) == (7, 7)


def test_a_policy_key_wins_over_the_preset_and_mistakes_name_the_policy_file(
    tmp_path: Path,
) -> None:
    folder = with_preset(tmp_path, "cn", extra='[quiet_hours]\nstart = "21:00"\n\n')
    assert load_policies(folder).default.quiet_hours.start == time(21)
    path = folder / "default.toml"
    path.write_text(path.read_text().replace('start = "21:00"', 'start = "9pm"'))
    problems = check_policies(folder)
    assert [(Path(p.file).name, p.key) for p in problems] == [("default.toml", "quiet_hours.start")]
    lines = path.read_text().splitlines()
    assert problems[0].line == lines.index('start = "9pm"') + 1
    path.write_text(path.read_text().replace("presets/cn", "presets/mars"))
    messages = [str(p) for p in check_policies(folder)]
    assert any("extends unknown policy 'presets/mars'" in m for m in messages)


def test_a_preset_in_the_policy_directory_wins_over_the_shipped_one(tmp_path: Path) -> None:
    folder = with_preset(tmp_path, "cn")
    (folder / "presets").mkdir()
    (folder / "presets" / "cn.toml").write_text('[quiet_hours]\nstart = "20:00"\n')
    assert load_policies(folder).default.quiet_hours.start == time(20)


# -- caps.call_attempts_per_day --------------------------------------------------------------

EC = "+8613912345678"


def calls(n: int, *, target: str = "borrower", reached: int = 0) -> list[PastContact]:
    """``n`` calls to ``target`` on DAY from 08:00, every 10 minutes; the first ``reached``
    reached the borrower."""
    start = local(DAY, "08:00", SH)
    return [
        PastContact(
            "A1", Channel.CALL, "manual", start + timedelta(minutes=10 * i),
            Outcome.CONVERSATION if i < reached else Outcome.NO_ANSWER, target=target,
        )
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("history", "target", "expected"),
    [
        (calls(5), "borrower", None),  # a sixth attempt is allowed
        (calls(6), "borrower", Reason.CAP_CALL_ATTEMPTS_DAILY),
        (calls(6, reached=1), "borrower", None),  # an answered call is not an attempt here
        (calls(6, target=EC), "borrower", None),  # attempts to another number do not count
        (calls(6, target=EC), EC, Reason.CAP_CALL_ATTEMPTS_DAILY),
    ],
)
def test_call_attempts_per_day_counts_unanswered_calls_to_one_number(
    history: list[PastContact], target: str, expected: Reason | None
) -> None:
    caps = Caps(
        call_attempts_per_day=6, contacts_per_day=0, call_attempts_per_7_days=0,
        conversation_cooldown_days=0, min_gap_minutes=0, third_party_every_days=0,
    )  # fmt: skip
    ledger = CapLedger(caps, SH, history)
    span = (local(DAY, "14:00", SH), local(DAY, "15:00", SH))
    fitted = ledger.fit([span], Channel.CALL, target)
    assert (fitted if isinstance(fitted, Reason) else None) is expected


def test_call_attempts_per_day_off_by_default() -> None:
    ledger = CapLedger(
        Caps(min_gap_minutes=0, call_attempts_per_7_days=0, contacts_per_day=0), SH, calls(9)
    )
    assert Caps().call_attempts_per_day == 0
    span = (local(DAY, "14:00", SH), local(DAY, "15:00", SH))
    assert not isinstance(ledger.fit([span], Channel.CALL, "borrower"), Reason)


# -- an emergency contact who objected -------------------------------------------------------


@pytest.mark.parametrize("preset", ["cn", "us-regf"])
def test_an_emergency_contact_who_objected_is_never_contacted_again(
    tmp_path: Path, preset: str
) -> None:
    # Given a preset and an account 38 days overdue with two emergency contacts, one of whom
    # objected (a recorded third_party_objected outcome: the store reports the number as
    # removed), and a borrower who was tried 8 days ago and not reached
    policies = load_policies(with_preset(tmp_path, preset))
    a = account(due_date=DAY - timedelta(days=38), emergency_contacts=(EC, "+8613900000000"))
    tried = PastContact(
        "A1", Channel.CALL, "late_call", local(DAY - timedelta(days=8), "10:00", SH),
        Outcome.NO_ANSWER, due_date=a.due_date,
    )  # fmt: skip
    history = {"A1": AccountHistory(contacts=(tried,), removed_contacts=frozenset({EC}))}
    # When DPD 38 (the rule's next week) is planned
    result = plan(evening_before(DAY), [a], history, policies, Horizon(DAY))
    # Then the objecting number is held for good, the other is called
    held = {(s.target, s.reason) for s in result.suppressed}
    assert (EC, Reason.THIRD_PARTY_REMOVED) in held
    called = {c.target for c in result.planned if c.rule == "emergency_contact_call"}
    assert called == {"+8613900000000"}
