"""Template lint: wording no message may carry, and what a letter must give.

``remind policy check`` (through ``render.check_templates``) runs it over every effective
template file, comments excluded, line by line:

* **Forbidden phrases**: threats, and impersonation of police, courts or lawyers. The lists
  are ``lint/forbidden.<language>.txt``: one phrase or regular expression per line
  (matched case-insensitively), ``#`` starts a comment. A list is looked up in the policy
  directory's ``lint/`` first, then in the one remind ships (``policies/lint/``), file by
  file, like templates: to extend a list, copy the shipped file and add lines. A list
  applies to every template language with the same primary subtag (``forbidden.zh-CN.txt``
  to ``zh-CN``, ``zh`` and ``zh-TW`` templates).
* **Letters** must give the balance, how to dispute the debt and how to contact the lender
  (``letter_gaps``; the words that count are per language below).

Every problem names the template file and line (or the list file and line for a list that
does not compile).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.errors import PolicyProblem

__all__ = [
    "SHIPPED_LINT",
    "Phrase",
    "forbidden_lists",
    "letter_gaps",
    "lint_sources",
    "load_phrases",
]

SHIPPED_LINT = Path(__file__).resolve().parent.parent / "policies" / "lint"
_LIST = re.compile(r"^forbidden\.([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)*)\.txt$")
_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)

#: How a letter shows how to dispute the debt, and how to contact the lender, per language.
_DISPUTE: dict[str, re.Pattern[str]] = {
    "en": re.compile(r"\bdisput\w*|\bwrong\b|\bincorrect\b|\bdisagree\w*", re.IGNORECASE),
    "zh": re.compile(r"异议|有误|不符|申诉|争议"),
}
_CONTACT: dict[str, re.Pattern[str]] = {
    "en": re.compile(r"\bcontact\b|\bcall us\b|\bcustomer service\b|\bhelpline\b", re.IGNORECASE),
    "zh": re.compile(r"联系|客服|热线|致电"),
}


@dataclass(frozen=True, slots=True)
class Phrase:
    """One forbidden phrase: its compiled pattern and the list line it came from."""

    pattern: re.Pattern[str]
    source: Path
    line: int

    @property
    def text(self) -> str:
        return self.pattern.pattern


def _primary(language: str) -> str:
    return language.replace("_", "-").split("-", 1)[0].lower()


def forbidden_lists(policy_dir: Path) -> dict[str, Path]:
    """Language tag -> list file, the policy directory's ``lint/`` winning over the shipped."""
    found: dict[str, Path] = {}
    for root in (policy_dir / "lint", SHIPPED_LINT):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            match = _LIST.match(path.name)
            if match and path.is_file():
                found.setdefault(match.group(1), path)
    return found


def load_phrases(path: Path, problems: list[PolicyProblem]) -> list[Phrase]:
    """The phrases of one list file; a line that does not compile is a problem."""
    phrases: list[Phrase] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(PolicyProblem(str(path), "lint", None, f"cannot read: {exc}"))
        return phrases
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            phrases.append(Phrase(re.compile(line, re.IGNORECASE), path, number))
        except re.error as exc:
            problems.append(
                PolicyProblem(
                    str(path),
                    "lint",
                    number,
                    f"not a valid phrase or regular expression: {exc}",
                    r"escape ( ) [ ] . * + ? with a backslash to match them literally",
                )
            )
    return phrases


def _without_comments(source: str) -> str:
    """``source`` with Jinja comments blanked out, line numbers kept."""
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), source)


def lint_sources(sources: Mapping[str, Path], policy_dir: Path) -> list[PolicyProblem]:
    """Forbidden phrases in the template files ``sources`` (``"<language>/<file>"`` ->
    path), each a problem naming the template file and line."""
    problems: list[PolicyProblem] = []
    by_primary: dict[str, list[Phrase]] = {}
    for tag, path in forbidden_lists(policy_dir).items():
        by_primary.setdefault(_primary(tag), []).extend(load_phrases(path, problems))
    for name, path in sorted(sources.items()):
        phrases = by_primary.get(_primary(name.split("/", 1)[0]), [])
        if not phrases:
            continue
        try:
            text = _without_comments(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(str(path), "template", None, f"cannot read: {exc}"))
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for phrase in phrases:  # one problem per line: the first phrase that matches
                hit = phrase.pattern.search(line)
                if hit:
                    problems.append(
                        PolicyProblem(
                            str(path),
                            "template",
                            number,
                            f"{name}: forbidden wording {hit.group(0)!r}: no threats, and never "
                            "claim to be or act for the police, a court or a lawyer",
                            f"matched {phrase.text!r} ({phrase.source.name}:{phrase.line})",
                        )
                    )
                    break
    return problems


def letter_gaps(text: str, context: Mapping[str, Any], language: str) -> list[str]:
    """What a letter to the borrower lacks of: the balance, how to dispute, a contact."""
    gaps: list[str] = []
    if str(context["balance"]) not in text:
        gaps.append("the balance ({{ balance }})")
    primary = _primary(language)
    dispute, contact = _DISPUTE.get(primary), _CONTACT.get(primary)
    if dispute is not None and not dispute.search(text):
        gaps.append("how to dispute the debt")
    if contact is not None and not contact.search(text):
        gaps.append("how to contact the lender")
    return gaps
