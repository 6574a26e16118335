"""The working-time rollups of m024, which `meter tasks`, the phase reports and the status
line read instead of every switch and activity minute: `switch_spans` (each set-task switch
and the next one) and `task_activity_runs` (each task's runs of consecutive minutes with an
AI call). Each is checked against the recomputation from the rows it summarises, after
inserts, retags, deletes, merges and switches stored out of order, and after the migration
backfills a database that had history before it."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from taskmeter.analytics import history
from taskmeter.store import calls, connection, migrations, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction, insert_many
from taskmeter.timefmt import from_stored, to_stored

ORIGIN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    return to_stored(ORIGIN + timedelta(seconds=seconds))


def _calls(db, task_id: str | None, seconds: list[float], prefix: str) -> list[str]:
    ids = [f"{prefix}{n:0{12 - len(prefix)}d}" for n in range(len(seconds))]
    with write_transaction(db):
        insert_many(db, [Interaction(id=i, started_at=_at(s), task_id=task_id) for i, s in zip(ids, seconds, strict=True)])
    return ids


def _switch(db, task_id: str | None, seconds: float) -> None:
    with write_transaction(db):
        db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (?, 'switch', ?)", (task_id, _at(seconds)))


def _expected_switch_spans(db) -> list[tuple]:
    """Each switch, in (at, id) order, with its moment and the next switch's, from task_events."""
    rows = db.execute("SELECT id, task_id, at FROM task_events WHERE kind = 'switch' ORDER BY at, id").fetchall()
    moments = [from_stored(row["at"]).timestamp() for row in rows]
    return [
        (row["id"], row["task_id"], row["at"], moments[n], moments[n + 1] if n + 1 < len(rows) else None)
        for n, row in enumerate(rows)
    ]


def _expected_runs(db) -> list[tuple]:
    """Each task's runs of consecutive minutes, from task_activity."""
    runs: list[list] = []
    for task_id, minute in db.execute("SELECT task_id, minute FROM task_activity ORDER BY task_id, minute"):
        start = from_stored(minute + ":00.000000Z").timestamp()
        if runs and runs[-1][0] == task_id and runs[-1][2] == start:
            runs[-1][2] = start + 60
        else:
            runs.append([task_id, start, start + 60])
    return [tuple(run) for run in runs]


def _assert_rollups_match(db) -> None:
    spans = db.execute("SELECT event_id, task_id, at, since, until FROM switch_spans ORDER BY at, event_id").fetchall()
    assert [tuple(row) for row in spans] == _expected_switch_spans(db)
    runs = db.execute("SELECT task_id, start, end FROM task_activity_runs ORDER BY task_id, start").fetchall()
    assert [tuple(row) for row in runs] == _expected_runs(db)
    assert all(isinstance(value, float) for row in runs for value in row[1:])  # as working time computes with them


def test_activity_runs_join_and_split_as_minutes_come_and_go(db):
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002")
    # Minutes 0, 1, 2 (one run), 5, then 4 fills in before 5, then 3 joins both runs into one.
    _calls(db, "P1-001", [5, 65, 130, 300], "a")
    _assert_rollups_match(db)
    _calls(db, "P1-001", [250, 245], "b")
    _assert_rollups_match(db)
    assert db.execute("SELECT count(*) FROM task_activity_runs WHERE task_id = 'P1-001'").fetchone()[0] == 2
    _calls(db, "P1-001", [200], "c")
    _assert_rollups_match(db)
    assert [tuple(row) for row in db.execute("SELECT start, end FROM task_activity_runs WHERE task_id = 'P1-001'")] == [
        (from_stored(_at(0)).timestamp(), from_stored(_at(360)).timestamp())
    ]
    # A second call in a minute changes nothing; deleting it keeps the minute, which another call still has.
    _calls(db, "P1-001", [210], "d")
    with write_transaction(db):
        db.execute("DELETE FROM interactions WHERE id = 'd00000000000'")
    _assert_rollups_match(db)
    # Deleting the only call of minute 3 splits the run; of minute 0, shortens it; of minute 5, too.
    with write_transaction(db):
        db.execute("DELETE FROM interactions WHERE id = 'c00000000000'")
    _assert_rollups_match(db)
    with write_transaction(db):
        db.execute("DELETE FROM interactions WHERE id IN ('a00000000000', 'a00000000003')")
    _assert_rollups_match(db)
    # Retagging a call moves its minute from one task's runs to the other's.
    calls.retag(db, ["a00000000001"], "P1-002")
    _assert_rollups_match(db)
    calls.retag(db, ["b00000000000", "b00000000001"], None)
    _assert_rollups_match(db)


def test_switch_spans_follow_switches_in_any_order_and_every_removal(db):
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002")
    tasks.clear_task(db)  # a switch to no task ends the one before it
    tasks.set_task(db, "P1-003")
    _assert_rollups_match(db)
    # Switches stored out of order (backdated) and at the same moment as another: ordered by (at, id).
    _switch(db, "P1-002", -3600)
    _switch(db, "P1-001", -7200)
    _switch(db, "P1-003", -3600)
    _assert_rollups_match(db)
    # A task's switches retagged (merged into another) and removed with it.
    tasks.merge_task(db, "P1-002", into="P1-003")
    _assert_rollups_match(db)
    tasks.delete_task(db, "P1-001")
    _assert_rollups_match(db)
    # A switch moved in time, and one made a milestone and back.
    with write_transaction(db):
        first = db.execute("SELECT min(id) FROM task_events WHERE kind = 'switch'").fetchone()[0]
        db.execute("UPDATE task_events SET at = ? WHERE id = ?", (_at(99_999), first))
    _assert_rollups_match(db)
    with write_transaction(db):
        db.execute("UPDATE task_events SET kind = 'milestone', milestone = 'begin' WHERE id = ?", (first,))
    _assert_rollups_match(db)
    with write_transaction(db):
        db.execute("UPDATE task_events SET kind = 'switch', milestone = NULL WHERE id = ?", (first,))
    _assert_rollups_match(db)


def test_rollups_match_after_a_random_history(db):
    """Many tasks, switches at random moments (ties included), calls at random minutes,
    then random retags and deletes: the rollups still equal the recomputation, and
    the working-time inputs are what the rows say."""
    rng = random.Random(24)
    names = [f"P1-{n:03d}" for n in range(1, 6)]
    for name in names:
        tasks.set_task(db, name, create=True)
    for _ in range(60):
        _switch(db, rng.choice([*names, None]), rng.choice([rng.randrange(0, 40_000), 1800]))
    ids = []
    for n, name in enumerate(names):
        ids += _calls(db, name, [rng.randrange(0, 40_000) for _ in range(80)], f"{n}")
    _assert_rollups_match(db)
    for _ in range(30):
        calls.retag(db, rng.sample(ids, 3), rng.choice([*names, None]))
        with write_transaction(db):
            db.execute("DELETE FROM interactions WHERE id = ?", (rng.choice(ids),))
            db.execute(
                "DELETE FROM task_events WHERE id = (SELECT id FROM task_events WHERE kind = 'switch' ORDER BY random() LIMIT 1)"
            )
    _assert_rollups_match(db)
    current = history.current_intervals(db, names)
    expected: dict[str, list] = {}
    for _, task_id, _, since, until in _expected_switch_spans(db):
        if task_id is not None:
            expected.setdefault(task_id.lower(), []).append((since, until))

    def in_order(spans: list) -> list:  # current_intervals gives them in no particular order
        return sorted(spans, key=lambda span: (span[0], span[1] is None, span[1] or 0))

    assert {task: in_order(spans) for task, spans in current.items()} == {
        task: in_order(spans) for task, spans in expected.items()
    }


def test_the_migration_backfills_a_database_with_history(db_path, monkeypatch):
    # m029 keeps its rows by triggers on m024's tables: it comes with m024.
    before = [fn for fn in migrations.MIGRATIONS if fn.__name__ not in ("m024_working_time_rollups", "m029_settled_working_time")]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    tasks.set_task(old, "P1-002")
    _switch(old, "P1-001", -600)
    _switch(old, None, -300)
    _calls(old, "P1-001", [0, 60, 120, 400, 460], "a")
    _calls(old, "P1-002", [30, 1000], "b")
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    _assert_rollups_match(upgraded)
    assert upgraded.execute("SELECT count(*) FROM switch_spans").fetchone()[0] == 4
    assert upgraded.execute("SELECT count(*) FROM task_activity_runs").fetchone()[0] == 4
    upgraded.close()


def _reworking_runs_walked(db, task_ids: list[str]) -> dict[str, list[str]]:
    """The rework rule (store/testruns.py) walked run by run, as it was before it became one
    query: the recomputation the query must equal."""
    reworks: dict[str, list[str]] = {task_id: [] for task_id in task_ids}
    for task in tasks.tasks_by_id(db, task_ids):
        tests_done, approved = task["tests_completion_at"], task["final_approval_at"]
        if tests_done is None:
            continue
        last_mark = db.execute(
            "SELECT note FROM task_events WHERE kind = 'milestone' AND milestone = 'validated' AND task_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (task["id"],),
        ).fetchone()
        by_meter = last_mark is not None and (last_mark["note"] or "").startswith(tasks.AUTOMATIC_NOTE)
        validated = None if by_meter else task["validation_at"]
        commits = [row[0] for row in db.execute("SELECT committed_at FROM commits WHERE task_id = ?", (task["id"],))]
        committed = min((at for at in commits if at > tests_done), default=None)
        settled = min((at for at in (committed, validated) if at is not None), default=None)
        last_green_tests = None
        runs = db.execute(
            "SELECT at, exit_status, tests FROM test_runs WHERE full_run = 1 AND task_id = ? ORDER BY at, id", (task["id"],)
        )
        for run in runs:
            if run["exit_status"] == 0:
                last_green_tests = run["tests"]
                continue
            if run["at"] <= tests_done or (approved is not None and run["at"] > approved):
                continue
            adds_tests = last_green_tests is not None and run["tests"] > last_green_tests
            if settled is not None and run["at"] > settled and not adds_tests:
                reworks[task["id"]].append(run["at"])
    return reworks


@pytest.mark.parametrize("seed", range(6))
def test_red_runs_that_are_rework_are_found_by_one_query_as_the_rule_walks_them(db, seed):
    """Random histories of test runs (green and red, full or not, collecting more or fewer
    tests), commits, TESTS_COMPLETION, VALIDATION marked by a person or by the meter, and
    approvals: store/testruns.py reworking_runs, one query, finds the runs the rule finds."""
    from taskmeter.store.testruns import reworking_runs

    rng = random.Random(seed)
    names = [f"P2-{n:03d}" for n in range(1, 31)]
    with write_transaction(db):
        db.execute("INSERT INTO phases (id, created_at) VALUES ('P2', ?)", (_at(0),))
        for name in names:
            moments = sorted(rng.sample(range(0, 5000, 10), 3))
            db.execute(
                "INSERT INTO tasks (id, phase_id, created_at, begin_at, tests_completion_at, validation_at, final_approval_at)"
                " VALUES (?, 'P2', ?, ?, ?, ?, ?)",
                (
                    name,
                    _at(0),
                    _at(0),
                    rng.choice([None, _at(moments[0]), _at(moments[0]), _at(moments[0])]),
                    rng.choice([None, _at(moments[1])]),
                    rng.choice([None, None, _at(moments[2])]),
                ),
            )
            for _ in range(rng.randrange(3)):
                note = rng.choice([None, "by hand", tasks.AUTOMATIC_NOTE + "green full run"])
                db.execute(
                    "INSERT INTO task_events (task_id, kind, at, milestone, note) VALUES (?, 'milestone', ?, 'validated', ?)",
                    (name, _at(rng.randrange(5000)), note),
                )
            for k in range(rng.randrange(4)):
                db.execute(
                    "INSERT INTO commits (sha, repo, task_id, committed_at, files, insertions, deletions)"
                    " VALUES (?, '/repo', ?, ?, 1, 1, 0)",
                    (f"{name}-{k}", name, _at(rng.randrange(5000))),
                )
            for _ in range(rng.randrange(25)):
                at = rng.choice([rng.randrange(5000), 2500])  # ties: ordered by id
                db.execute(
                    "INSERT INTO test_runs (at, repo, task_id, exit_status, tests, failed, full_run)"
                    " VALUES (?, '/repo', ?, ?, ?, 0, ?)",
                    (_at(at), name, rng.choice([0, 0, 1, 2]), rng.randrange(5, 9), rng.choice([1, 1, 1, 0])),
                )
    found = reworking_runs(db, names)
    assert found == _reworking_runs_walked(db, names)
    assert any(found.values())  # the histories have rework to find
    assert tasks.iterations_of(db, names) == {
        name: 1 + len(found[name]) for name in names
    }  # no `meter iteration` here: the count is the first attempt and the rework
