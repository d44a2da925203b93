"""Message templates: one Jinja2 file per template name, channel and language, rendered into
the text (and, for email, the subject and HTML) that a channel sends.

Files live in ``<dir>/<language>/<template>.<channel>.j2``. ``Templates.load`` reads a list of
directories, first match wins: ops' ``<policy dir>/templates`` first, then the files shipped in
``policies/templates``, so ops override one file by copying it. ``<language>/_common.j2``
holds the wording every message of a language shares (ways to pay, opting out); a template
imports it as ``{% import "./_common.j2" as common %}`` ("./" is the template's own folder).

An email file has ``{% block subject %}``, ``{% block text %}`` and (optional)
``{% block html %}``. The html block is compiled with autoescaping on, every other block
and every other channel with it off: a borrower called ``<b>Li & Co</b>`` is escaped in the
HTML part and literal in an SMS, a call script or the plain-text part.

Undefined variables are errors (``StrictUndefined``). Every Jinja error is mapped here to
``RenderError`` (a ``PolicyError`` with one problem naming the file and line), so a caller
that handles ``RemindError`` never sees a vendor exception.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
)
from jinja2.runtime import Context

from policies.loader import PolicySet
from policies.schema import Target
from scheduler.errors import PolicyError, PolicyProblem
from scheduler.lint import letter_gaps, lint_sources
from scheduler.models import Account, Channel

__all__ = [
    "SHIPPED_TEMPLATES",
    "RenderError",
    "Rendered",
    "Templates",
    "check_templates",
    "context_for",
    "format_date",
    "format_money",
    "sample_account",
    "sms_segments",
    "template_dirs",
]

SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "policies" / "templates"
COMMON = "_common.j2"
FALLBACK_LANGUAGE = "en"
EMAIL_BLOCKS = ("subject", "text", "html")
_SUFFIX = ".j2"
#: Exceptions template code can raise besides Jinja's own (``{{ balance + 1 }}``, ``x[9]``).
_TEMPLATE_FAILURES = (TemplateError, TypeError, ValueError, ArithmeticError, LookupError)


class RenderError(PolicyError):
    """A template could not be rendered: missing file, undefined variable, bad expression.

    ``problem`` names the template file and line (when known) and what went wrong.
    """

    def __init__(self, problem: PolicyProblem) -> None:
        super().__init__([problem])
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered message. ``subject`` and ``html`` are empty except for email;
    ``language`` is the folder the file came from, ``source`` the file's path."""

    subject: str
    text: str
    html: str
    language: str
    source: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One effective template file, compiled once for text and (email only) for HTML."""

    name: str
    source: Path
    text: Template
    html: Template | None


def template_dirs(policy_dir: Path) -> list[Path]:
    """Where templates are looked up for a policy directory: its ``templates/``, then the
    shipped ones (once, if the policy directory is the shipped one)."""
    dirs = [(policy_dir / "templates").resolve(), SHIPPED_TEMPLATES]
    return list(dict.fromkeys(dirs))


class _Environment(Environment):
    """Resolves ``"./name"`` in ``import``/``include`` against the importing template's folder,
    so a language folder copied to another language works unchanged."""

    def join_path(self, template: str, parent: str) -> str:
        if template.startswith("./"):
            return posixpath.join(posixpath.dirname(parent), template[2:])
        return template

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one dict, not Jinja's ``ChainMap`` over the environment's
        (which shows later changes to those; ours never change after load): every render
        lists and searches them, in Python for a ``ChainMap`` (a fifth of an SMS's render)."""
        return {**self.globals, **(d or {})}


def _environment(directories: Sequence[Path], *, html: bool) -> _Environment:
    return _Environment(
        loader=ChoiceLoader([FileSystemLoader(str(d)) for d in directories]),
        undefined=StrictUndefined,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # a reload builds new Templates; no stat() per message
        cache_size=-1,
    )


class Templates:
    """The templates of one set of directories, every file compiled at load.

    Build with ``Templates.load``; the daemon builds a new one on reload and swaps it whole.
    ``render`` is safe to call from several threads.
    """

    __slots__ = (
        "_chains",
        "_compiled",
        "_languages",
        "default_language",
        "directories",
        "version",
    )

    def __init__(
        self,
        directories: tuple[Path, ...],
        default_language: str,
        compiled: dict[str, _Compiled],
        version: str,
    ) -> None:
        self.directories = directories
        self.default_language = default_language
        self.version = version
        self._compiled = compiled
        self._languages = {n.split("/", 1)[0].lower(): n.split("/", 1)[0] for n in compiled}
        self._chains: dict[str, tuple[str, ...]] = {}

    @classmethod
    def load(cls, directories: Sequence[Path], *, default_language: str) -> Templates:
        """Compile every ``<language>/*.j2`` file under ``directories`` (earlier ones win).

        Directories that do not exist are skipped. Raises ``PolicyError`` listing every
        syntax error (file and line), every email file without a subject or text block, and
        "no templates" when none of the directories holds any.
        """
        dirs = tuple(dict.fromkeys(Path(d).resolve() for d in directories))
        files = _effective_files(dirs)
        text_env = _environment(dirs, html=False)
        html_env = _environment(dirs, html=True)
        problems: list[PolicyProblem] = []
        compiled: dict[str, _Compiled] = {}
        for name, path in files.items():
            try:
                text = text_env.get_template(name)
                html = html_env.get_template(name) if _channel_of(name) == "email" else None
            except TemplateSyntaxError as exc:
                problems.append(_syntax_problem(exc, path))
                continue
            missing = [b for b in EMAIL_BLOCKS[:2] if html is not None and b not in text.blocks]
            if missing:
                problems.append(
                    PolicyProblem(
                        str(path),
                        "template",
                        None,
                        f"an email template needs {{% block {missing[0]} %}}",
                        "give it subject, text and html blocks",
                    )
                )
                continue
            compiled[name] = _Compiled(name, path, text, html)
        if not files:
            where = ", ".join(str(d) for d in dirs)
            problems.append(PolicyProblem(where, "template", None, "no templates found"))
        if problems:
            raise PolicyError(problems)
        return cls(dirs, default_language, compiled, _version(files))

    @property
    def languages(self) -> tuple[str, ...]:
        """The language folders that hold at least one template, sorted."""
        return tuple(sorted(self._languages.values()))

    def language_for(self, language: str) -> str:
        """The language folder to use for a borrower's ``language``: that exact language
        (case and ``_``/``-`` ignored), else its primary subtag ("zh-TW" -> "zh"), else the
        default language, else "en"."""
        return self._chain(language)[0]

    def render(
        self, template: str, channel: Channel, language: str, context: Mapping[str, Any]
    ) -> Rendered:
        """Render ``<language>/<template>.<channel>.j2`` with ``context``.

        A language folder without that file falls back along ``language_for``'s chain
        (the language, its primary subtag, the default, "en"). Raises ``RenderError`` when
        no file exists or the template fails (undefined variable, bad expression).
        """
        found = self._find(template, channel, language)
        if found is None:
            raise RenderError(self._missing(template, channel, language))
        variables = dict(context)
        try:
            if found.html is None:
                text, subject, html = found.text.render(variables), "", ""
            else:
                parts = _blocks(found.text, ("subject", "text"), variables)
                text, subject = parts["text"], " ".join(parts["subject"].split())  # one line
                if "html" in found.html.blocks:
                    html = _blocks(found.html, ("html",), variables)["html"]
                else:
                    html = ""
        except _TEMPLATE_FAILURES as exc:
            raise RenderError(_render_problem(exc, found, channel, language)) from exc
        return Rendered(subject, text.strip(), html.strip(), _lang(found), str(found.source))

    @property
    def sources(self) -> dict[str, Path]:
        """Every effective template file: ``"<language>/<file>"`` -> its path."""
        return {name: found.source for name, found in self._compiled.items()}

    def common_macro(self, language: str, macro: str) -> str | None:
        """The text ``<language>/_common.j2``'s argument-less ``macro`` renders, or None when
        the file or the macro is missing (used by ``check_templates``)."""
        found = self._compiled.get(f"{language}/{COMMON}")
        if found is None:
            return None
        try:
            made = getattr(found.text.module, macro, None)
            return str(made()).strip() if callable(made) else None
        except _TEMPLATE_FAILURES:
            return None

    # -- lookup --

    def _chain(self, language: str) -> tuple[str, ...]:
        chain = self._chains.get(language)
        if chain is None:
            wanted = language.replace("_", "-").lower()
            steps = (wanted, wanted.split("-", 1)[0], self.default_language.lower(), "en")
            found = [self._languages[s] for s in steps if s in self._languages]
            chain = tuple(dict.fromkeys(found)) or (self.default_language,)
            self._chains[language] = chain
        return chain

    def _find(self, template: str, channel: Channel, language: str) -> _Compiled | None:
        suffix = f"/{template}.{channel.value}{_SUFFIX}"
        for lang in self._chain(language):
            found = self._compiled.get(lang + suffix)
            if found is not None:
                return found
        return None

    def _missing(self, template: str, channel: Channel, language: str) -> PolicyProblem:
        tried = [f"{lang}/{template}.{channel.value}{_SUFFIX}" for lang in self._chain(language)]
        return PolicyProblem(
            str(self.directories[0] / tried[0]),
            "template",
            None,
            f"no {channel.value} template {template!r} for language {language!r} "
            f"(looked for {', '.join(tried)} in {', '.join(map(str, self.directories))})",
            f"add {tried[0]} to the policy directory's templates/",
        )


def _effective_files(dirs: Sequence[Path]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for path in sorted(root.glob(f"*/*{_SUFFIX}")):
            files.setdefault(path.relative_to(root).as_posix(), path)
    return files


def _channel_of(name: str) -> str:
    stem = name.rsplit("/", 1)[-1].removesuffix(_SUFFIX)
    return stem.rsplit(".", 1)[-1] if "." in stem else ""


def _lang(found: _Compiled) -> str:
    return found.name.split("/", 1)[0]


def _version(files: Mapping[str, Path]) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _silent(context: Context) -> Iterator[str]:
    return iter(())


def _blocks(template: Template, names: Sequence[str], variables: dict[str, Any]) -> dict[str, str]:
    """Render some blocks of ``template``. The top level runs first with every block
    silenced, so its ``import``/``set`` statements are visible inside the blocks."""
    context = template.new_context(variables)
    try:
        for name in context.blocks:
            context.blocks[name] = [_silent]
        for _ in template.root_render_func(context):
            pass
        return {n: template.environment.concat(template.blocks[n](context)) for n in names}
    except Exception:
        template.environment.handle_exception()  # rewrites the traceback to template lines


def _syntax_problem(exc: TemplateSyntaxError, path: Path) -> PolicyProblem:
    return PolicyProblem(
        exc.filename or str(path), "template", exc.lineno, f"template syntax: {exc.message}"
    )


def _render_problem(
    exc: BaseException, found: _Compiled, channel: Channel, language: str
) -> PolicyProblem:
    if isinstance(exc, TemplateSyntaxError):
        return _syntax_problem(exc, found.source)
    file, line = _template_frame(exc.__traceback__) or (str(found.source), None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = ""
    if "is undefined" in message:
        hint = "check the spelling; docs/policies.md lists the variables a template gets"
    return PolicyProblem(
        file, "template", line, f"{found.name} ({channel.value}, {language}): {message}", hint
    )


def _template_frame(tb: TracebackType | None) -> tuple[str, int] | None:
    """The innermost traceback frame that is a template line (Jinja rewrites them so)."""
    last = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(_SUFFIX):
            last = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return last


# -- context --------------------------------------------------------------------------------

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
#: Currency symbols used per language (primary subtag); others are written as their code.
_SYMBOLS: dict[str, dict[str, str]] = {
    "zh": {"CNY": "¥", "HKD": "HK$", "TWD": "NT$", "MOP": "MOP$", "USD": "US$"},
    "en": {"USD": "$", "GBP": "£", "EUR": "€"},
}
_NO_DECIMALS = frozenset({"JPY", "KRW", "VND", "IDR", "CLP", "ISK"})


def _primary(language: str) -> str:
    return language.replace("_", "-").split("-", 1)[0].lower()


def format_money(amount: Decimal, currency: str, language: str) -> str:
    """``amount`` for a borrower reading ``language``: "¥1,234.50" (zh, CNY),
    "CNY 1,234.50" (en), "$50.00" (en, USD); the bare number when there is no currency."""
    code = currency.upper()
    places = Decimal(1) if code in _NO_DECIMALS else Decimal("0.01")
    number = format(amount.quantize(places, rounding=ROUND_HALF_UP), ",f")
    if not code:
        return number
    symbol = _SYMBOLS.get(_primary(language), {}).get(code)
    return f"{symbol}{number}" if symbol else f"{code} {number}"


def format_date(day: date, language: str) -> str:
    """``day`` for a borrower reading ``language``: "2026年11月25日" (zh, ja),
    "25 November 2026" (every other language)."""
    if _primary(language) in ("zh", "ja"):
        return f"{day.year}年{day.month}月{day.day}日"
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def _account_ref(account_id: str) -> str:
    """The last four characters of the account id: enough for the borrower to know which
    account, not enough to be useful on a lock screen or in a provider's logs."""
    return account_id[-4:]


def context_for(
    account: Account,
    *,
    lender_name: str,
    rule_id: str,
    now_local_date: date,
    language: str | None = None,
) -> dict[str, Any]:
    """The variables every template gets, as plain strings and integers.

    Amounts and dates are formatted for ``language`` (default: the account's). The account
    id is masked to ``account_ref`` (its last four characters); the full id is not given.
    ``days_past_due`` is negative before the due date.
    """
    lang = language or account.language
    dpd = (now_local_date - account.due_date).days
    return {
        "borrower_name": account.name or "",
        "lender_name": lender_name,
        "account_ref": _account_ref(account.account_id),
        "currency": account.currency.upper(),
        "amount_due": format_money(account.amount_due, account.currency, lang),
        "amount_paid": format_money(account.amount_paid, account.currency, lang),
        "balance": format_money(account.balance, account.currency, lang),
        "due_date": format_date(account.due_date, lang),
        "due_date_iso": account.due_date.isoformat(),
        "today": format_date(now_local_date, lang),
        "days_past_due": dpd,
        "days_overdue": max(dpd, 0),
        "days_until_due": max(-dpd, 0),
        "product": account.product,
        "rule_id": rule_id,
    }


# -- SMS length -----------------------------------------------------------------------------

_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> int:
    """How many SMS segments ``text`` needs: GSM-7 (160, or 153 per part; the extension
    characters count twice) when every character allows it, else UCS-2 (70, or 67 per part;
    characters outside the BMP count twice)."""
    if all(c in _GSM7 or c in _GSM7_EXT for c in text):
        units, single, part = len(text) + sum(c in _GSM7_EXT for c in text), 160, 153
    else:
        units, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    if units <= single:
        return 1
    return -(-units // part)


# -- checking -------------------------------------------------------------------------------

_SAMPLE_NAMES = {"zh": "欧阳晓明", "ja": "山田花子"}
#: Words that tell a third party the call is about a debt (the lender's own name is exempt).
_DEBT_WORDS: dict[str, re.Pattern[str]] = {
    "zh": re.compile(r"欠款|欠费|欠债|逾期|贷款|借款|还款|催收|债务|账单|罚息|征信"),
    "en": re.compile(
        r"\b(debts?|loans?|overdue|past due|owe[sd]?|owing|arrears|collect\w*|repay\w*"
        r"|payments?|balance|borrow\w*|credit record)\b",
        re.IGNORECASE,
    ),
}


def sample_account(language: str) -> Account:
    """The account ``check_templates`` renders with: a balance that differs from the amount
    due, a name in the language's script."""
    return Account(
        "SAMPLE-0001234",
        due_date=date(2026, 11, 25),
        amount_due=Decimal("12345.67"),
        amount_paid=Decimal("2000.00"),
        name=_SAMPLE_NAMES.get(_primary(language), "Alex Morgan"),
        language=language,
        currency="CNY",
    )


@dataclass(frozen=True, slots=True)
class _Use:
    template: str
    channel: Channel
    target: Target
    rules: tuple[str, ...]
    dpd: int


def _uses(policies: PolicySet) -> list[_Use]:
    found: dict[tuple[str, Channel, Target], _Use] = {}
    for policy in policies.policies:
        for rule in policy.rule:
            if not rule.enabled:
                continue
            key = (rule.template_name, rule.channel, rule.target)
            use = found.get(key)
            if use is None:
                found[key] = _Use(*key, (rule.id,), rule.first_dpd)
            elif rule.id not in use.rules:
                found[key] = _Use(*key, (*use.rules, rule.id), use.dpd)
    return list(found.values())


def check_templates(
    policies: PolicySet,
    templates: Templates,
    *,
    lender_name: str,
    languages: Sequence[str],
    max_sms_segments: int = 3,
) -> list[PolicyProblem]:
    """Render every (template, channel) an enabled rule uses, in every language, for a sample
    account, and list what is wrong: render errors (file and line), an SMS longer than
    ``max_sms_segments``, a borrower message without the amount, the due date or the lender's
    name, a borrower SMS or email without the language's opt-out text, and a third-party
    (emergency contact) message that gives the amount, the due date or debt words; a letter
    without the balance, how to dispute or how to contact the lender; and (``scheduler.lint``)
    forbidden wording (threats, impersonating police, courts or lawyers) in any template file,
    from the word lists in the policy directory's ``lint/`` or the shipped ones."""
    problems: list[PolicyProblem] = []
    for use in _uses(policies):
        for language in dict.fromkeys(languages):
            problems.extend(_check_one(use, templates, lender_name, language, max_sms_segments))
    problems.extend(lint_sources(templates.sources, policies.directory))
    return list(dict.fromkeys(problems))


def _check_one(
    use: _Use, templates: Templates, lender_name: str, language: str, max_segments: int
) -> list[PolicyProblem]:
    account = sample_account(language)
    context = context_for(
        account,
        lender_name=lender_name,
        rule_id=use.rules[0],
        now_local_date=date.fromordinal(account.due_date.toordinal() + use.dpd),
        language=language,
    )
    rules = ", ".join(use.rules)
    try:
        rendered = templates.render(use.template, use.channel, language, context)
    except RenderError as exc:
        p = exc.problem
        return [PolicyProblem(p.file, p.key, p.line, f"(rule {rules}) {p.message}", p.hint)]
    where = f"(rule {rules}, {language}) {use.template}.{use.channel.value}"
    found: list[PolicyProblem] = []

    def add(message: str, hint: str = "") -> None:
        found.append(PolicyProblem(rendered.source, "template", None, f"{where}: {message}", hint))

    text = "\n".join(p for p in (rendered.subject, rendered.text, rendered.html) if p)
    segments = sms_segments(rendered.text)
    if use.channel is Channel.SMS and segments > max_segments:
        add(
            f"the SMS needs {segments} segments ({len(rendered.text)} characters); "
            f"the limit is {max_segments}",
            "shorten it; 70 Chinese characters (160 plain Latin ones) fit in one",
        )
    if use.target is Target.EMERGENCY_CONTACTS:
        if leaks := _third_party_leaks(text, context, lender_name, language):
            add(
                "a message to an emergency contact must not give " + ", ".join(leaks),
                "only ask them to pass on a request to call the lender back",
            )
        return found
    if gaps := _borrower_gaps(text, context):
        add("a borrower message must give " + ", ".join(gaps))
    if use.channel is Channel.LETTER and (gaps := letter_gaps(text, context, rendered.language)):
        add("a letter must give " + ", ".join(gaps))
    if use.channel in (Channel.SMS, Channel.EMAIL):
        macro = "opt_out_sms" if use.channel is Channel.SMS else "opt_out_email"
        opt_out = templates.common_macro(rendered.language, macro)
        if opt_out is None:
            add(f"{rendered.language}/{COMMON} has no {macro}() macro", "borrowers need a way out")
        elif opt_out not in rendered.text:
            add("no opt-out text", f"add {{{{ common.{macro}() }}}} from {COMMON}")
    return found


def _borrower_gaps(text: str, context: Mapping[str, Any]) -> list[str]:
    gaps = []
    if context["balance"] not in text and context["amount_due"] not in text:
        gaps.append("the amount ({{ balance }})")
    if context["due_date"] not in text:
        gaps.append("the due date ({{ due_date }})")
    if context["lender_name"] not in text:
        gaps.append("the lender's name ({{ lender_name }})")
    return gaps


def _third_party_leaks(
    text: str, context: Mapping[str, Any], lender_name: str, language: str
) -> list[str]:
    plain = text.replace(lender_name, "") if lender_name else text
    leaks = []
    if any(form in plain for form in _amount_forms(context)):
        leaks.append("the amount")
    if context["due_date"] in plain or context["due_date_iso"] in plain:
        leaks.append("the due date")
    words = _DEBT_WORDS.get(_primary(language))
    if words and (hit := words.search(plain)):
        leaks.append(f"a word about the debt ({hit.group(0)!r})")
    return leaks


def _amount_forms(context: Mapping[str, Any]) -> tuple[str, ...]:
    forms: list[str] = []
    for key in ("amount_due", "amount_paid", "balance"):
        value = str(context[key])
        number = re.sub(r"[^\d.,]", "", value)
        forms += [value, number, number.replace(",", "")]
    return tuple(f for f in forms if f and f not in ("0.00", "0"))
