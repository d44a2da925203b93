"""config.toml: where it is found, what overrides it, and how a bad one is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler.config import find_config, load_settings
from scheduler.errors import ConfigError

GOOD = '[store]\nurl = "sqlite:///data/remind.db"\n[ops]\ntimezone = "Europe/London"\n'


def write(path: Path, text: str = GOOD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_explicit_file_then_environment_then_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write(tmp_path / "a" / "config.toml")
    from_env = write(tmp_path / "b" / "config.toml")
    local = write(tmp_path / "c" / "config.toml")
    monkeypatch.chdir(local.parent)
    env = {"REMIND_CONFIG": str(from_env)}
    assert find_config(explicit, env) == explicit
    assert find_config(None, env) == from_env
    assert find_config(None, {}) == local


def test_nothing_found_names_every_place_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.toml.*/etc/remind/config\.toml"):
        find_config(None, {})


def test_relative_paths_are_relative_to_the_file_and_the_store_url_can_be_overridden(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "etc" / "config.toml")
    settings = load_settings(path, {})
    assert settings.store_url == f"sqlite:///{tmp_path}/etc/data/remind.db"
    assert settings.policy_dir == tmp_path / "etc" / "policies"
    assert settings.ops_timezone == "Europe/London"
    pg = "postgresql+psycopg://remind@db/remind"
    assert load_settings(path, {"REMIND_STORE_URL": pg}).store_url == pg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[store]\nurl = "x"\npassword = "hunter2"\n', "unknown key store.password"),
        ("[smtp]\nhost = 1\n", r"unknown section \[smtp\]"),
        ('[ops]\ntimezone = "Mars/Olympus"\n', "ops.timezone: unknown time zone"),
        ("[ops]\ntimezone = 8\n", "ops.timezone must be a str"),
        ("[ops\n", "not valid TOML"),
        ("[planner]\nworkers = 0\n", "planner.workers must be at least 1"),
        ('[planner]\nworkers = "auto"\n', "planner.workers must be a int"),
        ("[planner]\nshards = 2\n", "unknown key planner.shards"),
    ],
)
def test_a_bad_config_is_refused_with_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(path, {})
    assert str(path) in str(raised.value)


def test_the_shipped_config_is_valid_and_holds_no_secrets() -> None:
    shipped = Path(__file__).resolve().parent.parent / "config.toml"
    settings = load_settings(shipped, {})
    assert settings.store_url.startswith("sqlite:///")
    text = shipped.read_text().lower()
    assert "password" not in text.split("#")[0] and "token =" not in text


def test_planner_workers_default_to_the_usable_cpus_at_most_four(tmp_path: Path) -> None:
    default = load_settings(write(tmp_path / "a.toml"), {}).planner.workers
    assert default == min(len(os.sched_getaffinity(0)), 4)
    one = write(tmp_path / "b.toml", GOOD + "[planner]\nworkers = 1\n")
    assert load_settings(one, {}).planner.workers == 1
    many = write(tmp_path / "c.toml", GOOD + "[planner]\nworkers = 6\n")
    assert load_settings(many, {}).planner.workers == 6
