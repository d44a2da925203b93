"""``call_queue``: call tasks stay in remind's own store for the lender's agents.

"Sending" a call task through this channel hands it to the agents' queue: the contact is
recorded ``sent`` with provider reference ``queue:<contact id>``. Agents take tasks with
``remind calls next --agent A`` (the most urgent task whose window is open, held for them
for 15 minutes), list them with ``remind calls export`` and record what happened with
``remind calls outcome CONTACT_ID --result R``. A task nobody called by the end of its
window keeps no outcome, and ``remind status`` and the audit show it as not called.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from channels.base import Message, Receipt

__all__ = ["CallQueueChannel"]


class CallQueueChannel:
    """Accepts every call task; the contact row itself is the queue entry."""

    def __init__(
        self, name: str = "call_queue", *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.name = name
        self._clock = clock or (lambda: datetime.now(UTC))

    def send(self, message: Message) -> Receipt:
        return Receipt(message.contact_id, f"queue:{message.contact_id}", self._clock())
