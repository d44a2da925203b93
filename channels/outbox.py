"""``outbox``: appends each rendered message as one JSON Line to a local file.

The default channel in config.toml, so that ``make demo`` and a fresh install send nothing
real. A contact id already in the file is not written again (the file is the provider, and
the contact id its idempotency key), so a resend after a crash leaves one line. Several
processes may share one outbox file (``[daemon] dispatch_processes``): each append holds an
exclusive ``flock`` on the file and first reads what the others appended since.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

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
        self._seen: set[str] = set()
        self._read_to = 0  # the file's bytes already read into _seen
        self._lock = threading.Lock()  # the dispatcher sends from several threads

    def send(self, message: Message) -> Receipt:
        with self._lock:
            self._append_once(message)
        return Receipt(message.contact_id, f"outbox:{message.contact_id}", self._clock())

    def _catch_up(self, handle: BinaryIO) -> None:
        """Read the lines appended since the last look (by us or another process)."""
        handle.seek(self._read_to)
        for line in handle.read().splitlines():
            if line.strip():
                self._seen.add(json.loads(line)["contact_id"])
        self._read_to = handle.tell()

    def _append_once(self, message: Message) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
                self._catch_up(handle)
                if message.contact_id in self._seen:
                    return
                line = json.dumps(self._record(message), ensure_ascii=False) + "\n"
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                self._read_to = handle.tell()
        except OSError as exc:
            raise PermanentChannelError(f"outbox {self.path}: {exc.strerror}") from exc
        self._seen.add(message.contact_id)

    def _record(self, message: Message) -> dict[str, object]:
        return {
            "contact_id": message.contact_id,
            "account_id": message.account_id,
            "channel": message.kind.value,
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "window_start": message.window_start.isoformat() if message.window_start else None,
            "written_at": self._clock().isoformat(),
        }
