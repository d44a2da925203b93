"""Account import with parse workers: exactly what the in-process import does.

Every scenario runs twice on the same backend (a real SQLite file, and PostgreSQL in this
session's schema): checked in the importing process (``parse_workers=1``), then by worker
processes while it writes (forked, as ``remind accounts import`` starts them, and spawned,
as a process running other threads does). The stored rows, the report, the rejects file
(byte for byte) and the audit event must be the same. Batches are tiny, so rows cross many
batches and every worker gets several of them.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from scheduler import importer
from scheduler.cli_data import accounts_app
from scheduler.config import load_settings
from scheduler.errors import ConfigError, ImportFileError
from scheduler.importer import ACCOUNT_COLUMNS, Defaults, ImportReport, import_accounts
from scheduler.models import Account
from scheduler.sample import generate_portfolio
from scheduler.store import AccountRows, Store, UpsertCounts
from scheduler.tables import accounts, audit_log
from tests.support.daemon import config_url

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
DEFAULTS = Defaults("Asia/Shanghai", "CN", "zh-CN", "CNY")
BATCH = 16


@pytest.fixture(autouse=True)
def parallel_even_for_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "PARALLEL_MIN_BYTES", 0)


def portfolio(n: int, *, seed: int = 3) -> list[dict[str, str]]:
    return list(generate_portfolio(n, date(2026, 11, 20), seed, ahead_days=10))


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def with_bad_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """``rows`` with problems spread over the file: bad values of every kind, an id seen
    twice (the later row wins), a payment, a name with a line break in it."""
    out = [dict(r) for r in rows]
    bad = {
        "phone": "13812345678",
        "due_date": "2026-02-30",
        "amount_due": "1,000",
        "amount_paid": "0.00001",
        "email": "li@@example.com",
        "timezone": "Asia/Peking",
        "country": "CHN",
        "currency": "RMB1",
        "status": "handed_over",
        "flags": "vip",
        "emergency_contacts": "+8613912345678;12345",
        "account_id": "",
    }
    for n, (column, value) in enumerate(bad.items()):
        out[7 + n * 23][column] = value
    out[100]["amount_due"] = "NaN"
    out[100]["due_date"] = "soon"  # two problems in one row
    out[150]["name"] = "Li\nLei"  # a record over two lines: row numbers count lines
    out[200] = {**out[20], "amount_paid": out[20]["amount_due"]}  # A..21 again, paid
    out[250]["amount_due"] = "12.5"
    return out


def dump(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(accounts).order_by(accounts.c.account_id))]


def audits(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.detail).order_by(audit_log.c.id)).scalars()
        return [json.loads(r) for r in rows]


def wipe(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(accounts.delete())
        conn.execute(audit_log.delete())


Outcome = tuple[list[ImportReport], list[bytes | None], list[tuple[Any, ...]], list[Any]]


def run_both(
    store: Store, steps: list[tuple[Path, dict[str, Any]]], workers: int
) -> tuple[Outcome, Outcome]:
    """Run the imports ``steps`` (file, options) in-process, then with ``workers``: what
    each gave (reports, rejects files, final rows, audit events), the store wiped between."""

    def go(parse_workers: int) -> Outcome:
        reports, rejects = [], []
        for path, options in steps:
            report = import_accounts(
                store, path, defaults=DEFAULTS, batch_size=BATCH,
                parse_workers=parse_workers, **{"now": NOW, **options},
            )  # fmt: skip
            reports.append(report)
            rejected = importer.rejects_path_for(path)
            rejects.append(rejected.read_bytes() if rejected.exists() else None)
        return reports, rejects, dump(store), audits(store)

    alone = go(1)
    wipe(store)
    return alone, go(workers)


@pytest.mark.parametrize(
    ("workers", "start"), [(2, "fork"), (3, "fork"), (2, "spawn")], ids=["2", "3", "2-spawn"]
)
def test_workers_import_what_the_in_process_import_does(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, start: str
) -> None:
    monkeypatch.setattr(importer, "_start_method", lambda: start)
    # Given a first file, then a later one with payments, changes, new rows and bad rows
    first = portfolio(300)
    new = [{**r, "account_id": "B" + r["account_id"][1:]} for r in portfolio(60, seed=4)]
    later = with_bad_rows(portfolio(300)[:280] + new)
    for row in later[:50]:
        row["amount_paid"] = row["amount_due"]
    columns = (*ACCOUNT_COLUMNS, "branch")  # an unknown column, ignored
    a = write_csv(tmp_path / "first.csv", first, ACCOUNT_COLUMNS)
    b = write_csv(tmp_path / "later.csv", later, columns)
    steps = [(a, {}), (b, {"now": LATER})]

    # When both are imported in-process, and then by worker processes
    alone, parallel = run_both(store, steps, workers)

    # Then everything is the same: reports, rejects files, rows and audit events
    assert parallel == alone
    reports, rejects, rows, _ = alone
    assert reports[1].rejected == 13
    assert reports[1].unknown_columns == ("branch",)
    assert reports[1].counts == UpsertCounts(inserted=60, updated=46, unchanged=221)
    assert rejects[0] is None
    assert rejects[1] is not None and b"row,column,reason" in rejects[1]
    assert len(rows) == 300 + 60


def test_strict_with_workers_imports_nothing_as_in_process(store: Store, tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", with_bad_rows(portfolio(300)), ACCOUNT_COLUMNS)

    alone, parallel = run_both(store, [(bad, {"strict": True})], 2)

    assert parallel == alone
    reports, rejects, rows, events = alone
    assert not reports[0].committed and reports[0].counts.total == 0
    assert rows == [] and events[0]["committed"] is False
    assert rejects[0] is not None


def test_json_lines_with_workers(store: Store, tmp_path: Path) -> None:
    rows: list[Any] = with_bad_rows(portfolio(300))
    for row in rows[::9]:
        row["emergency_contacts"] = [p for p in row["emergency_contacts"].split(";") if p]
        row["note"] = "unknown key"
    path = tmp_path / "a.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[30] = "{not json"
    lines[31] = "[1, 2]"
    lines[32] = ""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    alone, parallel = run_both(store, [(path, {})], 2)

    assert parallel == alone
    assert alone[0][0].unknown_columns == ("note",)
    assert alone[0][0].rows_read == 299  # the blank line is no record


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b'A9,"' + b"x" * 200_000 + b'",,,,,,,2026-11-21,1,,,,,\n', id="field-limit"),
        pytest.param(b"A9,\xff\xfe,,,,,,,2026-11-21,1,,,,,\n", id="not-utf8"),
    ],
)
def test_a_file_unreadable_midway_fails_the_same_way(
    store: Store, tmp_path: Path, damage: bytes
) -> None:
    # Given a file that cannot be read past row 200 (after some bad rows)
    good = tmp_path / "good.csv"
    write_csv(good, with_bad_rows(portfolio(300)), ACCOUNT_COLUMNS)
    lines = good.read_bytes().splitlines(keepends=True)
    path = tmp_path / "broken.csv"
    path.write_bytes(b"".join(lines[:200]) + damage + b"".join(lines[200:]))

    def attempt(parse_workers: int) -> tuple[str, bytes, list[tuple[Any, ...]]]:
        with pytest.raises(ImportFileError) as caught:
            import_accounts(
                store, path, defaults=DEFAULTS, now=NOW, batch_size=BATCH,
                parse_workers=parse_workers,
            )  # fmt: skip
        return str(caught.value), importer.rejects_path_for(path).read_bytes(), dump(store)

    # Then: the same error, the same rejects so far, and nothing imported
    alone = attempt(1)
    assert attempt(2) == alone
    assert alone[2] == []
    assert alone[0].startswith("broken.csv: ")


def test_a_worker_that_dies_fails_the_import_and_nothing_is_imported(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "a.csv", portfolio(2_000), ACCOUNT_COLUMNS)
    start = importer._Workers.__init__

    def start_then_kill_one(self: Any, *args: Any, **kwargs: Any) -> None:
        start(self, *args, **kwargs)
        os.kill(self._processes[1].pid, signal.SIGKILL)

    monkeypatch.setattr(importer._Workers, "__init__", start_then_kill_one)

    with pytest.raises(ImportFileError, match=r"parse worker 2 of 2 stopped \(exit code -9\)"):
        import_accounts(store, path, defaults=DEFAULTS, now=NOW, batch_size=BATCH,
                        parse_workers=2)  # fmt: skip

    assert dump(store) == []


def test_a_worker_that_fails_is_reported(tmp_path: Path) -> None:
    gone = tmp_path / "gone.csv"

    def share_of(share: int, shares: int) -> importer._Share:
        return importer._Share(gone, "csv", DEFAULTS, "sqlite", BATCH, share, shares)

    workers = importer._Workers(share_of, 2)
    try:
        with pytest.raises(ImportFileError, match="parse worker 1 of 2 failed: FileNotFound"):
            list(workers.batches())
    finally:
        workers.close()


def test_the_command_uses_the_configured_workers(store: Store, tmp_path: Path) -> None:
    url = config_url(store)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[borrower_defaults]\ntimezone = "Asia/Shanghai"\n'
        'country = "CN"\n[import]\nparse_workers = 3\n',
        encoding="utf-8",
    )
    assert load_settings(config, {}).import_parse_workers == 3
    path = write_csv(tmp_path / "a.csv", with_bad_rows(portfolio(300)), ACCOUNT_COLUMNS)

    app = typer.Typer()
    app.add_typer(accounts_app, name="accounts")
    result = CliRunner().invoke(app, ["accounts", "import", str(path), "--config", str(config)])

    assert result.exit_code == 1, result.output
    assert "300 rows read, 286 inserted, 1 updated, 0 unchanged, 13 rejected" in result.stdout
    assert len(dump(store)) == 286


@pytest.mark.parametrize("value", ["0", "65", "true", '"2"'])
def test_parse_workers_must_be_a_small_whole_number(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[import]\nparse_workers = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"import\.parse_workers must be"):
        load_settings(config, {})


def test_parse_workers_default_to_two(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    assert load_settings(config, {}).import_parse_workers == 2


# --- the rows a worker makes --------------------------------------------------------------


@pytest.fixture
def sample_accounts() -> Iterator[list[Account]]:
    parser = importer.RowParser(DEFAULTS)
    parsed = [parser.parse(r) for r in portfolio(200)]
    yield [a for a in parsed if isinstance(a, Account)]


def test_a_worker_encodes_rows_as_the_store_binds_them(
    store: Store, sample_accounts: list[Account]
) -> None:
    # Given the encoder of the store's own (connected) dialect and one built from the
    # driver name alone, as a worker process builds it
    own = AccountRows(store.engine.dialect)
    worker = AccountRows.for_driver(store.engine.url.drivername)
    # When the accounts are upserted (Store.upsert_accounts)
    assert store.upsert_accounts(sample_accounts, now=NOW).inserted == len(sample_accounts)
    # Then both encoders give the values the database holds, as its driver returns them
    names = ", ".join(c.name for c in list(accounts.columns)[:-2])
    with store.engine.connect() as conn:
        stored = {r[0]: tuple(r) for r in conn.exec_driver_sql(f"SELECT {names} FROM accounts")}
    for account in sample_accounts:
        assert worker.encode(account) == own.encode(account) == stored[account.account_id]
    assert store.upsert_accounts(sample_accounts, now=LATER).unchanged == len(sample_accounts)


def test_ids_the_joined_lookup_cannot_carry_are_still_found(
    store: Store, sample_accounts: list[Account]
) -> None:
    # Given accounts whose ids hold the separator the PostgreSQL lookup joins ids with
    odd = [replace(a, account_id=f"X\x1f{a.account_id}") for a in sample_accounts[:5]]
    assert store.upsert_accounts(odd + sample_accounts, now=NOW).inserted == len(odd) + len(
        sample_accounts
    )
    # Then a second upsert finds every stored row: nothing changes
    again = store.upsert_accounts(odd + sample_accounts, now=LATER)
    assert again.unchanged == len(odd) + len(sample_accounts)
