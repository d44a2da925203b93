"""A real SMTP server on 127.0.0.1 for tests: aiosmtpd in a thread, with faults.

::

    with SmtpServer(starttls=True, auth=("remind", "pw"), reject={"gone@example.com": 550}) as smtp:
        channel = SmtpEmailChannel(host=smtp.host, port=smtp.port, ca_file=smtp.ca_file, ...)
        ...
        smtp.fail_next(2)                 # the next 2 transactions: 421 at MAIL FROM, then hang up
        [got] = smtp.received()           # envelope and parsed EmailMessage of each accepted email

- ``starttls``: offers STARTTLS with a certificate for 127.0.0.1 and localhost from a
  throwaway trustme CA; ``ca_file`` is that CA's PEM file (None without TLS).
  ``implicit_tls``: TLS from the first byte instead (as on port 465), same certificate.
- ``auth``: (username, password) accepted by AUTH LOGIN and PLAIN. As aiosmtpd does by
  default, AUTH is refused before STARTTLS. ``auth_attempts`` counts AUTH commands
  (smtplib tries each offered mechanism in turn when a password is refused).
- ``reject``: recipient address (case-insensitive) -> reply code (550: permanent, 451:
  transient) given to its RCPT TO; changeable at runtime with ``reject_recipients``.
- ``fail_next(n)``: the next ``n`` transactions get ``421`` at MAIL FROM and the server
  closes the connection, as a server going down for maintenance does.
- ``hang_up()``: closes every open connection, as a restart or an idle timeout does;
  ``connections`` counts the connections clients opened.

On exit the server closes its listener and every open connection and stops its event loop
and thread, so no transport or socket is left for the garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Received", "SmtpServer", "free_port"]

HOST = "127.0.0.1"


class _QuietDeprecation(logging.Filter):
    """aiosmtpd logs a warning on every successful AUTH about its own legacy attribute."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecation())


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (just now)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Received:
    """One email the server accepted: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes


class _Handler:
    """aiosmtpd hooks; they run on the server's event loop thread."""

    def __init__(self, reject: Mapping[str, int]) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.reject = {k.lower(): v for k, v in reject.items()}
        self.fail = 0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:  # fmt: skip
        with self.lock:
            failing, self.fail = self.fail > 0, max(0, self.fail - 1)
        if failing:
            transport = server.transport
            if transport is not None:
                asyncio.get_running_loop().call_soon(transport.close)
            return "421 4.3.2 Service not available, closing transmission channel"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:  # fmt: skip
        with self.lock:
            code = self.reject.get(address.lower())
        if code is not None:
            text = "5.1.1 no such user" if code >= 500 else "4.2.0 try again later"
            return f"{code} {text} <{address}>"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        got = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), parsed, raw)
        with self.lock:
            self.received.append(got)
            number = len(self.received)
        return f"250 2.0.0 Ok: queued as Q{number}"


class _Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.expected = (username.encode(), password.encode())
        self.attempts = 0

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.attempts += 1
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == self.expected
        return AuthResult(success=ok, handled=False)


class _Controller(Controller):
    """Remembers each connection's SMTP protocol so ``stop`` can close them all."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.connections: list[SMTP] = []

    def factory(self) -> SMTP:
        smtp = SMTP(self.handler, **self.SMTP_kwargs)
        self.connections.append(smtp)
        return smtp

    async def hang_up(self) -> None:
        """Closes every connection and returns once each is gone."""
        for smtp in self.connections:
            for transport in (smtp.transport, smtp._original_transport):
                if transport is not None:
                    transport.close()
        async with asyncio.timeout(5):
            while any(smtp.transport is not None for smtp in self.connections):
                await asyncio.sleep(0.001)


class SmtpServer:
    """aiosmtpd on 127.0.0.1 at a free port, as a context manager (see module docstring)."""

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        reject: Mapping[str, int] | None = None,
    ) -> None:
        self.host = HOST
        self.port = free_port()
        self.ca_file: Path | None = None
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._handler = _Handler(reject or {})
        self._auth = _Authenticator(*auth) if auth else None
        self._stack = contextlib.ExitStack()
        self._controller: _Controller | None = None

    def __enter__(self) -> Self:
        kwargs: dict[str, Any] = {}
        if self._starttls:
            kwargs["tls_context"] = self._tls_context()
        elif self._implicit_tls:
            kwargs["ssl_context"] = self._tls_context()
            # aiosmtpd only counts STARTTLS as TLS (aio-libs/aiosmtpd#281); here every byte
            # is encrypted, so AUTH may be offered at once
            kwargs["auth_require_tls"] = False
        if self._auth is not None:
            kwargs["authenticator"] = self._auth
        controller = _Controller(
            self._handler, hostname=self.host, port=self.port, ready_timeout=5,
            server_hostname="smtp.test", **kwargs,
        )  # fmt: skip
        controller.start()
        self._controller = controller
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Closes every connection and the listener, then stops the loop and its thread.
        Afterwards nothing listens on ``port``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            asyncio.run_coroutine_threadsafe(controller.hang_up(), controller.loop).result(5)
            controller.stop()
        self._stack.close()

    def _tls_context(self) -> ssl.SSLContext:
        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.ca_file = Path(self._stack.enter_context(ca.cert_pem.tempfile()))
        return context

    # -- what the tests look at and change --

    def received(self) -> list[Received]:
        """The emails accepted so far, in order."""
        with self._handler.lock:
            return list(self._handler.received)

    def reject_recipients(self, codes: Mapping[str, int]) -> None:
        """From now on answer RCPT TO for these addresses with these codes."""
        with self._handler.lock:
            self._handler.reject = {k.lower(): v for k, v in codes.items()}

    def fail_next(self, transactions: int) -> None:
        """The next ``transactions`` MAIL FROM get 421 and a closed connection."""
        with self._handler.lock:
            self._handler.fail = transactions

    def hang_up(self) -> None:
        """Closes every open connection, as a server restart or an idle timeout does."""
        if self._controller is not None:
            future = asyncio.run_coroutine_threadsafe(
                self._controller.hang_up(), self._controller.loop
            )
            future.result(5)

    @property
    def connections(self) -> int:
        """How many connections clients have opened so far."""
        return len(self._controller.connections) - 1 if self._controller else 0

    @property
    def auth_attempts(self) -> int:
        """How many AUTH commands the server has answered."""
        return self._auth.attempts if self._auth else 0
