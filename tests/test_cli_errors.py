"""Bad input: one line naming what was wrong, exit status 1, nothing changed."""

import sqlite3

import pytest

from taskmeter.store import interactions
from taskmeter.store.interactions import Interaction
from tests.conftest import dump


@pytest.fixture
def history(meter, db):
    meter("set-task", "P1-001")
    meter("set-task", "P1-002")
    for suffix in ("aaa1", "aab2"):
        interactions.insert(
            db,
            Interaction(id="00000000" + suffix, started_at="2026-01-01T00:00:00.000000Z", ended_at="2026-01-01T00:00:01.000000Z"),
        )
    return db


BAD_COMMANDS = [
    (["set-task", "bad id"], "malformed task ID"),
    (["set-task", "P1"], "malformed task ID"),
    (["set-task", "P1-003", "--estimate", "soon"], "cannot parse duration"),
    (["set-task", "P1-003", "--phase", "a b"], "malformed phase ID"),
    (["set-task"], "give a task ID"),
    (["set-task", "P1-003", "--none"], "give a task ID"),
    (["task", "P9-999"], "unknown task"),
    (["task", "P1-001", "--coverage-actual", "120"], "outside 0-100%"),
    (["task", "P1-001", "--coverage-actual", "lots"], "not a percentage"),
    (["task", "P1-001", "--success", "maybe"], "Invalid value for '--success'"),
    (["task", "P1-001", "--unset", "colour"], "cannot unset 'colour'"),
    (["task", "P1-001", "--estimate", "1h", "--unset", "estimate"], "contradict"),
    (["mark", "tests"], "milestone out of order"),
    (["mark", "initial", "P9-999"], "unknown task"),
    (["mark", "initial", "--at", "2026-01-01T00:00:00"], "no time zone"),
    (["mark", "initial", "--at", "noon"], "cannot parse timestamp"),
    (["mark", "initial", "--at", "2001-01-01T00:00:00Z"], "before task P1-002 began"),
    (["mark", "initial", "--at", "2001-01-01T00:00:00Z", "--force"], "before task P1-002 began"),
    (["mark", "initial", "--at", "2099-01-01T00:00:00Z"], "in the future; use --force"),
    (["mark", "finished"], "Invalid value for '{initial|tests|validated|approved}'"),
    (["iteration", "P9-999"], "unknown task"),
    (["phase", "P9"], "unknown phase"),
    (["phase", "P1", "--at", "2026-01-01T00:00:00Z"], "--at and --force go with --mark"),
    (["phase", "P1", "--mark", "docs"], "milestone out of order"),
    (["flag", "zzzzzz"], "unknown interaction"),
    (["flag", "zzzz"], "at least 6 characters"),
    (["flag", "not-an-id!"], "not an interaction ID"),
    (["flag", "last"], "no answered AI call of P1-002"),
    (["flag", "00000000aaa1", "--any"], "--any goes with `last`"),
    (["retag", "00000000aaa1", "--to", "P7-001"], "unknown task 'P7-001'"),
    (["retag", "00000000aaa1", "--unassign", "--create"], "--create goes with --to"),
    (["log", "--task", "P1-001", "--unassigned"], "contradict"),
    (["log", "--since", "last tuesday"], "cannot read 'last tuesday' as a time"),
    (["report", "--format", "json", "daily", "--format", "csv"], "conflicting output formats"),
    (["report", "daily", "--format", "pdf"], "Invalid value for '--format'"),
    (["purge", "--before", "soon"], "cannot read 'soon'"),
    (["unflag", "00000000aaa1"], "is not flagged"),
    (["log", "-n", "0"], "Invalid value for '-n'"),
    (["log", "--task", "P9-999"], "unknown task"),
    (["no-such-command"], "No such command"),
    (["set-task", "P1-003", "--colour"], "No such option"),
]


@pytest.mark.parametrize("args, message", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_bad_input_fails_cleanly_and_changes_nothing(meter, history, db_path, args, message):
    before = dump(db_path)
    result = meter(*args)
    assert result.code == 1
    assert message in result.err
    assert result.err.startswith("meter: error: ")
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert dump(db_path) == before


def test_a_file_that_is_not_a_database_is_refused_and_untouched(meter, tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"my precious notes, not SQLite" * 100)
    before = path.read_bytes()
    result = meter("tasks", "--db", str(path))
    assert result.code == 1
    assert "not a readable taskmeter database" in result.err and result.err.count("\n") == 1
    assert path.read_bytes() == before


def test_another_programs_sqlite_database_is_refused_and_untouched(meter, tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE mine (x)")
    before = path.read_bytes()
    result = meter("set-task", "P1-001", "--db", str(path))
    assert result.code == 1 and "did not create" in result.err
    assert path.read_bytes() == before


def test_unwritable_location_is_reported(meter, tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    result = meter("set-task", "P1-001", "--db", str(not_a_folder / "meter.db"))
    assert result.code == 1
    assert "cannot create the folder for database" in result.err and result.err.count("\n") == 1


def test_database_path_that_is_a_directory_is_refused(meter, tmp_path):
    result = meter("tasks", "--db", str(tmp_path))
    assert result.code == 1 and "is a directory" in result.err
