"""Account import: a CSV or JSON Lines file -> validated ``Account`` values -> the store.

The file is streamed (bounded memory at any size); ``import_rows`` does the same for rows
read elsewhere (an account source's query). Every row is checked; good rows are upserted by
account_id in ONE transaction, bad ones are written with their row number, column and
reason to ``<stem>.rejects.csv`` beside the input (an older one is removed
first). ``strict`` imports nothing when any row is bad. Importing the same file twice
changes nothing; a later file with a bigger ``amount_paid`` is how payments arrive.

Columns (``ACCOUNT_COLUMNS``): ``account_id``, ``due_date`` and ``amount_due`` are required;
the others may be empty. Unknown columns are ignored with a warning (``ImportReport.
unknown_columns``), so a fixed rejects file, which carries ``row``/``column``/``reason``,
can be imported as it is. An empty ``timezone`` is taken from the phone number (all its
zones, sorted, when it spans several), else the configured default; an empty ``country``
from the phone's region, else the default; ``language`` and ``currency`` from the defaults.
Row numbers are what a person counts in the file: for CSV the line where the record starts
(the header is line 1), for JSON Lines the line number.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from pathlib import Path
from typing import IO, Any
from zoneinfo import available_timezones

import phonenumbers
from phonenumbers import timezone as phone_zones

from scheduler.config import Settings
from scheduler.errors import ImportFileError
from scheduler.models import Account, AccountStatus, Flag
from scheduler.store import UPSERT_BATCH, Store, UpsertCounts

__all__ = [
    "ACCOUNT_COLUMNS",
    "FORMATS",
    "REQUIRED_COLUMNS",
    "Columns",
    "Defaults",
    "ImportFileError",
    "ImportReport",
    "PhoneBook",
    "Rejects",
    "RowParser",
    "RowProblem",
    "detect_format",
    "import_accounts",
    "import_rows",
    "open_source",
    "rejects_path_for",
]

ACCOUNT_COLUMNS = (
    "account_id", "name", "phone", "email", "timezone", "country", "language", "product",
    "due_date", "amount_due", "amount_paid", "currency", "status", "flags",
    "emergency_contacts",
)  # fmt: skip
REQUIRED_COLUMNS = ("account_id", "due_date", "amount_due")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REJECT_COLUMNS = ("row", "column", "reason")
#: How many problems an ``ImportReport`` keeps (all are in the rejects file).
SHOWN_PROBLEMS = 20
MAX_AMOUNT = Decimal(10) ** 14  # BIGINT ten-thousandths leave room for 9.2e14
MAX_ID_LENGTH = 64

_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_E164_DIGITS = re.compile(r"\+([1-9]\d{5,16})")
_LIST_SPLIT = re.compile(r"[\s;]+")
_STATUSES = {"active": AccountStatus.ACTIVE, "closed": AccountStatus.CLOSED}
_FLAGS = {f.value: f for f in Flag}


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One reason one row was rejected: where (row number, column) and why."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}, {self.column}" if self.column else f"row {self.row}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Defaults:
    """What an empty column means (config ``[borrower_defaults]``)."""

    timezone: str = "UTC"
    country: str = ""
    language: str = "en"
    currency: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        return cls(
            settings.default_timezone,
            settings.default_country,
            settings.default_language,
            settings.default_currency,
        )


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did. ``counts`` are zero unless ``committed``. ``rejected_ids`` are the
    account ids of the first rejected rows (those that had one)."""

    path: Path
    format: str
    rows_read: int
    rejected: int
    counts: UpsertCounts
    committed: bool
    rejects_path: Path | None
    problems: tuple[RowProblem, ...] = ()
    unknown_columns: tuple[str, ...] = ()
    rejected_ids: tuple[str, ...] = ()


# --- phones -------------------------------------------------------------------------------

_UNKNOWN = phonenumbers.PhoneNumberType.UNKNOWN
_SPECIAL_TYPES = (
    ("premium_rate", phonenumbers.PhoneNumberType.PREMIUM_RATE),
    ("toll_free", phonenumbers.PhoneNumberType.TOLL_FREE),
    ("shared_cost", phonenumbers.PhoneNumberType.SHARED_COST),
    ("voip", phonenumbers.PhoneNumberType.VOIP),
    ("personal_number", phonenumbers.PhoneNumberType.PERSONAL_NUMBER),
    ("pager", phonenumbers.PhoneNumberType.PAGER),
    ("uan", phonenumbers.PhoneNumberType.UAN),
    ("voicemail", phonenumbers.PhoneNumberType.VOICEMAIL),
)


@dataclass(frozen=True, slots=True)
class _Desc:
    """One ``PhoneNumberDesc`` with its pattern compiled once."""

    lengths: frozenset[int]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, desc: Any) -> _Desc:
        if desc is None or not desc.national_number_pattern:
            return cls(frozenset(), None)
        return cls(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))

    def matches(self, national: str) -> bool:
        if self.pattern is None:
            return False
        if self.lengths and len(national) not in self.lengths:
            return False
        return self.pattern.fullmatch(national) is not None


class _RegionTypes:
    """``phonenumbers``' number-type rules for one region, patterns compiled once.

    Mirrors ``phonenumberutil._number_type_helper`` step by step; the library re-looks-up
    each pattern in ``re``'s cache on every call, which made it most of an import's time.
    ``test_import.py`` checks that both agree (type, validity and region) on many numbers.
    """

    def __init__(self, meta: Any) -> None:
        self.leading = re.compile(meta.leading_digits) if meta.leading_digits else None
        self.general = _Desc.of(meta.general_desc)
        special = ((_Desc.of(getattr(meta, name)), kind) for name, kind in _SPECIAL_TYPES)
        self.special = tuple((d, k) for d, k in special if d.pattern is not None)  # in order
        self.fixed = _Desc.of(meta.fixed_line)
        self.mobile = _Desc.of(meta.mobile)
        self.same = bool(meta.same_mobile_and_fixed_line_pattern)

    def kind(self, national: str) -> int:
        if not self.general.matches(national):
            return _UNKNOWN
        for desc, kind in self.special:
            if desc.matches(national):
                return kind
        if self.fixed.matches(national):
            if self.same or self.mobile.matches(national):
                return phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE
            return phonenumbers.PhoneNumberType.FIXED_LINE
        if not self.same and self.mobile.matches(national):
            return phonenumbers.PhoneNumberType.MOBILE
        return _UNKNOWN


@dataclass(frozen=True, slots=True)
class Phone:
    """A valid number: its E.164 text, the parsed number, its ``PhoneNumberType`` and its
    region (``phonenumbers.region_code_for_number``)."""

    e164: str
    number: phonenumbers.PhoneNumber
    kind: int
    region: str


class PhoneBook:
    """Validates numbers and finds their zones and region; what ``phonenumbers.parse``,
    ``number_type``/``is_valid_number``, ``region_code_for_number`` and
    ``timezone.time_zones_for_number`` answer, at a fraction of the cost:

    * plain ``+digits`` text skips the general parser whenever that cannot change the result
      (no leading zero, no national prefix that ``parse`` would strip);
    * the number-type patterns are compiled once per region (``_RegionTypes``);
    * zone lists are cleaned once per distinct list.
    """

    def __init__(self) -> None:
        self._prefix_patterns: dict[int, re.Pattern[str] | None] = {}
        self._regions: dict[tuple[int, str], _RegionTypes | None] = {}
        self._country_zones: dict[int, tuple[str, ...]] = {}

    def parse(self, text: str) -> Phone | None:
        """The number if ``text`` is a valid international number (``+`` and country code),
        else ``None``."""
        number = self._fast_parse(text)
        if number is None:
            try:
                number = phonenumbers.parse(text, None)
            except phonenumbers.NumberParseException:
                return None
        national = phonenumbers.national_significant_number(number)
        region, kind = self._classify(number.country_code or 0, national)
        if kind == _UNKNOWN or region is None:
            return None
        return Phone(f"+{number.country_code}{national}", number, kind, region)

    def zones(self, phone: Phone) -> tuple[str, ...]:
        """The IANA zones of the number, sorted; empty when unknown."""
        code = phone.number.country_code or 0
        if phonenumbers.is_number_type_geographical(phone.kind, code):
            return _clean_zones(tuple(phone_zones.time_zones_for_geographical_number(phone.number)))
        if code not in self._country_zones:
            found = phone_zones.time_zones_for_number(phone.number)
            self._country_zones[code] = _clean_zones(tuple(found))
        return self._country_zones[code]

    def _classify(self, code: int, national: str) -> tuple[str | None, int]:
        """(region, type) as ``region_code_for_number`` and ``number_type`` compute them."""
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
        if len(regions) == 1:
            types = self._types(code, regions[0])
            return regions[0], types.kind(national) if types else _UNKNOWN
        for region in regions:
            types = self._types(code, region)
            if types is None:
                continue
            if types.leading is not None:
                if types.leading.match(national):
                    return region, types.kind(national)
                continue
            kind = types.kind(national)
            if kind != _UNKNOWN:
                return region, kind
        return None, _UNKNOWN

    def _types(self, code: int, region: str) -> _RegionTypes | None:
        key = (code, region)  # non-geographic codes (800, 870...) share the region "001"
        if key not in self._regions:
            meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            self._regions[key] = _RegionTypes(meta) if meta is not None else None
        return self._regions[key]

    def _fast_parse(self, text: str) -> phonenumbers.PhoneNumber | None:
        match = _E164_DIGITS.fullmatch(text)
        if match is None:
            return None
        digits = match.group(1)
        for length in (1, 2, 3):
            code = int(digits[:length])
            if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                break
        else:
            return None
        national = digits[length:]
        if len(national) < 2 or national[0] == "0":
            return None
        pattern = self._national_prefix(code)
        if pattern is not None and pattern.match(national):
            return None
        return phonenumbers.PhoneNumber(country_code=code, national_number=int(national))

    def _national_prefix(self, code: int) -> re.Pattern[str] | None:
        if code not in self._prefix_patterns:
            region = phonenumbers.region_code_for_country_code(code)
            meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            text = meta.national_prefix_for_parsing if meta is not None else None
            self._prefix_patterns[code] = re.compile(text) if text else None
        return self._prefix_patterns[code]


@cache
def _clean_zones(zones: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(z for z in zones if z != "Etc/Unknown" and z in known_zones()))


@cache
def known_zones() -> frozenset[str]:
    """Every IANA zone name this Python knows (computed once)."""
    return frozenset(available_timezones())


# --- one row ------------------------------------------------------------------------------


class _Problems(list[tuple[str, str]]):
    def add(self, column: str, reason: str) -> None:
        self.append((column, reason))


class RowParser:
    """Turns one record (known column -> stripped text; absent columns missing or empty)
    into an ``Account``, or lists every ``(column, reason)`` wrong with it."""

    def __init__(self, defaults: Defaults, phones: PhoneBook | None = None) -> None:
        self._defaults = defaults
        self._phones = phones or PhoneBook()

    def parse(self, values: Mapping[str, str]) -> Account | list[tuple[str, str]]:
        """An ``Account``, or the problems found (never both)."""
        get = values.get
        problems = _Problems()
        account_id = _account_id(get("account_id", ""), problems)
        due_date = _date(get("due_date", ""), "due_date", problems, required=True)
        amount_due = _amount(get("amount_due", ""), "amount_due", problems, required=True)
        amount_paid = _amount(get("amount_paid", ""), "amount_paid", problems, required=False)
        phone = self._phone(get("phone", ""), problems)
        contacts = self._emergency(get("emergency_contacts", ""), problems)
        zones = self._zones(get("timezone", ""), phone, problems)
        country = self._country(get("country", ""), phone, problems)
        currency = _code(get("currency", ""), "currency", problems) or self._defaults.currency
        status = _status(get("status", ""), problems)
        flags = _flags(get("flags", ""), problems)
        email = _email(get("email", ""), problems)
        if problems or due_date is None or amount_due is None:
            return list(problems)
        return Account(
            account_id=account_id,
            due_date=due_date,
            amount_due=amount_due,
            amount_paid=amount_paid or _ZERO,
            timezones=zones,
            country=country,
            name=get("name") or None,
            phone=phone.e164 if phone else None,
            email=email,
            language=get("language") or self._defaults.language,
            product=get("product", ""),
            currency=currency,
            status=status,
            flags=flags,
            emergency_contacts=contacts,
        )

    def _phone(self, text: str, problems: _Problems) -> Phone | None:
        if not text:
            return None
        phone = self._phones.parse(text)
        if phone is None:
            problems.add("phone", "not a valid international number (e.g. +8613812345678)")
        return phone

    def _emergency(self, text: str, problems: _Problems) -> tuple[str, ...]:
        if not text:
            return ()
        numbers: list[str] = []
        for n, item in enumerate(filter(None, (p.strip() for p in text.split(";"))), 1):
            phone = self._phones.parse(item)
            if phone is None:
                problems.add(
                    "emergency_contacts", f"number {n} is not a valid international number"
                )
            else:
                numbers.append(phone.e164)
        return tuple(numbers)

    def _zones(self, text: str, phone: Phone | None, problems: _Problems) -> tuple[str, ...]:
        if text:
            names, unknown = _zone_list(text)
            if unknown:
                problems.add("timezone", f"unknown time zone {unknown!r}")
            return names
        derived = self._phones.zones(phone) if phone is not None else ()
        return derived or (self._defaults.timezone,)

    def _country(self, text: str, phone: Phone | None, problems: _Problems) -> str:
        if text:
            return _code(text, "country", problems)
        if phone is not None and phone.region != "001":
            return phone.region
        return self._defaults.country


_ZERO = Decimal(0)
_TEN_THOUSANDTH = Decimal("0.0001")
_CODES = {"country": _COUNTRY, "currency": _CURRENCY}


def _account_id(text: str, problems: _Problems) -> str:
    if not text:
        problems.add("account_id", "required")
    elif len(text) > MAX_ID_LENGTH or not text.isprintable():
        problems.add("account_id", f"must be at most {MAX_ID_LENGTH} printable characters")
    return text


@lru_cache(maxsize=4096)
def _iso_date(text: str) -> date | None:
    if not _DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _date(text: str, column: str, problems: _Problems, *, required: bool) -> date | None:
    if not text:
        if required:
            problems.add(column, "required")
        return None
    found = _iso_date(text)
    if found is None:
        problems.add(column, f"not a date YYYY-MM-DD: {text!r}")
    return found


def _amount(text: str, column: str, problems: _Problems, *, required: bool) -> Decimal | None:
    if not text:
        if required:
            problems.add(column, "required")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        problems.add(column, f"not a number: {text!r}")
        return None
    if not value.is_finite() or value < 0 or value >= MAX_AMOUNT:
        problems.add(column, f"must be a number from 0 to {MAX_AMOUNT}: {text!r}")
        return None
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4 and value != value.quantize(_TEN_THOUSANDTH):
        problems.add(column, f"more than 4 decimal places: {text!r}")
        return None
    return value


@lru_cache(maxsize=1024)
def _zone_list(text: str) -> tuple[tuple[str, ...], str | None]:
    """The zone names in ``text`` (one, or several split by spaces or ';') and the first
    unknown one."""
    names = tuple(filter(None, _LIST_SPLIT.split(text)))
    unknown = next((z for z in names if z not in known_zones()), None)
    return names, unknown


def _code(text: str, column: str, problems: _Problems) -> str:
    code = text.upper()
    if code and not _CODES[column].fullmatch(code):
        problems.add(column, f"not a valid {column} code: {text!r}")
    return code


def _status(text: str, problems: _Problems) -> AccountStatus:
    if not text:
        return AccountStatus.ACTIVE
    found = _STATUSES.get(text) or _STATUSES.get(text.lower())
    if found is None:
        problems.add("status", f"must be active or closed: {text!r}")
        return AccountStatus.ACTIVE
    return found


def _flags(text: str, problems: _Problems) -> frozenset[Flag]:
    if not text:
        return frozenset()
    found: set[Flag] = set()
    for name in filter(None, (p.strip().lower() for p in text.split(";"))):
        flag = _FLAGS.get(name)
        if flag is None:
            problems.add("flags", f"unknown flag {name!r} (known: {', '.join(_FLAGS)})")
        else:
            found.add(flag)
    return frozenset(found)


def _email(text: str, problems: _Problems) -> str | None:
    if not text:
        return None
    if not _EMAIL.fullmatch(text):
        problems.add("email", "not a valid email address")
    return text


# --- files --------------------------------------------------------------------------------


def detect_format(path: Path, fmt: str | None) -> str:
    """``csv`` or ``jsonl``: ``fmt`` if given, else from the extension. Raises
    ``ImportFileError`` for anything else."""
    if fmt is not None:
        if fmt not in ("csv", "jsonl"):
            raise ImportFileError(f"unknown format {fmt!r}: use csv or jsonl")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ImportFileError(
            f"{path.name}: cannot tell the format from the extension; "
            "use .csv, .jsonl or .ndjson, or pass --format"
        )
    return found


def rejects_path_for(path: Path) -> Path:
    """Where the rejects of ``path`` go: ``<stem>.rejects.csv`` beside it."""
    return path.with_name(f"{path.stem}.rejects.csv")


#: One input record: its row number, the known columns' stripped text (or the reason it
#: could not be read at all), and the original fields (for the rejects file).
_Record = tuple[int, "dict[str, str] | RowProblem", "Sequence[str] | Mapping[str, Any]"]
_KNOWN = frozenset(ACCOUNT_COLUMNS)


@dataclass
class _Source:
    """An open input file: its columns (the rejects file's too) and its records."""

    columns: tuple[str, ...]
    records: Iterator[_Record]
    unknown: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Columns:
    """The columns of one kind of input file: every known one (in order, for the rejects
    file of a JSON Lines input) and the required ones."""

    known: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def known_set(self) -> frozenset[str]:
        return frozenset(self.known)


_ACCOUNTS = Columns(ACCOUNT_COLUMNS, REQUIRED_COLUMNS)


def open_source(handle: IO[str], fmt: str, name: str, columns: Columns) -> _Source:
    """Open ``handle`` (``csv`` or ``jsonl``) for ``columns``: its records are (row number,
    known column -> stripped text or the ``RowProblem`` that makes the row unreadable,
    original fields). Raises ``ImportFileError`` when the file as a whole is unusable."""
    if fmt == "csv":
        return _open_csv(handle, name, columns)
    return _open_jsonl(handle, columns)


def _open_csv(handle: IO[str], name: str, spec: Columns = _ACCOUNTS) -> _Source:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError(f"{name}: the file is empty (no header line)") from None
    except csv.Error as exc:
        raise ImportFileError(f"{name}: line 1: {exc}") from exc
    columns = tuple(c.strip().lower() for c in header)
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise ImportFileError(f"{name}: column(s) named twice: {', '.join(duplicates)}")
    missing = [c for c in spec.required if c not in columns]
    if missing:
        raise ImportFileError(
            f"{name}: missing required column(s): {', '.join(missing)} "
            f"(the header has: {', '.join(columns) or 'nothing'})"
        )
    known_set = spec.known_set
    unknown = {c for c in columns if c not in known_set}
    return _Source(columns, _csv_records(reader, columns, name, known_set), unknown)


def _csv_records(
    reader: Any, columns: tuple[str, ...], name: str, known_set: frozenset[str] = _KNOWN
) -> Iterator[_Record]:
    width = len(columns)
    known = [(column, i) for i, column in enumerate(columns) if column in known_set]
    while True:
        start = reader.line_num + 1
        try:
            fields: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(f"{name}: line {start}: {exc}") from exc
        if not fields:
            continue
        if len(fields) < width:
            fields += [""] * (width - len(fields))
        elif len(fields) > width and any(f.strip() for f in fields[width:]):
            problem = RowProblem(start, "", f"{len(fields)} fields, the header has {width}")
            yield start, problem, fields
            continue
        yield start, {column: fields[i].strip() for column, i in known}, fields


def _open_jsonl(handle: IO[str], spec: Columns = _ACCOUNTS) -> _Source:
    source = _Source(spec.known, iter(()))
    source.records = _jsonl_records(handle, source.unknown, spec.known_set)
    return source


def _jsonl_records(
    handle: IO[str], unknown: set[str], known: frozenset[str] = _KNOWN
) -> Iterator[_Record]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            yield number, RowProblem(number, "", f"not valid JSON: {exc.msg}"), {}
            continue
        if not isinstance(record, dict):
            yield number, RowProblem(number, "", "not a JSON object"), {}
            continue
        unknown.update(k for k in record if k not in known)
        values = {k: _cell(v).strip() for k, v in record.items() if k in known}
        yield number, values, record


class Rejects:
    """The rejects file, opened on the first bad row: original fields + row/column/reason
    (no file when ``path`` is None). Keeps the first ``SHOWN_PROBLEMS`` problems and
    rejected account ids for the report."""

    def __init__(self, path: Path | None, columns: tuple[str, ...]) -> None:
        self.path = path
        self.count = 0
        self.shown: list[RowProblem] = []
        self.ids: list[str] = []
        self._columns = columns
        self._fields = tuple(c for c in columns if c not in REJECT_COLUMNS) + REJECT_COLUMNS
        self._handle: IO[str] | None = None
        self._writer: csv.DictWriter[str] | None = None
        if path is not None:
            path.unlink(missing_ok=True)

    def add(self, original: Sequence[str] | Mapping[str, Any], problems: list[RowProblem]) -> None:
        self.count += 1
        self.shown.extend(problems[: SHOWN_PROBLEMS - len(self.shown)])
        if isinstance(original, Mapping):
            pairs: Iterable[tuple[str, Any]] = original.items()
        else:  # a CSV row; fields beyond the header are dropped (the reason says so)
            pairs = zip(self._columns, original, strict=False)
        row = {k: _cell(v) for k, v in pairs if k in self._fields}
        if row.get("account_id") and len(self.ids) < SHOWN_PROBLEMS:
            self.ids.append(row["account_id"])
        if self.path is None:
            return
        row.update(
            row=str(problems[0].row),
            column=";".join(p.column for p in problems),
            reason="; ".join(p.reason for p in problems),
        )
        self._open(self.path).writerow(row)

    def _open(self, path: Path) -> csv.DictWriter[str]:
        if self._writer is None:
            self._handle = path.open("w", encoding="utf-8", newline="")
            self._writer = csv.DictWriter(
                self._handle, fieldnames=self._fields, lineterminator="\n", extrasaction="ignore"
            )
            self._writer.writeheader()
        return self._writer

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


# --- the import ---------------------------------------------------------------------------


def import_accounts(
    store: Store,
    path: Path,
    *,
    defaults: Defaults,
    now: datetime,
    fmt: str | None = None,
    strict: bool = False,
    batch_size: int = UPSERT_BATCH,
    rejects_path: Path | None = None,
) -> ImportReport:
    """Import ``path`` into ``store`` (see the module docstring) and record one
    ``accounts_import`` audit event. Bad rows go to ``rejects_path`` (default:
    ``rejects_path_for(path)``). Returns the report; raises ``ImportFileError`` when the
    file as a whole is unusable (then nothing is imported) and ``StoreError``."""
    fmt = detect_format(path, fmt)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle:
        try:
            source = open_source(handle, fmt, path.name, _ACCOUNTS)
            rejects = Rejects(rejects_path or rejects_path_for(path), source.columns)
            run = _Run(RowParser(defaults), rejects)
            counts = run.into(store, source, now=now, strict=strict, batch_size=batch_size)
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{path.name}: not UTF-8 text: {exc.reason}") from exc
    report = run.report(path, fmt, counts, source.unknown, strict=strict)
    _audit(store, report, now=now, strict=strict)
    return report


def import_rows(
    store: Store,
    rows: Iterable[Mapping[str, Any]],
    *,
    label: str,
    defaults: Defaults,
    now: datetime,
    batch_size: int = UPSERT_BATCH,
    rejects_path: Path | None = None,
) -> ImportReport:
    """Import ``rows`` (column name -> value, as a database returns them: text, numbers,
    dates, ``None``, lists) exactly as a file's records are: the same checks, good rows
    upserted in ONE transaction, bad ones counted, kept in the report (row numbers count
    from 1 in ``rows``' order, with their account ids) and, when ``rejects_path`` is given,
    written there. Unknown keys are ignored. ``rows`` is consumed lazily, so an exception it
    raises midway (the source went away) rolls everything back and propagates. Records one
    ``accounts_import`` audit event named ``label`` when there were rows (a source polled
    every minute would otherwise fill the audit log with empty runs; its ``source_runs`` rows
    say it ran). Raises ``StoreError``."""
    unknown: set[str] = set()

    def records() -> Iterator[_Record]:
        for number, row in enumerate(rows, 1):
            unknown.update(k for k in row if k not in _KNOWN)
            yield number, {k: _cell(v).strip() for k, v in row.items() if k in _KNOWN}, row

    run = _Run(RowParser(defaults), Rejects(rejects_path, ACCOUNT_COLUMNS))
    counts = run.into(store, _Source(ACCOUNT_COLUMNS, records()), now=now, strict=False,
                      batch_size=batch_size)  # fmt: skip
    report = run.report(Path(label), "rows", counts, unknown, strict=False)
    if report.rows_read:
        _audit(store, report, now=now, strict=False)
    return report


class _Run:
    """One pass over a file: parse, send good rows to the store, bad ones to the rejects."""

    def __init__(self, parser: RowParser, rejects: Rejects) -> None:
        self.parser = parser
        self.rejects = rejects
        self.rows = 0

    def into(
        self, store: Store, source: _Source, *, now: datetime, strict: bool, batch_size: int
    ) -> UpsertCounts:
        """Import every good row in one transaction; with ``strict``, roll back if any row
        was bad. Returns what was committed."""
        try:
            with store.importing(now=now, batch_size=batch_size) as imp:
                self.consume(source.records, imp.add, batch_size, strict=strict)
                if strict and self.rejects.count:
                    imp.rollback()
        finally:
            self.rejects.close()
        return UpsertCounts() if imp.rolled_back else imp.counts

    def report(
        self, path: Path, fmt: str, counts: UpsertCounts, unknown: set[str], *, strict: bool
    ) -> ImportReport:
        return ImportReport(
            path=path,
            format=fmt,
            rows_read=self.rows,
            rejected=self.rejects.count,
            counts=counts,
            committed=not (strict and self.rejects.count),
            rejects_path=self.rejects.path if self.rejects.count else None,
            problems=tuple(self.rejects.shown),
            unknown_columns=tuple(sorted(unknown)),
            rejected_ids=tuple(self.rejects.ids),
        )

    def consume(
        self,
        records: Iterator[_Record],
        add: Callable[[list[Account]], object],
        batch_size: int,
        *,
        strict: bool,
    ) -> None:
        """Parse every record; pass good ones to ``add`` in batches (none once a row was
        bad under ``strict``: the rest are only checked, for the rejects file)."""
        batch: list[Account] = []
        for number, values, original in records:
            self.rows += 1
            account = self._check(number, values, original)
            if account is None or (strict and self.rejects.count):
                continue
            batch.append(account)
            if len(batch) >= batch_size:
                add(batch)
                batch = []
        if batch and not (strict and self.rejects.count):
            add(batch)

    def _check(
        self,
        number: int,
        values: dict[str, str] | RowProblem,
        original: Sequence[str] | Mapping[str, Any],
    ) -> Account | None:
        if isinstance(values, RowProblem):
            self.rejects.add(original, [values])
            return None
        result = self.parser.parse(values)
        if isinstance(result, Account):
            return result
        self.rejects.add(original, [RowProblem(number, col, why) for col, why in result])
        return None


def _audit(store: Store, report: ImportReport, *, now: datetime, strict: bool) -> None:
    store.record_audit(
        "accounts_import",
        at=now,
        detail={
            "file": report.path.name,
            "format": report.format,
            "rows": report.rows_read,
            "inserted": report.counts.inserted,
            "updated": report.counts.updated,
            "unchanged": report.counts.unchanged,
            "rejected": report.rejected,
            "strict": strict,
            "committed": report.committed,
        },
    )
