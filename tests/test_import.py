"""Account import: what ops see (through the CLI) and the row rules (table-driven)."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
import sqlalchemy as sa
import typer
from phonenumbers import timezone as phone_zones
from typer.testing import CliRunner, Result

from scheduler.cli_data import accounts_app, db_app, sample_portfolio
from scheduler.importer import ACCOUNT_COLUMNS, Defaults, PhoneBook, RowParser, known_zones
from scheduler.models import Account, AccountStatus, Flag
from scheduler.store import Store, head_revision
from scheduler.tables import audit_log
from tests.support.daemon import config_url

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
HEADER = ",".join(ACCOUNT_COLUMNS)


def cli_app() -> typer.Typer:
    """The data commands mounted as scheduler.cli mounts them."""
    app = typer.Typer()
    app.add_typer(db_app, name="db")
    app.add_typer(accounts_app, name="accounts")
    app.command("sample-portfolio")(sample_portfolio)
    return app


Run = Callable[..., Result]


@pytest.fixture
def remind(store: Store, tmp_path: Path) -> Iterator[Run]:
    """``remind(*args)``: runs a data command against ``store`` (both backends) with a
    config.toml whose borrower defaults are Shanghai / CN / zh-CN / CNY."""
    url = config_url(store)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[ops]\ntimezone = "Asia/Shanghai"\n'
        '[borrower_defaults]\ntimezone = "Asia/Shanghai"\ncountry = "CN"\n'
        'language = "zh-CN"\ncurrency = "CNY"\n',
        encoding="utf-8",
    )
    app = cli_app()
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, [*args, "--config", str(config)])

    yield run


def write_csv(path: Path, rows: list[dict[str, str]], header: str = HEADER) -> Path:
    columns = header.split(",")
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def row(account_id: str, **fields: str) -> dict[str, str]:
    values = {
        "account_id": account_id,
        "phone": "+8613812345678",
        "due_date": "2026-11-21",
        "amount_due": "1000.00",
    }
    values.update(fields)
    return values


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --- user-visible behaviour ---------------------------------------------------------------


def test_good_rows_go_in_and_bad_rows_to_the_rejects_file(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    # Given a file with two good rows and three bad ones (lines 3, 5 and 6)
    source = write_csv(
        tmp_path / "accounts.csv",
        [
            row("A1"),
            row("A2", phone="+86123"),
            row("A3", email="ops@example.com"),
            row("A4", due_date="2026/11/21", amount_due="-5"),
            row("", flags="dispute;frozen"),
        ],
    )
    # When it is imported
    result = remind("accounts", "import", str(source))
    # Then the good rows are in, the run says what happened, and exit code is 1
    assert result.exit_code == 1, result.output
    assert store.account("A1", now=NOW) is not None
    assert store.account("A3", now=NOW) is not None
    assert store.account("A2", now=NOW) is None
    assert "5 rows read, 2 inserted, 0 updated, 0 unchanged, 3 rejected" in result.stdout
    assert "row 3, phone: not a valid international number" in flat(result.stderr)
    # And every bad row is in the rejects file with row, column and reason
    rejects = read_rejects(tmp_path / "accounts.rejects.csv")
    assert [(r["row"], r["column"]) for r in rejects] == [
        ("3", "phone"),
        ("5", "due_date;amount_due"),
        ("6", "account_id;flags"),
    ]
    assert rejects[0]["account_id"] == "A2"
    assert rejects[0]["phone"] == "+86123"
    assert "unknown flag 'frozen'" in rejects[2]["reason"]


def test_strict_imports_nothing_when_a_row_is_bad(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1"), row("A2", status="frozen"), row("A3")])

    result = remind("accounts", "import", str(source), "--strict")

    assert result.exit_code == 1
    assert "--strict: nothing was imported" in result.stdout
    assert store.account("A1", now=NOW) is None
    assert store.account("A3", now=NOW) is None
    assert [r["column"] for r in read_rejects(tmp_path / "a.rejects.csv")] == ["status"]


def test_reimporting_the_same_file_changes_nothing(remind: Run, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1"), row("A2")])
    assert remind("accounts", "import", str(source)).exit_code == 0

    result = remind("accounts", "import", str(source))

    assert result.exit_code == 0
    assert "0 inserted, 0 updated, 2 unchanged, 0 rejected" in result.stdout
    assert not (tmp_path / "a.rejects.csv").exists()


def test_a_later_file_with_a_payment_updates_the_account(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    remind("accounts", "import", str(write_csv(tmp_path / "mon.csv", [row("A1"), row("A2")])))
    tuesday = write_csv(tmp_path / "tue.csv", [row("A1", amount_paid="250.5"), row("A2")])

    result = remind("accounts", "import", str(tuesday))

    assert "0 inserted, 1 updated, 1 unchanged" in result.stdout
    account = store.account("A1", now=NOW)
    assert account is not None
    assert account.amount_paid == Decimal("250.5")


def _counted(store: Store) -> float:
    """How many accounts PostgreSQL's planner thinks there are (as its last ANALYZE saw)."""
    with store.engine.connect() as conn:
        found = conn.scalar(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = 'accounts'::regclass")
        )
    return float(found)


def test_postgresql_knows_the_accounts_after_a_large_import(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    # (without it PostgreSQL plans the next dry-run's reads for the table it last analysed,
    # or for an empty one; this server runs no autovacuum)
    if store.backend != "postgresql":
        pytest.skip("SQLite keeps no planner statistics unless asked")

    def imported(name: str, first: int, count: int) -> None:
        rows = [row(f"A{n:04d}") for n in range(first, first + count)]
        assert remind("accounts", "import", str(write_csv(tmp_path / name, rows))).exit_code == 0

    # When 300 accounts are imported into an empty store, its statistics count them
    imported("big.csv", 0, 300)
    assert _counted(store) == 300
    # An import that adds fewer rows than autovacuum waits for (50 and a tenth) leaves them
    imported("few.csv", 300, 70)
    assert _counted(store) == 300
    # and one that adds more analyses the table again
    imported("more.csv", 370, 81)
    assert _counted(store) == 451


def test_zone_and_country_come_from_the_phone_or_the_defaults(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    source = write_csv(
        tmp_path / "a.csv",
        [
            row("cn", phone="+86 138 1234 5678"),
            row("us-one-zone", phone="+12125550123"),
            row("us-two-zones", phone="+16055550123"),
            row("explicit", phone="+16055550123", timezone="America/Chicago", country="us"),
            row("no-phone", phone=""),
        ],
    )
    assert remind("accounts", "import", str(source)).exit_code == 0

    def where(account_id: str) -> tuple[tuple[str, ...], str, str | None]:
        account = store.account(account_id, now=NOW)
        assert account is not None
        return account.timezones, account.country, account.phone

    assert where("cn") == (("Asia/Shanghai",), "CN", "+8613812345678")
    assert where("us-one-zone") == (("America/New_York",), "US", "+12125550123")
    assert where("us-two-zones")[0] == ("America/Denver", "America/North_Dakota/Center")
    assert where("explicit")[:2] == (("America/Chicago",), "US")
    assert where("no-phone") == (("Asia/Shanghai",), "CN", None)


def test_json_lines_work(remind: Run, store: Store, tmp_path: Path) -> None:
    source = tmp_path / "accounts.jsonl"
    lines = [
        {"account_id": "J1", "due_date": "2026-11-21", "amount_due": 12.34, "flags": ["no_sms"]},
        {"account_id": "J2", "due_date": "2026-11-21", "amount_due": "1", "phone": None},
        "not an object",
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n{broken\n"
    source.write_text(text, encoding="utf-8")

    result = remind("accounts", "import", str(source))

    assert result.exit_code == 1
    assert "4 rows read, 2 inserted" in result.stdout
    j1 = store.account("J1", now=NOW)
    assert j1 is not None
    assert (j1.amount_due, j1.flags) == (Decimal("12.34"), frozenset({Flag.NO_SMS}))
    rejects = read_rejects(tmp_path / "accounts.rejects.csv")
    assert [r["row"] for r in rejects] == ["3", "5"]


def test_missing_required_columns_is_a_clear_error(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1")], header="account_id,phone,amount_due")

    result = remind("accounts", "import", str(source))

    assert result.exit_code == 2
    assert "missing required column(s): due_date" in flat(result.stderr)
    assert store.account("A1", now=NOW) is None


def test_unknown_columns_are_ignored_with_a_warning(remind: Run, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1")], header=HEADER + ",branch,segment")

    result = remind("accounts", "import", str(source))

    assert result.exit_code == 0
    assert "ignored unknown column(s): branch, segment" in flat(result.stderr)
    assert "1 inserted" in result.stdout


def test_a_fixed_rejects_file_imports_as_it_is(remind: Run, store: Store, tmp_path: Path) -> None:
    remind("accounts", "import", str(write_csv(tmp_path / "a.csv", [row("A1", phone="+861")])))
    rejects = tmp_path / "a.rejects.csv"
    fixed = rejects.read_text(encoding="utf-8").replace("+861,", "+8613812345678,")
    (tmp_path / "fixed.csv").write_text(fixed, encoding="utf-8")

    result = remind("accounts", "import", str(tmp_path / "fixed.csv"))

    assert result.exit_code == 0, result.output
    assert store.account("A1", now=NOW) is not None


def test_row_numbers_are_file_lines(remind: Run, tmp_path: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_text(
        f"{HEADER}\n"
        'A1,"Li\nLei",+8613812345678,,,,,,2026-11-21,10,,,,,\n'
        "\n"
        "A2,,+8613812345678,,,,,,2026-13-01,10,,,,,\n",
        encoding="utf-8",
    )

    result = remind("accounts", "import", str(source))

    assert "row 5, due_date: not a date YYYY-MM-DD: '2026-13-01'" in flat(result.stderr)


def test_file_level_problems_exit_2(remind: Run, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(HEADER + "\n", encoding="utf-8")
    (tmp_path / "b.csv").write_bytes(HEADER.encode() + b"\nA1,\xff\xfe,,,,,,,2026-11-21,1,,,,,\n")

    unknown = remind("accounts", "import", str(tmp_path / "a.txt"))
    latin = remind("accounts", "import", str(tmp_path / "b.csv"))
    forced = remind("accounts", "import", str(tmp_path / "a.txt"), "--format", "csv")

    assert unknown.exit_code == 2
    assert "--format" in flat(unknown.stderr)
    assert latin.exit_code == 2
    assert "not UTF-8" in flat(latin.stderr)
    assert forced.exit_code == 0
    assert remind("accounts", "import", str(tmp_path / "none.csv")).exit_code == 2


def test_one_audit_event_per_import(remind: Run, store: Store, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1"), row("A2"), row("A3", amount_due="x")])
    remind("accounts", "import", str(source))

    with store.engine.connect() as conn:
        events = conn.execute(sa.select(audit_log.c.kind, audit_log.c.detail)).all()

    assert [kind for kind, _ in events] == ["accounts_import"]
    detail = json.loads(events[0].detail)
    assert detail["file"] == "a.csv"
    assert (detail["rows"], detail["inserted"], detail["rejected"]) == (3, 2, 1)
    assert detail["committed"] is True


def test_same_account_twice_in_a_file_last_row_wins(
    remind: Run, store: Store, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "a.csv", [row("A1"), row("A1", amount_paid="10")])

    result = remind("accounts", "import", str(source))

    assert "1 inserted, 1 updated" in result.stdout
    account = store.account("A1", now=NOW)
    assert account is not None
    assert account.amount_paid == Decimal(10)


def test_db_commands_show_and_upgrade_the_schema(remind: Run) -> None:
    current = remind("db", "current")
    upgrade = remind("db", "upgrade")

    assert current.exit_code == 0
    assert f"current: {head_revision()}" in current.stdout
    assert "up to date" in current.stdout
    assert upgrade.exit_code == 0
    assert f"already at revision {head_revision()}" in upgrade.stdout


# --- the row rules ------------------------------------------------------------------------

DEFAULTS = Defaults("Asia/Shanghai", "CN", "zh-CN", "CNY")


@pytest.mark.parametrize(
    ("fields", "column", "reason"),
    [
        ({"account_id": ""}, "account_id", "required"),
        ({"account_id": "x" * 65}, "account_id", "at most 64"),
        ({"due_date": ""}, "due_date", "required"),
        ({"due_date": "21/11/2026"}, "due_date", "not a date"),
        ({"due_date": "2026-02-30"}, "due_date", "not a date"),
        ({"amount_due": ""}, "amount_due", "required"),
        ({"amount_due": "1,000"}, "amount_due", "not a number"),
        ({"amount_due": "-1"}, "amount_due", "from 0"),
        ({"amount_due": "NaN"}, "amount_due", "from 0"),
        ({"amount_paid": "0.00001"}, "amount_paid", "more than 4 decimal places"),
        ({"phone": "13812345678"}, "phone", "international"),
        ({"phone": "+1 201 055 0123"}, "phone", "international"),
        ({"email": "li@@example.com"}, "email", "not a valid email"),
        ({"email": "li@localhost"}, "email", "not a valid email"),
        ({"timezone": "Asia/Peking"}, "timezone", "unknown time zone 'Asia/Peking'"),
        ({"country": "CHN"}, "country", "not a valid country code"),
        ({"currency": "RMB1"}, "currency", "not a valid currency code"),
        ({"status": "handed_over"}, "status", "active or closed"),
        ({"flags": "dispute;vip"}, "flags", "unknown flag 'vip'"),
        ({"emergency_contacts": "+8613912345678;12345"}, "emergency_contacts", "number 2"),
    ],
)
def test_bad_values_are_reported(fields: dict[str, str], column: str, reason: str) -> None:
    problems = RowParser(DEFAULTS).parse({**row("A1"), **fields})
    assert isinstance(problems, list)
    assert [c for c, _ in problems] == [column]
    assert reason in problems[0][1]


def test_a_full_row_becomes_an_account() -> None:
    values = row(
        "A1",
        name="李雷",
        email="li.lei@example.cn",
        timezone="Asia/Shanghai",
        country="cn",
        language="zh-CN",
        product="card",
        amount_paid="0.1000",
        currency="cny",
        status="Closed",
        flags="no_sms; DISPUTE;",
        emergency_contacts="+86 139 1234 5678; +8613712345678",
    )
    assert RowParser(DEFAULTS).parse(values) == Account(
        account_id="A1",
        due_date=date(2026, 11, 21),
        amount_due=Decimal("1000"),
        amount_paid=Decimal("0.1"),
        timezones=("Asia/Shanghai",),
        country="CN",
        name="李雷",
        phone="+8613812345678",
        email="li.lei@example.cn",
        language="zh-CN",
        product="card",
        currency="CNY",
        status=AccountStatus.CLOSED,
        flags=frozenset({Flag.NO_SMS, Flag.DISPUTE}),
        emergency_contacts=("+8613912345678", "+8613712345678"),
    )


def test_phone_book_agrees_with_phonenumbers() -> None:
    rng = random.Random(11)
    codes = (1, 7, 33, 39, 44, 49, 52, 55, 61, 81, 86, 91, 234, 800, 870, 852, 979)
    texts = [
        f"+{rng.choice(codes)}"
        + "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 12)))
        for _ in range(4000)
    ] + ["+390612345678", "+11212555012", "+78001234567", "+4407911123456", "+1 (212) 555-0123"]
    book = PhoneBook()
    for text in texts:
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException:
            assert book.parse(text) is None, text
            continue
        mine = book.parse(text)
        if not phonenumbers.is_valid_number(number):
            assert mine is None, text
            continue
        assert mine is not None, text
        assert mine.number == number
        assert mine.kind == phonenumbers.number_type(number)
        assert mine.region == phonenumbers.region_code_for_number(number)
        assert mine.e164 == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert book.zones(mine) == zones_as_the_library_says(number)


def zones_as_the_library_says(number: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    found = phone_zones.time_zones_for_number(number)
    return tuple(sorted(z for z in found if z != "Etc/Unknown" and z in known_zones()))


def test_phone_book_agrees_with_phonenumbers_in_every_country() -> None:
    # Given numbers for every country calling code: half random digits, half the
    # library's example numbers (of every type) with their tails changed, so many are valid
    rng = random.Random(5)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    texts = []
    for _ in range(6000):
        code = rng.choice(codes)
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 13)))
        region = rng.choice(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code])
        example = None
        if region != "001" and rng.random() < 0.5:
            example = phonenumbers.example_number_for_type(region, rng.randrange(11))
        if example is not None and example.country_code == code:
            national = str(example.national_number)
            keep = rng.randint(len(national) // 2, len(national))
            tail = "".join(rng.choice("0123456789") for _ in range(len(national) - keep))
            digits = national[:keep] + tail
        texts.append(f"+{code}{digits}")
    book = PhoneBook()
    valid = 0
    for text in texts:
        # When both read it; then they agree on validity, type, region, E.164 and zones
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException:
            assert book.parse(text) is None, text
            continue
        mine = book.parse(text)
        if not phonenumbers.is_valid_number(number):
            assert mine is None, text
            continue
        valid += 1
        assert mine is not None, text
        assert (mine.number, mine.kind, mine.region) == (
            number, phonenumbers.number_type(number), phonenumbers.region_code_for_number(number)
        ), text  # fmt: skip
        assert book.zones(mine) == zones_as_the_library_says(number), text
    assert valid > 1000
