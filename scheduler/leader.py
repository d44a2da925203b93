"""Which daemon plans and watches: one at a time per store; every daemon dispatches.

=====================  ===================================================================
store                  who leads
=====================  ===================================================================
SQLite                 the one daemon (a second is refused by ``single_instance_lock``)
PostgreSQL             the holder of a session advisory lock, taken on a dedicated
                       connection; it is released when that connection ends, so a daemon
                       that dies (SIGKILL, a host gone) hands over to the next one that asks
=====================  ===================================================================

A dead host's connection is noticed by the server through TCP keepalives, which the lock's
session sets to ``keepalive_seconds`` idle, then probes every 5 s, 3 times: the lock is
free again within ``keepalive_seconds + 15`` seconds. Followers ask again on every watch
tick, so with the default 30 s watch tick a new leader plans within a minute.

``acquire()`` is cheap when leading (one ``SELECT 1`` on the held connection); a failed
probe means the lock was lost with the connection, and ``acquire()`` tries to take it anew.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import suppress
from typing import Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["AdvisoryLeader", "Leadership", "SoleLeader", "leadership_for"]

log = structlog.get_logger("remind.leader")


class Leadership(Protocol):
    """Decides whether this process plans and watches now."""

    def acquire(self) -> bool:
        """True when this process leads now (taking the lead if it is free); never raises."""
        ...

    def release(self) -> None:
        """Give up the lead (at shutdown)."""
        ...


class SoleLeader:
    """The only daemon on its store leads always (SQLite: one daemon per file)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


class AdvisoryLeader:
    """A PostgreSQL session advisory lock keyed by the store's schema, held on its own
    connection (autocommit: never idle in a transaction)."""

    def __init__(self, engine: sa.Engine, *, keepalive_seconds: int = 10) -> None:
        self._engine = engine
        self._keepalive = keepalive_seconds
        self._conn: sa.Connection | None = None
        self._mutex = threading.Lock()

    def acquire(self) -> bool:
        with self._mutex:
            if self._conn is not None:
                if self._alive(self._conn):
                    return True
                self._drop("lost")
            return self._take()

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._drop("released")

    def _alive(self, conn: sa.Connection) -> bool:
        try:
            conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def _take(self) -> bool:
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            log.warning("leader.unreachable", error=str(exc).splitlines()[0])
            return False
        try:
            for name, value in (
                ("tcp_keepalives_idle", self._keepalive),
                ("tcp_keepalives_interval", 5),
                ("tcp_keepalives_count", 3),
            ):
                conn.exec_driver_sql(f"SET {name} = {int(value)}")
            key = lock_key(str(conn.exec_driver_sql("SELECT current_schema()").scalar()))
            got = bool(
                conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            )
        except SQLAlchemyError as exc:
            log.warning("leader.unreachable", error=str(exc).splitlines()[0])
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.info("leader.acquired", lock_key=key)
        return True

    def _drop(self, why: str) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with suppress(SQLAlchemyError):
            if why == "lost":
                conn.invalidate()
            else:
                conn.close()
        if why == "lost":
            log.warning("leader.lost")
        else:
            log.info("leader.released")


def lock_key(schema: str) -> int:
    """The advisory lock's key for a schema: a signed 64-bit hash, so stores in different
    schemas of one database (test runs, tenants) never share a planner."""
    digest = hashlib.blake2b(f"remind.plan:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def leadership_for(engine: sa.Engine) -> Leadership:
    """The leadership for a store's engine: advisory on PostgreSQL, sole otherwise."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLeader(engine)
    return SoleLeader()
