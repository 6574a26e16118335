"""The [automation] settings as the git hooks and the pytest plugin's hook read them: without
pydantic (they run on every commit and test run), checked by the rules settings.py applies to
them, each defined here once."""

import os
from typing import NamedTuple

from taskmeter.config.files import NUMBER, TEXT, read_values
from taskmeter.errors import MeterError


def branch_pattern_rule(pattern: str) -> str:
    """automation.branch_pattern must be a regular expression (ValueError says why not)."""
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return pattern


def coverage_target_rule(target: float | None) -> float | None:
    """automation.coverage_target is a percentage above 0 and at most 100, or not set."""
    if target is not None and target <= 0:
        raise ValueError("a percentage above 0 (0 would be no target: leave the setting out)")
    if target is not None and target > 100:
        raise ValueError("a percentage of at most 100")
    return target


class Automation(NamedTuple):
    branch_pattern: str
    main_branch: str
    coverage_target: float | None


def automation_values(explicit: str | os.PathLike | None = None) -> Automation:
    """The [automation] settings, each checked by its rule."""
    values = read_values(explicit)

    def checked(name: str, kind: str, rule):
        try:
            return rule(values.get(name, kind))
        except ValueError as exc:
            raise MeterError(f"config {values.path}: {name}: {exc}") from None

    return Automation(
        checked("automation.branch_pattern", TEXT, branch_pattern_rule),
        values.get("automation.main_branch", TEXT),
        checked("automation.coverage_target", NUMBER, coverage_target_rule),
    )
