"""A deterministic sample portfolio, relative to "today", for demos, tests and benches.

``generate_portfolio(n, today, seed)`` yields import rows (the columns of
``scheduler.importer.ACCOUNT_COLUMNS``, every value a string) that are the same for the same
arguments on every machine. Dates are relative to ``today`` so the demo always has work for
tomorrow: the first 24 accounts are due in 1 day, in 3 days, today and yesterday (six each),
unpaid and unflagged; the rest are overdue with probability ``overdue_share`` (1 to 100
days, mostly early) and otherwise due within ``ahead_days``. Borrowers are mostly in
Shanghai (+86 mobiles), some in New York / Los Angeles (+1), London (+44) and Sydney (+61);
some rows leave the time zone or country empty so they are derived from the phone. Some are
paid in full or in part, some closed, some flagged, some have emergency contacts or no
email. Every generated number is valid for ``phonenumbers`` (the generator never calls it:
it only picks from number ranges checked once in the tests), so it stays fast at 1M rows.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from scheduler.importer import ACCOUNT_COLUMNS

__all__ = ["REGIONS", "Region", "generate_portfolio", "write_csv"]

#: Accounts at the head of every portfolio, due this many days from today (six of each).
SCENARIO_OFFSETS = (1, 3, 0, -1)
SCENARIO_ROWS = 6 * len(SCENARIO_OFFSETS)

_CN_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗"
_CN_GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "军", "强", "丽", "涛")
_EN_FIRST = ("James", "Mary", "John", "Linda", "David", "Susan", "Emma", "Oliver", "Mia", "Noah")
_EN_LAST = ("Smith", "Jones", "Brown", "Taylor", "Wilson", "Martin", "Clark", "Lewis", "Walker")
_FLAGS = ("dispute", "cease", "complaint", "no_call", "no_sms", "no_email", "legal_hold")


@dataclass(frozen=True, slots=True)
class Region:
    """Where a share of borrowers live. A phone is ``prefix`` + ``digits`` random digits
    (at least ``lowest``); ``phonenumbers`` validates every such number (see
    test_sample.py)."""

    country: str
    zone: str
    currency: str
    language: str
    share: float
    prefixes: tuple[str, ...]
    digits: int
    lowest: int = 0  # smallest suffix (US exchanges cannot start with 0 or 1)
    chinese_names: bool = False
    derive_zone: bool = False  # may leave timezone/country empty: the phone gives one zone


REGIONS: tuple[Region, ...] = (
    Region(
        "CN", "Asia/Shanghai", "CNY", "zh-CN", 0.70,
        ("+86130", "+86135", "+86136", "+86138", "+86139", "+86150", "+86158", "+86186",
         "+86188", "+86189", "+86177", "+86199"),
        8, chinese_names=True, derive_zone=True,
    ),
    Region(
        "US", "America/New_York", "USD", "en-US", 0.10,
        ("+1212", "+1646", "+1917", "+1718", "+1347"), 7, 2_000_000, derive_zone=True,
    ),
    Region(
        "US", "America/Los_Angeles", "USD", "en-US", 0.07,
        ("+1213", "+1310", "+1323", "+1424", "+1818"), 7, 2_000_000, derive_zone=True,
    ),
    Region(
        "GB", "Europe/London", "GBP", "en-GB", 0.07,
        ("+447400", "+447410", "+447420", "+447440", "+447460", "+447480", "+447710",
         "+447720", "+447800", "+447840", "+447860", "+447950"),
        6,
    ),
    Region(
        "AU", "Australia/Sydney", "AUD", "en-AU", 0.06,
        ("+6140", "+6141", "+6142", "+6143", "+6146"), 7,
    ),
)  # fmt: skip
_CUMULATIVE = tuple(sum(r.share for r in REGIONS[: i + 1]) for i in range(len(REGIONS)))


def generate_portfolio(
    n: int, today: date, seed: int, *, overdue_share: float = 0.1, ahead_days: int = 10
) -> Iterator[dict[str, str]]:
    """Yield ``n`` account rows, identical for identical arguments. ``overdue_share`` is the
    fraction of accounts past due (after the fixed head rows); the others are due between
    today and ``today + ahead_days``. Raises ``ValueError`` for a share outside [0, 1]."""
    if not 0.0 <= overdue_share <= 1.0:
        raise ValueError(f"overdue_share must be within [0, 1], got {overdue_share}")
    rng = random.Random(seed)
    for i in range(n):
        yield _row(rng, i, today, overdue_share, ahead_days)


def _row(
    rng: random.Random, i: int, today: date, overdue_share: float, ahead: int
) -> dict[str, str]:
    region = _region(rng.random())
    scenario = i < SCENARIO_ROWS
    due = today + timedelta(days=_due_offset(rng, i, overdue_share, ahead))
    amount_cents = rng.randrange(20_000, 2_000_000)
    derive = region.derive_zone and rng.random() < 0.12
    return {
        "account_id": f"A{i + 1:07d}",
        "name": _name(rng, region),
        "phone": _phone(rng, region),
        "email": "" if rng.random() < 0.12 else f"borrower{i + 1}@example.com",
        "timezone": "" if derive else region.zone,
        "country": "" if derive and rng.random() < 0.5 else region.country,
        "language": region.language,
        "product": "card" if rng.random() < 0.6 else "loan",
        "due_date": due.isoformat(),
        "amount_due": _money(amount_cents),
        "amount_paid": "0" if scenario else _paid(rng, amount_cents),
        "currency": region.currency,
        "status": "closed" if not scenario and rng.random() < 0.03 else "active",
        "flags": "" if scenario else _flags(rng),
        "emergency_contacts": _emergency(rng, region, overdue=due < today),
    }


def _region(draw: float) -> Region:
    for region, upper in zip(REGIONS, _CUMULATIVE, strict=True):
        if draw < upper:
            return region
    return REGIONS[0]


def _due_offset(rng: random.Random, i: int, overdue_share: float, ahead: int) -> int:
    if i < SCENARIO_ROWS:
        return SCENARIO_OFFSETS[i % len(SCENARIO_OFFSETS)]
    if rng.random() < overdue_share:
        return -(1 + int(100 * rng.random() ** 2))  # DPD 1..100, mostly early
    return rng.randint(0, ahead)


def _phone(rng: random.Random, region: Region) -> str:
    prefix = region.prefixes[rng.randrange(len(region.prefixes))]
    return f"{prefix}{rng.randrange(region.lowest, 10**region.digits):0{region.digits}d}"


def _name(rng: random.Random, region: Region) -> str:
    if region.chinese_names:
        return rng.choice(_CN_SURNAMES) + rng.choice(_CN_GIVEN) + rng.choice(("", *_CN_GIVEN))
    return f"{rng.choice(_EN_FIRST)} {rng.choice(_EN_LAST)}"


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _paid(rng: random.Random, due_cents: int) -> str:
    draw = rng.random()
    if draw < 0.06:
        return _money(due_cents)
    if draw < 0.20:
        return _money(rng.randrange(1, due_cents))
    return "0"


def _flags(rng: random.Random) -> str:
    if rng.random() >= 0.06:
        return ""
    first = rng.choice(_FLAGS)
    if rng.random() < 0.2:
        return ";".join(sorted({first, rng.choice(_FLAGS)}))
    return first


def _emergency(rng: random.Random, region: Region, *, overdue: bool) -> str:
    if rng.random() >= (0.5 if overdue else 0.2):
        return ""
    count = 1 if rng.random() < 0.7 else 2
    return ";".join(_phone(rng, region) for _ in range(count))


def write_csv(rows: Iterable[Mapping[str, str]], path: Path) -> int:
    """Write ``rows`` as an import CSV (header ``ACCOUNT_COLUMNS``, UTF-8) to ``path``,
    creating its folder; return the number of rows. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ACCOUNT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
