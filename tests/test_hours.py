"""Allowed hours: quiet hours in every borrower zone, DST days, holidays and make-up days."""

from __future__ import annotations

from datetime import date, time, timedelta

import pytest

from policies.hours import AllowedHours, HolidayCalendar, HolidayOverrides, local_day_span
from scheduler.models import Channel
from tests.factories import local


def hours(
    weekends: bool = False, overrides: dict[str, HolidayOverrides] | None = None
) -> AllowedHours:
    return AllowedHours(
        quiet_start=time(21),
        quiet_end=time(8),
        weekends=weekends,
        holiday_channels=(Channel.CALL,),
        calendar=HolidayCalendar(overrides),
    )


@pytest.mark.parametrize(
    ("day", "zone", "length_hours"),
    [
        (date(2026, 11, 24), "Asia/Shanghai", 24),
        (date(2026, 3, 8), "America/New_York", 23),  # spring forward
        (date(2026, 11, 1), "America/New_York", 25),  # fall back
        (date(2026, 3, 29), "Europe/London", 23),
        (date(2026, 10, 4), "Australia/Sydney", 23),
    ],
)
def test_allowed_hours_are_08_to_21_local_on_dst_days_too(
    day: date, zone: str, length_hours: int
) -> None:
    start, end = local_day_span(day, zone)
    assert end - start == timedelta(hours=length_hours)
    spans = hours().spans(day, (zone,), "", Channel.SMS)
    assert spans == ((local(day, "08:00", zone), local(day, "21:00", zone)),)
    assert spans[0][1] - spans[0][0] == timedelta(hours=13)  # never shortened by the DST jump


def test_several_zones_allow_only_what_every_zone_allows() -> None:
    day = date(2026, 11, 24)
    spans = hours().spans(day, ("America/New_York", "America/Los_Angeles"), "US", Channel.SMS)
    # 08:00 in Los Angeles is 11:00 in New York; 21:00 in New York ends it
    assert spans == (
        (local(day, "11:00", "America/New_York"), local(day, "21:00", "America/New_York")),
    )


def test_a_zone_a_day_apart_still_intersects_correctly() -> None:
    day = date(2026, 11, 24)
    spans = hours().spans(day, ("Europe/Moscow", "Asia/Kamchatka"), "RU", Channel.SMS)
    # Kamchatka is UTC+12, Moscow UTC+3: 08:00 Kamchatka = 23:00 Moscow the day before,
    # 21:00 Kamchatka = 12:00 Moscow: allowed 08:00-12:00 Moscow time
    assert spans == ((local(day, "08:00", "Europe/Moscow"), local(day, "12:00", "Europe/Moscow")),)


@pytest.mark.parametrize(
    ("day", "channel", "allowed"),
    [
        (date(2026, 10, 1), Channel.CALL, False),  # National Day: no calls
        (date(2026, 10, 1), Channel.SMS, True),  # messages are not held on holidays
        (date(2026, 10, 13), Channel.CALL, True),
    ],
)
def test_no_calls_on_public_holidays(day: date, channel: Channel, allowed: bool) -> None:
    spans = hours().spans(day, ("Asia/Shanghai",), "CN", channel)
    assert bool(spans) is allowed


def test_weekends_when_the_policy_holds_them_except_cn_make_up_workdays() -> None:
    weekend_policy = hours(weekends=True)
    saturday = date(2026, 11, 28)
    makeup_sunday = date(2026, 9, 20)  # worked in exchange for the National Day holiday
    assert weekend_policy.spans(saturday, ("Asia/Shanghai",), "CN", Channel.SMS) == ()
    assert weekend_policy.spans(makeup_sunday, ("Asia/Shanghai",), "CN", Channel.CALL) != ()
    assert hours().spans(saturday, ("Asia/Shanghai",), "CN", Channel.SMS) != ()


def test_ops_overrides_add_next_years_holidays() -> None:
    day = date(2027, 3, 5)
    closed = hours(overrides={"CN": HolidayOverrides(add=frozenset({day}))})
    assert closed.spans(day, ("Asia/Shanghai",), "CN", Channel.CALL) == ()
    assert "holiday" in closed.blocked_reason(day, "CN", Channel.CALL)
