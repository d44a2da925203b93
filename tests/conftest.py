"""Store fixtures: one contract suite over every backend (SQLite files and PostgreSQL).

``store`` is parametrized over ``sqlite`` and ``postgres``. The PostgreSQL params carry the
``postgres`` mark; when the server is unreachable they are skipped with the reason, except
under ``CI=true``, where they fail (CI must really run them). Each test session migrates its
own schema ``t_<random>`` once and drops it at the end; each test starts from empty tables.
``$REMIND_TEST_PG_URL`` overrides the server URL.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.store import Store, drop_schema
from tests.support.daemon import DaemonProcess

PG_URL = os.environ.get("REMIND_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
TABLES = (
    "source_runs", "source_state", "daemon_state", "audit_log", "account_flags", "promises",
    "contacts", "accounts",
)  # fmt: skip
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@cache
def _pg_unreachable() -> str | None:
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        return f"PostgreSQL at {PG_URL} unreachable: {str(cause).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail instead under CI=true."""
    reason = _pg_unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the postgres tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """This session's own migrated PostgreSQL schema, dropped at the end."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    store = Store.open(PG_URL, schema=schema, check_schema=False)
    try:
        store.upgrade()
    finally:
        store.close()
    yield schema
    drop_schema(PG_URL, schema)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once and copied for each test."""
    path = tmp_path_factory.mktemp("template") / "remind.db"
    Store.open(f"sqlite:///{path}").close()
    return path


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An open store with the schema at head and empty tables, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "remind.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        opened = Store.open(f"sqlite:///{path}")
    else:
        schema = request.getfixturevalue("pg_schema")
        opened = Store.open(PG_URL, schema=schema)
        with opened.engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield opened
    opened.close()


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL server's URL (skips, or fails under CI=true, when unreachable)."""
    require_postgres()
    return PG_URL


@pytest.fixture
def empty_pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema of its own, dropped after the test."""
    schema = f"t_{secrets.token_hex(6)}"
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    yield schema
    drop_schema(PG_URL, schema)


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Store]:
    """Opens (``check_schema=`` as ``Store.open``) an empty database on each backend: a new
    SQLite file in a new folder, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'new' / 'remind.db'}", None
    else:
        url, schema = PG_URL, request.getfixturevalue("empty_pg_schema")

    def open_store(*, check_schema: bool = True) -> Store:
        return Store.open(url, schema=schema, check_schema=check_schema)

    return open_store


@pytest.fixture(autouse=True)
def kill_leftover_daemons() -> Iterator[None]:
    """A test that fails mid-way must not leave ``remind run`` processes behind."""
    yield
    DaemonProcess.kill_leftovers()
