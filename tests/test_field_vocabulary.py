"""One vocabulary: the fields a person records are one table (store/tasks.py TASK_FIELDS,
PHASE_FIELDS), and `meter task` / `meter phase`, the store and the reports all follow it."""

import json
import sqlite3

import click
import pytest

from taskmeter.cli.tasks import phase_cmd, task_cmd
from taskmeter.store import tasks
from taskmeter.tokens import TOKEN_COLUMNS, tokens_object

# The options of `meter task` and `meter phase` that edit no recorded field.
TASK_OTHER_OPTIONS = {
    "--phase",
    "--create",
    "--budget",
    "--also",
    "--on-exceeded",
    "--unset",
    "--show",
    "--delete",
    "--move-calls-to",
    "--merge-into",
    "--reopen",
    "--json",
    "--db",
}
PHASE_OTHER_OPTIONS = {"--mark", "--at", "--force", "--budget", "--also", "--on-exceeded", "--unset", "--show", "--json", "--db"}

# Per kind: the click type's name, and its choices.
TYPE_NAMES = {
    "text": "text",
    "duration": "DURATION",
    "percent": "PERCENT",
    "yes-no": "choice",
    "success": "choice",
    "tag": "TAG",
}
CHOICES = {"yes-no": ["yes", "no"], "success": list(tasks.SUCCESS_VALUES)}

# Per kind: what is typed, what is stored, what the confirmation line says, what --json gives.
SAMPLES = {
    "text": ("works well", "works well", "'works well'", "works well"),
    "duration": ("1h30m", 5400, "1h 30m", 5400),
    "percent": ("87.5%", 87.5, "87.5%", 87.5),
    "yes-no": ("yes", 1, "yes", True),
    "success": ("pass", "pass", "'pass'", "pass"),
    "tag": ("API", "api", "'api'", "api"),
}

CASES = [("task", "P1-010", "tasks", field) for field in tasks.TASK_FIELDS]
CASES += [("phase", "P1", "phases", field) for field in tasks.PHASE_FIELDS]


COMMANDS = {"task": task_cmd, "phase": phase_cmd}


def _options(command: str) -> set[str]:
    return {name for param in COMMANDS[command].params if isinstance(param, click.Option) for name in param.opts}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


@pytest.mark.parametrize(
    ("command", "table", "fields", "others"),
    [
        ("task", "tasks", tasks.TASK_FIELDS, TASK_OTHER_OPTIONS),
        ("phase", "phases", tasks.PHASE_FIELDS, PHASE_OTHER_OPTIONS),
    ],
)
def test_the_options_and_the_field_table_agree(meter, db, command, table, fields, others):
    meter("set-task", "P1-010")  # makes the schema
    field_options = {f"--{field.option}" for field in fields}
    # Every field has its option, and every option is a field's or one of the few that edit none.
    assert field_options | others == _options(command)
    assert not field_options & others
    # Every field is a column of its table, once.
    columns = [field.column for field in fields]
    assert len(set(columns)) == len(columns) and set(columns) <= _columns(db, table)
    # Each option takes its kind of value.
    by_option = {param.opts[0]: param for param in COMMANDS[command].params}
    for field in fields:
        kind = by_option[f"--{field.option}"].type
        assert kind.name == TYPE_NAMES[field.kind], field.option
        assert list(getattr(kind, "choices", [])) == CHOICES.get(field.kind, []), field.option


@pytest.mark.parametrize(("command", "fields"), [("task", tasks.TASK_FIELDS), ("phase", tasks.PHASE_FIELDS)])
def test_help_lists_every_field_with_its_seed_name(meter, command, fields):
    result = meter(command, "--help")
    assert result.code == 0, result.err
    text = " ".join(result.out.split())  # the help wraps its lines
    for field in fields:
        assert f"--{field.option} " in text
        assert f"{field.seed.upper()}: {field.about}" in text
    unset = text[text.index("--unset FIELD") :]
    assert ", ".join(field.option for field in fields) + " or budget." in unset


def test_the_field_table_matches_the_reports_sections():
    from taskmeter.analytics.metrics import PHASE_SECTIONS, TASK_SECTIONS

    seeds = {name for names in TASK_SECTIONS.values() for name in names}
    # Every seed field of the template a person fills in (not a title, nor a yes/no the phase sums, nor
    # the tag forecasts group tasks by).
    assert {field.seed for field in tasks.TASK_FIELDS} - seeds == {"title", "projection_met", "performance_met", "tag"}
    phase_seeds = {name for names in PHASE_SECTIONS.values() for name in names}
    assert {field.seed for field in tasks.PHASE_FIELDS} - phase_seeds == {"title"}


@pytest.mark.parametrize(("command", "record", "table", "field"), CASES, ids=lambda case: getattr(case, "option", None))
def test_each_option_edits_its_column_says_it_and_reports_it_under_its_seed_name(meter, db, command, record, table, field):
    meter("set-task", "P1-010")
    typed, stored, said, reported = SAMPLES[field.kind]
    result = meter(command, record, f"--{field.option}", typed)
    assert result.code == 0, result.err
    assert result.out.strip() == f"{record}: {field.option} {said}."
    assert db.execute(f"SELECT {field.column} FROM {table} WHERE id = ?", (record,)).fetchone()[0] == stored
    assert json.loads(meter(command, record, "--json").out)[field.seed] == reported

    cleared = meter(command, record, "--unset", field.option)
    assert cleared.code == 0, cleared.err
    assert cleared.out.strip() == f"{record}: {field.option} cleared."
    assert db.execute(f"SELECT {field.column} FROM {table} WHERE id = ?", (record,)).fetchone()[0] is None
    assert json.loads(meter(command, record, "--json").out)[field.seed] is None


def test_set_task_takes_title_and_estimate_as_meter_task_does(meter, db):
    result = meter("set-task", "P1-010", "--title", "Login", "--estimate", "1h30m")
    assert result.code == 0, result.err
    assert tuple(tasks.get_task(db, "P1-010")[column] for column in ("title", "estimate_seconds")) == ("Login", 5400)
    text = " ".join(meter("set-task", "--help").out.split())
    for option in ("title", "estimate"):
        field = next(field for field in tasks.TASK_FIELDS if field.option == option)
        assert f"--{option} " in text and f"{field.seed.upper()}: {field.about}" in text


def test_the_tokens_object_has_every_token_column_and_their_total():
    call = {"input_total": 120, "cache_read": 100, "cache_write": None, "output_total": 30, "reasoning": 10}
    assert tokens_object(call) == {**call, "total": 150}
    assert list(tokens_object(call)) == [*TOKEN_COLUMNS, "total"]
    assert tokens_object({**call, "output_total": None})["total"] == 120
    assert tokens_object(dict.fromkeys(TOKEN_COLUMNS))["total"] is None
