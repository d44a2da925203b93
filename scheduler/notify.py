"""systemd's notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

The contract (what ``sd_notify(3)`` promises, without libsystemd):

* ``Notifier.from_environ()`` reads ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for
  the abstract namespace) and ``WATCHDOG_USEC`` / ``WATCHDOG_PID``. It never fails: odd
  values count as unset.
* Each method sends one ``AF_UNIX`` ``SOCK_DGRAM`` datagram of newline-separated
  ``KEY=VALUE`` fields and returns True when the datagram was sent whole.
* Without ``NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every method returns
  False at once and touches no socket.
* A failed send (socket gone, manager not reading for ``SEND_TIMEOUT`` seconds, an address
  kind we do not speak such as ``vsock:``) returns False; it never raises and never logs:
  telling systemd is never worth crashing the daemon, and the caller decides what to say.
* Thread-safe: a send opens its own socket, and the instance holds no mutable state.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

#: Longest a send may block when the manager's queue is full, in seconds.
SEND_TIMEOUT = 2.0


def _parse_int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _one_line(text: str) -> str:
    """A field value cannot hold a newline: it would start a new ``KEY=VALUE`` field."""
    return " ".join(text.splitlines())


class Notifier:
    """Tells the service manager about readiness, liveness, reloads and shutdown.

    ``address`` is ``$NOTIFY_SOCKET`` as systemd sets it (None: not under systemd).
    ``watchdog_usec`` and ``watchdog_pid`` are ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.
    """

    __slots__ = ("_address", "_watchdog_pid", "_watchdog_usec")

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for the environment systemd gave us (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_parse_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_parse_int(env.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (we run under systemd, Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` pings: half of ``WatchdogSec=``, as systemd
        advises. None when there is no socket, no watchdog, or the watchdog is meant for
        another process (``$WATCHDOG_PID`` set and not ours)."""
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2_000_000

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram. False when not under systemd or the
        send failed; never raises."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                # Connected, so a full queue on the manager's side is waited for; an
                # unconnected datagram socket cannot wait for its peer.
                sock.connect(self._address)
                sent = sock.send(payload)
        except (OSError, ValueError):
            return False
        return sent == len(payload)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete; with an optional status line."""
        extra = [f"STATUS={_one_line(status)}"] if status else []
        return self.send("READY=1", *extra)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive; send every ``watchdog_interval`` seconds."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd >= 253 wants both for
        Type=notify-reload; older ones ignore the second). Send ``ready()`` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(text)}")
