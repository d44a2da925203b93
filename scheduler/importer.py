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

Rows are checked in batches (``_batches``): in this process, or, for a large file with
``parse_workers`` > 1, by worker processes that each read the file and check every N-th
batch while this process writes the batches in file order (``_Workers``). Either way the
same checks run on the same records and the same rows reach the store in the same order,
in the same one transaction, with the same rejects.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import multiprocessing
import operator
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from pathlib import Path
from queue import Empty, Full
from typing import IO, Any, NamedTuple, TypeVar
from zoneinfo import available_timezones

import phonenumbers
from phonenumbers import timezone as phone_zones

from scheduler.config import Settings
from scheduler.errors import ImportFileError, StoreError
from scheduler.models import Account, AccountStatus, Flag
from scheduler.store import UPSERT_BATCH, AccountRows, Store, UpsertCounts

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
_T = TypeVar("_T")
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
_FIXED_LINE = phonenumbers.PhoneNumberType.FIXED_LINE
_MOBILE = phonenumbers.PhoneNumberType.MOBILE
_FIXED_OR_MOBILE = phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE
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
    """One ``PhoneNumberDesc``: its possible lengths (none: any) and its pattern."""

    lengths: frozenset[int]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, desc: Any) -> _Desc:
        if desc is None or not desc.national_number_pattern:
            return cls(frozenset(), None)
        return cls(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))

    def at(self, length: int) -> re.Pattern[str] | None:
        """The pattern, if a number of ``length`` digits can match this description."""
        if self.lengths and length not in self.lengths:
            return None
        return self.pattern


@dataclass(frozen=True, slots=True)
class _LengthPlan:
    """A region's number-type rules for national numbers of one length, as one pattern:
    the general description as a lookahead, then the special types (in order), fixed line
    and mobile as alternatives, each a named group (``kinds``: group -> type). Only the
    descriptions whose possible lengths allow this length are in it; ``None``: no number
    of this length is valid. ``mobile`` is for a fixed-line match (mobile too?)."""

    pattern: re.Pattern[str] | None
    kinds: Mapping[str, int]
    mobile: re.Pattern[str] | None


class _RegionTypes:
    """``phonenumbers``' number-type rules for one region, patterns compiled once.

    Gives what ``phonenumberutil._number_type_helper`` gives: the general pattern must
    match, then the first special type (premium rate, toll free...) that matches, else fixed
    line (or fixed line or mobile, when the mobile pattern matches too or both are the
    same), else mobile, else unknown. The library re-looks-up each pattern in ``re``'s
    cache on every call, which made it most of an import's time; here, per national number
    length, all of them are one compiled alternation (fullmatch takes the first alternative
    that matches the whole number, as the library's order does), so a mobile number costs
    one match. ``test_import.py`` checks that both agree (type, validity, region and zones)
    on many numbers.
    """

    def __init__(self, meta: Any) -> None:
        self.leading = re.compile(meta.leading_digits) if meta.leading_digits else None
        self._general = _Desc.of(meta.general_desc)
        special = ((_Desc.of(getattr(meta, name)), kind) for name, kind in _SPECIAL_TYPES)
        self._special = tuple((d, k) for d, k in special if d.pattern is not None)  # in order
        self._fixed = _Desc.of(meta.fixed_line)
        self._mobile = _Desc.of(meta.mobile)
        self._same = bool(meta.same_mobile_and_fixed_line_pattern)
        self._plans: dict[int, _LengthPlan] = {}

    def kind(self, national: str) -> int:
        plan = self._plans.get(len(national))
        if plan is None:
            plan = self._plans[len(national)] = self._plan(len(national))
        if plan.pattern is None:
            return _UNKNOWN
        match = plan.pattern.fullmatch(national)
        if match is None or match.lastgroup is None:
            return _UNKNOWN
        kind = plan.kinds[match.lastgroup]
        if kind == _FIXED_LINE and plan.mobile is not None and plan.mobile.fullmatch(national):
            return _FIXED_OR_MOBILE
        return kind

    def _plan(self, length: int) -> _LengthPlan:
        general = self._general.at(length)
        if general is None:
            return _LengthPlan(None, {}, None)
        alternatives: list[tuple[re.Pattern[str], int]] = [
            (pattern, kind)
            for desc, kind in self._special
            if (pattern := desc.at(length)) is not None
        ]
        fixed, mobile = self._fixed.at(length), self._mobile.at(length)
        if fixed is not None:
            alternatives.append((fixed, _FIXED_OR_MOBILE if self._same else _FIXED_LINE))
        if mobile is not None and not self._same:
            alternatives.append((mobile, _MOBILE))
        if not alternatives:
            return _LengthPlan(None, {}, None)
        names = {f"t{i}": kind for i, (_, kind) in enumerate(alternatives)}
        body = "|".join(f"(?P<t{i}>{p.pattern})" for i, (p, _) in enumerate(alternatives))
        pattern = re.compile(rf"(?=(?:{general.pattern})\Z)(?:{body})")
        return _LengthPlan(pattern, names, None if self._same else mobile)


class Phone(NamedTuple):
    """A valid number: its E.164 text, country calling code, ``PhoneNumberType`` and region
    (``phonenumbers.region_code_for_number``); ``number`` is the parsed number. (A named
    tuple, not a dataclass: two are made per row of an import, and this is 3x cheaper.)"""

    e164: str
    code: int
    kind: int
    region: str
    parsed: phonenumbers.PhoneNumber | None = None  # when the general parser read it

    @property
    def number(self) -> phonenumbers.PhoneNumber:
        """The number as ``phonenumbers.parse`` returns it."""
        if self.parsed is not None:
            return self.parsed
        national = int(self.e164[len(str(self.code)) + 1 :])
        return phonenumbers.PhoneNumber(country_code=self.code, national_number=national)


class PhoneBook:
    """Validates numbers and finds their zones and region; what ``phonenumbers.parse``,
    ``number_type``/``is_valid_number``, ``region_code_for_number`` and
    ``timezone.time_zones_for_number`` answer, at a fraction of the cost:

    * plain ``+digits`` text skips the general parser whenever that cannot change the result
      (no leading zero, no national prefix that ``parse`` would strip), and no
      ``PhoneNumber`` is built for it;
    * the number-type patterns are compiled once per region (``_RegionTypes``);
    * a geographical number's zones are looked up by its leading digits directly, trying
      only the prefix lengths the zone data has for that country code;
    * zone lists are cleaned once per distinct list.
    """

    def __init__(self) -> None:
        self._prefix_patterns: dict[int, re.Pattern[str] | None] = {}
        self._regions: dict[tuple[int, str], _RegionTypes | None] = {}
        self._country_zones: dict[int, tuple[str, ...]] = {}
        self._zone_prefixes: dict[int, tuple[int, ...]] = {}

    def parse(self, text: str) -> Phone | None:
        """The number if ``text`` is a valid international number (``+`` and country code),
        else ``None``."""
        parsed = None
        found = self._fast_parse(text)
        if found is None:
            try:
                parsed = phonenumbers.parse(text, None)
            except phonenumbers.NumberParseException:
                return None
            code = parsed.country_code or 0
            national = phonenumbers.national_significant_number(parsed)
            e164 = f"+{code}{national}"
        else:
            code, national = found
            e164 = text  # "+" code national, as read
        region, kind = self._classify(code, national)
        if kind == _UNKNOWN or region is None:
            return None
        return Phone(e164, code, kind, region, parsed)

    def zones(self, phone: Phone) -> tuple[str, ...]:
        """The IANA zones of the number, sorted; empty when unknown."""
        code = phone.code
        if phonenumbers.is_number_type_geographical(phone.kind, code):
            # phone_zones.time_zones_for_geographical_number: the longest prefix of the
            # E.164 digits that the zone data knows
            digits = phone.e164[1:]
            for length in self._zone_prefix_lengths(code):
                found = _ZONE_DATA.get(digits[:length])
                if found is not None:
                    return _clean_zones(found)
            return ()
        if code not in self._country_zones:
            found_zones = phone_zones.time_zones_for_number(phone.number)
            self._country_zones[code] = _clean_zones(tuple(found_zones))
        return self._country_zones[code]

    def _zone_prefix_lengths(self, code: int) -> tuple[int, ...]:
        """The lengths, longest first, of the zone data's prefixes that a number with
        country code ``code`` can start with."""
        lengths = self._zone_prefixes.get(code)
        if lengths is None:
            cc = str(code)
            lengths = tuple(
                sorted({len(k) for k in _ZONE_DATA if k.startswith(cc) or cc.startswith(k)},
                       reverse=True)
            )  # fmt: skip
            self._zone_prefixes[code] = lengths
        return lengths

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

    def _fast_parse(self, text: str) -> tuple[int, str] | None:
        """(country code, national number) of plain ``+digits`` text, when
        ``phonenumbers.parse`` would read it so; else ``None`` (use the general parser)."""
        match = _E164_DIGITS.fullmatch(text)
        if match is None:
            return None
        digits = match.group(1)
        found = _country_code_of(digits[:3])
        if found is None:
            return None
        code, length = found
        national = digits[length:]
        if len(national) < 2 or national[0] == "0":
            return None
        pattern = self._national_prefix(code)
        if pattern is not None and pattern.match(national):
            return None
        return code, national

    def _national_prefix(self, code: int) -> re.Pattern[str] | None:
        if code not in self._prefix_patterns:
            region = phonenumbers.region_code_for_country_code(code)
            meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            text = meta.national_prefix_for_parsing if meta is not None else None
            self._prefix_patterns[code] = re.compile(text) if text else None
        return self._prefix_patterns[code]


_ZONE_DATA: Mapping[str, tuple[str, ...]] = phone_zones.TIMEZONE_DATA  # type: ignore[attr-defined]


@cache
def _country_code_of(first_digits: str) -> tuple[int, int] | None:
    """(country calling code, its length in digits) of a number starting with
    ``first_digits`` (three digits); ``None`` when no code matches. Codes are prefix-free,
    so the first of the 1-, 2- and 3-digit prefixes that is a code is the code."""
    for length in (1, 2, 3):
        code = int(first_digits[:length])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return code, length
    return None


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
    """Turns one record into an ``Account``, or lists every ``(column, reason)`` wrong with
    it. ``parse`` takes known column -> stripped text (absent columns missing or empty);
    ``parse_fields`` the stripped texts of every ``ACCOUNT_COLUMNS`` column, in that order
    (what the importer's readers make: no dict per row)."""

    def __init__(self, defaults: Defaults, phones: PhoneBook | None = None) -> None:
        self._defaults = defaults
        self._phones = phones or PhoneBook()

    def parse(self, values: Mapping[str, str]) -> Account | list[tuple[str, str]]:
        """An ``Account``, or the problems found (never both)."""
        get = values.get
        return self.parse_fields(tuple(get(column) or "" for column in ACCOUNT_COLUMNS))

    def parse_fields(self, fields: Sequence[str]) -> Account | list[tuple[str, str]]:
        """``parse`` of the ``ACCOUNT_COLUMNS`` texts, in that order."""
        return self.parse_into(fields, Account)

    def parse_into(
        self, fields: Sequence[str], make: Callable[..., _T]
    ) -> _T | list[tuple[str, str]]:
        """``parse_fields``, with ``make`` (called with ``Account``'s keywords) in place of
        ``Account``: the import makes its store rows so (``AccountRows.row``)."""
        (account_id, name, phone_text, email_text, timezone, country_text, language, product,
         due_text, due_amount, paid_amount, currency_text, status_text, flags_text,
         emergency) = fields  # fmt: skip
        problems = _Problems()
        _check_id(account_id, problems)
        due_date = _date(due_text, "due_date", problems, required=True)
        amount_due = _amount(due_amount, "amount_due", problems, required=True)
        amount_paid = _amount(paid_amount, "amount_paid", problems, required=False)
        phone = self._phone(phone_text, problems)
        contacts = self._emergency(emergency, problems)
        zones = self._zones(timezone, phone, problems)
        country = self._country(country_text, phone, problems)
        currency = _code(currency_text, "currency", problems) or self._defaults.currency
        status = _status(status_text, problems)
        flags = _flags(flags_text, problems)
        email = _email(email_text, problems)
        if problems or due_date is None or amount_due is None:
            return list(problems)
        return make(
            account_id=account_id,
            due_date=due_date,
            amount_due=amount_due,
            amount_paid=amount_paid or _ZERO,
            timezones=zones,
            country=country,
            name=name or None,
            phone=phone.e164 if phone else None,
            email=email,
            language=language or self._defaults.language,
            product=product,
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
#: An amount that is surely from 0 to below ``MAX_AMOUNT`` with at most 4 decimal places.
_PLAIN_AMOUNT = re.compile(r"[0-9]{1,14}(?:\.[0-9]{1,4})?")


def _check_id(text: str, problems: _Problems) -> None:
    if not text:
        problems.add("account_id", "required")
    elif len(text) > MAX_ID_LENGTH or not text.isprintable():
        problems.add("account_id", f"must be at most {MAX_ID_LENGTH} printable characters")


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
    if _PLAIN_AMOUNT.fullmatch(text):  # passes every check below: skip them
        return Decimal(text)
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
    code, valid = _upper_code(text, column)
    if not valid:
        problems.add(column, f"not a valid {column} code: {text!r}")
    return code


@lru_cache(maxsize=1024)
def _upper_code(text: str, column: str) -> tuple[str, bool]:
    """``text`` upper-cased, and whether it is empty or a valid ``column`` code (a file
    has few distinct ones)."""
    code = text.upper()
    return code, not code or _CODES[column].fullmatch(code) is not None


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
    columns, unknown = _csv_header(reader, name, spec)
    return _Source(columns, _csv_records(reader, columns, name, spec.known_set), unknown)


def _csv_header(reader: Any, name: str, spec: Columns) -> tuple[tuple[str, ...], set[str]]:
    """The header's columns (lowercase) and the unknown ones; raises ``ImportFileError``
    for an empty file, a column named twice or a required one missing."""
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
    return columns, {c for c in columns if c not in known_set}


def _csv_records(
    reader: Any, columns: tuple[str, ...], name: str, known_set: frozenset[str] = _KNOWN
) -> Iterator[_Record]:
    width = len(columns)
    known = [(column, i) for i, column in enumerate(columns) if column in known_set]
    for start, fields in _csv_fields(reader, name):
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


# --- account records, checked in batches ----------------------------------------------------

#: A record as read, written back to the rejects file: CSV fields or a JSON/row mapping.
_Original = Sequence[str] | Mapping[str, Any]
#: Turns one raw record (row number, what was read) into the ``ACCOUNT_COLUMNS`` texts, or
#: the problem that makes it unreadable, and its original; adds unknown keys to the set.
_Decode = Callable[[int, Any, set[str]], tuple["tuple[str, ...] | RowProblem", _Original]]


@dataclass(frozen=True, slots=True)
class _AccountFile:
    """An accounts file opened for reading: its columns (the rejects file's too), the
    unknown ones (CSV header), its raw records and how to decode one."""

    columns: tuple[str, ...]
    unknown: set[str]
    records: Iterator[tuple[int, Any]]
    decode: _Decode


def _open_accounts(handle: IO[str], fmt: str, name: str) -> _AccountFile:
    """Open an accounts file (``csv`` or ``jsonl``). Its records raise ``ImportFileError``
    (with the line) where the file stops being readable. Raises ``ImportFileError`` when
    the header is unusable."""
    if fmt == "csv":
        reader = csv.reader(handle)
        columns, unknown = _csv_header(reader, name, _ACCOUNTS)
        return _AccountFile(columns, unknown, _csv_fields(reader, name), _CsvDecoder(columns))
    return _AccountFile(ACCOUNT_COLUMNS, set(), _jsonl_lines(handle, name), _decode_json)


def _csv_fields(reader: Any, name: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) of every non-empty record."""
    while True:
        start = reader.line_num + 1
        try:
            fields: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(f"{name}: line {start}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{name}: not UTF-8 text: {exc.reason}") from exc
        if fields:
            yield start, fields


class _CsvDecoder:
    """CSV fields -> the ``ACCOUNT_COLUMNS`` texts, stripped (absent columns empty)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self._width = len(columns)
        self._index = tuple(columns.index(c) if c in columns else -1 for c in ACCOUNT_COLUMNS)
        self._take = None if -1 in self._index else operator.itemgetter(*self._index)

    def __call__(
        self, number: int, fields: list[str], unknown: set[str]
    ) -> tuple[tuple[str, ...] | RowProblem, _Original]:
        width = self._width
        if len(fields) < width:
            fields += [""] * (width - len(fields))
        elif len(fields) > width and any(f.strip() for f in fields[width:]):
            return RowProblem(number, "", f"{len(fields)} fields, the header has {width}"), fields
        if self._take is not None:
            return tuple(map(str.strip, self._take(fields))), fields
        return tuple(fields[i].strip() if i >= 0 else "" for i in self._index), fields


def _jsonl_lines(handle: IO[str], name: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every non-blank line."""
    try:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{name}: not UTF-8 text: {exc.reason}") from exc


def _decode_json(
    number: int, line: str, unknown: set[str]
) -> tuple[tuple[str, ...] | RowProblem, _Original]:
    try:
        record = json.loads(line, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        return RowProblem(number, "", f"not valid JSON: {exc.msg}"), {}
    if not isinstance(record, dict):
        return RowProblem(number, "", "not a JSON object"), {}
    return _decode_mapping(number, record, unknown)


def _decode_mapping(
    number: int, record: Mapping[str, Any], unknown: set[str]
) -> tuple[tuple[str, ...] | RowProblem, _Original]:
    unknown.update(k for k in record if k not in _KNOWN)
    get = record.get
    return tuple(_cell(get(c)).strip() for c in ACCOUNT_COLUMNS), record


@dataclass(slots=True)
class _Batch:
    """Consecutive records of the input, checked: how many were read, the good ones as
    store rows (``AccountRows``), the bad ones in order with how many good rows came before
    each, the unknown JSON keys met, and the error that ended the input inside this batch
    (raised once the batch is taken)."""

    records: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[int, _Original, list[RowProblem]]] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    error: Exception | None = None


class _Checker:
    """Checks records one by one into a ``_Batch``: decode, ``RowParser``, encode."""

    def __init__(self, decode: _Decode, parser: RowParser, rows: AccountRows) -> None:
        self._decode = decode
        self._parse = parser.parse_into
        self._row = rows.row

    def add(self, batch: _Batch, number: int, raw: Any) -> None:
        batch.records += 1
        values, original = self._decode(number, raw, batch.unknown)
        if isinstance(values, RowProblem):
            batch.rejects.append((len(batch.rows), original, [values]))
            return
        try:
            result = self._parse(values, self._row)
        except ValueError as exc:  # ScaledDecimal: more than four decimal places
            raise StoreError(f"cannot import accounts: {exc}") from exc
        if isinstance(result, list):
            problems = [RowProblem(number, column, why) for column, why in result]
            batch.rejects.append((len(batch.rows), original, problems))
        else:
            batch.rows.append(result)


def _batches(
    records: Iterator[tuple[int, Any]],
    checker: _Checker,
    size: int,
    *,
    share: int = 0,
    shares: int = 1,
) -> Iterator[_Batch]:
    """The records in batches of ``size``, checked; only batch numbers ``k`` with
    ``k % shares == share`` (the others are read, not checked: a parse worker's share).
    When reading fails (``ImportFileError``), the batch it failed in ends with that error,
    and nothing follows."""
    k = 0
    count = 0
    batch: _Batch | None = _Batch() if share == 0 else None
    try:
        for number, raw in records:
            if count == size:
                if batch is not None:
                    yield batch
                k, count = k + 1, 0
                batch = _Batch() if k % shares == share else None
            count += 1
            if batch is not None:
                checker.add(batch, number, raw)
    except (ImportFileError, StoreError) as exc:
        if batch is not None:
            batch.error = exc
            yield batch
        return
    if batch is not None and count:
        yield batch


# --- parse workers ------------------------------------------------------------------------

#: Files smaller than this are checked in the importing process whatever ``parse_workers``
#: says: starting a worker (a new interpreter importing remind) costs about half a second.
PARALLEL_MIN_BYTES = 4 << 20
#: Checked batches each worker may have waiting for the importing process.
_QUEUE_DEPTH = 3
#: How often the importing process, waiting for a batch, checks that the worker is alive.
_POLL_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class _Share:
    """What one parse worker checks: batch ``k`` of ``path`` when ``k % shares == share``."""

    path: Path
    fmt: str
    defaults: Defaults
    driver: str
    batch_size: int
    share: int
    shares: int


@dataclass(frozen=True, slots=True)
class _WorkerFailed:
    """A parse worker's last message when it failed: what went wrong."""

    reason: str


def _check_share(share: _Share, out: Any) -> None:
    """A parse worker process: put each checked batch of its share on ``out``, then
    ``None``; or, if it fails, a ``_WorkerFailed``. Ctrl-C is left to the importing process
    (which ends the workers); a worker whose importing process is gone stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with share.path.open(encoding="utf-8-sig", newline="") as handle:
            source = _open_accounts(handle, share.fmt, share.path.name)
            rows = AccountRows.for_driver(share.driver)
            checker = _Checker(source.decode, RowParser(share.defaults), rows)
            size = share.batch_size
            for batch in _batches(
                source.records, checker, size, share=share.share, shares=share.shares
            ):
                _put(out, batch)
        _put(out, None)
    except Exception as exc:  # the importing process reports it and rolls back
        _put(out, _WorkerFailed(f"{type(exc).__name__}: {exc}"))
        raise


def _put(out: Any, message: _Batch | _WorkerFailed | None) -> None:
    """``out.put(message)``, waiting while the queue is full, unless the importing process
    has gone (then this worker exits)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            out.put(message, timeout=_POLL_SECONDS)
            return
        except Full:
            if parent is not None and not parent.is_alive():
                out.cancel_join_thread()  # nobody will read what is still in the pipe
                raise SystemExit(1) from None


def _start_method() -> str:
    """``fork`` when this process runs no other thread (``remind accounts import``): a
    worker then starts at once with the modules already imported, where ``spawn`` costs a
    new interpreter importing remind (about 1.5 s of CPU each). With other threads running
    (a daemon), forking is unsafe: ``spawn``."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


class _Workers:
    """``count`` parse worker processes over one file. Each reads the whole file (reading
    is cheap; checking is not) and checks every ``count``-th batch, so batch ``k`` comes
    from worker ``k % count``; ``batches`` reads them back in file order. Each worker's
    queue holds at most ``_QUEUE_DEPTH`` batches: memory stays bounded whatever the file's
    size. Workers are daemonic and ended by ``close``; they touch nothing of this process
    but the file and their queue. When forked, the objects they inherit are frozen out of
    their garbage collector first (``gc.freeze``): a worker never finalises this process's
    database connections."""

    def __init__(self, share_of: Callable[[int, int], _Share], count: int) -> None:
        method = _start_method()
        context: Any = multiprocessing.get_context(method)  # typeshed: BaseContext
        self._queues = [context.Queue(maxsize=_QUEUE_DEPTH) for _ in range(count)]
        self._processes = [
            context.Process(
                target=_check_share,
                args=(share_of(i, count), queue),
                name=f"remind-import-parse-{i + 1}",
                daemon=True,
            )
            for i, queue in enumerate(self._queues)
        ]
        if method == "fork":
            gc.freeze()
        try:
            for process in self._processes:
                process.start()
        except BaseException:
            self.close()
            raise
        finally:
            if method == "fork":
                gc.unfreeze()

    def batches(self) -> Iterator[_Batch]:
        """Every checked batch, in file order. Raises ``ImportFileError`` when a worker
        fails or dies."""
        for k in itertools.count():
            message = self._take(k % len(self._processes))
            if message is None:
                return
            yield message

    def _take(self, i: int) -> _Batch | None:
        queue, process = self._queues[i], self._processes[i]
        message: _Batch | _WorkerFailed | None
        while True:
            try:
                message = queue.get(timeout=_POLL_SECONDS)
                break
            except Empty:
                if process.is_alive():
                    continue
            try:  # it may have put its last message just before it ended
                message = queue.get(timeout=_POLL_SECONDS)
                break
            except Empty:
                raise ImportFileError(
                    f"parse worker {i + 1} of {len(self._processes)} stopped "
                    f"(exit code {process.exitcode}); nothing was imported"
                ) from None
        if isinstance(message, _WorkerFailed):
            raise ImportFileError(
                f"parse worker {i + 1} of {len(self._processes)} failed: {message.reason}; "
                "nothing was imported"
            )
        return message

    def close(self) -> None:
        """End every worker (they may be blocked on a full queue) and wait for them."""
        started = [p for p in self._processes if p.pid is not None]
        for process in started:
            if process.is_alive():
                process.terminate()
        for process in started:
            process.join(timeout=10)
        for queue in self._queues:
            queue.close()


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
    parse_workers: int = 1,
) -> ImportReport:
    """Import ``path`` into ``store`` (see the module docstring) and record one
    ``accounts_import`` audit event. Bad rows go to ``rejects_path`` (default:
    ``rejects_path_for(path)``). Returns the report; raises ``ImportFileError`` when the
    file as a whole is unusable (then nothing is imported) and ``StoreError``.

    ``parse_workers`` (config ``[import] parse_workers``): 1 checks every row in this
    process; N > 1 starts N worker processes that read and check the rows (each every N-th
    batch) while this process writes them, in file order, in the same one transaction. The
    result is the same either way: rows stored, counts, rejects file, report. A worker that
    fails or dies raises ``ImportFileError`` (nothing is imported). Files under
    ``PARALLEL_MIN_BYTES`` are always checked in this process."""
    fmt = detect_format(path, fmt)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from exc
    workers: _Workers | None = None
    with handle:
        try:
            source = _open_accounts(handle, fmt, path.name)
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{path.name}: not UTF-8 text: {exc.reason}") from exc
        rejects = Rejects(rejects_path or rejects_path_for(path), source.columns)
        run = _Run(rejects, source.unknown)
        try:
            if parse_workers > 1 and path.stat().st_size >= PARALLEL_MIN_BYTES:
                handle.close()
                driver = store.engine.url.drivername

                def share_of(share: int, shares: int) -> _Share:
                    return _Share(path, fmt, defaults, driver, batch_size, share, shares)

                workers = _Workers(share_of, parse_workers)
                batches = workers.batches()
            else:
                rows = AccountRows(store.engine.dialect)
                checker = _Checker(source.decode, RowParser(defaults), rows)
                batches = _batches(source.records, checker, batch_size)
            counts = run.into(store, batches, now=now, strict=strict, batch_size=batch_size)
        finally:
            if workers is not None:
                workers.close()
    report = run.report(path, fmt, counts, strict=strict)
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
    run = _Run(Rejects(rejects_path, ACCOUNT_COLUMNS), set())
    checker = _Checker(_decode_mapping, RowParser(defaults), AccountRows(store.engine.dialect))
    batches = _batches(enumerate(rows, 1), checker, batch_size)
    counts = run.into(store, batches, now=now, strict=False, batch_size=batch_size)
    report = run.report(Path(label), "rows", counts, strict=False)
    if report.rows_read:
        _audit(store, report, now=now, strict=False)
    return report


class _Run:
    """One pass over the checked batches: good rows to the store in file order, bad ones
    to the rejects file."""

    def __init__(self, rejects: Rejects, unknown: set[str]) -> None:
        self.rejects = rejects
        self.unknown = set(unknown)
        self.rows = 0

    def into(
        self, store: Store, batches: Iterator[_Batch], *, now: datetime, strict: bool,
        batch_size: int,
    ) -> UpsertCounts:  # fmt: skip
        """Import every good row in one transaction; with ``strict``, roll back if any row
        was bad. Returns what was committed."""
        try:
            with store.importing(now=now, batch_size=batch_size) as imp:
                self.consume(batches, imp.add_rows, batch_size, strict=strict)
                if strict and self.rejects.count:
                    imp.rollback()
        finally:
            self.rejects.close()
        return UpsertCounts() if imp.rolled_back else imp.counts

    def report(self, path: Path, fmt: str, counts: UpsertCounts, *, strict: bool) -> ImportReport:
        return ImportReport(
            path=path,
            format=fmt,
            rows_read=self.rows,
            rejected=self.rejects.count,
            counts=counts,
            committed=not (strict and self.rejects.count),
            rejects_path=self.rejects.path if self.rejects.count else None,
            problems=tuple(self.rejects.shown),
            unknown_columns=tuple(sorted(self.unknown)),
            rejected_ids=tuple(self.rejects.ids),
        )

    def consume(
        self,
        batches: Iterator[_Batch],
        add: Callable[[list[tuple[Any, ...]]], object],
        batch_size: int,
        *,
        strict: bool,
    ) -> None:
        """Take every batch in order: bad rows to the rejects file, good ones to ``add`` in
        chunks of ``batch_size`` (none once a row was bad under ``strict``: the rest are only
        checked, for the rejects file). A batch's error is raised after its rows."""
        pending: list[tuple[Any, ...]] = []
        stopped = False  # strict, and a row was bad

        def feed(rows: list[tuple[Any, ...]]) -> None:
            pending.extend(rows)
            while len(pending) >= batch_size:
                add(pending[:batch_size])
                del pending[:batch_size]

        for batch in batches:
            self.rows += batch.records
            self.unknown |= batch.unknown
            start = 0
            for before, original, problems in batch.rejects:
                if not stopped:
                    feed(batch.rows[start:before])
                start = before
                self.rejects.add(original, problems)
                if strict:
                    stopped = True
                    pending.clear()
            if not stopped:
                feed(batch.rows[start:])
            if batch.error is not None:
                raise batch.error
        if pending:
            add(pending)


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
