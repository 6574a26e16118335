"""The whole `meter` command: the group and every module that adds commands to it."""

from taskmeter.cli import automation, budgets, calls, dashboard, proxy, reports, settings, statusline, tasks  # noqa: F401  (they register commands)
from taskmeter.cli.common import cli

__all__ = ["cli"]
