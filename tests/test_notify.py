"""The notify protocol against real AF_UNIX datagram sockets, as systemd's manager binds them."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scheduler import notify
from scheduler.notify import Notifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notify socket: a bound datagram socket and its address."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive_as_systemd_expects(manager: tuple[socket.socket, str]) -> None:
    # Given a notifier built from the environment systemd sets
    sock, address = manager
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    # When each message is sent, Then one datagram of KEY=VALUE lines arrives
    assert notifier.ready() is True
    assert received(sock) == ["READY=1"]
    assert notifier.ready(status="planning done") is True
    assert received(sock) == ["READY=1", "STATUS=planning done"]
    assert notifier.watchdog() is True
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.stopping() is True
    assert received(sock) == ["STOPPING=1"]
    assert notifier.status("draining\n3 sends left") is True
    assert received(sock) == ["STATUS=draining 3 sends left"]


def test_reloading_carries_the_monotonic_clock(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    assert Notifier.from_environ({"NOTIFY_SOCKET": address}).reloading() is True

    reloading, monotonic = received(sock)
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket() -> None:
    # Given a manager socket in the abstract namespace ("@name" in $NOTIFY_SOCKET)
    name = f"remind-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)

        # When the daemon says it is ready, Then the datagram arrives there
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert received(sock) == ["READY=1"]


def test_sends_from_many_threads_arrive_whole(manager: tuple[socket.socket, str]) -> None:
    # Given more senders than the manager's queue holds (net.unix.max_dgram_qlen), and a
    # manager that reads as they come
    sock, address = manager
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    fields: list[str] = []

    def read_all() -> None:
        for _ in range(50):
            fields.extend(received(sock))

    reader = threading.Thread(target=read_all)
    reader.start()

    # When 50 threads each send a status line
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: notifier.status(f"worker {i} alive"), range(50)))
    reader.join(5)

    # Then every datagram arrives whole
    assert results == [True] * 50
    assert sorted(fields) == sorted(f"STATUS=worker {i} alive" for i in range(50))


def test_a_manager_that_stops_reading_costs_at_most_the_timeout(
    monkeypatch: pytest.MonkeyPatch, manager: tuple[socket.socket, str]
) -> None:
    # Given a manager whose queue is full and who does not read
    monkeypatch.setattr(notify, "SEND_TIMEOUT", 0.2)
    _sock, address = manager
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    while notifier.watchdog():
        pass

    # When we ping again, Then the send gives up after the timeout, without raising
    started = time.monotonic()
    assert notifier.watchdog() is False
    assert 0.1 < time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "x"}, 30.0),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval == interval


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no NOTIFY_SOCKET (even with a watchdog variable lying around)
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "60000000"})

    # Then no socket is ever opened and every method says "not sent"
    def no_socket(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", no_socket)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready(status="x") is False
    assert notifier.watchdog() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False


def test_from_environ_defaults_to_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, manager: tuple[socket.socket, str]
) -> None:
    sock, address = manager
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    notifier = Notifier.from_environ()

    assert notifier.watchdog_interval == 5.0
    assert notifier.watchdog() is True
    assert received(sock) == ["WATCHDOG=1"]


def test_a_vanished_socket_returns_false(tmp_path: Path) -> None:
    # Given the manager's socket went away (manager re-executing, or a stale variable)
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    path.unlink()
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})

    # Then sends report failure instead of raising
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


@pytest.mark.parametrize(
    "address", ["/nonexistent/dir/notify", "@remind-nobody-listens", "vsock:2:1234", "a\0b"]
)
def test_unreachable_addresses_return_false(address: str) -> None:
    assert Notifier.from_environ({"NOTIFY_SOCKET": address}).watchdog() is False


def test_a_socket_that_is_not_a_datagram_socket_returns_false(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        assert Notifier.from_environ({"NOTIFY_SOCKET": str(path)}).ready() is False
