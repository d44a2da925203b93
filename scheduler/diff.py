"""What a policy change does to a plan: two plans of the same day and accounts in, one
``PlanDiff`` out. Pure: no store, no clock; ``remind policy diff`` and the daemon's SIGHUP
reload feed it the plan under the active policies and the plan under the new ones.

Contacts are matched by their stable id (account, rule, due date, step, target), so a rule
whose window moved is one *moved* contact, not one removed and one added:

* **added**: planned under the new policies only (``was`` says why it was not planned
  before: the rule did not ask for it, or the old suppression reason);
* **removed**: planned under the old policies only (``now`` says why not any more: a cap,
  quiet hours, or the rule no longer asks for it);
* **moved**: planned under both, in a different window;
* **reheld**: suppressed under both, for a different reason.

Counts are kept per ``(rule, channel)``; ``suppressed`` counts every suppression reason's
change (cap and quiet-hour effects); ``policy_changes`` lists the policy keys that differ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from policies.loader import PolicySet
from policies.schema import PolicyFile
from scheduler.models import Plan, PlannedContact, SuppressedContact

__all__ = [
    "NOT_ASKED",
    "ContactChange",
    "PlanDiff",
    "PolicyChange",
    "RuleChannelDelta",
    "diff_plans",
    "diff_policies",
    "summary_fields",
]

#: The "reason" of a contact that one plan does not have at all (its rule did not ask for it).
NOT_ASKED = "not_asked"


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One policy key whose value differs: ``policy`` name, dotted ``key`` (``caps.
    contacts_per_day``, ``rule.pre_due_sms_3d.at``), old and new values as text ("-" when
    absent)."""

    policy: str
    key: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.policy}: {self.key}: {self.old} -> {self.new}"


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One contact whose fate differs between the two plans."""

    kind: str  # added | removed | moved | reheld
    contact_id: str
    account_id: str
    rule: str
    channel: str
    old_window: tuple[datetime, datetime] | None
    new_window: tuple[datetime, datetime] | None
    old_reason: str | None  # None when planned under the old policies
    new_reason: str | None  # None when planned under the new policies


@dataclass(frozen=True, slots=True)
class RuleChannelDelta:
    """Planned contacts of one ``(rule, channel)`` before and after, and what changed."""

    rule: str
    channel: str
    old: int
    new: int
    added: int
    removed: int
    moved: int


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """The difference between the plan under the active policies (old) and under new ones."""

    old_planned: int
    new_planned: int
    deltas: tuple[RuleChannelDelta, ...]
    #: suppression reason -> (contacts held for it before, after); only reasons that changed
    suppressed: Mapping[str, tuple[int, int]]
    #: (old reason or "planned", new reason or "planned") -> contacts, for every change
    transitions: Mapping[tuple[str, str], int]
    changes: tuple[ContactChange, ...]
    policy_changes: tuple[PolicyChange, ...] = ()
    sample_accounts: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.changes and not self.policy_changes

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)


_Entry = PlannedContact | SuppressedContact


def _key(c: _Entry) -> str:
    return c.contact_id or f"{c.account_id}|{c.rule}|{c.target}|{c.window_start.isoformat()}"


def _index(plan: Plan) -> dict[str, _Entry]:
    found: dict[str, _Entry] = {}
    for s in plan.suppressed:
        found[_key(s)] = s
    for p in plan.planned:  # a planned contact wins over a suppressed one with the same id
        found[_key(p)] = p
    return found


def _reason(c: _Entry | None) -> str | None:
    if c is None:
        return NOT_ASKED
    return c.reason.value if isinstance(c, SuppressedContact) else None


def _window(c: _Entry | None) -> tuple[datetime, datetime] | None:
    return None if c is None else (c.window_start, c.window_end)


def _change(old: _Entry | None, new: _Entry | None) -> ContactChange | None:
    some = new if new is not None else old
    if some is None:
        return None
    was, now = _reason(old), _reason(new)
    if was is None and now is None:
        if _window(old) == _window(new):
            return None
        kind = "moved"
    elif was is None:
        kind = "removed"
    elif now is None:
        kind = "added"
    elif was != now and NOT_ASKED not in (was, now):
        kind = "reheld"
    else:
        return None  # held both times for the same reason, or held on one side only
    return ContactChange(
        kind,
        _key(some),
        some.account_id,
        some.rule,
        some.channel.value,
        _window(old),
        _window(new),
        was,
        now,
    )


def diff_plans(
    old: Plan,
    new: Plan,
    *,
    policy_changes: Iterable[PolicyChange] = (),
    sample_size: int = 10,
) -> PlanDiff:
    """Compare the plan under the active policies (``old``) with the plan under new ones.

    Both must plan the same day for the same accounts. ``sample_accounts`` holds up to
    ``sample_size`` affected account ids, spread over the kinds of change."""
    before, after = _index(old), _index(new)
    changes = [
        change
        for key in sorted(before.keys() | after.keys())
        if (change := _change(before.get(key), after.get(key))) is not None
    ]
    changes.sort(key=lambda c: (c.kind, c.rule, c.channel, c.account_id, c.contact_id))
    old_count = Counter((c.rule, c.channel.value) for c in old.planned)
    new_count = Counter((c.rule, c.channel.value) for c in new.planned)
    kinds: Counter[tuple[str, str, str]] = Counter((c.rule, c.channel, c.kind) for c in changes)
    deltas = tuple(
        RuleChannelDelta(
            rule,
            channel,
            old_count[(rule, channel)],
            new_count[(rule, channel)],
            kinds[(rule, channel, "added")],
            kinds[(rule, channel, "removed")],
            kinds[(rule, channel, "moved")],
        )
        for rule, channel in sorted(old_count.keys() | new_count.keys() | _rc(changes))
        if any(kinds[(rule, channel, k)] for k in ("added", "removed", "moved"))
        or old_count[(rule, channel)] != new_count[(rule, channel)]
    )
    held_old = Counter(s.reason.value for s in old.suppressed)
    held_new = Counter(s.reason.value for s in new.suppressed)
    suppressed = {
        reason: (held_old[reason], held_new[reason])
        for reason in sorted(held_old.keys() | held_new.keys())
        if held_old[reason] != held_new[reason]
    }
    transitions = Counter((c.old_reason or "planned", c.new_reason or "planned") for c in changes)
    return PlanDiff(
        old_planned=len(old.planned),
        new_planned=len(new.planned),
        deltas=deltas,
        suppressed=suppressed,
        transitions=dict(sorted(transitions.items())),
        changes=tuple(changes),
        policy_changes=tuple(policy_changes),
        sample_accounts=_sample(changes, sample_size),
    )


def _rc(changes: Iterable[ContactChange]) -> set[tuple[str, str]]:
    return {(c.rule, c.channel) for c in changes}


def _sample(changes: list[ContactChange], size: int) -> tuple[str, ...]:
    """Up to ``size`` account ids, taking from each (kind, rule, channel) group in turn."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in changes:
        ids = groups.setdefault((c.kind, c.rule, c.channel), [])
        if c.account_id not in ids:
            ids.append(c.account_id)
    picked: list[str] = []
    depth = 0
    while len(picked) < size and any(depth < len(ids) for ids in groups.values()):
        for ids in groups.values():
            if depth < len(ids) and ids[depth] not in picked and len(picked) < size:
                picked.append(ids[depth])
        depth += 1
    return tuple(picked)


# -- the policies themselves ---------------------------------------------------------------


def diff_policies(old: PolicySet, new: PolicySet) -> tuple[PolicyChange, ...]:
    """Every policy key whose resolved value differs, policy by policy (by name), rule by
    rule (by id): what ops changed, after ``extends`` is applied."""
    before = {p.policy.name: p for p in old.policies}
    after = {p.policy.name: p for p in new.policies}
    found: list[PolicyChange] = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            found.append(PolicyChange(name, "policy", "present", "-"))
        elif name not in before:
            found.append(PolicyChange(name, "policy", "-", "present"))
        else:
            found.extend(_policy_changes(name, before[name], after[name]))
    return tuple(found)


def _policy_changes(name: str, old: PolicyFile, new: PolicyFile) -> list[PolicyChange]:
    found: list[PolicyChange] = []
    for section in ("policy", "quiet_hours", "caps", "suppressions", "handover"):
        a = getattr(old, section).model_dump(mode="json", exclude={"description"})
        b = getattr(new, section).model_dump(mode="json", exclude={"description"})
        found.extend(
            PolicyChange(name, f"{section}.{key}", _text(a.get(key)), _text(b.get(key)))
            for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key)
        )
    rules_a = {r.id: r.model_dump(mode="json") for r in old.rule}
    rules_b = {r.id: r.model_dump(mode="json") for r in new.rule}
    for rule_id in sorted(rules_a.keys() | rules_b.keys()):
        a, b = rules_a.get(rule_id), rules_b.get(rule_id)
        if a is None or b is None:
            found.append(
                PolicyChange(
                    name,
                    f"rule.{rule_id}",
                    "-" if a is None else "present",
                    "-" if b is None else "present",
                )
            )
            continue
        found.extend(
            PolicyChange(name, f"rule.{rule_id}.{key}", _text(a.get(key)), _text(b.get(key)))
            for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key)
        )
    return found


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and len(value) == 8 and value.endswith(":00") and value[2] == ":":
        return value[:5]  # "10:00:00" -> "10:00"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def summary_fields(diff: PlanDiff) -> dict[str, object]:
    """The diff as flat log fields (one structlog event on SIGHUP reload)."""
    return {
        "planned_before": diff.old_planned,
        "planned_after": diff.new_planned,
        "added": diff.count("added"),
        "removed": diff.count("removed"),
        "moved": diff.count("moved"),
        "reheld": diff.count("reheld"),
        "by_rule": {
            f"{d.rule}/{d.channel}": {
                "old": d.old,
                "new": d.new,
                "added": d.added,
                "removed": d.removed,
                "moved": d.moved,
            }
            for d in diff.deltas
        },
        "suppressed": {reason: list(counts) for reason, counts in diff.suppressed.items()},
        "policy_changes": [str(c) for c in diff.policy_changes],
        "sample_accounts": list(diff.sample_accounts),
    }
