"""What the HTTP provider adapters (``sms_http``, ``call_http``) share: one POST per message,
and the one place where an HTTP outcome becomes a ``Receipt`` or a channel error.

=============================================  ==============================================
the provider answered                          ``HttpChannel.send``
=============================================  ==============================================
2xx                                            ``Receipt`` (``provider_id``: the reply JSON's
                                               ``id_field``, or ``""`` when it has none)
429, 408, 5xx                                  ``TransientChannelError``, ``retry_after`` from
                                               ``Retry-After`` (seconds or an HTTP-date)
no answer (timeout, refused, reset)            ``TransientChannelError``, ``retry_after=None``
any other status (4xx, 3xx)                    ``PermanentChannelError`` with the provider's
                                               text (truncated, phone numbers masked)
=============================================  ==============================================

Every request carries ``Idempotency-Key: <contact id>``: a retry after a lost reply is the
same message to the provider, which must not deliver it twice. An adapter never sleeps,
retries, throttles or logs (the dispatcher does all four); one transport serves the
dispatcher's worker threads at once (``channels.wire.StdlibTransport``: a kept-alive
connection per thread; ``httpx.HTTPTransport`` when a proxy is configured). Secrets come from
``channels.secrets.read_secret``; every bad option is a ``ConfigError`` naming the key.

The request body is a template: a mapping (nested mappings and lists allowed) whose string
values may name fields of the message as ``{placeholder}`` (see ``PLACEHOLDERS``). A value
that is exactly one placeholder keeps its type (``"{priority}"`` stays a number,
``"{window_start}"`` is an ISO 8601 string or null); other strings are formatted; numbers,
booleans and null are sent as written.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import ssl
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar

import httpx

from channels.base import Message, Receipt
from channels.secrets import read_secret
from channels.wire import StdlibTransport
from scheduler.errors import ConfigError, PermanentChannelError, TransientChannelError

__all__ = [
    "PLACEHOLDERS",
    "BodyTemplate",
    "HttpChannel",
    "mask_numbers",
    "retry_after_seconds",
]

#: Message fields a body template may name, and what each holds.
PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "to": "the phone number (E.164)",
        "text": "the rendered message text (SMS text, call script)",
        "subject": "the subject line, if the template has one",
        "contact_id": "remind's contact id (also the Idempotency-Key)",
        "account_id": "the loan account id",
        "kind": "the channel kind: sms, call, ...",
        "priority": "the contact's priority (a number)",
        "window_start": "start of the contact window, ISO 8601 in UTC (null if none)",
        "window_end": "end of the contact window, ISO 8601 in UTC (null if none)",
    }
)
_TRANSIENT_STATUSES = frozenset({408, 429})
_MAX_ERROR_TEXT = 200
_NUMBER = re.compile(r"\+?\d[\d \-]{6,}\d")


def mask_numbers(text: str) -> str:
    """Every phone-number-like run in ``text`` masked to its last four digits (``…5678``)."""
    return _NUMBER.sub(lambda m: "…" + re.sub(r"\D", "", m.group(0))[-4:], text)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``: delay-seconds or an HTTP-date (a
    date in the past is 0). ``None`` when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": the sender's zone is unknown; HTTP means GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


@dataclass(frozen=True, slots=True)
class _Text:
    template: str


class BodyTemplate:
    """A request body with ``{placeholder}`` fields, checked once at construction."""

    def __init__(self, what: str, template: Mapping[str, Any]) -> None:
        if not isinstance(template, Mapping) or not template:
            raise ConfigError(f"{what}: body must be a non-empty table of key = value")
        self._tree = self._compile(what, "body", template)

    @classmethod
    def _compile(cls, what: str, where: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): cls._compile(what, f"{where}.{k}", v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [cls._compile(what, f"{where}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, str):
            return cls._compile_text(what, where, value)
        if value is None or isinstance(value, bool | int | float):
            return value
        raise ConfigError(f"{what}: {where} must be text, a number, a boolean or a table")

    @staticmethod
    def _compile_text(what: str, where: str, text: str) -> _Field | _Text | str:
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            hint = "write {{ and }} for literal braces"
            raise ConfigError(f"{what}: {where} = {text!r}: {exc} ({hint})") from exc
        names = [name for _, name, _, _ in parts if name is not None]
        for name in names:
            if name not in PLACEHOLDERS:
                raise ConfigError(
                    f"{what}: {where} = {text!r}: unknown placeholder {{{name}}}; "
                    f"known: {', '.join(PLACEHOLDERS)}"
                )
        if not names:
            return "".join(literal for literal, _, _, _ in parts)
        if len(parts) == 1 and parts[0][0] == "" and text == f"{{{names[0]}}}":
            return _Field(names[0])
        return _Text(text)

    def render(self, message: Message) -> Any:
        """The body for ``message`` (JSON-ready)."""
        values = _values(message)
        texts = {k: "" if v is None else v for k, v in values.items()}

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if isinstance(node, _Field):
                return values[node.name]
            if isinstance(node, _Text):
                return node.template.format_map(texts)
            return node

        return walk(self._tree)


def _values(message: Message) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment is not None else None

    return {
        "to": message.to,
        "text": message.body,
        "subject": message.subject,
        "contact_id": message.contact_id,
        "account_id": message.account_id,
        "kind": message.kind.value,
        "priority": message.priority,
        "window_start": iso(message.window_start),
        "window_end": iso(message.window_end),
    }


class HttpChannel:
    """A channel that POSTs each message as JSON to one provider URL (see the module
    docstring for what ``send`` returns and raises). Subclasses set ``DEFAULT_NAME``,
    ``DEFAULT_BODY`` and ``DEFAULT_MAX_CHARS`` (``None``: no limit on ``text``).

    ``send`` promises: one POST per call, never more; ``Receipt`` only on a 2xx. It raises
    ``PermanentChannelError`` before sending anything when the message has no ``to`` or its
    text is longer than ``max_chars`` (legal text is never truncated).
    """

    DEFAULT_NAME: ClassVar[str] = "http"
    DEFAULT_BODY: ClassVar[Mapping[str, Any]] = {}
    DEFAULT_MAX_CHARS: ClassVar[int | None] = None

    def __init__(
        self,
        name: str | None = None,
        *,
        url: str,
        token_env: str | None = None,
        token_credential: str | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
        idempotency_header: str = "Idempotency-Key",
        timeout_seconds: float = 10.0,
        max_chars: int | None = None,
        body: Mapping[str, Any] | None = None,
        id_field: str = "id",
        headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        transport: httpx.BaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name or self.DEFAULT_NAME
        what = self.name
        self.url = _url(what, url)
        self.timeout_seconds = _positive(what, "timeout_seconds", timeout_seconds)
        limit = self.DEFAULT_MAX_CHARS if max_chars is None else max_chars
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ConfigError(f"{what}: max_chars must be a whole number >= 1, got {limit!r}")
        self.max_chars = limit
        self._body = BodyTemplate(what, self.DEFAULT_BODY if body is None else body)
        if not isinstance(id_field, str) or not id_field:
            raise ConfigError(f"{what}: id_field must be a non-empty key (dots for nesting)")
        self._id_path = id_field.split(".")
        for key, value in (
            ("auth_header", auth_header),
            ("auth_scheme", auth_scheme),
            ("idempotency_header", idempotency_header),
        ):
            if not isinstance(value, str) or (not value and key != "auth_scheme"):
                raise ConfigError(f"{what}: {key} must be text, got {value!r}")
        self._idempotency_header = idempotency_header
        sent = {"User-Agent": "remind", "Accept": "application/json", **_headers(what, headers)}
        if token_env or token_credential:
            token = read_secret(what, env=token_env, credential=token_credential, environ=environ)
            sent[auth_header] = f"{auth_scheme} {token}" if auth_scheme else token
        self._clock = clock or (lambda: datetime.now(UTC))
        self._headers = sent
        self._timeout = httpx.Timeout(self.timeout_seconds).as_dict()
        # A transport used directly: a provider API needs no cookies, redirects or auth
        # flows, and httpx.Client's handling of them costs a third of a send's CPU. Without
        # a proxy, the standard library's http.client carries the request (channels.wire:
        # a third of httpcore's CPU per send); through a proxy, httpx's own transport.
        verify = _tls(what, ca_file)
        self._transport: httpx.BaseTransport
        if transport is not None:
            self._transport = transport
        elif proxy is None:
            self._transport = StdlibTransport(verify=verify)
        else:
            self._transport = httpx.HTTPTransport(
                verify=verify,
                trust_env=False,  # proxies and CAs come from config, not from the environment
                proxy=_url(what, proxy, "proxy"),
                # The dispatcher bounds concurrency; keep its connections alive between sends.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )

    def _check(self, message: Message) -> None:
        """Refuse, before sending, a message the provider could never deliver as meant."""
        if not message.to:
            raise PermanentChannelError(f"{self.name}: the contact has no number to send to")
        if self.max_chars is not None and len(message.body) > self.max_chars:
            raise PermanentChannelError(
                f"{self.name}: the text is {len(message.body)} characters, over max_chars = "
                f"{self.max_chars}; not sent (legal text is never truncated)"
            )

    def send(self, message: Message) -> Receipt:
        self._check(message)
        payload = self._body.render(message)
        request = httpx.Request(
            "POST",
            self.url,
            headers={**self._headers, self._idempotency_header: message.contact_id},
            json=payload,
            extensions={"timeout": self._timeout},
        )
        try:
            response = self._transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise TransientChannelError(
                f"{self.name}: no reply within {self.timeout_seconds:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.RequestError as exc:
            raise TransientChannelError(
                f"{self.name}: {type(exc).__name__}: {mask_numbers(str(exc))}"
            ) from exc
        status = response.status_code
        if 200 <= status < 300:
            return Receipt(
                message.contact_id, self._provider_id(response), self._clock(), f"HTTP {status}"
            )
        said = self._error_text(response)
        if status in _TRANSIENT_STATUSES or status >= 500:
            wait = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
            raise TransientChannelError(f"{self.name}: HTTP {status}{said}", retry_after=wait)
        raise PermanentChannelError(f"{self.name}: HTTP {status}{said}")

    def _provider_id(self, response: httpx.Response) -> str:
        try:
            node: Any = response.json()
        except ValueError:
            return ""
        for key in self._id_path:
            if not isinstance(node, dict) or key not in node:
                return ""
            node = node[key]
        return "" if node is None or isinstance(node, dict | list) else str(node)

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        text = " ".join(response.text.split())
        if not text:
            return ""
        if len(text) > _MAX_ERROR_TEXT:
            text = text[: _MAX_ERROR_TEXT - 1] + "…"
        return f": {mask_numbers(text)}"

    def close(self) -> None:
        """Close the connection pool (the dispatcher calls this at shutdown)."""
        self._transport.close()


def _url(what: str, url: object, key: str = "url") -> str:
    if isinstance(url, str):
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is not None and parsed.scheme in ("http", "https") and parsed.host:
            return url
    raise ConfigError(f"{what}: {key} must be an http:// or https:// URL, got {url!r}")


def _tls(what: str, ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """Verify servers against ``ca_file`` (a PEM bundle) instead of the public CAs."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: ca_file {ca_file}: cannot load CA certificates: {exc}") from exc


def _positive(what: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{what}: {key} must be a number > 0, got {value!r}")
    return float(value)


def _headers(what: str, headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f'{what}: headers must be a table of "Name" = "value" strings')
    return dict(headers)
