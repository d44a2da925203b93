"""``sms_http`` and ``call_http``: what a provider receives, and how its answers map to a
``Receipt`` or a transient/permanent error. Mapping tests use ``httpx.MockTransport``; the
end-to-end ones talk to the loopback gateway over real sockets."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from channels.base import Channel, Message
from channels.call_http import CallHttpChannel
from channels.http_common import HttpChannel, retry_after_seconds
from channels.sms_http import SmsHttpChannel
from scheduler.errors import ConfigError, PermanentChannelError, TransientChannelError
from scheduler.models import Channel as Kind
from tests.support.gateway import LoopbackGateway

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
PHONE = "+8613812345678"
URL = "https://sms.example.cn/v1/messages"


def sms(
    contact_id: str = "C1", *, to: str = PHONE, body: str = "您的还款日为11月21日。"
) -> Message:
    return Message(contact_id, "A1", Kind.SMS, to, body)


def call(contact_id: str = "K1") -> Message:
    start = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    return Message(
        contact_id,
        "A9",
        Kind.CALL,
        PHONE,
        "Script: remind of the overdue amount",
        window_start=start,
        window_end=start + timedelta(hours=8),
        priority=3,
    )


Handler = Callable[[httpx.Request], httpx.Response]


def mocked(
    handler: Handler | None = None, kind: type[HttpChannel] = SmsHttpChannel, **options: Any
) -> tuple[HttpChannel, list[httpx.Request]]:
    """A channel whose requests go to ``handler`` (default: 200 ``{"id": "p-1"}``), and the
    list of requests it received."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request) if handler else httpx.Response(200, json={"id": "p-1"})

    options.setdefault("url", URL)
    channel = kind(clock=lambda: NOW, transport=httpx.MockTransport(record), **options)
    return channel, seen


def answer(status: int, **kwargs: Any) -> Handler:
    return lambda request: httpx.Response(status, **kwargs)


def fail_with(exc: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    return handler


# --- what the provider receives ---------------------------------------------------------


def test_sms_default_request_carries_number_text_reference_and_idempotency_key() -> None:
    channel, seen = mocked(token_env="SMS_TOKEN", environ={"SMS_TOKEN": " s3cret\n"})

    receipt = channel.send(sms("C1"))

    assert isinstance(channel, Channel) and channel.name == "sms_http"
    (request,) = seen
    assert request.method == "POST" and str(request.url) == URL
    assert json.loads(request.content) == {
        "to": PHONE,
        "text": "您的还款日为11月21日。",
        "reference": "C1",
    }
    assert request.headers["Idempotency-Key"] == "C1"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Content-Type"] == "application/json"
    assert (receipt.contact_id, receipt.provider_id, receipt.accepted_at) == ("C1", "p-1", NOW)


def test_credential_file_wins_over_environment_and_scheme_can_be_dropped(tmp_path: Path) -> None:
    (tmp_path / "sms-token").write_text("from-credential\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "SMS_TOKEN": "from-env"}
    channel, seen = mocked(
        token_env="SMS_TOKEN",
        token_credential="sms-token",
        environ=environ,
        auth_header="X-Api-Key",
        auth_scheme="",
    )

    channel.send(sms())

    assert seen[0].headers["X-Api-Key"] == "from-credential"
    assert "Authorization" not in seen[0].headers


def test_no_token_configured_sends_no_auth_header_but_a_missing_secret_is_a_config_error() -> None:
    channel, seen = mocked()
    channel.send(sms())
    assert "Authorization" not in seen[0].headers

    with pytest.raises(ConfigError, match=r"sms_http: no secret found in .*\$SMS_TOKEN"):
        SmsHttpChannel(url=URL, token_env="SMS_TOKEN", environ={})


def test_custom_body_shape_with_nested_tables_constants_and_text_around_placeholders() -> None:
    body = {
        "messages": [{"destinations": [{"to": "{to}"}], "text": "{text}", "unicode": True}],
        "meta": {"ref": "remind-{contact_id}", "account": "{account_id}", "literal": "{{x}}"},
    }
    channel, seen = mocked(
        answer(201, json={"data": {"sid": "SM42"}}),
        body=body,
        id_field="data.sid",
        headers={"X-Tenant": "lender-1"},
    )

    receipt = channel.send(sms("C7", body="hi"))

    assert json.loads(seen[0].content) == {
        "messages": [{"destinations": [{"to": PHONE}], "text": "hi", "unicode": True}],
        "meta": {"ref": "remind-C7", "account": "A1", "literal": "{x}"},
    }
    assert seen[0].headers["X-Tenant"] == "lender-1"
    assert receipt.provider_id == "SM42"


def test_call_task_has_window_in_iso_8601_script_and_numeric_priority() -> None:
    channel, seen = mocked(kind=CallHttpChannel, url="http://dialer.local/api/tasks")

    receipt = channel.send(call("K1"))

    assert channel.name == "call_http" and receipt.provider_id == "p-1"
    assert seen[0].headers["Idempotency-Key"] == "K1"
    assert json.loads(seen[0].content) == {
        "contact_id": "K1",
        "account_id": "A9",
        "to": PHONE,
        "window_start": "2026-11-20T01:00:00+00:00",
        "window_end": "2026-11-20T09:00:00+00:00",
        "script": "Script: remind of the overdue amount",
        "priority": 3,
    }


def test_long_script_is_fine_for_calls_but_long_sms_is_refused_untruncated_and_unsent() -> None:
    text = "x" * 671
    calls, _ = mocked(kind=CallHttpChannel)
    calls.send(Message("K2", "A1", Kind.CALL, PHONE, text))

    channel, seen = mocked()
    with pytest.raises(PermanentChannelError, match="671 characters, over max_chars = 670"):
        channel.send(sms(body=text))
    assert seen == []
    channel, seen = mocked(max_chars=1000)
    channel.send(sms(body=text))
    assert json.loads(seen[0].content)["text"] == text


def test_message_without_a_number_is_permanent_and_not_sent() -> None:
    channel, seen = mocked()
    with pytest.raises(PermanentChannelError, match="no number"):
        channel.send(sms(to=""))
    assert seen == []


# --- how answers map ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "retry_after"),
    [
        (httpx.Response(429, headers={"Retry-After": "7"}), 7.0),
        (
            httpx.Response(
                429,
                headers={"Retry-After": format_datetime(NOW + timedelta(seconds=90), usegmt=True)},
            ),
            90.0,
        ),
        (
            httpx.Response(
                429, headers={"Retry-After": format_datetime(NOW - timedelta(hours=1), usegmt=True)}
            ),
            0.0,
        ),
        (httpx.Response(429, headers={"Retry-After": "soon"}), None),
        (httpx.Response(429), None),
        (httpx.Response(503, headers={"Retry-After": "120"}), 120.0),
        (httpx.Response(500, text="internal error"), None),
        (httpx.Response(502), None),
        (httpx.Response(408), None),
    ],
)
def test_rate_limits_server_errors_and_request_timeouts_are_transient(
    response: httpx.Response, retry_after: float | None
) -> None:
    channel, _ = mocked(lambda request: response)

    with pytest.raises(TransientChannelError, match=f"HTTP {response.status_code}") as caught:
        channel.send(sms())

    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError, httpx.RemoteProtocolError]
)
def test_no_answer_is_transient_without_retry_after_and_keeps_the_cause(
    exc: type[httpx.TransportError],
) -> None:
    channel, _ = mocked(fail_with(exc), timeout_seconds=2)

    with pytest.raises(TransientChannelError, match=exc.__name__) as caught:
        channel.send(sms())

    assert caught.value.retry_after is None
    assert isinstance(caught.value.__cause__, exc)


@pytest.mark.parametrize("status", [400, 401, 404, 422, 301])
def test_other_statuses_are_permanent_with_the_providers_text(status: int) -> None:
    channel, _ = mocked(answer(status, json={"error": "number not allowed"}))

    with pytest.raises(PermanentChannelError, match=f"HTTP {status}.*number not allowed"):
        channel.send(sms())


def test_provider_text_in_errors_is_truncated_and_never_shows_a_full_number() -> None:
    text = f"invalid destination {PHONE} ({PHONE[1:]}); " + "detail " * 100
    channel, _ = mocked(answer(400, text=text))

    with pytest.raises(PermanentChannelError) as caught:
        channel.send(sms())

    message = str(caught.value)
    assert "invalid destination …5678 (…5678)" in message
    assert "12345678" not in message
    assert len(message) < 260 and message.endswith("…")


@pytest.mark.parametrize(
    ("reply", "provider_id"),
    [
        (httpx.Response(200, json={"id": 12345}), "12345"),
        (httpx.Response(202, json={"status": "queued"}), ""),
        (httpx.Response(200, text="OK"), ""),
        (httpx.Response(204), ""),
    ],
)
def test_any_2xx_is_a_receipt_and_a_missing_id_is_empty(
    reply: httpx.Response, provider_id: str
) -> None:
    channel, _ = mocked(lambda request: reply)
    assert channel.send(sms()).provider_id == provider_id


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds(" 2.5 ", NOW) == 2.5
    assert retry_after_seconds("Fri, 20 Nov 2026 02:00:30 GMT", NOW) == 30.0
    assert retry_after_seconds("-5", NOW) == 0.0
    assert retry_after_seconds("nan", NOW) is None
    assert retry_after_seconds("", NOW) is None


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"url": "sms.example.cn/send"}, "url must be an http"),
        ({"url": "ftp://sms.example.cn"}, "url must be an http"),
        ({"timeout_seconds": 0}, "timeout_seconds must be a number > 0"),
        ({"timeout_seconds": "10"}, "timeout_seconds must be a number > 0"),
        ({"max_chars": 0}, "max_chars must be a whole number"),
        ({"body": {"to": "{phone}"}}, r"body.to = '\{phone\}': unknown placeholder \{phone\}"),
        ({"body": {"a": {"b": "{to.real}"}}}, r"body.a.b .* unknown placeholder"),
        ({"body": {"text": "{text"}}, "body.text"),
        ({"body": {}}, "body must be a non-empty table"),
        ({"headers": {"X-Retries": 3}}, "headers must be a table"),
        ({"id_field": ""}, "id_field must be"),
        ({"auth_header": ""}, "auth_header must be text"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], error: str) -> None:
    options = {"url": URL, **options}
    with pytest.raises(ConfigError, match=f"^sms_http: {error}"):
        SmsHttpChannel(**options)


def test_builds_from_a_config_toml_table_as_the_daemon_passes_it() -> None:
    table = tomllib.loads(
        '[channels.sms]\ntype = "sms_http"\nurl = "http://127.0.0.1:9/sms"\n'
        'token_env = "TEST_SMS_TOKEN"\ntimeout_seconds = 2\nmax_chars = 500\n'
        '[channels.sms.body]\nmobile = "{to}"\ncontent = "{text}"\n'
    )["channels"]["sms"]
    options = {k: v for k, v in table.items() if k != "type"}

    channel = SmsHttpChannel(
        name="sms_http", clock=lambda: NOW, environ={"TEST_SMS_TOKEN": "t"}, **options
    )

    assert (channel.timeout_seconds, channel.max_chars) == (2.0, 500)
    channel.close()


# --- against the loopback gateway ------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[LoopbackGateway]:
    with LoopbackGateway() as gw:
        yield gw


@pytest.fixture
def gw(gateway: LoopbackGateway) -> LoopbackGateway:
    gateway.reset()
    return gateway


@pytest.fixture
def make(gw: LoopbackGateway) -> Iterator[Callable[..., HttpChannel]]:
    made: list[HttpChannel] = []

    def build(kind: type[HttpChannel] = SmsHttpChannel, **options: Any) -> HttpChannel:
        options.setdefault("url", f"{gw.url}/sms")
        channel = kind(clock=lambda: NOW, token_env="T", environ={"T": "tok"}, **options)
        made.append(channel)
        return channel

    yield build
    for channel in made:
        channel.close()


def test_gateway_receives_the_sms_with_its_headers(
    gw: LoopbackGateway, make: Callable[..., HttpChannel]
) -> None:
    receipt = make().send(sms("C1"))

    (delivery,) = gw.deliveries()
    assert delivery["path"] == "/sms" and delivery["key"] == "C1"
    assert delivery["body"] == {"to": PHONE, "text": "您的还款日为11月21日。", "reference": "C1"}
    assert delivery["headers"]["authorization"] == "Bearer tok"
    assert receipt.provider_id == delivery["id"]


def test_retry_after_a_lost_reply_is_not_delivered_twice(
    gw: LoopbackGateway, make: Callable[..., HttpChannel]
) -> None:
    # Given a gateway that accepts the first request and then never answers in time
    gw.set_faults({"script": [{"accept_then_timeout": 1}]})
    channel = make(kind=CallHttpChannel, url=f"{gw.url}/calls", timeout_seconds=0.2)
    # When the send times out and the dispatcher retries the same contact
    with pytest.raises(TransientChannelError, match=r"no reply within 0\.2s"):
        channel.send(call("K1"))
    receipt = channel.send(call("K1"))
    # Then the provider delivered the task once and the retry got the same id back
    (delivery,) = gw.deliveries()
    assert receipt.provider_id == delivery["id"]
    assert [(r["delivered"], r["duplicate"]) for r in gw.requests()] == [
        (True, False),
        (False, True),
    ]


def test_gateway_rate_limit_is_transient_with_its_retry_after(
    gw: LoopbackGateway, make: Callable[..., HttpChannel]
) -> None:
    gw.set_faults({"script": [{"status": 429, "retry_after": 3}, {"timeout": 1}]})
    channel = make(timeout_seconds=0.2)

    with pytest.raises(TransientChannelError) as limited:
        channel.send(sms("C1"))
    with pytest.raises(TransientChannelError) as timed_out:
        channel.send(sms("C1"))
    channel.send(sms("C1"))

    assert (limited.value.retry_after, timed_out.value.retry_after) == (3.0, None)
    assert [d["key"] for d in gw.deliveries()] == ["C1"]


def test_number_the_gateway_rejects_is_permanent_and_not_shown_in_full(
    gw: LoopbackGateway, make: Callable[..., HttpChannel]
) -> None:
    gw.set_faults({"reject_to": [PHONE], "reject_status": 400})

    with pytest.raises(PermanentChannelError, match=r"HTTP 400.*invalid destination") as caught:
        make().send(sms("C1"))
    make().send(sms("C2", to="+8613900000001"))

    assert PHONE[-8:] not in str(caught.value)
    assert [d["key"] for d in gw.deliveries()] == ["C2"]


def test_one_channel_serves_many_worker_threads_at_once(
    gw: LoopbackGateway, make: Callable[..., HttpChannel]
) -> None:
    channel = make()
    ids: list[str] = []
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for i in range(start, 200, 8):
                ids.append(channel.send(sms(f"C{i}")).provider_id)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(ids)) == 200
    assert sorted(d["key"] for d in gw.deliveries()) == sorted(f"C{i}" for i in range(200))


def test_nobody_listening_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = SmsHttpChannel(url=f"http://127.0.0.1:{port}/sms", timeout_seconds=1)

    with pytest.raises(TransientChannelError, match="ConnectError") as caught:
        channel.send(sms())

    channel.close()
    assert caught.value.retry_after is None


def test_https_provider_is_verified_against_the_configured_ca(tmp_path: Path) -> None:
    # Given a provider whose certificate comes from a private CA
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "provider-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with LoopbackGateway(tls=server) as gateway:
        trusting = SmsHttpChannel(url=f"{gateway.url}/sms", ca_file=ca_file, timeout_seconds=2)
        public_cas_only = SmsHttpChannel(url=f"{gateway.url}/sms", timeout_seconds=2)
        # When each channel sends
        receipt = trusting.send(sms("C1"))
        with pytest.raises(TransientChannelError, match=r"ConnectError.*CERTIFICATE_VERIFY"):
            public_cas_only.send(sms("C2"))
        trusting.close()
        public_cas_only.close()
        # Then only the one that trusts the provider's CA delivered
        assert [d["key"] for d in gateway.deliveries()] == ["C1"]
        assert receipt.provider_id == gateway.deliveries()[0]["id"]
    with pytest.raises(ConfigError, match=r"sms_http: ca_file .*missing\.pem: cannot load"):
        SmsHttpChannel(url=URL, ca_file=tmp_path / "missing.pem")
