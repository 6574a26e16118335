"""The context-switch rule does not depend on the order calls are stored in: a
stream that finishes after shorter calls began, a batch replayed from the spool,
a call stored minutes late. Whatever the order, the stored verdicts are those the
rule gives every call of the task judged at once (as a retag or m020 judges them)."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmeter.store import calls, sessions, tasks
from taskmeter.store.calls import CallRow
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored
from tests.migrated import migrated_database
from tests.sqlite_work import sqlite_steps

DAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TASKS = ("P1-001", "P1-002")
# How a call ties to others: a client's own session, a Responses chain, an SDK
# conversation, or nothing.
KINDS = (
    ("anthropic", "cc-one", "root-a"),
    ("anthropic", "cc-two", "root-b"),
    ("openai_chat", "codex-one", "root-c"),
    ("openai_responses", None, "chain-d"),
    ("openai_responses", None, "chain-e"),
    ("openai_chat", None, "root-f"),
    ("openai_chat", None, None),
)

a_call = st.tuples(st.integers(0, 90), st.sampled_from(TASKS), st.integers(0, len(KINDS) - 1))
a_switch = st.tuples(st.integers(0, 90), st.sampled_from((*TASKS, None)))


def _row(n: int, seconds: int, task_id: str, kind: int) -> CallRow:
    protocol, client_session, root = KINDS[kind]
    at = to_stored(DAY + timedelta(seconds=seconds))
    return CallRow(
        Interaction(
            id=f"{n:012d}",
            started_at=at,
            ended_at=at,
            task_id=task_id,
            attribution="path",
            protocol=protocol,
            client_session=client_session,
            conversation_root=root,
        )
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(a_call, min_size=1, max_size=14).flatmap(
        lambda made: st.tuples(st.just(made), st.permutations(range(len(made))), st.integers(1, 4))
    ),
    st.lists(a_switch, max_size=8),
)
def test_stored_verdicts_are_those_of_the_task_judged_at_once_whatever_the_order(drawn, switches):
    made, order, batch = drawn
    with tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            for seconds, task_id in sorted(switches, key=lambda switch: switch[0]):
                with mock.patch.object(tasks, "now", return_value=DAY + timedelta(seconds=seconds)):
                    _ = tasks.set_task(db, task_id, create=True) if task_id else tasks.clear_task(db)
            rows = [_row(n, *made[n]) for n in order]
            for first in range(0, len(rows), batch):
                with write_transaction(db):
                    calls.store_calls(db, rows[first : first + batch])
            for task_id in TASKS:
                assert [(value, stored) for _, value, stored in sessions.context_switches(db, task_id) if value != stored] == []
        finally:
            db.close()


def _sqlite_steps_to_store(db, row: CallRow) -> int:
    def store() -> None:
        with write_transaction(db):
            calls.store_calls(db, [row])

    return sqlite_steps(db, store)


def test_storing_a_call_costs_the_same_beside_ten_or_five_thousand_calls_of_its_session(db):
    """A script asking one prompt over and over makes one long session; judging
    a call, in order or stored after calls that began later, must not walk the
    session's earlier calls."""

    def script_call(n: int, seconds: float) -> CallRow:
        row = _row(n, 0, "P1-001", 5)  # an SDK conversation: one session while it goes on
        row.interaction.started_at = row.interaction.ended_at = to_stored(DAY + timedelta(seconds=seconds))
        return row

    def costs(first: int, count: int) -> tuple[int, int]:
        with write_transaction(db):
            calls.store_calls(db, [script_call(first + n, 100 + (first + n) / 10) for n in range(count)])
        in_order = _sqlite_steps_to_store(db, script_call(first + count, 100 + (first + count) / 10))
        # Begun before the last ten calls, stored after them.
        late = _sqlite_steps_to_store(db, script_call(first + count + 1, 100 + (first + count - 10) / 10 - 0.05))
        return in_order, late

    few = costs(0, 20)
    many = costs(10_000, 5_000)
    assert many[0] < 2 * few[0] and many[1] < 2 * few[1], (few, many)
