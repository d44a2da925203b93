"""Find the line of a key path in TOML text, so every policy problem can name its line.

``tomllib`` returns plain data with no positions. Policy files are simple (tables, arrays of
tables, ``key = value`` lines), so a line scan that tracks the current table header is
enough: ``locate(text)["rule[2].at"] == 31``. Multi-line values are located by the line
their key starts on. Inline tables and keys split over several dotted lines are located by
their first line.
"""

from __future__ import annotations

import re

__all__ = ["key_lines"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in dotted.split(".")]


def key_lines(text: str) -> dict[str, int]:
    """Map every key path in ``text`` to its 1-based line.

    Paths look like ``caps.contacts_per_day`` or ``rule[0].at`` (arrays of tables get an
    index); a table header maps its own path too (``caps``, ``rule[0]``).
    """
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    prefix = ""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if depth > 0:  # inside a multi-line array: skip until brackets balance
            depth += line.count("[") - line.count("]")
            continue
        header = _HEADER.match(line)
        if header:
            name = ".".join(_parts(header.group(2)))
            if header.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                prefix = f"{name}[{index}]"
            else:
                prefix = name
            lines.setdefault(prefix, number)
            continue
        key = _KEY.match(line)
        if key:
            path = ".".join(_parts(key.group(1)))
            full = f"{prefix}.{path}" if prefix else path
            lines.setdefault(full, number)
            value = line[key.end() :].split("#", 1)[0]
            depth = max(value.count("[") - value.count("]"), 0)
    return lines
