"""``sms_http``: one SMS per HTTP POST to a provider's JSON API.

By default it POSTs ``{"to": ..., "text": ..., "reference": <contact id>}`` with
``Idempotency-Key: <contact id>``; ``body`` reshapes the request for other gateways and
``id_field`` says where the reply keeps the provider's message id. Texts longer than
``max_chars`` (default 670: ten concatenated segments of 67 UCS-2 characters, so Chinese
text fits; about 1,530 GSM-7 characters) are refused as permanent, never truncated.
``channels.http_common`` documents the options shared with ``call_http``, the status
mapping and the body placeholders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from channels.http_common import HttpChannel

__all__ = ["SmsHttpChannel"]


class SmsHttpChannel(HttpChannel):
    """``SmsHttpChannel(url=..., token_env="REMIND_SMS_TOKEN")``; options as ``HttpChannel``."""

    DEFAULT_NAME: ClassVar[str] = "sms_http"
    DEFAULT_BODY: ClassVar[Mapping[str, Any]] = {
        "to": "{to}",
        "text": "{text}",
        "reference": "{contact_id}",
    }
    DEFAULT_MAX_CHARS: ClassVar[int | None] = 670
