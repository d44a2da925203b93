"""Each public module's ``__all__`` names exactly what it means to export, and all exist."""

from __future__ import annotations

import importlib

import pytest

MODULES = {
    "policies": {"PolicyFile", "PolicySet", "Rule", "Target", "check_policies", "load_policies"},
    "scheduler.errors": {
        "ChannelError",
        "ConfigError",
        "ImportFileError",
        "PermanentChannelError",
        "PolicyError",
        "PolicyProblem",
        "RemindError",
        "SchemaBehindError",
        "SourceError",
        "StoreError",
        "TransientChannelError",
    },
    "scheduler.planner": {
        "FIRST_CONTACT_SEARCH_DAYS",
        "first_contact_catch_up",
        "follow_up_rules",
        "merge_plans",
        "merge_shard_plans",
        "plan",
        "plan_account",
        "rules_on",
        "sla_deadline",
    },
    "scheduler.config": {
        "DEFAULT_LOCATIONS",
        "ChannelSettings",
        "DaemonSettings",
        "PlannerSettings",
        "Settings",
        "SourceSettings",
        "find_config",
        "load_settings",
    },
    "scheduler.queue": {"ContactQueue", "QueuedContact", "Settlement", "StateEntry"},
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_all_is_what_we_mean(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == MODULES[name]
    for symbol in module.__all__:
        assert hasattr(module, symbol), symbol


def test_the_error_tree_is_as_drawn() -> None:
    from scheduler import errors

    assert issubclass(errors.SchemaBehindError, errors.StoreError)
    assert issubclass(errors.TransientChannelError, errors.ChannelError)
    assert issubclass(errors.PermanentChannelError, errors.ChannelError)
    for leaf in (errors.ConfigError, errors.PolicyError, errors.StoreError, errors.ChannelError):
        assert issubclass(leaf, errors.RemindError)
    assert errors.TransientChannelError("429", retry_after=2.5).retry_after == 2.5
