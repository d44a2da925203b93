"""Load a policy directory: every ``*.toml`` policy file, ``extends`` resolved, all validated.

Problems are collected across all files and raised together as one ``PolicyError`` whose
``problems`` each name the file, the key path, the line and a hint. Nothing is returned
half-loaded: a caller (the daemon on SIGHUP) keeps its previous ``PolicySet`` on error.

A directory holds:

- policy files (``default.toml``, ``card.toml`` ...): exactly one has no ``products`` (the
  default for every product); the others name the products they apply to and usually
  ``extends = "default"`` so they only state what differs;
- ``holidays.toml`` (optional): per-country holiday corrections (``add``, ``remove``,
  ``workdays``);
- ``presets/`` (optional): files a policy may extend as ``extends = "presets/cn"``; the
  presets shipped with remind are used when the directory has none of that name.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.hours import AllowedHours, HolidayCalendar, HolidayOverrides
from policies.locate import key_lines
from policies.schema import PolicyFile
from scheduler.errors import PolicyError, PolicyProblem

__all__ = ["PolicySet", "check_policies", "load_policies"]

SHIPPED_DIR = Path(__file__).resolve().parent
HOLIDAYS_FILE = "holidays.toml"
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass(frozen=True)
class PolicySet:
    """The validated policies of one directory, ready for the planner.

    ``version`` is a short hash of every file's bytes: recorded with each decision so a
    complaint handler can tell which policy was in force.
    """

    directory: Path
    version: str
    default: PolicyFile
    by_product: Mapping[str, PolicyFile]
    calendar: HolidayCalendar
    _hours: dict[str, AllowedHours] = field(default_factory=dict, repr=False, compare=False)
    #: Values the planner derives from these policies alone (rules per DPD, rule-window
    #: spans per day and zones), memoised for the life of the set. Never policy input.
    memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False, compare=False)

    def for_product(self, product: str) -> PolicyFile:
        return self.by_product.get(product, self.default)

    @property
    def policies(self) -> tuple[PolicyFile, ...]:
        seen = {id(self.default): self.default}
        for policy in self.by_product.values():
            seen.setdefault(id(policy), policy)
        return tuple(seen.values())

    def hours(self, policy: PolicyFile) -> AllowedHours:
        """The memoising allowed-hours evaluator of one of this set's policies."""
        name = policy.policy.name
        if name not in self._hours:
            q = policy.quiet_hours
            self._hours[name] = AllowedHours(
                quiet_start=q.start,
                quiet_end=q.end,
                weekends=q.weekends,
                holiday_channels=q.holiday_channels,
                calendar=self.calendar,
            )
        return self._hours[name]


@dataclass
class _Raw:
    """One parsed file and where its keys are."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int]


@dataclass
class _Resolved:
    """A policy's merged data and, per key path, the file and line it came from."""

    data: dict[str, Any]
    origin: dict[str, tuple[Path, int | None]]


def load_policies(directory: Path) -> PolicySet:
    """Load and validate ``directory``; raise ``PolicyError`` listing every problem."""
    problems: list[PolicyProblem] = []
    result = _load(directory, problems)
    if problems or result is None:
        raise PolicyError(problems or [PolicyProblem(str(directory), "", None, "no policy")])
    return result


def check_policies(directory: Path) -> list[PolicyProblem]:
    """Every problem in ``directory`` (empty when it is valid)."""
    problems: list[PolicyProblem] = []
    _load(directory, problems)
    return problems


def _load(directory: Path, problems: list[PolicyProblem]) -> PolicySet | None:
    if not directory.is_dir():
        problems.append(
            PolicyProblem(
                str(directory),
                "",
                None,
                "policy directory not found",
                "set [policy] dir in config.toml or pass --policy DIR",
            )
        )
        return None
    files = sorted(p for p in directory.glob("*.toml") if p.name != HOLIDAYS_FILE)
    raws = {p: raw for p in files if (raw := _parse(p, problems)) is not None}
    named = _index_by_name(raws, problems)
    policies: dict[str, PolicyFile] = {}
    for name, raw in named.items():
        resolved = _resolve(raw, named, directory, problems, chain=())
        if resolved is not None and (policy := _validate(resolved, raw, problems)) is not None:
            policies[name] = policy
    calendar = HolidayCalendar(_load_overrides(directory / HOLIDAYS_FILE, problems))
    default, by_product = _assign_products(policies, named, directory, problems)
    if default is None:
        return None
    return PolicySet(
        directory=directory,
        version=_version(directory),
        default=default,
        by_product=by_product,
        calendar=calendar,
    )


def _parse(path: Path, problems: list[PolicyProblem]) -> _Raw | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(PolicyProblem(str(path), "", None, f"cannot read: {exc}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        line = int(match.group(1)) if match else None
        if line is None and "end of document" in str(exc):
            line = max(len(text.splitlines()), 1)
        problems.append(
            PolicyProblem(
                str(path),
                "",
                line,
                f"not valid TOML: {exc}",
                "check quotes, brackets and '=' on that line",
            )
        )
        return None
    return _Raw(path, data, key_lines(text))


def _index_by_name(raws: dict[Path, _Raw], problems: list[PolicyProblem]) -> dict[str, _Raw]:
    named: dict[str, _Raw] = {}
    for path, raw in raws.items():
        meta = raw.data.get("policy")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(
                PolicyProblem(
                    str(path),
                    "policy.name",
                    raw.lines.get("policy"),
                    'every policy file needs [policy] name = "..."',
                    f'e.g. name = "{path.stem}"',
                )
            )
            continue
        if name in named:
            problems.append(
                PolicyProblem(
                    str(path),
                    "policy.name",
                    raw.lines.get("policy.name"),
                    f"policy name {name!r} is also used by {named[name].path.name}",
                    "give each file its own name",
                )
            )
            continue
        named[name] = raw
    return named


def _resolve(
    raw: _Raw,
    named: dict[str, _Raw],
    directory: Path,
    problems: list[PolicyProblem],
    chain: tuple[str, ...],
) -> _Resolved | None:
    own = _Resolved(copy.deepcopy(raw.data), {k: (raw.path, line) for k, line in raw.lines.items()})
    parent_name = raw.data.get("policy", {}).get("extends")
    if parent_name is None:
        return own
    line = raw.lines.get("policy.extends")
    parent = named.get(parent_name) if isinstance(parent_name, str) else None
    if parent is None and isinstance(parent_name, str) and parent_name.startswith("presets/"):
        parent = _find_preset(parent_name, directory, problems)
    if parent is None:
        problems.append(
            PolicyProblem(
                str(raw.path),
                "policy.extends",
                line,
                f"extends unknown policy {parent_name!r}",
                f"known: {', '.join(sorted(named)) or 'none'}, or presets/<name>",
            )
        )
        return None
    parent_key = str(parent_name)
    if parent_key in chain:
        problems.append(
            PolicyProblem(
                str(raw.path),
                "policy.extends",
                line,
                f"extends forms a cycle: {' -> '.join((*chain, parent_key))}",
            )
        )
        return None
    base = _resolve(parent, named, directory, problems, (*chain, parent_key))
    return None if base is None else _merge(base, raw)


def _find_preset(name: str, directory: Path, problems: list[PolicyProblem]) -> _Raw | None:
    for root in (directory, SHIPPED_DIR):
        path = root / f"{name}.toml"
        if path.is_file():
            return _parse(path, problems)
    return None


def _merge(base: _Resolved, child: _Raw) -> _Resolved:
    """Child keys win; ``[policy]`` is the child's own; rules merge by id, new ones append."""
    data = copy.deepcopy(base.data)
    origin = {k: v for k, v in base.origin.items() if not k.startswith("policy")}
    for section, body in child.data.items():
        if section == "rule":
            continue
        if section == "policy" or not isinstance(body, dict):
            data[section] = copy.deepcopy(body)
        else:
            data.setdefault(section, {}).update(copy.deepcopy(body))
        origin.update({k: (child.path, v) for k, v in child.lines.items() if _under(k, section)})
    rules: list[Any] = data.setdefault("rule", [])
    index = {r.get("id"): i for i, r in enumerate(rules) if isinstance(r, dict)}
    for i, rule in enumerate(child.data.get("rule", [])):
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        if rule_id in index:
            j = index[rule_id]
            rules[j] = {**rules[j], **rule}
        else:
            rules.append(copy.deepcopy(rule))
            j = len(rules) - 1
        prefix = f"rule[{i}]"
        for key, line in child.lines.items():
            if _under(key, prefix):
                origin[f"rule[{j}]{key[len(prefix) :]}"] = (child.path, line)
    return _Resolved(data, origin)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _validate(resolved: _Resolved, raw: _Raw, problems: list[PolicyProblem]) -> PolicyFile | None:
    found = len(problems)
    rules = resolved.data.get("rule", [])
    ids: dict[str, int] = {}
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        rule_id = rule.get("id")
        if isinstance(rule_id, str) and rule_id in ids:
            _add(
                problems,
                resolved,
                raw,
                f"rule[{i}].id",
                f"rule id {rule_id!r} is used twice",
                "ids must be unique; to change an inherited rule, reuse its id in the child file",
            )
        ids.setdefault(str(rule_id), i)
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        target = rule.get("fallback_for") if isinstance(rule, dict) else None
        if target is not None and target not in ids:
            _add(
                problems,
                resolved,
                raw,
                f"rule[{i}].fallback_for",
                f"names unknown rule {target!r}",
                f"known rules: {', '.join(sorted(ids))}",
            )
    try:
        policy = PolicyFile.model_validate(resolved.data)
    except ValidationError as exc:
        for error in exc.errors():
            path = _loc_to_path(error["loc"])
            _add(problems, resolved, raw, path, _message(error, resolved.data), _hint(error))
        return None
    return policy if len(problems) == found else None


def _add(
    problems: list[PolicyProblem],
    resolved: _Resolved,
    raw: _Raw,
    path: str,
    message: str,
    hint: str = "",
) -> None:
    file, line = _origin(resolved, raw, path)
    problems.append(PolicyProblem(str(file), path, line, message, hint))


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _origin(resolved: _Resolved, raw: _Raw, path: str) -> tuple[Path, int | None]:
    probe = path
    while probe:
        if probe in resolved.origin:
            return resolved.origin[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return raw.path, None


def _message(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    loc = error["loc"]
    if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
        rules = data.get("rule", [])
        if loc[1] < len(rules) and isinstance(rules[loc[1]], dict) and "id" in rules[loc[1]]:
            message = f"(rule {rules[loc[1]]['id']}) {message}"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return message


def _hint(error: Mapping[str, Any]) -> str:
    kind = str(error["type"])
    if kind == "extra_forbidden":
        return "check the spelling against docs/policies.md"
    if kind == "enum":
        return "allowed: " + str(error.get("ctx", {}).get("expected", ""))
    if kind == "missing":
        return "this key is required"
    return ""


def _assign_products(
    policies: dict[str, PolicyFile],
    named: dict[str, _Raw],
    directory: Path,
    problems: list[PolicyProblem],
) -> tuple[PolicyFile | None, dict[str, PolicyFile]]:
    defaults = [p for p in policies.values() if not p.policy.products]
    by_product: dict[str, PolicyFile] = {}
    for name, policy in policies.items():
        for product in policy.policy.products:
            if product in by_product:
                raw = named[name]
                problems.append(
                    PolicyProblem(
                        str(raw.path),
                        "policy.products",
                        raw.lines.get("policy.products"),
                        f"product {product!r} is also claimed by policy "
                        f"{by_product[product].policy.name!r}",
                        "a product may have one policy only",
                    )
                )
            by_product[product] = policy
    if len(defaults) != 1 and not problems:
        names = ", ".join(p.policy.name for p in defaults) or "none"
        problems.append(
            PolicyProblem(
                str(directory),
                "policy.products",
                None,
                f"exactly one policy must apply to every product (no products); found {names}",
                "leave products empty in default.toml only",
            )
        )
    if problems:
        return None, {}
    return defaults[0], by_product


def _load_overrides(path: Path, problems: list[PolicyProblem]) -> dict[str, HolidayOverrides]:
    if not path.is_file():
        return {}
    raw = _parse(path, problems)
    if raw is None:
        return {}
    out: dict[str, HolidayOverrides] = {}
    for country, body in raw.data.items():
        if not isinstance(body, dict):
            problems.append(
                PolicyProblem(
                    str(path), country, raw.lines.get(country), "must be a table like [CN]"
                )
            )
            continue
        lists: dict[str, frozenset[date]] = {}
        for key, value in body.items():
            where = f"{country}.{key}"
            if key not in ("add", "remove", "workdays"):
                problems.append(
                    PolicyProblem(
                        str(path),
                        where,
                        raw.lines.get(where),
                        "unknown key",
                        "use add, remove or workdays",
                    )
                )
            elif not isinstance(value, list) or not all(
                isinstance(d, date) and not hasattr(d, "hour") for d in value
            ):
                problems.append(
                    PolicyProblem(
                        str(path),
                        where,
                        raw.lines.get(where),
                        "must be a list of dates",
                        "e.g. [2027-02-05, 2027-02-06]",
                    )
                )
            else:
                lists[key] = frozenset(value)
        out[country.upper()] = HolidayOverrides(**lists)
    return out


def _version(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.toml")):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
