"""The one small protocol every channel adapter implements.

``Channel.send(message) -> Receipt`` promises: the provider accepted ``message`` for
delivery (or, for call channels, the call task was queued). It raises
``TransientChannelError`` when a later attempt may succeed (rate limit, 5xx, timeout;
``retry_after`` in seconds when the provider said so) and ``PermanentChannelError`` when
no attempt ever will (invalid number, opted out at the provider). It never returns a
boolean and never sleeps to throttle: rates and retries belong to the dispatcher.

``message.contact_id`` is stable across retries and restarts; adapters pass it to the
provider as its idempotency key so a resend after a crash is recognised as the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from scheduler.models import Channel as ChannelKind

__all__ = ["Channel", "Message", "Receipt"]


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered contact, ready for a provider. ``to`` is a phone number, an email
    address or (letters, call queues) the account id."""

    contact_id: str
    account_id: str
    kind: ChannelKind
    to: str
    body: str
    subject: str = ""
    html: str = ""
    window_start: datetime | None = None
    window_end: datetime | None = None
    priority: int = 0
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The provider's acknowledgement: its own id for the message, and what it said."""

    contact_id: str
    provider_id: str
    accepted_at: datetime
    detail: str = ""


@runtime_checkable
class Channel(Protocol):
    """A way to reach borrowers. ``name`` is the key in config.toml and in the registry."""

    name: str

    def send(self, message: Message) -> Receipt:
        """Hand ``message`` to the provider; see the module docstring for the contract."""
        ...
