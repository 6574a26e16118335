"""Issue 23, instant commands: `meter tasks` reads a settled task's working time from
m029's settled_work instead of walking its switches and minutes again. A task is
settled once approved, or once no longer current with nothing of it later than the
listing's now; m029's triggers forget it on any change to what it is made of. Held
equal, field by field, to the listing that computes every task (the JSON one), after
random switches, calls on time and late, retags, deletes, iterations, milestones,
approvals and reopenings, at listings made at any moment and idle gap; and every row
kept equal to the working time computed from the rows. Then through the real `meter`."""

import json
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmeter.analytics import history, metrics, worktime
from taskmeter.analytics.listings import task_records
from taskmeter.store import connection, interactions, settled, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored
from tests.migrated import migrated_database
from tests.proxy_harness import VENV_BIN

ORIGIN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TASKS = ["P1-001", "P1-002", "P2-001"]
IDLE = 15 * 60


def _at(minutes: float) -> datetime:
    return ORIGIN + timedelta(minutes=minutes)


@contextmanager
def _clock(minutes: float):
    with (
        mock.patch.object(tasks, "now", lambda: _at(minutes)),
        mock.patch.object(tasks, "now_stored", lambda: to_stored(_at(minutes))),
    ):
        yield


def _computed(db, now: str, idle: float) -> list[dict]:
    """Every task's fields with its working time walked afresh: the listing `--json` gives."""
    return [{k: v for k, v in r.items() if k != "working_intervals"} for r in task_records(db, now=now, idle_seconds=idle)]


def _kept_rows_are_the_computation(db, now: str) -> None:
    """Each kept row that holds at `now` is the working time of the task's rows at `now`."""
    for task_id, idle, holds_from, seconds in db.execute("SELECT * FROM settled_work").fetchall():
        if holds_from <= now:
            spans = metrics.task_spans(history.task_history(db, task_id), now, idle)
            assert seconds == worktime.total(spans), (task_id, idle, holds_from)


minutes = st.integers(0, 8 * 60).map(float) | st.floats(0, 8 * 60, allow_nan=False).map(lambda m: round(m, 4))
task = st.sampled_from(TASKS)
OPERATION = st.one_of(
    st.tuples(st.just("switch"), st.sampled_from([*TASKS, None]), minutes),
    st.tuples(st.just("call"), st.sampled_from([*TASKS, None]), minutes),
    st.tuples(st.just("retag"), st.integers(0, 40), st.sampled_from([*TASKS, None])),
    st.tuples(st.just("delete"), st.integers(0, 40), st.none()),
    st.tuples(st.just("iteration"), task, minutes),
    st.tuples(st.just("approve"), task, minutes),
    st.tuples(st.just("reopen"), task, st.none()),
    st.tuples(st.just("list"), st.sampled_from([IDLE, 5 * 60]), minutes),
)


def _apply(db, operation: tuple, calls: list[str]) -> None:
    kind, what, value = operation
    if kind == "switch":
        with _clock(value):
            if what is None:
                tasks.clear_task(db)
            else:
                tasks.set_task(db, what)
    elif kind == "call":  # on time or late: a /t/ call, or (no task named) one of the current task
        calls.append(f"{len(calls):012d}")
        attributed = what or tasks.task_current_at(db, to_stored(_at(value)))
        interactions.insert(db, Interaction(id=calls[-1], started_at=to_stored(_at(value)), task_id=attributed))
    elif kind in ("retag", "delete") and calls:
        target = calls[what % len(calls)]
        with write_transaction(db):
            if kind == "retag":
                db.execute("UPDATE interactions SET task_id = ? WHERE id = ?", (value, target))
            else:
                db.execute("DELETE FROM interactions WHERE id = ?", (target,))
    elif kind == "iteration":
        with _clock(value):
            tasks.add_iteration(db, what, at=_at(value))
    elif kind == "approve":
        with _clock(value):
            tasks.mark(db, what, "approved", at=_at(value), force=True)
    elif kind == "reopen":
        if tasks.get_task(db, what)["final_approval_at"]:
            with _clock(8 * 60):
                tasks.reopen(db, what)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(OPERATION, max_size=30), last=minutes)
def test_the_listing_from_settled_working_time_is_the_listing_computed_afresh(operations, last):
    with tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            with write_transaction(db):
                for task_id in TASKS:
                    tasks.ensure_task(db, task_id, to_stored(ORIGIN))
            calls: list[str] = []
            for operation in [*operations, ("list", IDLE, last), ("list", IDLE, 9 * 60)]:
                if operation[0] != "list":
                    _apply(db, operation, calls)
                    continue
                _, idle, moment = operation
                now = to_stored(_at(moment))
                _kept_rows_are_the_computation(db, now)
                for _ in range(2):  # the first listing may keep rows, the second reads them
                    listed = task_records(db, now=now, idle_seconds=idle, intervals=False, keep_settled=True)
                    assert listed == _computed(db, now, idle)
        finally:
            db.close()


def _worked_half_an_hour_on_p1_001(db) -> None:
    """P1-001 current from 09:00, a call every 5 minutes, then P1-002 from 09:30."""
    with _clock(0):
        tasks.set_task(db, "P1-001")
    for minute in range(0, 30, 5):
        interactions.insert(db, Interaction(id=f"{minute:012d}", started_at=to_stored(_at(minute)), task_id="P1-001"))
    with _clock(30):
        tasks.set_task(db, "P1-002")


def test_a_settled_task_is_read_until_it_changes(db):
    """Worked 09:00-09:30, then the developer moved to P1-002: P1-001 is settled, kept at the
    first listing and read at the next; a late call of its own at 09:40 brings its walk back."""
    _worked_half_an_hour_on_p1_001(db)
    now = to_stored(_at(60))
    first = task_records(db, now=now, idle_seconds=IDLE, intervals=False, keep_settled=True)
    kept = [tuple(row) for row in db.execute("SELECT task_id, holds_from, working_seconds FROM settled_work")]
    assert kept == [("P1-001", now, 30 * 60.0)]
    assert task_records(db, now=now, idle_seconds=IDLE, intervals=False) == first == _computed(db, now, IDLE)
    interactions.insert(db, Interaction(id="000000000099", started_at=to_stored(_at(40)), task_id="P1-001"))  # late
    assert db.execute("SELECT count(*) FROM settled_work").fetchone()[0] == 0
    later = task_records(db, now=now, idle_seconds=IDLE, intervals=False)
    assert later[0]["actual_duration"] == 41 * 60.0  # joined: 10 minutes after the switch away
    assert later == _computed(db, now, IDLE)


@pytest.mark.e2e
def test_meter_tasks_keeps_settled_tasks_and_forgets_one_made_current(db, db_path):
    """Through the real `meter`: the second listing reads what the first kept, the same
    table; `meter set-task` makes P1-001 current again and its row goes."""
    _worked_half_an_hour_on_p1_001(db)

    def meter(*args: str) -> str:
        done = subprocess.run([str(VENV_BIN / "meter"), *args, "--db", str(db_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = meter("tasks")
    assert [row[0] for row in db.execute("SELECT task_id FROM settled_work")] == ["P1-001"]
    assert meter("tasks") == first
    listed = {r["task_id"]: r["actual_duration"] for r in json.loads(meter("tasks", "--json"))}
    assert listed["P1-001"] == 30 * 60.0
    assert "30m" in first.splitlines()[1]
    meter("set-task", "P1-001")
    assert db.execute("SELECT count(*) FROM settled_work").fetchone()[0] == 0
    assert "P1-001" in meter("tasks")


def test_what_was_computed_before_a_change_is_not_kept_but_a_call_that_changes_nothing_does_not_stop_it(db, db_path):
    """The listing counts m029's changes before it reads: a switch stored by another connection
    while it computes makes it keep nothing (the triggers forgot that task before its row came);
    a call in a minute its task already had changes no working time, and does not count."""
    with _clock(0):
        tasks.set_task(db, "P1-001")
    interactions.insert(db, Interaction(id="000000000001", started_at=to_stored(_at(1)), task_id="P1-001"))
    with _clock(30):
        tasks.set_task(db, "P1-002")
    other = connection.connect(db_path)
    try:
        read_at = settled.changes(db)
        interactions.insert(other, Interaction(id="000000000002", started_at=to_stored(_at(1.5)), task_id="P1-001"))
        assert settled.keep(db, {"P1-001": ("", 60.0)}, IDLE, read_at)
        read_at = settled.changes(db)
        with _clock(40):
            tasks.set_task(other, "P1-001")
        assert not settled.keep(db, {"P1-001": ("", 60.0)}, IDLE, read_at)
    finally:
        other.close()
    assert db.execute("SELECT count(*) FROM settled_work").fetchone()[0] == 0  # the switch forgot the first
