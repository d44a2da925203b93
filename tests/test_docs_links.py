"""The README's and docs/' links to other files of the repository lead somewhere: the file
exists and, when the link names a heading (``file.md#anchor``), the heading does too, by
GitHub's rule for heading anchors. A reader following a link gets the section it names."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache  # a file is read once, however many links name it
def anchors(path: Path) -> frozenset[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            base = anchor(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def local_links(path: Path) -> list[tuple[str, Path, str | None]]:
    links = []
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        links.append((target, resolved, fragment or None))
    return links


def test_anchor_follows_githubs_rule() -> None:
    assert anchor("Plans in shards (`[planner] workers`)") == "plans-in-shards-planner-workers"
    assert anchor("Where it stands (2026-12-01, code `2716148`)") == (
        "where-it-stands-2026-12-01-code-2716148"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_local_link_leads_to_a_file_and_heading(doc: Path) -> None:
    broken = []
    for target, resolved, fragment in local_links(doc):
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{fragment}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)
