"""Template lint in `remind policy check`: forbidden wording (threats, impersonating police,
courts or lawyers) from word lists ops can extend, third-party messages that mention the
debt, and what a letter must give. Through the real CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from scheduler.cli import app
from scheduler.lint import SHIPPED_LINT, forbidden_lists
from tests.factories import copy_policies

LENDER = "Example Finance"


def check(workdir: Path, policy_dir: Path) -> Result:
    config = workdir / "config.toml"
    config.write_text(
        f'[ops]\ntimezone = "Asia/Shanghai"\nlender_name = "{LENDER}"\n'
        '[borrower_defaults]\nlanguage = "zh-CN"\n'
        f'[policy]\ndir = "{policy_dir}"\n'
    )
    return CliRunner().invoke(
        app, ["policy", "check", "--config", str(config)], env={"COLUMNS": "250"}
    )


def override(policy_dir: Path, name: str, text: str) -> Path:
    path = policy_dir / "templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


EN_SMS = (
    '{% import "./_common.j2" as common %}\n'
    "{{ lender_name }}: {{ balance }} was due on {{ due_date }}.\n"
    "Pay today or we will send the police to your door. {{ common.opt_out_sms() }}\n"
)
ZH_SMS = (
    '{% import "./_common.j2" as common %}\n'
    "【{{ lender_name }}】您尾号{{ account_ref }}的账户应于{{ due_date }}还款{{ balance }}。\n"
    "法院已向您发出传票，请三日内到庭。{{ common.opt_out_sms() }}\n"
)


def test_the_shipped_templates_pass_the_lint(tmp_path: Path) -> None:
    result = check(tmp_path, copy_policies(tmp_path / "policies"))
    assert result.exit_code == 0, result.output
    assert set(forbidden_lists(tmp_path / "policies")) == {"en", "zh-CN"}


def test_a_police_threat_and_a_chinese_court_summons_are_refused_with_file_and_line(
    tmp_path: Path,
) -> None:
    # Given ops overrides: an English SMS threatening the police, a Chinese one claiming a
    # court summons
    policy_dir = copy_policies(tmp_path / "policies")
    en = override(policy_dir, "en/first_overdue.sms.j2", EN_SMS)
    zh = override(policy_dir, "zh-CN/early_overdue.sms.j2", ZH_SMS)
    # When they check the directory
    result = check(tmp_path, policy_dir)
    # Then both are refused, each naming its file and line and the wording
    assert result.exit_code == 2
    out = " ".join(result.stderr.split())
    assert f"{en}:3: template:" in out and "'we will send the police'" in out
    assert f"{zh}:3: template:" in out and "'传票'" in out
    assert "forbidden.en.txt" in out and "forbidden.zh-CN.txt" in out
    assert "2 problem(s)" in out  # nothing else is wrong


def test_ops_extend_a_word_list_in_their_policy_directory(tmp_path: Path) -> None:
    # Given ops copy the shipped English list and add a phrase of their own
    policy_dir = copy_policies(tmp_path / "policies")
    (policy_dir / "lint").mkdir()
    own = policy_dir / "lint" / "forbidden.en.txt"
    own.write_text((SHIPPED_LINT / "forbidden.en.txt").read_text() + "\nfinal demand\n")
    sms = override(
        policy_dir,
        "en/due_today.sms.j2",
        '{% import "./_common.j2" as common %}\n{{ lender_name }}: FINAL DEMAND: '
        "{{ balance }} due {{ due_date }}. {{ common.opt_out_sms() }}\n",
    )
    # Then their list is used (case-insensitively), the shipped Chinese one still applies
    result = check(tmp_path, policy_dir)
    assert result.exit_code == 2
    assert f"{sms}:2" in result.stderr and "'FINAL DEMAND'" in result.stderr
    assert forbidden_lists(policy_dir)["zh-CN"].parent == SHIPPED_LINT
    # And a line of theirs that is not a valid expression is named with its line
    own.write_text("# mine\n(unclosed\n")
    broken = " ".join(check(tmp_path, policy_dir).stderr.split())
    assert f"{own}:2: lint: not a valid phrase" in broken


def test_comments_in_templates_are_not_linted(tmp_path: Path) -> None:
    policy_dir = copy_policies(tmp_path / "policies")
    override(
        policy_dir,
        "en/pre_due.sms.j2",
        '{# never say "we will send the police" #}\n{% import "./_common.j2" as common %}\n'
        "{{ lender_name }}: {{ balance }} is due on {{ due_date }}. {{ common.opt_out_sms() }}\n",
    )
    assert check(tmp_path, policy_dir).exit_code == 0


def test_a_chinese_third_party_message_may_not_mention_the_debt(tmp_path: Path) -> None:
    policy_dir = copy_policies(tmp_path / "policies")
    override(
        policy_dir,
        "zh-CN/third_party_call.call.j2",
        "您好，我是{{ lender_name }}的工作人员，{{ borrower_name }}的借款已经逾期，请转告他。\n",
    )
    result = check(tmp_path, policy_dir)
    assert result.exit_code == 2
    out = " ".join(result.stderr.split())
    assert "emergency contact must not give" in out and "'借款'" in out


def test_a_letter_must_give_the_balance_how_to_dispute_and_a_contact(tmp_path: Path) -> None:
    policy_dir = copy_policies(tmp_path / "policies")
    letter = override(
        policy_dir,
        "en/collection_letter.letter.j2",
        "{{ lender_name }}\n{{ amount_due }} was due on {{ due_date }}. Please pay.\n",
    )
    result = check(tmp_path, policy_dir)
    assert result.exit_code == 2
    out = " ".join(result.stderr.split())
    assert str(letter) in out
    assert (
        "a letter must give the balance ({{ balance }}), how to dispute the debt, "
        "how to contact the lender" in out
    )
