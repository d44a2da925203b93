"""Small builders shared by the policy and planner tests (no database, no clock)."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from policies import PolicySet, load_policies
from scheduler.models import Account

SHIPPED = Path(__file__).resolve().parent.parent / "policies"
_DEFAULT_POLICIES: PolicySet | None = None


def shipped_policies() -> PolicySet:
    """The shipped policy directory, loaded once per test session."""
    global _DEFAULT_POLICIES
    if _DEFAULT_POLICIES is None:
        _DEFAULT_POLICIES = load_policies(SHIPPED)
    return _DEFAULT_POLICIES


def copy_policies(target: Path) -> Path:
    """A writable copy of the shipped policy files (no Python modules) in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for path in SHIPPED.glob("*.toml"):
        shutil.copy(path, target / path.name)
    return target


def account(account_id: str = "A1", **fields: Any) -> Account:
    values: dict[str, Any] = {
        "due_date": date(2026, 11, 23),
        "amount_due": Decimal("1000.00"),
        "timezones": ("Asia/Shanghai",),
        "country": "CN",
        "phone": "+8613812345678",
        "email": "li.lei@example.cn",
        "currency": "CNY",
    }
    values.update(fields)
    return Account(account_id, **values)


def local(day: date, hh_mm: str, zone: str) -> datetime:
    """An aware datetime for wall-clock ``hh_mm`` on ``day`` in ``zone``."""
    hour, minute = (int(x) for x in hh_mm.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(zone))


def evening_before(day: date) -> datetime:
    """A ``now`` before ``day`` has begun in any zone (12:00 UTC, a day and a half before)."""
    return datetime.combine(day, time(0, 0), tzinfo=UTC) - timedelta(days=1, hours=12)
