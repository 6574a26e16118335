"""One transaction convention (issue 23): every store write runs inside
`write_transaction`, which nests as a savepoint; a store function that is one
step of a larger write refuses to run outside a transaction; and the SQL of the
automation and the dashboard lives in store/."""

import re
import sqlite3
from pathlib import Path

import pytest

from taskmeter.cli.budgets import apply_budget
from taskmeter.reconcile.importing import import_missed
from taskmeter.store import budgets, calls, connection, interactions, tasks
from taskmeter.store.calls import CallRow
from taskmeter.store.interactions import Interaction
from tests.conftest import dump

PACKAGE = Path(__file__).resolve().parent.parent / "taskmeter"
AT = "2026-01-01T00:00:00.000000Z"


def _titles(db) -> list[str | None]:
    return [row[0] for row in db.execute("SELECT title FROM phases ORDER BY id")]


@pytest.fixture
def phase(db):
    db.execute("INSERT INTO phases (id, created_at) VALUES ('P1', ?)", (AT,))
    return db


def test_transactions_nest_and_only_the_outermost_commits(phase, db_path):
    other = sqlite3.connect(db_path)
    try:
        with connection.write_transaction(phase):
            phase.execute("UPDATE phases SET title = 'outer'")
            with connection.write_transaction(phase):
                with connection.write_transaction(phase):
                    phase.execute("UPDATE phases SET title = 'innermost'")
                assert phase.in_transaction
            # Done inside, yet nobody else sees it: the savepoints were released into the outer transaction.
            assert other.execute("SELECT title FROM phases").fetchone()[0] is None
        assert not phase.in_transaction
        assert other.execute("SELECT title FROM phases").fetchone()[0] == "innermost"
    finally:
        other.close()


def test_a_failing_inner_part_rolls_back_only_itself(phase):
    with connection.write_transaction(phase):
        phase.execute("UPDATE phases SET title = 'outer'")
        with pytest.raises(ValueError), connection.write_transaction(phase):
            phase.execute("UPDATE phases SET title = 'inner'")
            with connection.write_transaction(phase):
                phase.execute("INSERT INTO phases (id, created_at) VALUES ('P2', ?)", (AT,))
            raise ValueError("the inner part fails")
        assert _titles(phase) == ["outer"]  # P2, stored by a part inside the failed one, went with it
        phase.execute("UPDATE phases SET title = title || ', then more'")
    assert _titles(phase) == ["outer, then more"]


def test_an_exception_rolls_back_everything_the_inner_parts_did(phase):
    with pytest.raises(ValueError), connection.write_transaction(phase):
        with connection.write_transaction(phase):
            phase.execute("UPDATE phases SET title = 'inner, released'")
        phase.execute("INSERT INTO phases (id, created_at) VALUES ('P2', ?)", (AT,))
        raise ValueError("a later check fails")
    assert _titles(phase) == [None] and not phase.in_transaction


def test_a_transaction_takes_the_write_lock_when_it_begins(phase, db_path):
    other = connection.connect(db_path, busy_timeout=0)
    try:
        with connection.write_transaction(phase):
            # Nothing written yet, and still another writer cannot start: no read-then-write races it.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def _call(interaction_id: str, task_id: str | None = "P1-001", started_at: str = AT, root: str | None = None) -> Interaction:
    return Interaction(
        id=interaction_id, task_id=task_id, started_at=started_at, protocol="openai", operation="generate", conversation_root=root
    )


@pytest.fixture
def work(db):
    """P1-001 (current, with one call) and P1-002."""
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002", create=True)
    tasks.set_task(db, "P1-001")
    with connection.write_transaction(db):
        calls.store_calls(db, [CallRow(_call("00000001aaaa"))])
    return db


# Each store function that runs in the caller's transaction, called as its callers call it.
STEPS = {
    "store_calls": lambda db: calls.store_calls(db, [CallRow(_call("00000002bbbb"))]),
    "insert_many": lambda db: interactions.insert_many(db, [_call("00000002bbbb")]),
    "insert_texts": lambda db: calls.insert_texts(db, CallRow(_call("00000001aaaa"), texts=("a prompt", None, "an answer"))),
    "recompute_context_switches": lambda db: calls.recompute_context_switches(db, "P1-001"),
    "move_task_calls": lambda db: calls.move_task_calls(db, "P1-001", "P1-002"),
    "ensure_task": lambda db: tasks.ensure_task(db, "P1-003", AT),
    "auto_mark": lambda db: tasks.auto_mark(db, "tasks", "P1-001", "initial", AT, "a test"),
    "release_approved": lambda db: tasks.release_approved(db, "P1-001", AT),
    "import_missed": lambda db: import_missed(db, []),
    "apply_budget": lambda db: apply_budget(db, "task", "P1-001", (budgets.parse_amount("2M"),), None, False, False),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_step_of_a_larger_write_refuses_to_run_outside_a_transaction(work, db_path, step):
    before = dump(db_path)
    with pytest.raises(connection.NotInTransaction, match=rf"^{step} runs in the caller's transaction: call it inside"):
        STEPS[step](work)
    assert dump(db_path) == before and not work.in_transaction
    with connection.write_transaction(work):
        STEPS[step](work)


def test_the_steps_that_write_write_inside_a_transaction(work, db_path):
    before = dump(db_path)
    with connection.write_transaction(work):
        for step in ("store_calls", "insert_texts", "ensure_task", "auto_mark", "release_approved", "apply_budget"):
            STEPS[step](work)
    after = work.execute(
        "SELECT (SELECT count(*) FROM interactions), (SELECT count(*) FROM call_texts), (SELECT count(*) FROM tasks),"
        " (SELECT initial_completion_at FROM tasks WHERE id = 'P1-001'), (SELECT count(*) FROM budgets)"
    ).fetchone()
    assert tuple(after) == (2, 1, 3, AT, 1) and dump(db_path) != before
    assert tasks.current_task(work) is None  # released: the approved task is current no more


def test_a_retag_outside_any_transaction_is_still_all_or_nothing(work, db_path):
    """The dashboard's retag shipped without a transaction: a failure after its
    first UPDATE kept the move and lost the rest. Retag now opens its own."""
    with connection.write_transaction(work):
        calls.store_calls(work, [CallRow(_call("00000003cccc", started_at="2026-01-01T00:01:00.000000Z", root="a root"))])
    work.execute(  # after the move itself, when the conversation is rescoped to the new task
        "CREATE TEMP TRIGGER fail_halfway BEFORE UPDATE OF conversation_id ON interactions"
        " BEGIN SELECT RAISE(ABORT, 'failed halfway'); END"
    )
    before = dump(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="failed halfway"):
        calls.retag(work, ["00000003cccc"], "P1-002")
    assert dump(db_path) == before and not work.in_transaction
    work.execute("DROP TRIGGER fail_halfway")
    assert calls.retag(work, ["00000003cccc"], "P1-002") == 1
    assert work.execute("SELECT task_id FROM interactions WHERE id = '00000003cccc'").fetchone()[0] == "P1-002"


def _sources(*folders: str) -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE)): path.read_text()
        for folder in folders
        for path in sorted((PACKAGE / folder).rglob("*.py"))
    }


SQL_WRITE = re.compile(r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|REPLACE\s+INTO)\b")
TRANSACTION_CONTROL = re.compile(r"""execute\(\s*f?["'](BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b""")


# SQL these send to the team store's PostgreSQL (docs/team.md), never to the meter's database.
TEAM_STORE_SQL = {"team/schema.py", "team/sync.py"}


def test_only_the_store_writes_to_the_database():
    outside = {name: text for name, text in _sources(".").items() if not name.startswith("store/")}
    assert [name for name, text in outside.items() if SQL_WRITE.search(text)] == sorted(TEAM_STORE_SQL)
    for name in TEAM_STORE_SQL:  # each of their writes is to a table of the team store's schema
        text = _sources("team")[name]
        assert all(text[match.end() :].lstrip().startswith("taskmeter.") for match in SQL_WRITE.finditer(text)), name


def test_the_automation_leaves_its_sql_to_the_store():
    assert [name for name, text in _sources("automation").items() if re.search(r"\.execute(many)?\(", text)] == []


def test_transactions_begin_and_end_in_the_helper_alone():
    """Besides write_transaction: migrate() (each migration in its own immediate
    transaction, before any caller can have one open), the writer's rollback of a
    transaction left open, doctor's probe of the write lock, and `meter log
    --follow`'s read snapshot, which must not take the write lock."""
    found = {name for name, text in _sources(".").items() if TRANSACTION_CONTROL.search(text)}
    assert found == {"store/connection.py", "store/migrations.py", "store/writer.py", "doctor.py", "cli/calls.py"}
