"""The ``email_smtp`` channel against a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from channels.base import Channel, Message
from channels.email_smtp import REFUSED_RETRY_SECONDS, SmtpEmailChannel
from scheduler.errors import ConfigError, PermanentChannelError, TransientChannelError
from scheduler.models import Channel as Kind
from tests.support.smtp import SmtpServer, free_port

AT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
SENDER = "billing@lender.example.com"
BORROWER = "wang.wei@example.com"
Make = Callable[..., SmtpEmailChannel]


def message(contact_id: str = "c1", to: str = BORROWER, **fields: Any) -> Message:
    defaults: dict[str, Any] = {"subject": "还款提醒", "body": "您的还款日为11月24日。"}
    return Message(contact_id, "A1", Kind.EMAIL, to, **(defaults | fields))


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def tls_smtp() -> Iterator[SmtpServer]:
    with SmtpServer(starttls=True, auth=("remind", "s3cret")) as server:
        yield server


@pytest.fixture
def make() -> Iterator[Make]:
    """Builds channels and closes them after the test (before the server stops)."""
    made: list[SmtpEmailChannel] = []

    def build(server: SmtpServer | None = None, **options: Any) -> SmtpEmailChannel:
        if server is not None:
            options = {"host": server.host, "port": server.port, **options}
            if server.ca_file is not None:
                options = {"ca_file": server.ca_file, **options}
            else:
                options = {"security": "none", **options}
        channel = SmtpEmailChannel(**{"from_address": SENDER, "clock": lambda: AT, **options})
        made.append(channel)
        return channel

    yield build
    for channel in made:
        channel.close()


def authed(server: SmtpServer, make: Make, **options: Any) -> SmtpEmailChannel:
    login = {"username": "remind", "password_env": "SMTP_PW", "environ": {"SMTP_PW": "s3cret"}}
    return make(server, **(login | options))


# -- delivery --


def test_an_email_arrives_with_its_headers_and_the_receipt_names_its_message_id(
    smtp: SmtpServer, make: Make
) -> None:
    channel = make(smtp, from_name="Example Finance", reply_to="help@lender.example.com")
    assert isinstance(channel, Channel)

    receipt = channel.send(message("c7f3"))

    [got] = smtp.received()
    assert (got.mail_from, got.rcpt_tos) == (SENDER, (BORROWER,))
    assert got.message["To"] == BORROWER
    assert got.message["From"] == f"Example Finance <{SENDER}>"
    assert got.message["Reply-To"] == "help@lender.example.com"
    assert got.message["Date"] == "Fri, 20 Nov 2026 02:00:00 +0000"
    assert got.message["Message-ID"] == "<c7f3@lender.example.com>" == receipt.provider_id
    assert receipt.contact_id == "c7f3" and receipt.accepted_at == AT
    assert "queued as Q1" in receipt.detail


def test_chinese_text_and_html_arrive_intact_as_multipart_alternative(
    smtp: SmtpServer, make: Make
) -> None:
    channel = make(smtp, from_name="示例金融 客服", message_id_domain="mail.example.net")
    html = "<p>尊敬的王先生：您的<b>¥1,280.00</b>还款将于11月24日到期。</p>"

    channel.send(message(body="尊敬的王先生：您的¥1,280.00还款将于11月24日到期。", html=html))

    [got] = smtp.received()
    assert got.message.get_content_type() == "multipart/alternative"
    assert got.message["Subject"] == "还款提醒"
    assert got.message["From"].addresses[0].display_name == "示例金融 客服"
    assert got.message["Message-ID"] == "<c1@mail.example.net>"
    plain = got.message.get_body(("plain",))
    rich = got.message.get_body(("html",))
    assert plain is not None and rich is not None
    assert plain.get_content().strip() == "尊敬的王先生：您的¥1,280.00还款将于11月24日到期。"
    assert rich.get_content().strip() == html
    assert plain.get_content_charset() == "utf-8"
    assert max(got.raw) < 0x80  # 7-bit on the wire: no server needs 8BITMIME


def test_a_plain_text_email_has_a_single_part(smtp: SmtpServer, make: Make) -> None:
    make(smtp).send(message())

    [got] = smtp.received()
    assert got.message.get_content_type() == "text/plain"
    assert got.message.get_content().strip() == "您的还款日为11月24日。"


def test_the_message_id_is_the_same_when_a_contact_is_sent_again(
    smtp: SmtpServer, make: Make
) -> None:
    channel = make(smtp)

    first = channel.send(message("c1"))
    again = make(smtp).send(message("c1"))  # e.g. after a restart
    other = channel.send(message("c2"))

    ids = [got.message["Message-ID"] for got in smtp.received()]
    assert ids == [first.provider_id, again.provider_id, other.provider_id]
    assert first.provider_id == again.provider_id != other.provider_id


@pytest.mark.parametrize("source", ["env", "credential"])
def test_starttls_and_login_with_the_password_from_env_or_a_systemd_credential(
    tls_smtp: SmtpServer, make: Make, tmp_path: Path, source: str
) -> None:
    if source == "env":
        where: dict[str, Any] = {"password_env": "SMTP_PW", "environ": {"SMTP_PW": "s3cret\n"}}
    else:
        (tmp_path / "smtp-password").write_text("s3cret\n", encoding="utf-8")
        where = {
            "password_credential": "smtp-password",
            "environ": {"CREDENTIALS_DIRECTORY": str(tmp_path)},
        }
    channel = make(tls_smtp, username="remind", **where)

    channel.send(message())

    assert len(tls_smtp.received()) == 1 and tls_smtp.auth_attempts == 1


def test_implicit_tls_as_on_port_465(make: Make) -> None:
    with SmtpServer(implicit_tls=True, auth=("remind", "s3cret")) as server:
        channel = authed(server, make, security="tls")

        channel.send(message())
        channel.close()

        assert len(server.received()) == 1 and server.auth_attempts == 1


def test_concurrent_sends_from_several_threads_all_arrive_over_one_connection_each(
    tls_smtp: SmtpServer, make: Make
) -> None:
    channel = authed(tls_smtp, make)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                channel.send(message(f"c{n}-{i}", to=f"user{n}.{i}@example.com"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    arrived = {g.rcpt_tos: g.message["Message-ID"] for g in tls_smtp.received()}
    assert arrived == {
        (f"user{n}.{i}@example.com",): f"<c{n}-{i}@lender.example.com>"
        for n in range(4)
        for i in range(10)
    }
    assert tls_smtp.connections == 4 and tls_smtp.auth_attempts == 4


def test_a_connection_the_server_closed_is_replaced_without_an_error(
    tls_smtp: SmtpServer, make: Make
) -> None:
    channel = authed(tls_smtp, make)
    channel.send(message("c1"))

    tls_smtp.hang_up()  # the server restarted, or timed the idle connection out
    channel.send(message("c2"))

    assert len(tls_smtp.received()) == 2 and tls_smtp.connections == 2


# -- failures --


def test_a_550_for_the_recipient_is_permanent_and_does_not_show_the_address(
    smtp: SmtpServer, make: Make
) -> None:
    smtp.reject_recipients({BORROWER: 550})
    channel = make(smtp)

    with pytest.raises(PermanentChannelError) as caught:
        channel.send(message())

    assert "550" in str(caught.value) and "no such user" in str(caught.value)
    assert BORROWER not in str(caught.value) and "w…@example.com" in str(caught.value)
    # the connection stays usable for the next message
    channel.send(message("c2", to="li.na@example.com"))
    assert [g.rcpt_tos for g in smtp.received()] == [("li.na@example.com",)]
    assert smtp.connections == 1


def test_a_451_for_the_recipient_is_transient(smtp: SmtpServer, make: Make) -> None:
    smtp.reject_recipients({BORROWER: 451})

    with pytest.raises(TransientChannelError) as caught:
        make(smtp).send(message())

    assert "451" in str(caught.value) and caught.value.retry_after is None
    assert BORROWER not in str(caught.value)


def test_a_421_is_transient_and_the_next_send_reconnects(smtp: SmtpServer, make: Make) -> None:
    channel = make(smtp)
    channel.send(message("c1"))
    smtp.fail_next(1)

    with pytest.raises(TransientChannelError, match="421"):
        channel.send(message("c2"))
    channel.send(message("c2"))

    assert [g.message["Message-ID"] for g in smtp.received()] == [
        "<c1@lender.example.com>",
        "<c2@lender.example.com>",
    ]


def test_nothing_listening_is_transient(make: Make) -> None:
    channel = make(host="127.0.0.1", port=free_port(), security="none", timeout_seconds=2)

    with pytest.raises(TransientChannelError, match="ConnectionRefusedError") as caught:
        channel.send(message())

    assert caught.value.retry_after is None
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_wrong_password_is_transient_with_a_long_wait_and_stops_further_logins(
    tls_smtp: SmtpServer, make: Make
) -> None:
    channel = authed(tls_smtp, make, environ={"SMTP_PW": "wrong"})

    with pytest.raises(TransientChannelError, match="authentication failed") as first:
        channel.send(message("c1"))
    with pytest.raises(TransientChannelError, match="authentication failed") as second:
        channel.send(message("c2"))

    assert first.value.retry_after == second.value.retry_after == REFUSED_RETRY_SECONDS
    assert tls_smtp.connections == 1  # the second send did not try to log in again
    assert tls_smtp.received() == []
    assert "wrong" not in str(first.value)


def test_a_server_certificate_the_system_does_not_trust_is_refused(
    tls_smtp: SmtpServer, make: Make
) -> None:
    channel = make(host=tls_smtp.host, port=tls_smtp.port)  # no ca_file: system trust store

    with pytest.raises(TransientChannelError, match="certificate not trusted") as caught:
        channel.send(message())

    assert caught.value.retry_after == REFUSED_RETRY_SECONDS and tls_smtp.received() == []


def test_tls_against_a_port_that_does_not_speak_it_is_refused(smtp: SmtpServer, make: Make) -> None:
    channel = make(host=smtp.host, port=smtp.port, security="tls")

    with pytest.raises(TransientChannelError, match="check security and port") as caught:
        channel.send(message())

    assert caught.value.retry_after == REFUSED_RETRY_SECONDS


def test_text_that_cannot_be_encoded_is_permanent(smtp: SmtpServer, make: Make) -> None:
    with pytest.raises(PermanentChannelError, match="cannot be written as an email"):
        make(smtp).send(message(body="lone surrogate \ud800"))

    assert smtp.connections == 0


def test_a_line_break_in_the_subject_does_not_break_the_headers(
    smtp: SmtpServer, make: Make
) -> None:
    make(smtp).send(message(subject="还款提醒\r\nBcc: someone@example.com"))

    [got] = smtp.received()
    assert got.message["Subject"] == "还款提醒 Bcc: someone@example.com"
    assert got.message["Bcc"] is None


@pytest.mark.parametrize("to", ["", "wang.wei", "wang wei@example.com", "a@b.com, c@d.com"])
def test_an_unusable_address_is_permanent_without_contacting_the_server(
    smtp: SmtpServer, make: Make, to: str
) -> None:
    with pytest.raises(PermanentChannelError, match="not a usable email address") as caught:
        make(smtp).send(message(to=to))

    assert smtp.connections == 0 and (not to or to not in str(caught.value))


# -- configuration --


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"host": ""}, "host"),
        ({"port": 0}, "port"),
        ({"port": "587"}, "port"),
        ({"security": "ssl"}, "security"),
        ({"from_address": "billing"}, "from_address"),
        ({"reply_to": "not an address"}, "reply_to"),
        ({"message_id_domain": "bad domain"}, "message_id_domain"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"username": "remind"}, "password_env or password_credential"),
        ({"password_env": "SMTP_PW"}, "username"),
        ({"username": "remind", "password_env": "SMTP_PW"}, "SMTP_PW"),
        ({"username": "u", "password_env": "P", "security": "none", "environ": {"P": "x"}},
         "security"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ],
)  # fmt: skip
def test_bad_options_raise_a_config_error_naming_the_key(options: dict[str, Any], key: str) -> None:
    settings = {"host": "smtp.example.com", "from_address": SENDER, "environ": {}} | options
    with pytest.raises(ConfigError, match=key):
        SmtpEmailChannel(**settings)
