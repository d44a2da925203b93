"""The shape of a policy file, validated with pydantic (every problem collected, not just the
first). These frozen models are also the policy objects the pure rules read.

A file is::

    [policy]       name, products (empty = every product), extends (another policy's name)
    [quiet_hours]  start, end (borrower-local "HH:MM"), weekends, holiday_channels
    [caps]         contacts_per_day, call_attempts_per_7_days, conversation_cooldown_days,
                   connected_calls_per_day, call_attempts_per_day, min_gap_minutes,
                   third_party_every_days
    [suppressions] promise_grace_days
    [outcomes]     complaint_hold_days, unreachable_days_before_third_party (what recorded
                   call outcomes do to the schedule)
    [handover]     min_dpd
    [[rule]]       one contact rule (see ``Rule``); a rule whose id the extended policy
                   already has changes only the keys it names
"""

from __future__ import annotations

import re
from datetime import time
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from scheduler.models import Channel

__all__ = [
    "Caps",
    "Handover",
    "Outcomes",
    "PolicyFile",
    "PolicyMeta",
    "QuietHours",
    "Rule",
    "Suppressions",
    "Target",
    "Trigger",
]

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _parse_hhmm(value: object) -> object:
    if isinstance(value, str):
        if value == "24:00":
            return time.max
        match = _HHMM.match(value)
        if not match:
            raise ValueError(f'{value!r} is not a time of day; write it as "HH:MM", e.g. "09:30"')
        return time(int(match.group(1)), int(match.group(2)))
    return value


LocalTime = Annotated[time, BeforeValidator(_parse_hhmm)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(StrEnum):
    BORROWER = "borrower"
    EMERGENCY_CONTACTS = "emergency_contacts"


class Trigger(StrEnum):
    """What makes a rule fire: a day past due, or a promise to pay that was broken."""

    DPD = "dpd"
    BROKEN_PROMISE = "broken_promise"


class PolicyMeta(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_./-]+$")
    products: tuple[str, ...] = ()
    extends: str | None = None
    description: str = ""


class QuietHours(_Strict):
    """No contact from ``start`` to ``end`` borrower-local (wrapping midnight when start > end)."""

    start: LocalTime = time(21, 0)
    end: LocalTime = time(8, 0)
    weekends: bool = False
    holiday_channels: tuple[Channel, ...] = (Channel.CALL,)


class Caps(_Strict):
    """Frequency caps per account, counted from stored history plus the plan. 0 = no cap."""

    contacts_per_day: int = Field(default=3, ge=0)
    call_attempts_per_7_days: int = Field(default=7, ge=0)
    conversation_cooldown_days: int = Field(default=7, ge=0)
    connected_calls_per_day: int = Field(default=3, ge=0)
    #: unanswered call attempts to one number (borrower or emergency contact) per local day
    call_attempts_per_day: int = Field(default=0, ge=0)
    min_gap_minutes: int = Field(default=120, ge=0)
    third_party_every_days: int = Field(default=7, ge=0)


class Suppressions(_Strict):
    promise_grace_days: int = Field(default=1, ge=0)


class Outcomes(_Strict):
    """What recorded outcomes do to the schedule (besides ``[suppressions]`` promises and
    ``[caps]`` conversation cool-down).

    ``complaint_hold_days``: a ``complaint`` holds every contact for this many days from
    when it was made. ``unreachable_days_before_third_party``: emergency contacts only once
    the borrower has been unreachable this long (tried at least that long ago, and not
    reached since). ``dispute`` and ``cease_request`` hold until lifted; a cease leaves only
    the rules marked ``legally_required``."""

    complaint_hold_days: int = Field(default=30, ge=0)
    unreachable_days_before_third_party: int = Field(default=7, ge=0)


class Handover(_Strict):
    """Accounts at or past ``min_dpd`` get no automated contact and are listed for hand-over."""

    min_dpd: int = Field(default=91, ge=1)


class Rule(_Strict):
    """One contact rule: on which DPD days, through which channel, in which local window.

    DPD is days past due: -3 is three days before the due date, 0 the due date, 1 the first
    overdue day. Give ``dpd`` for one day, or ``dpd_from``/``dpd_to`` (inclusive) with
    ``every_days`` counted from ``dpd_from``.
    """

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    channel: Channel
    target: Target = Target.BORROWER
    dpd: int | None = None
    dpd_from: int | None = None
    dpd_to: int | None = None
    every_days: int = Field(default=1, ge=1)
    at: LocalTime
    until: LocalTime
    template: str = ""
    priority: int = Field(default=50, ge=0, le=1000)
    first_contact: bool = False
    fallback_for: str | None = None
    unreached_days: int = Field(default=0, ge=0)
    trigger: Trigger = Trigger.DPD
    legally_required: bool = False
    enabled: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.trigger is Trigger.BROKEN_PROMISE:
            return self._check_follow_up()
        if self.dpd is not None and (self.dpd_from is not None or self.dpd_to is not None):
            raise ValueError("give either dpd, or dpd_from and dpd_to, not both")
        if self.dpd is None and (self.dpd_from is None or self.dpd_to is None):
            raise ValueError("give dpd, or both dpd_from and dpd_to")
        if self.dpd_from is not None and self.dpd_to is not None and self.dpd_to < self.dpd_from:
            raise ValueError("dpd_to must not be before dpd_from")
        if self.until <= self.at:
            raise ValueError("until must be later than at (a window cannot wrap midnight)")
        if self.target is Target.EMERGENCY_CONTACTS and self.channel not in (
            Channel.CALL,
            Channel.SMS,
        ):
            raise ValueError("emergency contacts can only be called or sent an SMS")
        if self.legally_required and self.channel is not Channel.LETTER:
            raise ValueError("only letters can be legally_required (they survive a cease)")
        return self

    def _check_follow_up(self) -> Self:
        if self.dpd is not None or self.dpd_from is not None or self.dpd_to is not None:
            raise ValueError(
                'a trigger = "broken_promise" rule fires the first allowed day after the '
                "promise broke: give no dpd, dpd_from or dpd_to"
            )
        if self.until <= self.at:
            raise ValueError("until must be later than at (a window cannot wrap midnight)")
        if self.target is not Target.BORROWER or self.first_contact or self.fallback_for:
            raise ValueError(
                "a broken-promise follow-up goes to the borrower and is neither a first "
                "contact nor a fallback"
            )
        return self

    @property
    def template_name(self) -> str:
        return self.template or self.id

    @property
    def first_dpd(self) -> int:
        return self.dpd if self.dpd is not None else int(self.dpd_from or 0)

    @property
    def last_dpd(self) -> int:
        return self.dpd if self.dpd is not None else int(self.dpd_to or 0)

    def fires_on(self, dpd: int) -> bool:
        """True when this rule asks for a contact on day ``dpd`` (never for a rule with
        another trigger: the planner fires those from the account's history)."""
        if not self.enabled or self.trigger is not Trigger.DPD:
            return False
        if not self.first_dpd <= dpd <= self.last_dpd:
            return False
        return (dpd - self.first_dpd) % self.every_days == 0


class PolicyFile(_Strict):
    """A whole policy after ``extends`` has been applied."""

    policy: PolicyMeta
    quiet_hours: QuietHours = QuietHours()
    caps: Caps = Caps()
    suppressions: Suppressions = Suppressions()
    outcomes: Outcomes = Outcomes()
    handover: Handover = Handover()
    rule: tuple[Rule, ...] = ()
