"""Logs never carry a full phone number, email address or name."""

from __future__ import annotations

import io
import json
import logging

import structlog

from scheduler.logs import configure_logging, mask_pii


def test_addresses_and_names_are_masked_wherever_they_appear() -> None:
    event = mask_pii(None, "info", {
        "event": "contact.settled",
        "to": "+8613812345678",
        "name": "王伟",
        "error": "gateway said: number +86 138 1234 5678 invalid; cc wang.wei@example.cn",
        "contact_id": "c0123456789abcdef",
        "account_id": "ACC-000123",
    })  # fmt: skip
    assert event["to"] == "+86…5678"
    assert event["name"] == "王…"
    assert "13812345678" not in event["error"].replace(" ", "")
    assert "wang.wei@" not in event["error"] and "w…@example.cn" in event["error"]
    assert event["contact_id"] == "c0123456789abcdef" and event["account_id"] == "ACC-000123"


def test_configured_logging_writes_masked_json_lines() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(level="info", stream=out)
    try:
        structlog.get_logger("t").info("contact.settled", to="+14155550123", outcome="sent")
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "contact.settled" and lines[0]["level"] == "info"
    assert lines[0]["to"] == "+14…0123" and lines[0]["timestamp"].endswith("Z")
