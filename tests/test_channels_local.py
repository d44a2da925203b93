"""The local channels: the outbox file (the default, sends nothing real) and the recording
channel shipped for dry-runs and tests; and the explicit channel registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels.base import Channel, Message
from channels.outbox import OutboxChannel
from channels.recording import RecordingChannel
from channels.registry import BUILTIN, factory
from scheduler.errors import ConfigError, TransientChannelError
from scheduler.models import Channel as Kind

AT = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def message(contact_id: str = "c1") -> Message:
    return Message(contact_id, "A1", Kind.SMS, "+8613812345678", "您的还款日为11月24日")


def test_the_outbox_appends_one_json_line_per_contact_even_when_resent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = OutboxChannel(path, clock=lambda: AT)
    first.send(message("c1"))
    first.send(message("c2"))
    # a restarted daemon resends c1: still one line for it
    OutboxChannel(path, clock=lambda: AT).send(message("c1"))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["contact_id"] for line in lines] == ["c1", "c2"]
    assert lines[0]["body"] == "您的还款日为11月24日" and lines[0]["channel"] == "sms"


def test_the_recording_channel_records_and_replays_scripted_failures() -> None:
    channel = RecordingChannel(failures={"c1": [TransientChannelError("429", retry_after=3)]})
    assert isinstance(channel, Channel)
    with pytest.raises(TransientChannelError) as raised:
        channel.send(message("c1"))
    assert raised.value.retry_after == 3
    receipt = channel.send(message("c1"))
    assert receipt.contact_id == "c1" and [m.contact_id for m in channel.sent] == ["c1"]
    assert channel.attempts == ["c1", "c1"]


def test_the_registry_is_an_explicit_mapping_and_names_what_it_knows() -> None:
    assert factory("outbox") is BUILTIN["outbox"]
    with pytest.raises(ConfigError, match=r"unknown channel type 'pigeon'; known: .*outbox"):
        factory("pigeon")
