"""Pure policy rules and the shipped policy files ops copy and edit.

``load_policies(DIR)`` validates a directory and returns a ``PolicySet``; the rules in
``policies.rules`` and ``policies.hours`` are pure functions of their arguments.
"""

from policies.loader import PolicySet, check_policies, load_policies
from policies.schema import PolicyFile, Rule, Target

__all__ = ["PolicyFile", "PolicySet", "Rule", "Target", "check_policies", "load_policies"]
