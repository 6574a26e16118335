"""What every command shares: the `meter` group, argument types, options, opening the database."""

import contextlib
import importlib
import os
import sqlite3
from collections.abc import Iterator

import click

from taskmeter import __version__
from taskmeter.errors import MeterError
from taskmeter.store import connection
from taskmeter.timefmt import parse_duration, parse_moment, parse_user_timestamp, to_stored


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class TimestampType(click.ParamType):
    name = "ISO8601"

    def convert(self, value, param, ctx):
        try:
            return parse_user_timestamp(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class PercentType(click.ParamType):
    name = "PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from taskmeter.store import tasks  # here: the read commands need none of it

        try:
            return tasks.parse_percent(str(value))
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class TagType(click.ParamType):
    name = "TAG"

    def convert(self, value, param, ctx):
        from taskmeter.store import tasks

        try:
            return tasks.parse_tag(value)
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


class MomentType(click.ParamType):
    """--since, --until, --before: a stored timestamp from today, 6h, 2026-11-20 and the like."""

    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return to_stored(parse_moment(value))
        except MeterError as exc:
            self.fail(str(exc), param, ctx)


def _known(query: str, incomplete: str) -> list[tuple[str, str]]:
    """For shell completion: (value, help) pairs from the database, quietly none
    when it cannot be read. Read-only: completing must never create or migrate it."""
    path = connection.resolve_path(None)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            return [(row[0], row[1] or "") for row in db.execute(query, (incomplete.lower() + "%",))]
        finally:
            db.close()
    except sqlite3.Error:
        return []


class TaskIdType(click.ParamType):
    name = "TASK"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem  # only when the shell completes: not at every command's start

        found = _known("SELECT id, title FROM tasks WHERE lower(id) LIKE ? ORDER BY begin_at DESC LIMIT 100", incomplete)
        return [CompletionItem(value, help=help) for value, help in found]


class InteractionIdType(click.ParamType):
    name = "ID"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        found = _known(
            "SELECT id, coalesce(task_id, 'unassigned') || ' ' || coalesce(model, '?') FROM interactions"
            " WHERE id LIKE ? ORDER BY started_at DESC LIMIT 50",
            incomplete,
        )
        values = [CompletionItem(value, help=help) for value, help in found]
        return (
            [CompletionItem("last", help="the last call of the current task")] if "last".startswith(incomplete) else []
        ) + values


DURATION, TIMESTAMP, PERCENT, MOMENT, TAG = DurationType(), TimestampType(), PercentType(), MomentType(), TagType()
TASK, INTERACTION = TaskIdType(), InteractionIdType()
YES_NO = click.Choice(["yes", "no"], case_sensitive=False)

db_option = click.option(
    "--db",
    "db_path",
    envvar=connection.ENV_VAR,
    type=click.Path(dir_okay=False),
    help=f"Database file (default: ${connection.ENV_VAR}, else {connection.default_path()}).",
)
config_option = click.option(
    "--config",
    "config_path",
    envvar="METER_CONFIG",
    type=click.Path(dir_okay=False),
    help="Settings file (default: $METER_CONFIG, else the user config folder's config.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (field names in docs/schema.md).")
utc_option = click.option("--utc", is_flag=True, help="Show times in UTC instead of local time.")


def idle_seconds() -> float:
    """The working-time rule's idle gap, from the config file (record.idle_minutes)."""
    from taskmeter.config.files import NUMBER, read_values

    return read_values().get("record.idle_minutes", NUMBER) * 60


def budget_defaults():
    """The config's [budgets]: the default mode and per-task budget (analytics/budgets.py)."""
    from taskmeter.analytics.budgets import configured_defaults
    from taskmeter.config.files import read_values

    return configured_defaults(read_values())


@contextlib.contextmanager
def open_db(path: str | os.PathLike | None, create: bool = True) -> Iterator[sqlite3.Connection]:
    """The database, for a command. One that reads or changes what is stored gives `create=False`: where
    there is no database it says so (connection.NoDatabase) instead of making an empty one."""
    db = connection.connect(path, create=create)
    try:
        yield db
    except sqlite3.Error as exc:
        raise connection.describe_sqlite_error(exc, connection.resolve_path(path)) from None
    finally:
        db.close()


# The module of taskmeter.cli that defines each command: `meter X` imports that module
# alone, so that a command pays at start-up only for what it uses.
COMMAND_MODULES = {
    "alerts": "budgets",
    "budget": "budgets",
    "claude": "automation",
    "completion": "settings",
    "config": "settings",
    "doctor": "proxy",
    "env": "proxy",
    "flag": "calls",
    "forecast": "forecast",
    "hooks": "automation",
    "iteration": "tasks",
    "log": "calls",
    "mark": "tasks",
    "path": "settings",
    "phase": "tasks",
    "phases": "tasks",
    "proxy": "proxy",
    "purge": "calls",
    "reconcile": "reconcile",
    "report": "reports",
    "retag": "calls",
    "run": "proxy",
    "service": "service",
    "set-task": "tasks",
    "show": "calls",
    "start": "proxy",
    "status": "calls",
    "statusline": "statusline",
    "stop": "proxy",
    "task": "tasks",
    "tasks": "tasks",
    "team": "team",
    "ui": "dashboard",
    "unflag": "calls",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are asked for (click's "lazily loading subcommands")."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"taskmeter.cli.{COMMAND_MODULES[cmd_name]}")  # its decorators add it to `cli`
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meter")
def cli() -> None:
    """Meter AI calls per task: tokens, cost, context switches and hallucinations.

    \b
    Typical flow:
      meter set-task P1-010 --estimate 1h30m   # what you are working on
      meter mark initial                        # milestones as they happen
      meter log                                 # recent AI calls with their IDs
      meter flag last --note "invented API"     # a hallucination

    The database is one SQLite file; --db or $METER_DB choose another.
    """
