"""The everyday views as a user meets them: in an 80-column terminal, in a pipe,
as JSON, and the usage reports over a known history."""

import errno
import json
import os
import pty
import re
import struct
import subprocess
from fcntl import ioctl
from termios import TIOCSWINSZ

import pytest

from taskmeter import ids
from taskmeter.store import connection, interactions, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from tests.meter_forks import METER
from tests.proxy_harness import VENV_BIN

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX_DRAWING = re.compile("[\u2500-\u257f]")


def _id(n: int) -> str:
    body = f"0d{n:010d}"
    return body + ids.check_char(body)


# (id, started_at, task, model, usage, cost, extra columns): five days of a known history.
CALLS = [
    (_id(1), "2026-11-20T10:00:00.000000Z", "P1-010", "gpt-4o-2024-08-06", (1000, 200, 0, 100, 20), 0.01, {}),
    (_id(2), "2026-11-20T23:30:00.000000Z", "P1-010", "claude-sonnet-4-5-20250929", (500, 0, 100, 50, None), 0.02, {}),
    (_id(3), "2026-11-21T05:00:00.000000Z", None, "gpt-4o-2024-08-06", (300, 0, 0, 30, 0), 0.003, {}),
    (_id(4), "2026-11-21T05:05:00.000000Z", None, "gpt-4o-2024-08-06", None, None, {"http_status": 502, "outcome": "failed"}),
    (
        _id(5),
        "2026-11-23T12:00:00.000000Z",
        "P1-011",
        "gemini-experimental-with-a-very-long-model-name",
        (100, 0, 0, 10, 0),
        None,
        {},
    ),
]
FLAGGED = _id(2)


@pytest.fixture
def history(db_path):
    db = connection.connect(db_path)
    tasks.set_task(db, "P1-010", title="Make the parser stream its input without buffering whole bodies", estimate_seconds=5400)
    with write_transaction(db):
        tasks.ensure_task(db, "P1-011", "2026-11-20T09:00:00.000000Z")
    for interaction_id, started, task_id, model, usage, cost, extra in CALLS:
        tokens = dict(
            zip(("input_total", "cache_read", "cache_write", "output_total", "reasoning"), usage or (None,) * 5, strict=True)
        )
        interactions.insert(
            db,
            Interaction(
                id=interaction_id, started_at=started, ended_at=started.replace("00.000000Z", "03.000000Z"), task_id=task_id,
                model=model, provider="openai", http_status=extra.get("http_status", 200), outcome=extra.get("outcome", "complete"),
                usage_source="reported" if usage else None, cost_usd=cost, conversation_root="c1", **tokens,
            ),
        )  # fmt: skip
    interactions.flag(db, FLAGGED, "invented an API")
    db.close()
    return db_path


def _env(db_path, tz="UTC") -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    return {**env, "METER_DB": str(db_path), "TZ": tz, "TERM": "xterm-256color"}


def in_terminal(db_path, *args: str, columns: int = 80) -> tuple[int, str]:
    """Run meter in a pseudo-terminal of `columns` columns; (exit status, screen text)."""
    controller, terminal = pty.openpty()
    ioctl(terminal, TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [str(VENV_BIN / "meter"), *args], stdin=terminal, stdout=terminal, stderr=terminal, env=_env(db_path)
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError as exc:  # EIO: the terminal's other side is closed
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(30), ANSI.sub("", output.decode()).replace("\r\n", "\n")


def piped(db_path, *args: str, tz: str = "UTC") -> subprocess.CompletedProcess:
    """`meter ARGS` writing to no terminal: a fork of a process that imported the CLI once (tests/meter_forks.py)."""
    return METER.run(list(args), env=_env(db_path, tz), timeout=30)


TABLES = [
    ["log"],
    ["log", "--unassigned"],
    ["tasks"],
    ["phases"],
    ["report"],
    ["report", "daily"],
    ["report", "weekly"],
    ["report", "monthly"],
    ["report", "models"],
    ["config", "show"],
]


@pytest.mark.parametrize("args", TABLES, ids=" ".join)
def test_tables_fit_80_columns_without_wrapping_an_id_or_a_time(history, args):
    code, screen = in_terminal(history, *args)
    assert code == 0, screen
    lines = screen.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
    assert not BOX_DRAWING.search(screen)
    if args[0] == "log":
        shown = [line.split()[0] for line in lines[1:]]
        expected = [c[0] for c in reversed(CALLS) if not args[1:] or c[2] is None]
        assert shown == expected  # every ID whole, at the start of its line
        assert all(re.search(r"\s(\d\d-\d\d \d\d:\d\d|\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d)\s", line) for line in lines[1:])


@pytest.mark.parametrize("args", TABLES, ids=" ".join)
def test_piped_tables_are_tab_separated_with_a_header(history, args):
    result = piped(history, *args)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) >= 2 and len({len(row) for row in rows}) == 1
    assert not BOX_DRAWING.search(result.stdout)


def test_piped_values_are_whole_and_plain(history):
    rows = [line.split("\t") for line in piped(history, "log").stdout.splitlines()]
    header = rows[0]
    first = dict(zip(header, rows[-1], strict=True))  # the oldest call
    assert first["ID"] == _id(1) and first["Started"] == "2026-11-20T10:00:00+00:00"
    assert (first["In"], first["Cache R"], first["Out"], first["Cost"]) == ("1000", "200", "100", "0.010000")
    assert first["Model"] == "gpt-4o-2024-08-06"


def test_narrow_terminals_drop_columns_but_keep_ids(history):
    code, wide = in_terminal(history, "log", "--no-preview", columns=160)  # a preview takes the place of the detail
    assert code == 0 and "Cache W" in wide.splitlines()[0]
    code, narrow = in_terminal(history, "log", columns=60)
    header = narrow.splitlines()[0]
    assert code == 0 and "Cache W" not in header and header.startswith("ID")
    assert all(len(line) <= 60 for line in narrow.splitlines())
    assert all(call[0] in narrow for call in CALLS)


DATA_COMMANDS = [
    ["status", "--json"],
    ["tasks", "--json"],
    ["phases", "--json"],
    ["task", "P1-010", "--json"],
    ["phase", "P1", "--json"],
    ["log", "--json"],
    ["show", _id(1), "--json"],
    ["flag", _id(3), "--json"],
    ["report", "--json"],
    ["report", "--json", "task", "P1-010"],
    ["report", "phase", "P1", "--format", "json"],
    ["report", "daily", "--json"],
    ["report", "--json", "models"],
    ["config", "show", "--json"],
    ["doctor", "--json"],
]


@pytest.mark.parametrize("args", DATA_COMMANDS, ids=" ".join)
def test_every_data_command_prints_json(history, args):
    result = piped(history, *args)
    assert result.returncode == (1 if args[0] == "doctor" else 0), result.stderr  # doctor: no proxy runs
    json.loads(result.stdout)


def test_shell_completion_offers_task_and_call_ids(history):
    def complete(*words: str) -> list[str]:
        env = {
            **_env(history),
            "_METER_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["meter", *words]),
            "COMP_CWORD": str(len(words)),
        }
        result = subprocess.run([str(VENV_BIN / "meter")], capture_output=True, text=True, env=env, timeout=30)
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("task", "p1") == ["P1-010", "P1-011"]
    assert complete("show", "0d00000000") == [c[0] for c in reversed(CALLS)]
    assert complete("flag", "la") == ["last"]
    assert "statusline" in complete("st")
    assert "--unassigned" in complete("log", "--un")
    script = piped(history, "completion", "bash").stdout
    assert "_METER_COMPLETE=bash_complete" in script


def test_one_name_for_one_thing_across_listings(history):
    listed = {task["task_id"]: task for task in json.loads(piped(history, "tasks", "--json").stdout)}
    single = json.loads(piped(history, "task", "P1-010", "--json").stdout)
    assert set(single) <= set(listed["P1-010"])
    for name in ("begin_timestamp", "projection_met", "token_count_used", "cost_usd", "hallucination_count", "failed_calls"):
        assert listed["P1-010"][name] == single[name]
    assert listed["P1-010"]["current"] is True and listed["P1-011"]["current"] is False
    call = json.loads(piped(history, "show", _id(2), "--json").stdout)
    assert call["interaction_id"] == _id(2) and call["flagged"] is True and call["context_switch"] is None
    assert call["tokens"] == {
        "input_total": 500,
        "cache_read": 0,
        "cache_write": 100,
        "output_total": 50,
        "reasoning": None,
        "total": 550,
    }


def test_cost_shows_in_status_tasks_and_log(history):
    assert re.search(r"Cost so far: +\$0\.0300", piped(history, "status").stdout)
    tasks_rows = [line.split("\t") for line in piped(history, "tasks").stdout.splitlines()]
    assert dict(zip(tasks_rows[0], tasks_rows[1], strict=True))["Cost"] == "0.030000"
    code, screen = in_terminal(history, "log")
    assert "$0.0200" in screen and re.search(r"\$0\.003(?!\d)", screen)  # below a cent: significant digits


def test_daily_report_over_a_known_history(history):
    report = json.loads(piped(history, "report", "daily", "--json").stdout)
    days = {day["period"]: day for day in report["periods"]}
    assert list(days) == ["2026-11-20", "2026-11-21", "2026-11-23"]
    first = days["2026-11-20"]
    assert (first["ai_interactions"], first["failed_calls"], first["hallucination_count"]) == (2, 0, 1)
    assert first["tokens"] == {
        "input_total": 1500,
        "cache_read": 200,
        "cache_write": 100,
        "output_total": 150,
        "reasoning": 20,
        "total": 1650,
    }
    assert first["cost_usd"] == pytest.approx(0.03)
    assert [(m["model"], m["cost_usd"]) for m in first["models"]] == [  # dearest first
        ("claude-sonnet-4-5-20250929", pytest.approx(0.02)),
        ("gpt-4o-2024-08-06", pytest.approx(0.01)),
    ]
    assert (days["2026-11-21"]["ai_interactions"], days["2026-11-21"]["failed_calls"]) == (1, 1)
    assert days["2026-11-23"]["unpriced_interactions"] == 1 and days["2026-11-23"]["cost_usd"] is None
    assert report["totals"]["ai_interactions"] == 4 and report["totals"]["failed_calls"] == 1


def test_days_are_local_unless_utc(history):
    local = json.loads(piped(history, "report", "daily", "--json", tz="America/Los_Angeles").stdout)
    assert {d["period"]: d["ai_interactions"] for d in local["periods"]} == {"2026-11-20": 3, "2026-11-23": 1}
    utc = json.loads(piped(history, "report", "daily", "--json", "--utc", tz="America/Los_Angeles").stdout)
    assert {d["period"]: d["ai_interactions"] for d in utc["periods"]} == {"2026-11-20": 2, "2026-11-21": 1, "2026-11-23": 1}


def test_weekly_monthly_models_and_a_window(history):
    weeks = json.loads(piped(history, "report", "weekly", "--json").stdout)["periods"]
    assert [w["period"] for w in weeks] == ["2026-11-16", "2026-11-23"]  # Mondays
    months = json.loads(piped(history, "report", "monthly", "--json").stdout)["periods"]
    assert [(m["period"], m["ai_interactions"]) for m in months] == [("2026-11", 4)]
    models = {m["model"]: m for m in json.loads(piped(history, "report", "models", "--json").stdout)["models"]}
    assert (models["gpt-4o-2024-08-06"]["ai_interactions"], models["gpt-4o-2024-08-06"]["failed_calls"]) == (2, 1)
    window = json.loads(piped(history, "report", "daily", "--since", "2026-11-21", "--until", "2026-11-22", "--json").stdout)
    assert [d["period"] for d in window["periods"]] == ["2026-11-21"]


def test_hourly_usage_and_one_task_s_usage(history):
    hours = json.loads(piped(history, "report", "hourly", "--json").stdout)["periods"]
    assert [(h["period"], h["ai_interactions"], h["failed_calls"]) for h in hours] == [
        ("2026-11-20 10:00 UTC", 1, 0),
        ("2026-11-20 23:00 UTC", 1, 0),
        ("2026-11-21 05:00 UTC", 1, 1),
        ("2026-11-23 12:00 UTC", 1, 0),
    ]
    one_task = json.loads(piped(history, "report", "models", "--task", "p1-010", "--json").stdout)
    assert one_task["task_id"] == "P1-010"
    assert [(m["model"], m["tokens"]["total"]) for m in one_task["models"]] == [  # dearest first: $0.02, then $0.01
        ("claude-sonnet-4-5-20250929", 550),
        ("gpt-4o-2024-08-06", 1100),
    ]
    unknown = piped(history, "report", "daily", "--task", "P7-000")
    assert unknown.returncode == 1 and "unknown task 'P7-000'" in unknown.stderr


def test_log_filters(history):
    def listed(*args: str) -> list[str]:
        return [row["interaction_id"] for row in json.loads(piped(history, "log", "--json", *args).stdout)]

    assert listed("--unassigned") == listed("--task", "unassigned") == [_id(4), _id(3)]
    assert listed("--failed") == [_id(4)]
    assert listed("--flagged") == [_id(2)]
    assert listed("--model", "CLAUDE") == [_id(2)]
    assert listed("--since", "2026-11-21", "--until", "2026-11-22") == [_id(4), _id(3)]
    assert listed("--search", "gemini-exp") == [_id(5)]
    assert listed("--task", "P1-010", "--model", "gpt") == [_id(1)]


def test_unassigned_calls_can_be_retagged(history):
    moved = piped(history, "retag", "--unassigned", "--to", "P1-011")
    assert moved.returncode == 0 and "Moved 2 interactions to P1-011" in moved.stdout
    assert json.loads(piped(history, "log", "--unassigned", "--json").stdout) == []
    typo = piped(history, "retag", _id(1), "--to", "P7-001")
    assert typo.returncode == 1 and "unknown task 'P7-001'" in typo.stderr
    assert json.loads(piped(history, "tasks", "--json").stdout)[-1]["task_id"] == "P1-011"  # no P7-001


def test_a_one_character_typo_in_an_id_is_refused(history):
    real = _id(1)
    for position in (3, 9, ids.LENGTH - 1):
        typo = real[:position] + ("z" if real[position] != "z" else "y") + real[position + 1 :]
        for command in (["show", typo], ["flag", typo]):
            result = piped(history, *command)
            assert result.returncode == 1 and "does not check: a character is mistyped" in result.stderr
    assert json.loads(piped(history, "log", "--flagged", "--json").stdout)[0]["interaction_id"] == FLAGGED  # nothing flagged


def test_options_work_before_and_after_the_report_subcommand(history):
    before = piped(history, "report", "--format", "json", "task", "P1-010")
    after = piped(history, "report", "task", "P1-010", "--format", "json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout)["task_id"] == json.loads(after.stdout)["task_id"] == "P1-010"
    assert piped(history, "report", "--utc", "daily").returncode == 0
