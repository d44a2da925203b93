"""Policy files: the shipped ones are valid; a broken one is refused with every problem,
each naming file, key and line; product files extend the default."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest

from policies import check_policies, load_policies
from policies.locate import key_lines
from scheduler.errors import PolicyError
from scheduler.models import Channel
from tests.factories import SHIPPED, copy_policies


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_shipped_policies_are_valid_and_encode_the_seeds_process() -> None:
    assert check_policies(SHIPPED) == []
    policy = load_policies(SHIPPED).default
    rules = {r.id: r for r in policy.rule}
    assert (rules["pre_due_sms_3d"].dpd, rules["pre_due_sms_3d"].at) == (-3, time(10, 0))
    assert (rules["due_day_sms"].dpd, rules["due_day_sms"].at) == (0, time(9, 0))
    assert (
        rules["pre_due_email_1d"].channel is Channel.EMAIL and rules["pre_due_email_1d"].dpd == -1
    )
    call = rules["first_overdue_call"]
    assert (call.dpd, call.at, call.until, call.first_contact) == (1, time(9), time(12), True)
    assert rules["first_overdue_sms"].fallback_for == "first_overdue_call"
    assert rules["first_overdue_sms"].at == time(14, 0)
    assert policy.quiet_hours.start == time(21) and policy.quiet_hours.end == time(8)
    assert (policy.caps.contacts_per_day, policy.caps.call_attempts_per_7_days) == (3, 7)
    assert policy.handover.min_dpd == 91


BROKEN = """\
[policy]
name = "default"

[quiet_hours]
start = "25:00"

[caps]
contacts_per_dy = 3

[[rule]]
id = "pre_due_sms"
channel = "pigeon"
dpd = -3
at = "10:00"
until = "20:00"

[[rule]]
id = "late"
channel = "call"
dpd = 1
at = "12:00"
until = "09:00"

[[rule]]
id = "fallback"
channel = "sms"
dpd = 1
at = "14:00"
until = "20:00"
fallback_for = "nonexistent"
"""


def test_a_broken_policy_lists_every_problem_with_file_key_and_line(tmp_path: Path) -> None:
    # Given a policy file with five independent mistakes and a second file that is not TOML
    policy = tmp_path / "default.toml"
    policy.write_text(BROKEN)
    (tmp_path / "card.toml").write_text('[policy]\nname = "card"\nproducts = ["card"\n')
    # When it is checked
    problems = check_policies(tmp_path)
    # Then every mistake is listed, each with its file, key and line
    found = {(Path(p.file).name, p.key, p.line) for p in problems}
    assert ("default.toml", "quiet_hours.start", line_of(policy, 'start = "25:00"')) in found
    assert ("default.toml", "caps.contacts_per_dy", line_of(policy, "contacts_per_dy")) in found
    assert ("default.toml", "rule[0].channel", line_of(policy, '"pigeon"')) in found
    assert ("default.toml", "rule[1]", line_of(policy, 'id = "late"') - 1) in found
    assert ("default.toml", "rule[2].fallback_for", line_of(policy, "nonexistent")) in found
    assert any(Path(p.file).name == "card.toml" and p.line == 3 for p in problems)
    messages = " ".join(str(p) for p in problems)
    assert "unknown key" in messages and "until must be later than at" in messages
    # And loading raises one PolicyError carrying all of them
    with pytest.raises(PolicyError) as raised:
        load_policies(tmp_path)
    assert len(raised.value.problems) == len(problems) >= 6


def test_a_product_policy_extends_the_default_and_states_only_what_differs(tmp_path: Path) -> None:
    copy_policies(tmp_path)
    (tmp_path / "card.toml").write_text(
        """\
[policy]
name = "card"
products = ["card"]
extends = "default"

[caps]
contacts_per_day = 2

[[rule]]
id = "pre_due_sms_3d"
at = "11:00"

[[rule]]
id = "early_sms"
enabled = false

[[rule]]
id = "pre_due_email_5d"
channel = "email"
dpd = -5
at = "12:00"
until = "18:00"
"""
    )
    policies = load_policies(tmp_path)
    card = policies.for_product("card")
    rules = {r.id: r for r in card.rule}
    assert card.caps.contacts_per_day == 2
    assert card.caps.call_attempts_per_7_days == 7  # inherited
    assert rules["pre_due_sms_3d"].at == time(11) and rules["pre_due_sms_3d"].until == time(20)
    assert not rules["early_sms"].enabled
    assert rules["pre_due_email_5d"].dpd == -5
    assert policies.for_product("loan") is policies.default
    assert {r.id for r in policies.default.rule} < set(rules)


def test_a_mistake_in_a_child_file_points_at_the_child(tmp_path: Path) -> None:
    copy_policies(tmp_path)
    child = tmp_path / "card.toml"
    child.write_text(
        '[policy]\nname = "card"\nproducts = ["card"]\nextends = "default"\n\n'
        '[[rule]]\nid = "pre_due_sms_3d"\nat = "1100"\n'
    )
    problems = check_policies(tmp_path)
    assert [(Path(p.file).name, p.key, p.line) for p in problems] == [
        ("card.toml", "rule[0].at", 8)
    ]
    assert "HH:MM" in problems[0].message


def test_two_policies_for_one_product_and_unknown_extends_are_refused(tmp_path: Path) -> None:
    copy_policies(tmp_path)
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(
            f'[policy]\nname = "{name}"\nproducts = ["card"]\nextends = "default"\n'
        )
    (tmp_path / "c.toml").write_text('[policy]\nname = "c"\nproducts = ["x"]\nextends = "nope"\n')
    messages = [str(p) for p in check_policies(tmp_path)]
    assert any("also claimed" in m for m in messages)
    assert any("extends unknown policy 'nope'" in m and "c.toml:4" in m for m in messages)


def test_holiday_overrides_add_holidays_and_workdays(tmp_path: Path) -> None:
    copy_policies(tmp_path)
    (tmp_path / "holidays.toml").write_text(
        "[CN]\nadd = [2027-03-05]\nworkdays = [2027-03-06, 2027-02-08]\n"
    )
    calendar = load_policies(tmp_path).calendar
    assert calendar.is_holiday("CN", date(2027, 3, 5))
    assert calendar.is_makeup_workday("CN", date(2027, 3, 6))  # a Saturday
    # an ops workday wins over the package's holiday
    assert not calendar.is_holiday("CN", date(2027, 2, 8))
    (tmp_path / "holidays.toml").write_text('[CN]\nadd = ["next friday"]\n')
    assert [(p.key, p.line) for p in check_policies(tmp_path)] == [("CN.add", 2)]


def test_key_lines_follow_tables_and_arrays_of_tables() -> None:
    text = '[a]\nx = 1\n\n[[rule]]\nid = "one"\nlist = [\n  1,\n]\n[[rule]]\nid = "two"\n'
    lines = key_lines(text)
    assert lines["a.x"] == 2
    assert lines["rule[0].list"] == 6
    assert lines["rule[1]"] == 9 and lines["rule[1].id"] == 10
