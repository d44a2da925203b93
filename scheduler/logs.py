"""Logs as data: structlog JSON lines on stdout (journald keeps them), PII masked.

One event per decision and attempt (``contact.settled`` with contact id, account id, rule,
channel, outcome), one per tick. ``mask_pii`` is a plain structlog processor: values of
keys that name a person or an address are masked, and any phone number or email address
found in any other string value is masked too, so a provider's error text that echoes the
number does not leak it. Names are never logged; if one reaches a log event under
``name``/``borrower`` it shows its first character only.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import MutableMapping
from types import FrameType
from typing import Any, TextIO

import structlog

__all__ = [
    "configure_logging",
    "dump_stacks",
    "install_stack_dumps",
    "mask_email",
    "mask_phone",
    "mask_pii",
]

_PHONE = re.compile(r"\+?\d[\d \-]{6,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PERSON_KEYS = frozenset({"name", "borrower", "borrower_name"})
_ADDRESS_KEYS = frozenset({"to", "phone", "email", "target", "recipient"})
#: Identifiers, never personal data (a watermark is often a timestamp, which looks like digits).
_PLAIN_KEYS = frozenset(
    {"contact_id", "account_id", "rule", "channel", "level", "logger", "source", "watermark"}
)


def mask_phone(text: str) -> str:
    """``+8613812345678`` -> ``+86…5678``: country prefix and last four digits only."""
    digits = re.sub(r"\D", "", text)
    if len(digits) < 7:
        return "…"
    return f"{'+' if text.startswith('+') else ''}{digits[:2]}…{digits[-4:]}"


def mask_email(text: str) -> str:
    """``wang.wei@example.com`` -> ``w…@example.com``."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}…@{m.group(2)}", text)


def _mask_text(text: str) -> str:
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), mask_email(text))


def mask_pii(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask names, phone numbers and email addresses in ``event``."""
    for key, value in event.items():
        if not isinstance(value, str) or key == "timestamp":
            continue
        if key in _PERSON_KEYS:
            event[key] = value[:1] + "…" if value else value
        elif key in _ADDRESS_KEYS and value.startswith("+"):
            event[key] = mask_phone(value)
        elif key in _PLAIN_KEYS:
            continue
        else:
            event[key] = _mask_text(value)
    return event


def configure_logging(*, level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stdout), ISO timestamps in UTC, PII masked; the standard
    library's loggers (APScheduler, httpx) go through the same renderer at WARNING.

    Each line reaches ``stream`` in one ``write``, newline included: the daemon and its
    dispatch children share one stdout (journald's stream, a file), and with
    ``PYTHONUNBUFFERED=1`` (the systemd unit sets it) each ``write`` is a system call, so
    ``print``'s separate write of the newline let another process's line land in between,
    two events on one line and neither readable."""
    stream = stream or sys.stdout
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_pii,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer(ensure_ascii=False)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(ensure_ascii=False),
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def dump_stacks(_signum: int = 0, frame: FrameType | None = None) -> None:
    """Write every thread's stack to stderr (file, line and function only: no values, so
    nothing personal), in one ``write``, and return. The daemon's and each dispatch child's
    SIGUSR1 handler.

    Not ``faulthandler.register``: that dumps from the C signal handler, reading the other
    threads' frames while they run, and a thread that changed its frames meanwhile crashed
    a dispatch child with SIGSEGV in CI (python/cpython#116008). This runs as a Python
    signal handler, on the main thread between two bytecodes and holding the GIL, so every
    frame it reads stands still; ``frame`` is where the main thread was interrupted. It
    takes no lock (``os.write`` on fd 2, not ``sys.stderr``, whose buffer lock the
    interrupted code may hold), so it cannot wait on the code it interrupted. A main thread
    stuck inside C code answers when that code returns; ``py-spy dump`` reads a process
    from outside."""
    current = threading.get_ident()
    dumps = []
    for ident, top in sys._current_frames().items():
        at: FrameType | None = frame if ident == current and frame is not None else top
        lines = [f"{'Current thread' if ident == current else 'Thread'} 0x{ident:016x} "
                 "(most recent call first):"]  # fmt: skip
        while at is not None:
            code = at.f_code
            lines.append(f'  File "{code.co_filename}", line {at.f_lineno} in {code.co_name}')
            at = at.f_back
        dumps.append("\n".join(lines) + "\n")
    data = "\n".join(dumps).encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:  # stderr closed or full: a diagnostic never stops the process
        pass


def install_stack_dumps() -> None:
    """In the daemon and each dispatch child (call from the main thread): SIGUSR1 writes
    every thread's stack and the process goes on (``dump_stacks``); a crash (SIGSEGV,
    SIGABRT, in C code) writes them as the process dies (``faulthandler.enable``, the job
    faulthandler is made for)."""
    signal.signal(signal.SIGUSR1, dump_stacks)
    faulthandler.enable()
