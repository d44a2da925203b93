"""A channel that records what it is given and sends nothing: for dry-runs and tests.

It is a real ``Channel``: the dispatcher cannot tell it from a provider. Failures can be
scripted per contact id, so tests can exercise retries and give-ups without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from channels.base import Message, Receipt
from scheduler.errors import ChannelError

__all__ = ["RecordingChannel"]


class RecordingChannel:
    """Keeps every accepted message in ``sent`` (in order); ``failures`` maps a contact id
    to the errors its next attempts raise, one per attempt."""

    def __init__(
        self,
        name: str = "recording",
        *,
        failures: Mapping[str, list[ChannelError]] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = name
        self.sent: list[Message] = []
        self.attempts: list[str] = []
        self._failures = {k: list(v) for k, v in (failures or {}).items()}
        self._clock = clock or (lambda: datetime.now(UTC))

    def send(self, message: Message) -> Receipt:
        self.attempts.append(message.contact_id)
        pending = self._failures.get(message.contact_id)
        if pending:
            raise pending.pop(0)
        self.sent.append(message)
        return Receipt(message.contact_id, f"rec-{len(self.sent)}", self._clock())
