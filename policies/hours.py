"""When contact is allowed: quiet hours, weekends and public holidays, in borrower-local time.

Everything here is pure: a borrower-local calendar day in, UTC spans out. Spans are
half-open ``(start, end)`` pairs of aware UTC datetimes, sorted and disjoint. A borrower
with several possible zones is allowed only at instants allowed in every zone, so the
spans of each zone are intersected. DST is handled by converting each local wall-clock
boundary with ``zoneinfo`` (so a 23- or 25-hour day has the right length).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from scheduler.models import Channel

__all__ = [
    "AllowedHours",
    "HolidayCalendar",
    "HolidayOverrides",
    "Span",
    "intersect",
    "local_day_span",
    "to_utc",
]

Span = tuple[datetime, datetime]


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=1 << 16)  # a portfolio has few (day, time, zone) triples; values immutable
def to_utc(day: date, at: time, zone: str) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``zone`` (``time.max`` = next midnight).

    A wall-clock time that does not exist (inside a spring-forward gap) maps to the instant
    the clock reaches it after the jump; an ambiguous one (fall-back) to its first occurrence.
    """
    if at == time.max:
        day, at = day + timedelta(days=1), time(0, 0)
    local = datetime.combine(day, at, tzinfo=_zone(zone))
    return local.astimezone(UTC)


def local_day_span(day: date, zone: str) -> Span:
    """The UTC span of the calendar day ``day`` in ``zone`` (23, 24 or 25 hours long)."""
    return to_utc(day, time(0, 0), zone), to_utc(day + timedelta(days=1), time(0, 0), zone)


def intersect(a: Iterable[Span], b: Iterable[Span]) -> tuple[Span, ...]:
    """The instants in both span lists (each sorted and disjoint)."""
    out: list[Span] = []
    left, right = list(a), list(b)
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            out.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


@dataclass(frozen=True, slots=True)
class HolidayOverrides:
    """Ops' corrections for one country: extra holidays, removed ones, make-up workdays."""

    add: frozenset[date] = frozenset()
    remove: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()


class HolidayCalendar:
    """Public holidays per country from the ``holidays`` package, corrected by overrides.

    For CN the package's ``weekend_workdays`` (make-up working days, 调休) count as working
    days; the package only knows years already announced, so ops add next year's schedule
    to ``holidays.toml`` in the policy directory. A country the package does not know has
    no holidays but those in the overrides. Results are memoised per country and year.
    """

    def __init__(self, overrides: Mapping[str, HolidayOverrides] | None = None) -> None:
        self._overrides = {k.upper(): v for k, v in (overrides or {}).items()}
        self._years: dict[tuple[str, int], tuple[dict[date, str], frozenset[date]]] = {}

    def _year(self, country: str, year: int) -> tuple[dict[date, str], frozenset[date]]:
        """The holidays (date -> name) and make-up workdays of one country and year."""
        key = (country, year)
        if key not in self._years:
            names: dict[date, str] = {}
            workdays: set[date] = set()
            if country:
                try:
                    table = holidays_lib.country_holidays(country, years=year)
                except NotImplementedError:
                    table = None
                if table is not None:
                    names = {d: str(name) for d, name in table.items() if d.year == year}
                    workdays = {d for d in getattr(table, "weekend_workdays", ()) if d.year == year}
            extra = self._overrides.get(country, HolidayOverrides())
            for day in extra.add:
                if day.year == year:
                    names.setdefault(day, "holiday (policy override)")
            for day in extra.remove | extra.workdays:
                names.pop(day, None)
            workdays = (workdays | {d for d in extra.workdays if d.year == year}) - names.keys()
            self._years[key] = (names, frozenset(workdays))
        return self._years[key]

    def is_holiday(self, country: str, day: date) -> bool:
        return day in self._year(country.upper(), day.year)[0]

    def is_makeup_workday(self, country: str, day: date) -> bool:
        return day in self._year(country.upper(), day.year)[1]

    def holiday_name(self, country: str, day: date) -> str:
        """The holiday's name ("" when ``day`` is no holiday in ``country``)."""
        return self._year(country.upper(), day.year)[0].get(day, "")


class AllowedHours:
    """Allowed contact spans for one policy's quiet hours, weekends and holidays.

    ``spans(day, zones, country, channel)`` returns the UTC spans inside the borrower-local
    calendar day ``day`` (read in the first zone) when ``channel`` may be used in every one
    of ``zones``. Memoised: a portfolio has few distinct (day, zones, country) keys.
    """

    def __init__(
        self,
        *,
        quiet_start: time,
        quiet_end: time,
        weekends: bool,
        holiday_channels: Iterable[Channel],
        calendar: HolidayCalendar,
    ) -> None:
        self._local = _allowed_local_spans(quiet_start, quiet_end)
        self._weekends = weekends
        self._holiday_channels = frozenset(holiday_channels)
        self.calendar = calendar
        self._cache: dict[tuple[date, tuple[str, ...], str, bool], tuple[Span, ...]] = {}

    def spans(
        self, day: date, zones: tuple[str, ...], country: str, channel: Channel
    ) -> tuple[Span, ...]:
        holiday_sensitive = channel in self._holiday_channels
        key = (day, zones, country, holiday_sensitive)
        if key not in self._cache:
            result: tuple[Span, ...] = (local_day_span(day, zones[0]),)
            for zone in zones:
                result = intersect(result, self._zone_spans(day, zone, country, holiday_sensitive))
            self._cache[key] = result
        return self._cache[key]

    def blocked_reason(self, day: date, country: str, channel: Channel) -> str:
        """A sentence saying why ``day`` is closed for ``channel``, or "" if it is not."""
        if channel in self._holiday_channels and self.calendar.is_holiday(country, day):
            name = self.calendar.holiday_name(country, day)
            return f"{day} is a public holiday in {country}: {name}"
        if self._is_closed_weekend(day, country):
            return f"{day} is a weekend day and the policy holds contact on weekends"
        return ""

    def _is_closed_weekend(self, day: date, country: str) -> bool:
        return (
            self._weekends
            and day.weekday() >= 5
            and not self.calendar.is_makeup_workday(country, day)
        )

    def _zone_spans(
        self, day: date, zone: str, country: str, holiday_sensitive: bool
    ) -> list[Span]:
        spans: list[Span] = []
        for offset in range(-2, 3):  # zones of one borrower can be up to ~26 hours apart
            local_day = day + timedelta(days=offset)
            if self._is_closed_weekend(local_day, country):
                continue
            if holiday_sensitive and self.calendar.is_holiday(country, local_day):
                continue
            for start, end in self._local:
                spans.append((to_utc(local_day, start, zone), to_utc(local_day, end, zone)))
        return _merge(spans)


def _allowed_local_spans(quiet_start: time, quiet_end: time) -> tuple[tuple[time, time], ...]:
    """Wall-clock spans of one day outside quiet hours (``time.max`` stands for 24:00)."""
    if quiet_start == quiet_end:
        return ((time(0, 0), time.max),)
    if quiet_start > quiet_end:  # e.g. 21:00-08:00 wraps midnight: allowed 08:00-21:00
        return ((quiet_end, quiet_start),)
    spans = []
    if quiet_start > time(0, 0):
        spans.append((time(0, 0), quiet_start))
    spans.append((quiet_end, time.max))
    return tuple(spans)


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
