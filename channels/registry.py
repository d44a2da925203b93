"""Which channel implementations exist: a plain mapping of built-ins plus the
``remind.channels`` entry-point group for third-party ones. No folder scanning, no
singleton manager: ``available()`` is computed when asked, and built-ins win on a clash."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from channels.base import Channel
from channels.call_http import CallHttpChannel
from channels.call_queue import CallQueueChannel
from channels.email_smtp import SmtpEmailChannel
from channels.outbox import OutboxChannel
from channels.recording import RecordingChannel
from channels.sms_http import SmsHttpChannel
from scheduler.errors import ConfigError

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "available", "factory"]

ENTRY_POINT_GROUP = "remind.channels"
Factory = Callable[..., Channel]

BUILTIN: Mapping[str, Factory] = {
    "call_http": CallHttpChannel,
    "call_queue": CallQueueChannel,
    "email_smtp": SmtpEmailChannel,
    "outbox": OutboxChannel,
    "recording": RecordingChannel,
    "sms_http": SmsHttpChannel,
}


def available() -> dict[str, Factory]:
    """Built-in channel factories plus those installed under ``remind.channels``."""
    found: dict[str, Factory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    found.update(BUILTIN)
    return found


def factory(kind: str) -> Factory:
    """The factory registered as ``kind``; ``ConfigError`` naming the known ones if none."""
    known = available()
    if kind not in known:
        raise ConfigError(f"unknown channel type {kind!r}; known: {', '.join(sorted(known))}")
    return known[kind]
