"""systemd/remind.service: the keys the daemon relies on, `systemd-analyze verify` clean, and
`systemd-analyze security` at 2.0 ("OK") or better."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "remind.service"
SYSUSERS = ROOT / "systemd" / "remind.sysusers"
DEPLOY = ROOT / "docs" / "deploy.md"
INSTALLED_REMIND = "/opt/remind/venv/bin/remind"
#: [daemon] drain_seconds default (docs/configuration.md): TimeoutStopSec must exceed it.
DRAIN_SECONDS = 30
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


class _MultiDict(dict[str, Any]):
    """configparser's section dict that keeps every value of a repeated key (systemd adds
    them up for list settings such as LoadCredential=), joined by newlines."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False,
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        dict_type=_MultiDict,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser


def values(unit: configparser.ConfigParser, section: str, key: str) -> list[str]:
    """Every value of a key, in order, with systemd's empty-assignment reset applied."""
    result: list[str] = []
    for value in unit.get(section, key, fallback="").splitlines():
        if value.strip():
            result.append(value.strip())
        else:
            result.clear()
    return result


def seconds(span: str) -> float:
    """A systemd time span ("60s", "1min 30s", "90") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, span
    return sum(float(n) * units[u or "s"] for n, u in parts)


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """A copy whose ExecStart= names a binary that exists here (verify checks it does)."""
    remind = Path(sys.executable).parent / "remind"
    if not remind.exists():
        pytest.skip(f"{remind} is not installed (pip install -e .)")
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_REMIND in text
    copy = tmp_path / "remind.service"
    copy.write_text(text.replace(INSTALLED_REMIND, str(remind)), encoding="utf-8")
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


# -- the keys --


def test_notify_watchdog_and_reload(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) >= 30
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"] == f"{INSTALLED_REMIND} run --config /etc/remind/config.toml"


def test_restart_and_stop(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert seconds(service["RestartSec"]) >= 1
    assert "2" in service["RestartPreventExitStatus"].split()  # invalid config or policy
    assert seconds(service["TimeoutStopSec"]) > DRAIN_SECONDS
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    assert seconds(unit["Unit"]["StartLimitIntervalSec"]) > 0
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_files_and_user(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service.get("User") == "remind" or service.get("DynamicUser") == "yes"
    assert service["StateDirectory"] == "remind"
    assert service["ConfigurationDirectory"] == "remind"
    assert service["ProtectSystem"] == "strict"


def test_credentials_each_with_a_blank_fallback(unit: configparser.ConfigParser) -> None:
    loaded = dict(v.split(":", 1) for v in values(unit, "Service", "LoadCredential"))
    assert loaded == {
        "sms-token": "/etc/remind/credentials/sms-token",
        "smtp-password": "/etc/remind/credentials/smtp-password",
    }
    fallback = dict(v.split(":", 1) for v in values(unit, "Service", "SetCredential"))
    # A missing file is then not fatal; "\n" strips to nothing, which read_secret treats
    # as absent.
    assert fallback == {name: "\\n" for name in loaded}


def test_network_and_memory_restrictions(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["MemoryDenyWriteExecute"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""


def test_the_parser_keeps_repeated_keys() -> None:
    unit = parse_unit("[Service]\nA=1\nA=2\nB=x\nA=\nA=3\n")
    assert values(unit, "Service", "A") == ["3"]
    assert unit["Service"]["B"] == "x"


def test_deploy_guide_uses_the_units_paths(unit: configparser.ConfigParser) -> None:
    guide = DEPLOY.read_text(encoding="utf-8")
    assert INSTALLED_REMIND in guide
    assert "/etc/remind/config.toml" in guide
    for value in values(unit, "Service", "LoadCredential"):
        assert value.split(":", 1)[1] in guide


# -- systemd's own tools --


@needs_analyze
def test_verify_is_clean(runnable_unit: Path) -> None:
    result = analyze("verify", "--man=no", str(runnable_unit))
    ours = [line for line in result.stderr.splitlines() if runnable_unit.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


@needs_analyze
def test_verify_would_report_a_bad_key(runnable_unit: Path) -> None:
    # Guards the test above: verify exits 0 on unknown keys, so only stderr tells.
    text = runnable_unit.read_text(encoding="utf-8")
    runnable_unit.write_text(text.replace("[Service]\n", "[Service]\nWatchDogSec=1\n"))
    result = analyze("verify", "--man=no", str(runnable_unit))
    assert "Unknown key 'WatchDogSec'" in result.stderr


@needs_analyze
def test_security_exposure_is_ok(runnable_unit: Path) -> None:
    result = analyze("security", "--offline=true", str(runnable_unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout
    assert match[2] in ("OK", "SAFE"), result.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_units_user(tmp_path: Path, unit: configparser.ConfigParser) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    passwd = {line.split(":")[0]: line.split(":") for line in lines}
    user = passwd[unit["Service"]["User"]]
    assert user[5] == "/var/lib/remind"
    assert user[6].endswith("nologin")
