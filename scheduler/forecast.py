"""How many contacts the coming days will bring: per borrower-local day, channel and rule, and
call tasks per borrower-local starting hour (agent staffing).

``forecast`` is pure: it plans every day of the horizon in one ``plan`` call, which plans
each account's days in order with one cap ledger, so the contacts planned for earlier days
count toward the caps of later days exactly as history would. It assumes nobody pays and
nobody answers: accounts stay as they are now, fallbacks (sent only when the first contact
did not reach the borrower) are counted, and no call resets a conversation cool-down.

``plot_forecast`` draws it with matplotlib (the optional ``plot`` extra).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from policies.loader import PolicySet
from scheduler.models import Account, AccountHistory, Channel, Horizon, Plan
from scheduler.planner import plan

__all__ = ["CSV_KEYS", "Forecast", "forecast", "forecast_from_plan", "plot_forecast"]

#: Columns of ``remind forecast --format csv`` (and keys of ``--format json``).
CSV_KEYS = ("day", "channel", "rule", "local_hour", "contacts")
CHANNEL_ORDER = (Channel.SMS.value, Channel.EMAIL.value, Channel.CALL.value, Channel.LETTER.value)
_COLOURS = {"sms": "#4C72B0", "email": "#DD8452", "call": "#55A868", "letter": "#8172B3"}


@dataclass(frozen=True, slots=True)
class Forecast:
    """Planned contacts of ``days`` borrower-local days from ``first_day``, counted per
    ``(day, channel, rule, local starting hour)``; ``handover`` accounts reach the hand-over
    line within the horizon, ``sla_risks`` first-24h contacts are at risk."""

    first_day: date
    days: int
    counts: Mapping[tuple[date, str, str, int], int]
    sla_risks: int = 0
    handover: int = 0

    @property
    def day_list(self) -> tuple[date, ...]:
        return tuple(self.first_day + timedelta(days=k) for k in range(self.days))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def per_day_channel(self) -> dict[date, Counter[str]]:
        found: dict[date, Counter[str]] = {day: Counter() for day in self.day_list}
        for (day, channel, _rule, _hour), n in self.counts.items():
            found.setdefault(day, Counter())[channel] += n
        return found

    def per_rule(self) -> Counter[tuple[str, str]]:
        """Contacts over the whole horizon per ``(channel, rule)``."""
        found: Counter[tuple[str, str]] = Counter()
        for (_day, channel, rule, _hour), n in self.counts.items():
            found[(channel, rule)] += n
        return found

    def per_day_rule(self) -> dict[date, Counter[tuple[str, str]]]:
        found: dict[date, Counter[tuple[str, str]]] = {day: Counter() for day in self.day_list}
        for (day, channel, rule, _hour), n in self.counts.items():
            found.setdefault(day, Counter())[(channel, rule)] += n
        return found

    def calls_per_hour(self) -> dict[date, Counter[int]]:
        """Call tasks per borrower-local starting hour, per day."""
        found: dict[date, Counter[int]] = {day: Counter() for day in self.day_list}
        for (day, channel, _rule, hour), n in self.counts.items():
            if channel == Channel.CALL.value:
                found.setdefault(day, Counter())[hour] += n
        return found

    def channels(self) -> tuple[str, ...]:
        """The channels with at least one contact, in a fixed order."""
        used = {channel for (_d, channel, _r, _h) in self.counts}
        return tuple(c for c in CHANNEL_ORDER if c in used)

    def rows(self) -> Iterator[dict[str, object]]:
        """One dict per ``(day, channel, rule, local_hour)`` with ``CSV_KEYS``, sorted."""
        for (day, channel, rule, hour), n in sorted(self.counts.items()):
            yield {
                "day": day.isoformat(),
                "channel": channel,
                "rule": rule,
                "local_hour": hour,
                "contacts": n,
            }


def forecast(
    now: datetime,
    accounts: Iterable[Account],
    history: Mapping[str, AccountHistory],
    policies: PolicySet,
    first_day: date,
    days: int,
) -> Forecast:
    """Plan ``days`` borrower-local days from ``first_day`` and count the contacts (see the
    module docstring for what is assumed)."""
    if days < 1:
        raise ValueError("a forecast needs at least one day")
    horizon = Horizon(first_day, days)
    return forecast_from_plan(plan(now, accounts, history, policies, horizon), horizon)


def forecast_from_plan(result: Plan, horizon: Horizon) -> Forecast:
    """Count a multi-day plan's contacts per day, channel, rule and local starting hour."""
    counts: Counter[tuple[date, str, str, int]] = Counter(
        (c.window_start.date(), c.channel.value, c.rule, c.window_start.hour)
        for c in result.planned
        if c.window_start.date() in horizon
    )
    return Forecast(
        first_day=horizon.first_day,
        days=horizon.days,
        counts=dict(counts),
        sla_risks=sum(1 for c in result.planned if c.sla_risk),
        handover=len(result.handover),
    )


def plot_forecast(fc: Forecast, path: Path, *, title: str = "") -> None:
    """Write a PNG: contacts per day stacked by channel (with totals), and call tasks per
    borrower-local starting hour and day. Needs matplotlib (``pip install 'remind[plot]'``);
    raises ``ImportError`` without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = fc.day_list
    labels = [f"{d:%a}\n{d:%m-%d}" for d in days]
    per_day = fc.per_day_channel()
    channels = fc.channels() or (Channel.SMS.value,)
    hours_by_day = fc.calls_per_hour()
    used = sorted({h for c in hours_by_day.values() for h in c}) or [9]
    hours = list(range(used[0], used[-1] + 1))

    width = max(8.0, 0.7 * len(days) + 3)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(width, 9), gridspec_kw={"height_ratios": [3, 2]}, layout="constrained"
    )
    x = list(range(len(days)))
    base = [0] * len(days)
    for channel in channels:
        values = [per_day[d][channel] for d in days]
        top.bar(x, values, bottom=base, label=channel, color=_COLOURS.get(channel), width=0.7)
        base = [b + v for b, v in zip(base, values, strict=True)]
    for i, total in enumerate(base):
        top.annotate(
            str(total),
            (i, total),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    top.set_xticks(x, labels)
    top.set_ylabel("contacts planned")
    top.set_xlabel("borrower-local day")
    top.set_title("Contacts per day and channel (assuming no payments and no answers)")
    top.legend(title="channel", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.set_ylim(0, max([*base, 1]) * 1.15)
    top.grid(axis="y", alpha=0.3)

    grid = [[hours_by_day[d][h] for d in days] for h in hours]
    image = bottom.imshow(grid, aspect="auto", cmap="Greens", origin="lower")
    peak = max((v for row in grid for v in row), default=0)
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            if value:
                colour = "white" if value > peak * 0.6 else "black"
                bottom.text(c, r, str(value), ha="center", va="center", fontsize=8, color=colour)
    bottom.set_xticks(x, labels)
    bottom.set_yticks(range(len(hours)), [f"{h:02d}:00" for h in hours])
    bottom.set_xlabel("borrower-local day")
    bottom.set_ylabel("local starting hour")
    bottom.set_title("Call tasks per starting hour (agent staffing)")
    fig.colorbar(image, ax=bottom, label="call tasks")
    fig.suptitle(title or f"remind forecast: {fc.first_day} to {days[-1]}", fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)
