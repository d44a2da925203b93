"""Message templates: every shipped template renders in Chinese and English with what a
borrower needs (amount, due date, lender, opt-out), HTML is escaped only in the HTML part,
an emergency contact hears nothing about the debt, ops override single files, a typo fails
`remind policy check` with the file and line, and languages fall back sensibly."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from policies import Target
from scheduler.cli import app
from scheduler.models import Account, Channel
from scheduler.render import (
    SHIPPED_TEMPLATES,
    Rendered,
    RenderError,
    Templates,
    check_templates,
    context_for,
    format_date,
    format_money,
    sms_segments,
    template_dirs,
)
from tests.factories import account, copy_policies, shipped_policies

LENDER = "Example Finance"
DUE = date(2026, 11, 23)
USES = sorted(
    {
        (rule.template_name, rule.channel, rule.target)
        for policy in shipped_policies().policies
        for rule in policy.rule
    }
)


@pytest.fixture(scope="module")
def shipped() -> Templates:
    return Templates.load([SHIPPED_TEMPLATES], default_language="zh-CN")


def borrower(language: str, **fields: object) -> Account:
    values: dict[str, object] = {
        "account_id": "LN-2026-00987654",
        "name": "李雷" if language.startswith("zh") else "Li Lei",
        "amount_due": Decimal("1234.50"),
        "amount_paid": Decimal("0"),
        "language": language,
    }
    values.update(fields)
    return account(**values)


def render(
    templates: Templates,
    template: str,
    channel: Channel,
    language: str,
    *,
    dpd: int = 1,
    **fields: object,
) -> Rendered:
    who = borrower(language, **fields)
    today = date.fromordinal(DUE.toordinal() + dpd)
    context = context_for(who, lender_name=LENDER, rule_id="r", now_local_date=today)
    return templates.render(template, channel, templates.language_for(language), context)


def whole(message: Rendered) -> str:
    return "\n".join((message.subject, message.text, message.html))


@pytest.mark.parametrize("language", ["zh-CN", "en"])
@pytest.mark.parametrize(("template", "channel", "target"), USES)
def test_every_shipped_template_renders_with_amount_due_date_and_lender(
    shipped: Templates, language: str, template: str, channel: Channel, target: Target
) -> None:
    message = render(shipped, template, channel, language)
    assert message.language == language
    assert LENDER in message.text
    assert "LN-2026-00987654" not in whole(message)  # the account id is masked ...
    assert "7654" in message.text or target is Target.EMERGENCY_CONTACTS  # ... to its last 4
    if target is Target.BORROWER:
        amount = "¥1,234.50" if language == "zh-CN" else "CNY 1,234.50"
        due = "2026年11月23日" if language == "zh-CN" else "23 November 2026"
        assert amount in message.text and due in message.text
    if channel is Channel.SMS:
        assert ("回T退订" if language == "zh-CN" else "Reply STOP") in message.text
        assert sms_segments(message.text) <= 2
    if channel is Channel.EMAIL:
        assert message.subject and "\n" not in message.subject
        opt_out = "退订" if language == "zh-CN" else "unsubscribe"
        assert opt_out in message.text and opt_out in message.html
        assert "1,234.50" in message.html
    else:
        assert message.subject == message.html == ""


def test_html_is_escaped_in_the_html_part_only(shipped: Templates) -> None:
    name = "<b>Li & Co</b>"
    email = render(shipped, "pre_due", Channel.EMAIL, "en", dpd=-1, name=name)
    assert "&lt;b&gt;Li &amp; Co&lt;/b&gt;" in email.html and name not in email.html
    assert name in email.text and "&amp;" not in email.text
    assert "<ul>" in email.html  # the template's own markup is not escaped
    sms = render(shipped, "pre_due", Channel.SMS, "zh-CN", dpd=-1, name=name)
    assert name in sms.text


def test_a_line_break_in_a_name_cannot_break_the_email_subject(tmp_path: Path) -> None:
    ops = tmp_path / "templates"
    (ops / "en").mkdir(parents=True)
    (ops / "en" / "pre_due.email.j2").write_text(
        "{% block subject %}Hello {{ borrower_name }}{% endblock %}"
        "{% block text %}{{ balance }}{% endblock %}{% block html %}{% endblock %}"
    )
    templates = Templates.load([ops, SHIPPED_TEMPLATES], default_language="en")
    email = render(templates, "pre_due", Channel.EMAIL, "en", name="Li\r\nBcc: x@example.com")
    assert email.subject == "Hello Li Bcc: x@example.com"


@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_the_emergency_contact_script_says_nothing_about_the_debt(
    shipped: Templates, language: str
) -> None:
    script = render(shipped, "third_party_call", Channel.CALL, language, dpd=40).text
    for leak in ("1,234.50", "1234.50", "2026年11月23日", "23 November 2026", "2026-11-23"):
        assert leak not in script
    for word in ("欠款", "逾期", "贷款", "借款", "还款", "催收", "debt", "loan", "overdue", "owe"):
        assert word not in script.lower()
    assert "李雷" in script or "Li Lei" in script  # whom to pass the message to
    assert LENDER in script  # and whom to call back


def test_the_first_overdue_call_aims_for_a_promise_to_pay(shipped: Templates) -> None:
    zh = render(shipped, "first_overdue_call", Channel.CALL, "zh-CN").text
    en = render(shipped, "first_overdue_call", Channel.CALL, "en").text
    assert "还款承诺" in zh and "今天" in zh
    assert "promise to pay" in en and "today" in en


def test_amounts_and_dates_are_written_for_the_reader() -> None:
    assert format_money(Decimal("1234.5"), "CNY", "zh-CN") == "¥1,234.50"
    assert format_money(Decimal("1234.5"), "CNY", "en") == "CNY 1,234.50"
    assert format_money(Decimal("50"), "USD", "en-US") == "$50.00"
    assert format_money(Decimal("5000"), "JPY", "en") == "JPY 5,000"
    assert format_date(date(2026, 11, 25), "zh-CN") == "2026年11月25日"
    assert format_date(date(2026, 11, 25), "en") == "25 November 2026"
    context = context_for(
        borrower("zh-CN", amount_paid=Decimal("234.50")),
        lender_name=LENDER,
        rule_id="early_sms",
        now_local_date=date(2026, 11, 26),
    )
    assert (context["balance"], context["amount_due"]) == ("¥1,000.00", "¥1,234.50")
    assert (context["days_past_due"], context["days_overdue"], context["account_ref"]) == (
        3,
        3,
        "7654",
    )


def test_an_ops_override_wins_and_a_shared_partial_is_edited_once(
    tmp_path: Path, shipped: Templates
) -> None:
    # Given ops override one English SMS and the Chinese opt-out wording
    ops = tmp_path / "templates"
    (ops / "en").mkdir(parents=True)
    (ops / "en" / "pre_due.sms.j2").write_text("{{ lender_name }} says: pay {{ balance }}\n")
    (ops / "zh-CN").mkdir()
    common = (SHIPPED_TEMPLATES / "zh-CN" / "_common.j2").read_text()
    (ops / "zh-CN" / "_common.j2").write_text(common.replace("回T退订", "回TD退订"))
    templates = Templates.load([ops, SHIPPED_TEMPLATES], default_language="zh-CN")
    # Then the overridden file is used, and every other file is still the shipped one
    sms = render(templates, "pre_due", Channel.SMS, "en", dpd=-3)
    assert sms.text == f"{LENDER} says: pay CNY 1,234.50"
    assert sms.source == str((ops / "en" / "pre_due.sms.j2").resolve())
    assert render(templates, "due_today", Channel.SMS, "en", dpd=0).text == (
        render(shipped, "due_today", Channel.SMS, "en", dpd=0).text
    )
    # And every Chinese SMS carries the new opt-out wording
    for template in ("pre_due", "due_today", "first_overdue", "early_overdue"):
        assert render(templates, template, Channel.SMS, "zh-CN").text.endswith("回TD退订")


def test_language_falls_back_to_the_primary_subtag_then_the_default_then_english(
    tmp_path: Path,
) -> None:
    ops = tmp_path / "templates"
    (ops / "zh").mkdir(parents=True)
    (ops / "zh" / "pre_due.sms.j2").write_text("繁简通用：{{ balance }}\n")
    chinese_default = Templates.load([ops, SHIPPED_TEMPLATES], default_language="zh-CN")
    assert chinese_default.language_for("zh-CN") == "zh-CN"
    assert chinese_default.language_for("zh_cn") == "zh-CN"
    assert chinese_default.language_for("zh-TW") == "zh"
    assert chinese_default.language_for("en-US") == "en"
    assert chinese_default.language_for("fr") == "zh-CN"
    assert Templates.load([SHIPPED_TEMPLATES], default_language="de").language_for("fr") == "en"
    # A language folder without a file falls back for that file only
    assert render(chinese_default, "pre_due", Channel.SMS, "zh-TW").text == "繁简通用：¥1,234.50"
    due_today = render(chinese_default, "due_today", Channel.SMS, "zh-TW")
    assert due_today.language == "zh-CN" and "今天" in due_today.text


def test_a_missing_template_is_a_clear_error(shipped: Templates) -> None:
    with pytest.raises(RenderError) as raised:
        render(shipped, "pre_due", Channel.LETTER, "zh-CN")
    message = str(raised.value)
    assert "letter template 'pre_due'" in message and "zh-CN/pre_due.letter.j2" in message


def test_a_typo_in_an_override_fails_policy_check_with_file_and_line(tmp_path: Path) -> None:
    # Given ops override the pre-due SMS with a misspelt variable on line 3
    policy_dir = copy_policies(tmp_path / "policies")
    override = policy_dir / "templates" / "zh-CN" / "pre_due.sms.j2"
    override.parent.mkdir(parents=True)
    override.write_text('{% import "./_common.j2" as common %}\n\n应还{{ balanse }}\n')
    # When they check the directory
    result = check(tmp_path, policy_dir)
    # Then it fails, naming the file, the line and the variable
    assert result.exit_code == 2
    assert f"{override}:3" in result.stderr and "'balanse' is undefined" in result.stderr
    assert "pre_due_sms_3d" in result.stderr


def test_a_template_syntax_error_fails_policy_check_with_file_and_line(tmp_path: Path) -> None:
    policy_dir = copy_policies(tmp_path / "policies")
    override = policy_dir / "templates" / "en" / "due_today.sms.j2"
    override.parent.mkdir(parents=True)
    override.write_text("Pay {{ balance }}\n{% if days_overdue %}\nlate\n")
    result = check(tmp_path, policy_dir)
    assert result.exit_code == 2
    assert f"{override}:" in result.stderr and "template syntax" in result.stderr


def test_policy_check_lints_what_each_kind_of_message_must_and_must_not_say(
    tmp_path: Path,
) -> None:
    # Given overrides that leak the debt to an emergency contact, drop the opt-out and the
    # amount from a borrower SMS, and write an SMS four segments long
    policy_dir = copy_policies(tmp_path / "policies")
    ops = policy_dir / "templates" / "en"
    ops.mkdir(parents=True)
    (ops / "third_party_call.call.j2").write_text("Tell them they owe {{ balance }}.\n")
    (ops / "pre_due.sms.j2").write_text("{{ lender_name }}: please pay by {{ due_date }}.\n")
    (ops / "due_today.sms.j2").write_text(
        '{% import "./_common.j2" as common %}{{ lender_name }} {{ balance }} {{ due_date }} '
        + "x" * 600
        + " {{ common.opt_out_sms() }}\n"
    )
    # When ops run policy check
    result = check(tmp_path, policy_dir)
    # Then each problem is listed against its file
    assert result.exit_code == 2
    out = " ".join(result.stderr.split())
    assert "emergency contact must not give the amount" in out and "'owe'" in out
    assert "pre_due.sms: a borrower message must give the amount" in out
    assert "pre_due.sms: no opt-out text" in out
    assert "due_today.sms: the SMS needs 5 segments" in out
    assert "zh-CN" not in out  # the shipped Chinese files are fine


def test_the_shipped_templates_pass_the_lints_even_with_a_chinese_lender_name(
    shipped: Templates,
) -> None:
    for lender in (LENDER, "示例消费金融有限公司"):
        problems = check_templates(
            shipped_policies(), shipped, lender_name=lender, languages=("zh-CN", "en")
        )
        assert problems == []


def test_an_sms_counts_segments_like_a_phone_does() -> None:
    assert sms_segments("a" * 160) == 1 and sms_segments("a" * 161) == 2
    assert sms_segments("€" * 80) == 1 and sms_segments("€" * 81) == 2
    assert sms_segments("还" * 70) == 1 and sms_segments("还" * 71) == 2
    assert sms_segments("还" * 134) == 2 and sms_segments("还" * 135) == 3


def check(workdir: Path, policy_dir: Path) -> Result:
    config = workdir / "config.toml"
    config.write_text(
        f'[ops]\ntimezone = "Asia/Shanghai"\nlender_name = "{LENDER}"\n'
        '[borrower_defaults]\nlanguage = "zh-CN"\n'
        f'[policy]\ndir = "{policy_dir}"\n'
    )
    return CliRunner().invoke(
        app, ["policy", "check", "--config", str(config)], env={"COLUMNS": "200"}
    )


def test_template_dirs_put_the_policy_directory_first(tmp_path: Path) -> None:
    assert template_dirs(tmp_path) == [(tmp_path / "templates").resolve(), SHIPPED_TEMPLATES]
    assert template_dirs(SHIPPED_TEMPLATES.parent) == [SHIPPED_TEMPLATES]
