"""The sample portfolio: deterministic, realistic enough for the demo, valid to import."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
import typer
from typer.testing import CliRunner

from scheduler.cli_data import sample_portfolio
from scheduler.importer import ACCOUNT_COLUMNS, Defaults, RowParser
from scheduler.models import Account
from scheduler.sample import REGIONS, SCENARIO_ROWS, generate_portfolio, write_csv

TODAY = date(2026, 11, 20)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return list(generate_portfolio(3000, TODAY, 7))


def test_same_arguments_same_portfolio(rows: list[dict[str, str]]) -> None:
    assert list(generate_portfolio(3000, TODAY, 7)) == rows
    assert list(generate_portfolio(50, TODAY, 8)) != rows[:50]
    shifted = list(generate_portfolio(50, TODAY + timedelta(days=1), 7))
    assert [r["account_id"] for r in shifted] == [r["account_id"] for r in rows[:50]]


def test_rows_have_the_import_columns_as_text(rows: list[dict[str, str]]) -> None:
    assert all(tuple(r) == ACCOUNT_COLUMNS for r in rows)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert len({r["account_id"] for r in rows}) == len(rows)


def test_every_number_is_valid(rows: list[dict[str, str]]) -> None:
    numbers = [r["phone"] for r in rows]
    numbers += [n for r in rows for n in r["emergency_contacts"].split(";") if n]
    invalid = [n for n in numbers if not phonenumbers.is_valid_number(phonenumbers.parse(n))]
    assert invalid == []


def test_every_prefix_is_valid_for_any_suffix() -> None:
    for region in REGIONS:
        for prefix in region.prefixes:
            for suffix in (region.lowest, 10**region.digits - 1, (10**region.digits) // 3):
                number = phonenumbers.parse(f"{prefix}{suffix:0{region.digits}d}")
                assert phonenumbers.is_valid_number(number), (prefix, suffix)
                assert phonenumbers.region_code_for_number(number) == region.country


def test_head_rows_give_tomorrow_work(rows: list[dict[str, str]]) -> None:
    head = rows[:SCENARIO_ROWS]
    offsets = Counter((date.fromisoformat(r["due_date"]) - TODAY).days for r in head)
    assert offsets == {1: 6, 3: 6, 0: 6, -1: 6}
    assert {(r["status"], r["amount_paid"], r["flags"]) for r in head} == {("active", "0", "")}


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_overdue_share_is_honoured(share: float) -> None:
    body = list(generate_portfolio(4000, TODAY, 3, overdue_share=share))[SCENARIO_ROWS:]
    dues = [date.fromisoformat(r["due_date"]) for r in body]
    overdue = sum(d < TODAY for d in dues) / len(dues)
    assert share - 0.03 < overdue < share + 0.03
    assert min(dues) >= TODAY - timedelta(days=101)
    assert max(dues) <= TODAY + timedelta(days=10)


def test_the_mix_the_demo_needs(rows: list[dict[str, str]]) -> None:
    zones = Counter(r["timezone"] for r in rows)
    assert zones.most_common(1)[0][0] == "Asia/Shanghai"
    assert {
        "America/New_York",
        "America/Los_Angeles",
        "Europe/London",
        "Australia/Sydney",
        "",
    } <= set(zones)
    paid = [Decimal(r["amount_paid"]) for r in rows]
    due = [Decimal(r["amount_due"]) for r in rows]
    assert any(p == d for p, d in zip(paid, due, strict=True))
    assert any(0 < p < d for p, d in zip(paid, due, strict=True))
    assert {"active", "closed"} == {r["status"] for r in rows}
    flags = {f for r in rows for f in r["flags"].split(";") if f}
    assert {"dispute", "cease", "complaint", "no_call", "no_sms"} <= flags
    assert any(r["emergency_contacts"] for r in rows)
    assert any(not r["email"] for r in rows)
    assert any("\u4e00" <= r["name"][0] <= "\u9fff" for r in rows)
    assert any(r["name"].isascii() for r in rows)
    assert {r["product"] for r in rows} == {"card", "loan"}
    currency = {"CN": "CNY", "US": "USD", "GB": "GBP", "AU": "AUD"}
    assert all(r["currency"] == currency[r["country"]] for r in rows if r["country"])


def test_every_row_imports_with_derived_zones(rows: list[dict[str, str]]) -> None:
    parser = RowParser(Defaults("Asia/Shanghai", "CN", "zh-CN", "CNY"))
    accounts = [parser.parse(r) for r in rows]
    assert all(isinstance(a, Account) for a in accounts)
    derived = [a for a, r in zip(accounts, rows, strict=True) if not r["timezone"]]
    assert derived
    assert all(isinstance(a, Account) and len(a.timezones) == 1 for a in derived)


def test_csv_writer_and_command(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "portfolio.csv"
    assert write_csv(generate_portfolio(5, TODAY, 7), out) == 5
    with out.open(encoding="utf-8", newline="") as handle:
        assert list(csv.DictReader(handle)) == list(generate_portfolio(5, TODAY, 7))

    app = typer.Typer()
    app.command("sample-portfolio")(sample_portfolio)
    app.command("unused")(lambda: None)  # a second command keeps "sample-portfolio" a name
    second = tmp_path / "second.csv"
    result = CliRunner().invoke(
        app, ["sample-portfolio", "--out", str(second), "--accounts", "5", "--today", "2026-11-20"]
    )
    assert result.exit_code == 0, result.output
    assert second.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    bad = CliRunner().invoke(app, ["sample-portfolio", "--out", str(second), "--today", "soon"])
    assert bad.exit_code == 2


def test_default_today_is_the_ops_zone_today(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ops]\ntimezone = "Pacific/Kiritimati"\n', encoding="utf-8")
    app = typer.Typer()
    app.command("sample-portfolio")(sample_portfolio)
    app.command("unused")(lambda: None)
    out = tmp_path / "p.csv"
    args = ["sample-portfolio", "--out", str(out), "--accounts", "1", "--config", str(config)]

    result = CliRunner().invoke(app, args)

    kiritimati = datetime.now(UTC) + timedelta(hours=14)
    assert result.exit_code == 0, result.output
    assert f"today {kiritimati.date().isoformat()}" in result.stdout
