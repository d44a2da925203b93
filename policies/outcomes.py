"""What a recorded outcome does to an account, decided by the policy: pure, no store, no clock.

``check_outcome`` lists what is wrong with a report (a promise without its amount, a third
party who is not one of the account's emergency contacts...); ``outcome_effects`` says what
the store must change, from the policy in force:

=========================  ===========================================================
result                     effect
=========================  ===========================================================
``promise``                a pending promise (held until its date + ``promise_grace_days``)
``conversation`` ...       a call that reached the borrower: ``conversation_cooldown_days``
``wrong_number``           the borrower's phone is invalid until another one is imported
                           (an emergency contact's number: that contact is removed)
``dispute``                the ``dispute`` flag, until lifted: no contact
``cease_request``          the ``cease`` flag, until lifted: only ``legally_required`` rules
``complaint``              the ``complaint`` flag for ``complaint_hold_days``: no contact
``third_party_objected``   that emergency contact is removed for good
=========================  ===========================================================

The cool-down needs no effect: the call itself, recorded with its outcome, is what the
caps count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from policies.schema import PolicyFile
from scheduler.models import Account, Channel, Flag, Outcome, OutcomeRecord, Promise

__all__ = [
    "AGENT_RESULTS",
    "FlagChange",
    "OutcomeEffects",
    "check_outcome",
    "outcome_effects",
    "prepare_outcome",
]

#: Results an agent, a dialer or a call centre may report (not the dispatcher's own).
AGENT_RESULTS: tuple[Outcome, ...] = tuple(
    o for o in Outcome if o not in (Outcome.SENT, Outcome.FAILED)
)
_THIRD_PARTY = frozenset({Outcome.THIRD_PARTY_REACHED, Outcome.THIRD_PARTY_OBJECTED})
#: Results possible when the person called was an emergency contact.
_THIRD_PARTY_OK = _THIRD_PARTY | {
    Outcome.NO_ANSWER,
    Outcome.BUSY,
    Outcome.VOICEMAIL,
    Outcome.WRONG_NUMBER,
}
_FLAGS = {
    Outcome.DISPUTE: Flag.DISPUTE,
    Outcome.CEASE_REQUEST: Flag.CEASE,
    Outcome.COMPLAINT: Flag.COMPLAINT,
}


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A case-work flag to set from ``since`` until ``until`` (``None``: until lifted)."""

    flag: Flag
    since: datetime
    until: datetime | None


@dataclass(frozen=True, slots=True)
class OutcomeEffects:
    """What the store changes when it records an outcome."""

    promise: Promise | None = None
    flags: tuple[FlagChange, ...] = ()
    phone_invalid: str | None = None
    removed_contact: str | None = None

    def sentences(self) -> list[str]:
        """The effects in words, for the command's answer and the audit."""
        out: list[str] = []
        if self.promise is not None:
            out.append(f"promise to pay {self.promise.amount} by {self.promise.promised_date}")
        for change in self.flags:
            until = f" until {change.until:%Y-%m-%d %H:%M} UTC" if change.until else ""
            out.append(f"flag {change.flag.value}{until}")
        if self.phone_invalid:
            out.append("phone marked invalid until a new number is imported")
        if self.removed_contact:
            out.append("emergency contact removed for good")
        return out


def check_outcome(record: OutcomeRecord, account: Account) -> list[tuple[str, str]]:
    """Every ``(field, reason)`` that makes ``record`` unusable for ``account`` (empty: ok)."""
    problems: list[tuple[str, str]] = []
    result = record.result
    if result not in AGENT_RESULTS:
        problems.append(("result", f"{result.value!r} is not a result agents report"))
    if record.target == "borrower":
        if result in _THIRD_PARTY:
            problems.append(("target", "a third-party result needs the emergency contact's number"))
    elif record.target not in account.emergency_contacts:
        problems.append(("target", "not one of the account's emergency contacts"))
    elif result not in _THIRD_PARTY_OK:
        problems.append(("result", f"{result.value!r} cannot come from an emergency contact"))
    if record.channel is Channel.LETTER:
        problems.append(("channel", "letters have no outcome to record"))
    if result is Outcome.PROMISE:
        problems.extend(_check_promise(record))
    elif record.promise_amount is not None or record.promise_date is not None:
        problems.append(("promise_amount", "a promise amount or date needs --result promise"))
    return problems


def _check_promise(record: OutcomeRecord) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if record.promise_amount is None:
        problems.append(("promise_amount", "required for a promise"))
    elif record.promise_amount <= 0:
        problems.append(("promise_amount", "must be more than 0"))
    if record.promise_date is None:
        problems.append(("promise_date", "required for a promise"))
    elif record.promise_date < record.at.date() - timedelta(days=1):
        problems.append(("promise_date", "is before the day the promise was made"))
    return problems


def outcome_effects(record: OutcomeRecord, account: Account, policy: PolicyFile) -> OutcomeEffects:
    """What recording ``record`` changes, under ``policy`` (see the module docstring).
    ``record`` must have passed ``check_outcome``."""
    result = record.result
    promise = None
    if result is Outcome.PROMISE and record.promise_amount and record.promise_date:
        promise = Promise(
            account.account_id,
            record.promise_amount,
            record.promise_date,
            paid_before=account.amount_paid,
        )
    flags: tuple[FlagChange, ...] = ()
    flag = _FLAGS.get(result)
    if flag is Flag.COMPLAINT:
        days = policy.outcomes.complaint_hold_days
        if days:
            flags = (FlagChange(flag, record.at, record.at + timedelta(days=days)),)
    elif flag is not None:
        flags = (FlagChange(flag, record.at, None),)
    invalid = removed = None
    if result is Outcome.WRONG_NUMBER and record.target == "borrower":
        invalid = record.number or account.phone
    if record.target != "borrower" and result in (
        Outcome.THIRD_PARTY_OBJECTED,
        Outcome.WRONG_NUMBER,
    ):
        removed = record.target
    return OutcomeEffects(promise, flags, invalid, removed)


def prepare_outcome(
    record: OutcomeRecord, account: Account, policy: PolicyFile
) -> tuple[OutcomeRecord, OutcomeEffects] | list[tuple[str, str]]:
    """``record`` completed from ``account`` (the number it is about) with its effects
    under ``policy``, or every ``(field, reason)`` that makes it unusable."""
    problems = check_outcome(record, account)
    if problems:
        return problems
    if record.number is None:
        number = account.phone if record.target == "borrower" else record.target
        record = replace(record, number=number)
    return record, outcome_effects(record, account, policy)
