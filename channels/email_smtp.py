"""``email_smtp``: sends each message as one email through an SMTP submission server.

Configured by a ``[channels.email]`` table (``type = "email_smtp"``); its keys are the
constructor's keyword arguments. The password is read at start-up from a systemd credential
(``password_credential``) or an environment variable (``password_env``), never from config.

The email: ``From`` is ``from_name <from_address>``, ``To`` is ``message.to``, a plain-text
part from ``message.body`` and, when ``message.html`` is not empty, an HTML alternative
(``multipart/alternative``), all UTF-8. ``Message-ID`` is ``<CONTACT_ID@DOMAIN>``: the same
contact gets the same id on every attempt, so a resend after a crash can be recognised in
the mail server's logs and by mail clients. ``Receipt.provider_id`` is that Message-ID and
``Receipt.detail`` the server's reply to the message (its queue id, for most servers).

Connections: each sending thread keeps one authenticated connection open and reuses it; a
connection the server closed in the meantime is noticed before use (without a round trip)
and replaced. (A server closing it at the very moment of a send makes that send transient.)
``close()`` ends them all (the dispatcher calls it at shutdown).

Errors (``_translate`` is the one place where smtplib, socket and ssl errors are mapped)::

    connection refused or reset, timeout, connection cut during
    TLS, server disconnected, any 4xx reply (421, 450, 451, ...)   -> TransientChannelError
    5xx refusing the recipient (550 no such user, ...), 5xx
    refusing the message (554 at DATA), an address that is not
    one, text that cannot be encoded                               -> PermanentChannelError
    the server refuses *us*: authentication failed, AUTH or
    STARTTLS not offered, certificate not trusted, TLS handshake
    failed (wrong security for the port), 5xx to the greeting,
    EHLO or MAIL FROM                                              -> TransientChannelError
                                                                      (retry_after=REFUSED_RETRY_SECONDS)

The last group is a configuration problem that affects every message, not this one, so
no message is failed permanently for it: each is retried after ``REFUSED_RETRY_SECONDS``
(the dispatcher's ``max_attempts`` still applies) while ops fix the password, certificate
or sender address and restart the daemon. Until then the adapter does not contact the
server again: sends fail at once with the same error, so a batch of 200 messages does not
make 200 failed logins (which gets accounts locked and hosts banned by fail2ban).

A timeout or disconnect while waiting for the reply to DATA is transient although the
server may have accepted the message; the retry then delivers a second copy, with the same
Message-ID. SMTP offers no way to ask whether it did.

Email addresses never appear in full in error messages: ``w…@example.com``.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
import select
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from os import PathLike
from typing import Any, Final
from urllib.parse import quote

from channels.base import Message, Receipt
from channels.secrets import read_secret
from scheduler.errors import (
    ChannelError,
    ConfigError,
    PermanentChannelError,
    TransientChannelError,
)
from scheduler.logs import mask_email

__all__ = ["REFUSED_RETRY_SECONDS", "SmtpEmailChannel"]

#: How long after the server refused us (bad password, untrusted certificate) messages wait
#: before the next attempt, and how long the adapter stays away from the server meanwhile.
REFUSED_RETRY_SECONDS: Final = 600.0

_SECURITY = ("starttls", "tls", "none")
_DEFAULT_PORT = {"starttls": 587, "tls": 465, "none": 25}
#: The policy of the bytes on the wire: CRLF, and 7-bit bodies (base64 or quoted-printable)
#: so no server needs 8BITMIME.
_WIRE = email.policy.SMTP.clone(cte_type="7bit")
#: TLS errors that mean the connection was cut, not that TLS cannot work.
_SSL_CUT_OFF = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class SmtpEmailChannel:
    """An SMTP client, safe to call from several threads at once (one connection each)."""

    def __init__(
        self,
        name: str = "email_smtp",
        *,
        host: str,
        port: int | None = None,
        security: str = "starttls",
        username: str | None = None,
        password_env: str | None = None,
        password_credential: str | None = None,
        from_address: str,
        from_name: str = "",
        reply_to: str | None = None,
        message_id_domain: str | None = None,
        timeout_seconds: float = 10.0,
        ca_file: str | PathLike[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``port`` defaults to 587 for ``starttls``, 465 for ``tls`` and 25 for ``none``.
        ``ca_file`` (PEM) replaces the system trust store; host names are always checked.
        Raises ``ConfigError`` naming the key for a bad value or a missing password."""
        self.name = name
        self.host = _text(name, "host", host)
        if security not in _SECURITY:
            raise ConfigError(f"{name}: security must be one of {', '.join(_SECURITY)}")
        self.security = security
        self.port = _DEFAULT_PORT[security] if port is None else _port(name, port)
        self._sender = _config_address(name, "from_address", from_address)
        self._from = Address(
            display_name=_text(name, "from_name", from_name, empty=True),
            username=self._sender.username,
            domain=self._sender.domain,
        )
        self._reply_to = _config_address(name, "reply_to", reply_to) if reply_to else None
        self._id_domain = _id_domain(name, message_id_domain or self._sender.domain)
        self.timeout_seconds = _timeout(name, timeout_seconds)
        self._login = self._credentials(username, password_env, password_credential, environ)
        self._tls = _tls_context(name, ca_file) if security != "none" else None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._helo = socket.getfqdn()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[smtplib.SMTP] = set()
        self._refused: tuple[datetime, str] | None = None

    def _credentials(
        self,
        username: str | None,
        password_env: str | None,
        password_credential: str | None,
        environ: Mapping[str, str] | None,
    ) -> tuple[str, str] | None:
        has_source = bool(password_env or password_credential)
        if username is None:
            if has_source:
                raise ConfigError(f"{self.name}: password_env/password_credential need username")
            return None
        _text(self.name, "username", username)
        if not has_source:
            raise ConfigError(
                f"{self.name}: username is set: set password_env or password_credential "
                "to say where the password is (never in config.toml)"
            )
        if self.security == "none":
            raise ConfigError(
                f'{self.name}: username needs security = "starttls" or "tls" '
                "(the password would cross the network in clear)"
            )
        password = read_secret(
            f"{self.name} password", env=password_env, credential=password_credential,
            environ=environ,
        )  # fmt: skip
        return username, password

    # -- the Channel protocol --

    def send(self, message: Message) -> Receipt:
        """Hand ``message`` to the SMTP server; see the module docstring for what it raises."""
        recipient = _recipient(message.to)
        try:
            data = self._compose(message, recipient).as_bytes()
        except ValueError as exc:  # e.g. text that is not valid Unicode
            raise self._translate(exc, message.to) from exc
        self._check_not_refused()
        try:
            reply = self._transact(self._connection(), recipient.addr_spec, data)
        except (smtplib.SMTPException, OSError) as exc:
            raise self._translate(exc, message.to) from exc
        return Receipt(
            message.contact_id, self.message_id(message.contact_id), self._clock(),
            detail=_scrub(reply, message.to),
        )  # fmt: skip

    def close(self) -> None:
        """Ends every open connection (QUIT). Call it once sends have finished."""
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            _quit(conn)

    # -- the email --

    def message_id(self, contact_id: str) -> str:
        """``<CONTACT_ID@DOMAIN>``: the same on every attempt at the same contact."""
        return f"<{quote(contact_id, safe='')}@{self._id_domain}>"

    def _compose(self, message: Message, recipient: Address) -> EmailMessage:
        composed = EmailMessage(policy=_WIRE)
        composed["From"] = self._from
        composed["To"] = recipient
        if self._reply_to is not None:
            composed["Reply-To"] = self._reply_to
        composed["Subject"] = " ".join(message.subject.splitlines())
        composed["Date"] = format_datetime(self._clock())
        composed["Message-ID"] = self.message_id(message.contact_id)
        composed.set_content(message.body)
        if message.html:
            composed.add_alternative(message.html, subtype="html")
        return composed

    # -- the connection --

    def _connection(self) -> smtplib.SMTP:
        """This thread's connection: the one it kept if the server has not closed it."""
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is not None and _usable(conn):
            return conn
        if conn is not None:
            self._discard(conn)
        conn = self._connect()
        with self._lock:
            self._open.add(conn)
        self._local.conn = conn
        return conn

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.security == "tls":
            conn = smtplib.SMTP_SSL(
                self.host, self.port, local_hostname=self._helo, timeout=self.timeout_seconds,
                context=self._tls,
            )  # fmt: skip
        else:
            conn = smtplib.SMTP(
                self.host, self.port, local_hostname=self._helo, timeout=self.timeout_seconds
            )
        try:
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self._tls)
                conn.ehlo()
            if self._login is not None:
                conn.login(*self._login)
        except BaseException:
            conn.close()
            raise
        return conn

    def _transact(self, conn: smtplib.SMTP, recipient: str, data: bytes) -> str:
        """MAIL, RCPT, DATA; the server's reply to DATA. A refusal resets the transaction
        so the connection stays usable; any other failure discards the connection."""
        try:
            code, reply = conn.mail(self._sender.addr_spec)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, self._sender.addr_spec)
            code, reply = conn.rcpt(recipient)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
            code, reply = conn.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused):
            _reset(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        return f"{code} {reply.decode('utf-8', 'replace')}"

    def _discard(self, conn: smtplib.SMTP) -> None:
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        conn.close()

    # -- errors --

    def _check_not_refused(self) -> None:
        with self._lock:
            refused = self._refused
        if refused is None:
            return
        until, reason = refused
        left = (until - self._clock()).total_seconds()
        if left > 0:
            raise TransientChannelError(
                f"{self.name}: {reason} (not trying the server again for {left:.0f} s)",
                retry_after=left,
            )

    def _translate(self, exc: BaseException, to: str) -> ChannelError:
        """The one place smtplib, socket and ssl errors become channel errors."""
        where = f"{self.name} {self.host}:{self.port}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            replies = exc.recipients.values()
            text = _scrub("; ".join(f"{code} {_reply(reply)}" for code, reply in replies), to)
            detail = f"{where}: recipient {_mask(to)} refused: {text}"
            if all(400 <= code < 500 for code, _ in replies):
                return TransientChannelError(detail)
            return PermanentChannelError(detail)
        if isinstance(exc, smtplib.SMTPResponseException):
            said = _scrub(f"{exc.smtp_code} {_reply(exc.smtp_error)}", to)
            if 400 <= exc.smtp_code < 500:
                return TransientChannelError(f"{where}: {said}")
            if isinstance(exc, smtplib.SMTPDataError):
                return PermanentChannelError(f"{where}: message to {_mask(to)} refused: {said}")
            if isinstance(exc, smtplib.SMTPAuthenticationError):
                return self._refuses_us(f"{where}: authentication failed ({said})")
            return self._refuses_us(f"{where} refuses us: {said}")
        if isinstance(exc, smtplib.SMTPNotSupportedError) or type(exc) is smtplib.SMTPException:
            return self._refuses_us(f"{where}: {exc}")  # STARTTLS or AUTH not offered
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self._refuses_us(f"{where}: certificate not trusted: {exc.verify_message}")
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, _SSL_CUT_OFF):
            return self._refuses_us(f"{where}: TLS failed ({exc.reason}): check security and port")
        if isinstance(exc, ValueError):
            return PermanentChannelError(f"{self.name}: cannot be written as an email: {exc}")
        if isinstance(exc, TimeoutError):
            return TransientChannelError(f"{where}: timed out after {self.timeout_seconds:g} s")
        return TransientChannelError(f"{where}: {type(exc).__name__}: {_scrub(str(exc), to)}")

    def _refuses_us(self, reason: str) -> TransientChannelError:
        with self._lock:
            self._refused = (self._clock() + timedelta(seconds=REFUSED_RETRY_SECONDS), reason)
        return TransientChannelError(reason, retry_after=REFUSED_RETRY_SECONDS)


# -- helpers --


def _usable(conn: smtplib.SMTP) -> bool:
    """True unless the socket is gone or has something to read: between transactions an
    SMTP server says nothing, so readable means it closed the connection (EOF, 421)."""
    sock = conn.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return not poller.poll(0)
    except OSError:
        return False


def _reset(conn: smtplib.SMTP) -> None:
    try:
        conn.rset()
    except (smtplib.SMTPException, OSError):
        conn.close()


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


def _text(name: str, key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (empty or value.strip()):
        raise ConfigError(f"{name}: {key} must be {'a' if empty else 'a non-empty'} string")
    return value


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{name}: port must be an integer from 1 to 65535")
    return value


def _timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        raise ConfigError(f"{name}: timeout_seconds must be a number of seconds in (0, 600]")
    return float(value)


def _parse_address(text: str) -> Address | None:
    """``text`` as a single address with an ASCII local part (the domain IDNA-encoded)."""
    try:
        parsed = Address(addr_spec=text.strip())
        if not parsed.username or "." not in parsed.domain.strip("."):
            return None
        domain = parsed.domain.encode("idna").decode("ascii")
        parsed.username.encode("ascii")
    except (ValueError, IndexError, UnicodeError, email.errors.HeaderParseError):
        return None
    return Address(username=parsed.username, domain=domain)


def _config_address(name: str, key: str, value: Any) -> Address:
    parsed = _parse_address(value) if isinstance(value, str) else None
    if parsed is None:
        raise ConfigError(f"{name}: {key} must be one email address like billing@example.com")
    return parsed


def _recipient(to: str) -> Address:
    parsed = _parse_address(to)
    if parsed is None:
        raise PermanentChannelError(f"email_smtp: {_mask(to)} is not a usable email address")
    return parsed


def _id_domain(name: str, value: Any) -> str:
    parsed = _parse_address(f"x@{value}") if isinstance(value, str) else None
    if parsed is None:
        raise ConfigError(f"{name}: message_id_domain must be a domain like example.com")
    return parsed.domain


def _tls_context(name: str, ca_file: str | PathLike[str] | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{name}: ca_file {ca_file}: {exc}") from exc


def _mask(address: str) -> str:
    """``wang.wei@example.com`` -> ``w…@example.com``; no ``@``: the first character only."""
    local, at, domain = address.strip().partition("@")
    return f"{local[:1]}…@{domain}" if at else f"{local[:1]}…"


def _reply(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _scrub(text: str, to: str) -> str:
    """``text`` (a server's reply) with the recipient and any other address masked."""
    if to.strip():
        text = re.sub(re.escape(to.strip()), _mask(to), text, flags=re.IGNORECASE)
    return mask_email(text)
