"""The whole `meter` command: the group and every module that adds commands to it."""

from taskmeter.cli import (  # noqa: F401  (they register commands)
    automation,
    budgets,
    calls,
    dashboard,
    proxy,
    reconcile,
    reports,
    settings,
    statusline,
    tasks,
)
from taskmeter.cli.common import cli

__all__ = ["cli"]
