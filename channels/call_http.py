"""``call_http``: one call task per HTTP POST to a dialer's or CRM's JSON API.

By default it POSTs ``{"contact_id", "account_id", "to", "window_start", "window_end"
(ISO 8601, UTC), "script" (the rendered text), "priority"}`` with
``Idempotency-Key: <contact id>``; a 2xx means the task was queued, not that the call was
made. ``channels.http_common`` documents the options shared with ``sms_http``, the status
mapping and the body placeholders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from channels.http_common import HttpChannel

__all__ = ["CallHttpChannel"]


class CallHttpChannel(HttpChannel):
    """``CallHttpChannel(url=..., token_env="REMIND_DIALER_TOKEN")``; options as
    ``HttpChannel`` (no ``max_chars`` limit unless given)."""

    DEFAULT_NAME: ClassVar[str] = "call_http"
    DEFAULT_BODY: ClassVar[Mapping[str, Any]] = {
        "contact_id": "{contact_id}",
        "account_id": "{account_id}",
        "to": "{to}",
        "window_start": "{window_start}",
        "window_end": "{window_end}",
        "script": "{text}",
        "priority": "{priority}",
    }
