"""``outbox``: appends each rendered message as one JSON Line to a local file.

The default channel in config.toml, so that ``make demo`` and a fresh install send nothing
real. A contact id already in the file is not written again (the file is the provider, and
the contact id its idempotency key), so a resend after a crash leaves one line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from channels.base import Message, Receipt
from scheduler.errors import PermanentChannelError

__all__ = ["OutboxChannel"]


class OutboxChannel:
    def __init__(
        self, path: Path, *, name: str = "outbox", clock: Callable[[], datetime] | None = None
    ) -> None:
        self.name = name
        self.path = path
        self._clock = clock or (lambda: datetime.now(UTC))
        self._seen: set[str] | None = None
        self._lock = threading.Lock()  # the dispatcher sends from several threads

    def _known(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            if self.path.exists():
                with self.path.open(encoding="utf-8") as handle:
                    for line in handle:
                        if line.strip():
                            self._seen.add(json.loads(line)["contact_id"])
        return self._seen

    def send(self, message: Message) -> Receipt:
        with self._lock:
            self._append_once(message)
        return Receipt(message.contact_id, f"outbox:{message.contact_id}", self._clock())

    def _append_once(self, message: Message) -> None:
        known = self._known()
        if message.contact_id not in known:
            record = {
                "contact_id": message.contact_id,
                "account_id": message.account_id,
                "channel": message.kind.value,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
                "window_start": message.window_start.isoformat() if message.window_start else None,
                "written_at": self._clock().isoformat(),
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise PermanentChannelError(f"outbox {self.path}: {exc.strerror}") from exc
            known.add(message.contact_id)
