"""The store: migrations, inclusive token semantics, and several processes at once."""

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmeter.analytics.history import usages
from taskmeter.errors import MeterError
from taskmeter.store import connection, interactions, migrations, tasks
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored
from tests.conftest import dump, run_concurrently

EXPECTED_TABLES = {"phases", "tasks", "task_events", "state", "interactions", "flags", "bodies", "proxies", "_meter_migrations"}


def test_fresh_database_has_schema_wal_and_foreign_keys(db_path):
    opened = connection.connect(db_path)
    tables = {r[0] for r in opened.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert EXPECTED_TABLES <= tables
    assert opened.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert opened.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert opened.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    names = [r[0] for r in opened.execute("SELECT name FROM _meter_migrations")]
    assert names == [m.__name__ for m in migrations.MIGRATIONS]


def test_older_database_is_upgraded_in_place_keeping_data(db_path, monkeypatch):
    opened = connection.connect(db_path)
    tasks.set_task(opened, "P1-001", title="kept")
    opened.close()

    def m999_test_column(db):
        db.execute("ALTER TABLE tasks ADD COLUMN colour TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_test_column])
    upgraded = connection.connect(db_path)
    assert tasks.get_task(upgraded, "P1-001")["title"] == "kept"
    assert "colour" in tasks.get_task(upgraded, "P1-001").keys()
    assert upgraded.execute("SELECT name FROM _meter_migrations ORDER BY rowid DESC").fetchone()[0] == "m999_test_column"


def test_failed_migration_rolls_back_entirely(db_path, monkeypatch):
    connection.connect(db_path).close()

    def m998_half_done(db):
        db.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m998_half_done])
    with pytest.raises(MeterError):
        connection.connect(db_path)
    monkeypatch.undo()
    opened = connection.connect(db_path)
    assert opened.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_database_from_newer_code_is_refused_and_not_modified(db_path):
    opened = connection.connect(db_path)
    opened.execute("INSERT INTO _meter_migrations VALUES ('m900_from_the_future', '2030-01-01T00:00:00.000000Z')")
    opened.close()
    before = dump(db_path)
    with pytest.raises(MeterError, match="newer taskmeter"):
        connection.connect(db_path)
    assert dump(db_path) == before


def test_token_semantics_are_inclusive_and_missing_stays_null(db):
    # Anthropic-style call: 2 uncached + 1650 read + 44 written = 1696 input.
    interactions.insert(
        db,
        Interaction(
            id="00000000000a",
            started_at="2026-01-01T00:00:00.000000Z",
            input_total=1696,
            cache_read=1650,
            cache_write=44,
            output_total=7,
        ),
    )
    # A call whose provider stated no usage at all.
    interactions.insert(db, Interaction(id="00000000000b", started_at="2026-01-01T00:00:01.000000Z"))
    # A token-counting call is stored but is not an AI interaction.
    interactions.insert(
        db, Interaction(id="00000000000c", started_at="2026-01-01T00:00:02.000000Z", operation="count_tokens", input_total=20)
    )
    row = db.execute("SELECT * FROM interactions WHERE id = '00000000000b'").fetchone()
    assert all(row[c] is None for c in interactions.TOKEN_COLUMNS)
    totals = usages(db, [""])[""]
    assert totals["interactions"] == 2
    assert totals["input_total"] == 1696 and totals["input_total_calls"] == 1
    assert totals["cache_read"] == 1650 and totals["cache_write"] == 44
    assert totals["output_total"] == 7
    assert totals["reasoning"] is None and totals["reasoning_calls"] == 0


def test_replaying_a_stored_interaction_is_a_no_op(db):
    row = Interaction(id="00000000000a", started_at="2026-01-01T00:00:00.000000Z", input_total=5)
    interactions.insert(db, row)
    interactions.insert(db, Interaction(id="00000000000a", started_at="2026-01-01T00:00:00.000000Z", input_total=999))
    assert db.execute("SELECT input_total FROM interactions").fetchall()[0][0] == 5


def _writer_process(path: str, worker: int, rounds: int, errors) -> None:
    try:
        opened = connection.connect(path)
        for n in range(rounds):
            tasks.set_task(opened, f"P{worker}-{n % 3:03d}")
            interactions.insert(
                opened,
                Interaction(
                    id=f"w{worker}{n:010d}", started_at="2026-01-01T00:00:00.000000Z", ended_at="2026-01-01T00:00:00.000000Z"
                ),
            )
            tasks.add_iteration(opened, None)
            interactions.flag(opened, f"w{worker}{n:010d}")
        opened.close()
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.e2e  # two Python processes (multiprocessing)
def test_two_processes_write_at_once_without_locking_errors(db_path):
    connection.connect(db_path).close()
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    rounds = 150
    workers = [context.Process(target=_writer_process, args=(str(db_path), w, rounds, errors)) for w in (1, 2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(p.exitcode == 0 for p in workers)
    opened = connection.connect(db_path)
    assert opened.execute("SELECT count(*) FROM interactions").fetchone()[0] == 2 * rounds
    assert opened.execute("SELECT count(*) FROM task_events WHERE kind = 'iteration'").fetchone()[0] == 2 * rounds
    assert opened.execute("SELECT count(*) FROM flags").fetchone()[0] >= rounds


def _rollup(db, task_key):
    return dict(db.execute("SELECT * FROM task_usage WHERE task_key = ?", (task_key,)).fetchone() or {})


def _direct(db, task_id):
    where = "task_id IS NULL" if task_id is None else "task_id = ?"
    params = () if task_id is None else (task_id,)
    failed = "(input_total IS NULL AND (outcome = 'failed' OR http_status = 429 OR http_status >= 500))"
    row = db.execute(
        f"SELECT count(*) - sum({failed}) AS interactions, sum({failed}) AS failed_calls,"
        f" coalesce(sum(input_total), 0) AS input_total, count(input_total) AS input_total_calls,"
        f" coalesce(sum(output_total), 0) AS output_total, coalesce(sum(cost_usd), 0) AS cost_usd,"
        f" coalesce(sum(context_switch), 0) AS context_switches,"
        f" (SELECT count(*) FROM flags f JOIN interactions j ON j.id = f.interaction_id WHERE j.operation = 'generate' AND j.{where}) AS flagged"
        f" FROM interactions WHERE operation = 'generate' AND {where}",
        params * 2,
    ).fetchone()
    return dict(row)


def test_rollups_follow_inserts_flags_retags_and_deletes(db):
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002")
    for n in range(30):
        interactions.insert(
            db,
            Interaction(
                id=f"00000000{n:04d}",
                started_at=f"2026-01-01T00:00:{n:02d}.000000Z",
                task_id=("P1-001", "P1-002", None)[n % 3],
                operation="count_tokens" if n % 7 == 0 else "generate",
                input_total=None if n % 5 == 0 else n * 10,
                output_total=n,
                cost_usd=None if n % 4 == 0 else 0.5,
                context_switch=n % 2 == 0,
                usage_source="reported",
                # Some never reached a model: no response, a 429, a 503.
                outcome="failed" if n % 6 == 0 else "complete",
                http_status=(None, 200, 429, 200, 503, 200)[n % 6],
            ),
        )
    interactions.flag(db, "000000000001")
    interactions.flag(db, "000000000004")
    interactions.flag(db, "000000000005")
    interactions.unflag(db, "000000000004")
    db.execute("UPDATE interactions SET task_id = 'P1-002' WHERE id IN ('000000000001', '000000000003')")
    db.execute("UPDATE interactions SET input_total = 999 WHERE id = '000000000010'")  # a failed call states usage
    db.execute("UPDATE interactions SET http_status = 500 WHERE id = '000000000011'")  # a call becomes failed
    db.execute("DELETE FROM interactions WHERE id IN ('000000000005', '000000000008')")
    for key, task_id in (("P1-001", "P1-001"), ("P1-002", "P1-002"), ("", None)):
        rollup = _rollup(db, key)
        expected = _direct(db, task_id)
        assert {k: rollup[k] for k in expected} == pytest.approx(expected), key


def test_upgrading_a_first_release_database_backfills_the_rollups(db_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    for n in range(5):
        old.execute(  # the first release's columns
            "INSERT INTO interactions (id, started_at, task_id, input_total, output_total, cost_usd) VALUES (?, ?, ?, ?, ?, ?)",
            (f"00000000000{n}", f"2026-01-01T00:00:0{n}.000000Z", "P1-001", 100, n, 0.25),
        )
    interactions.flag(old, "000000000002")
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert upgraded.execute("SELECT count(*) FROM _meter_migrations").fetchone()[0] == len(migrations.MIGRATIONS)
    rollup = _rollup(upgraded, "P1-001")
    assert (rollup["interactions"], rollup["input_total"], rollup["output_total"], rollup["flagged"]) == (5, 500, 10, 1)
    assert rollup["cost_usd"] == pytest.approx(1.25)


def test_several_processes_creating_the_database_at_once_all_succeed(tmp_path):
    for attempt in range(60):
        path = tmp_path / f"new-{attempt}.db"
        assert run_concurrently(lambda path=path: connection.connect(path).close(), 3) == []


def test_upgrading_repairs_task_and_phase_ids_of_mixed_case(db_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    old = connection.connect(db_path)
    # What the second release stored for `set-task P1-010` then `set-task p1-010`.
    old.executescript(
        """
        INSERT INTO phases (id, created_at) VALUES ('P1', '2026-01-01T00:00:00.000000Z'), ('p2', '2026-01-01T00:00:00.000000Z');
        INSERT INTO tasks (id, phase_id, created_at) VALUES ('P1-010', 'p1', '2026-01-01T00:00:00.000000Z'),
                                                            ('p2-001', 'p2', '2026-01-01T00:00:00.000000Z');
        INSERT INTO task_events (task_id, kind, at) VALUES ('p2-001', 'switch', '2026-01-01T00:00:01.000000Z');
        INSERT INTO state (key, value) VALUES ('current_task', 'p2-001'), ('current_since', '2026-01-01T00:00:01.000000Z');
        INSERT INTO interactions (id, started_at, task_id, input_total, output_total) VALUES
            ('000000000001', '2026-01-01T00:00:02.000000Z', 'p2-001', 10, 5);
        """
    )
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert [tuple(r) for r in upgraded.execute("SELECT id, phase_id FROM tasks ORDER BY id")] == [
        ("P1-010", "P1"),
        ("P2-001", "P2"),
    ]
    assert [r[0] for r in upgraded.execute("SELECT id FROM phases ORDER BY id")] == ["P1", "P2"]
    assert upgraded.execute("SELECT task_id FROM interactions").fetchone()[0] == "P2-001"
    assert upgraded.execute("SELECT task_id FROM task_events").fetchone()[0] == "P2-001"
    assert tasks.current_task(upgraded).task_id == "P2-001"
    assert [(r["task_key"], r["input_total"]) for r in upgraded.execute("SELECT * FROM task_usage")] == [("P2-001", 10)]
    assert [t["id"] for t in tasks.list_task_rows(upgraded, "p1")] == ["P1-010"]
    assert upgraded.execute("PRAGMA foreign_key_check").fetchall() == []


def _usage_both_ways(db, period: str, utc: bool, task_id: str | None) -> tuple[dict, dict]:
    """A usage report from the usage_quarters rollup (no window) and from the calls
    themselves (a window whose edges are off the quarter hour but take in every call)."""
    from taskmeter.analytics.periods import usage_report

    def rounded(value):  # float sums in another order differ in the last bits
        if isinstance(value, dict):
            return {key: rounded(item) for key, item in value.items()}
        if isinstance(value, list):
            return [rounded(item) for item in value]
        return round(value, 9) if isinstance(value, float) else value

    def body(report: dict) -> dict:
        return rounded({key: value for key, value in report.items() if key not in ("since", "until")})

    rollup = usage_report(db, period, utc=utc, task_id=task_id)
    direct = usage_report(db, period, "2000-01-01T00:00:00.000001Z", "2100-01-01T00:00:00.000001Z", utc, task_id)
    return body(rollup), body(direct)


def _change_calls(db, ids: list[str], changes: list[tuple[str, int]], **statements: str) -> None:
    """Apply each (change, index) to the call ids[index]: "flag", "unflag" and
    "delete" as named, any other change by its statement, which takes the call's
    ID. A call an earlier change deleted is left alone."""
    statements = {
        "unflag": "DELETE FROM flags WHERE interaction_id = ?",
        "delete": "DELETE FROM interactions WHERE id = ?",
        **statements,
    }
    for change, index in changes:
        target = ids[index % len(ids)]
        if not db.execute("SELECT 1 FROM interactions WHERE id = ?", (target,)).fetchone():
            continue
        if change == "flag":
            try:
                interactions.flag(db, target)
            except MeterError:  # a call with no model answer, or no generation, cannot be flagged
                pass
        else:
            db.execute(statements[change], (target,))


CALL = st.fixed_dictionaries(
    {
        "minute": st.integers(0, 3 * 24 * 60),
        "second": st.integers(0, 59),
        "task_id": st.sampled_from([None, "P1-001", "P1-002"]),
        "model": st.sampled_from([None, "gpt-4o", "claude-sonnet-4-5"]),
        "operation": st.sampled_from(["generate", "generate", "generate", "count_tokens"]),
        "input_total": st.one_of(st.none(), st.integers(0, 10_000)),
        "output_total": st.one_of(st.none(), st.integers(0, 1000)),
        "reasoning": st.one_of(st.none(), st.integers(0, 100)),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1)),
        "http_status": st.sampled_from([None, 200, 200, 400, 413, 429, 503]),
        "outcome": st.sampled_from(["complete", "failed"]),
    }
)
CHANGE = st.tuples(st.sampled_from(["flag", "unflag", "retag", "fail", "delete", "move"]), st.integers(0, 29))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(CALL, min_size=1, max_size=30), changes=st.lists(CHANGE, max_size=12))
def test_the_usage_rollup_equals_the_calls_after_any_changes(db, calls, changes):
    """Usage reports read usage_quarters (a task's) and usage_model_quarters (every
    task's); whatever happens to the calls (flags, retags, a call turned failed,
    deletes, a changed start), they stay what summing the calls themselves gives,
    in every period, zone and task."""
    db.execute("DELETE FROM interactions")
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002")
    ids = []
    for n, call in enumerate(calls):
        minute, second = call.pop("minute"), call.pop("second")
        started = datetime(2026, 3, 28, tzinfo=UTC) + timedelta(minutes=minute, seconds=second)
        ids.append(f"00000001{n:04d}")
        interactions.insert(db, Interaction(id=ids[-1], started_at=to_stored(started), usage_source="reported", **call))
    _change_calls(
        db,
        ids,
        changes,
        retag="UPDATE interactions SET task_id = CASE WHEN task_id = 'P1-001' THEN NULL ELSE 'P1-001' END WHERE id = ?",
        fail="UPDATE interactions SET input_total = NULL, http_status = 503 WHERE id = ?",
        move="UPDATE interactions SET started_at = '2026-03-30T23:59:59.000000Z', model = 'moved' WHERE id = ?",
    )
    for period in ("hourly", "daily", "weekly", "monthly", "models"):
        for utc in (True, False):
            for task_id in (None, "P1-001"):
                rollup, direct = _usage_both_ways(db, period, utc, task_id)
                assert rollup == direct, (period, utc, task_id)


def _summed_over_tasks(db) -> tuple[list, list]:
    """usage_model_quarters' rows and usage_quarters' summed per quarter hour and model, each
    with a call or a flag, costs to the nano-dollar (sums in another order differ in the last bits)."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(usage_model_quarters)")][2:]
    cost = columns.index("cost_usd")

    def rows(query: str) -> list:
        found = [[*row[:2], *(round(v, 9) if n == cost else v for n, v in enumerate(row[2:]))] for row in db.execute(query)]
        return [row for row in found if any(row[2:])]

    summed = ", ".join(f"sum({column})" for column in columns)
    return (
        rows(f"SELECT quarter, model, {', '.join(columns)} FROM usage_model_quarters ORDER BY 1, 2"),
        rows(f"SELECT quarter, model, {summed} FROM usage_quarters GROUP BY 1, 2 ORDER BY 1, 2"),
    )


def test_upgrading_sums_the_usage_of_every_task_per_quarter_hour_and_model(db_path, monkeypatch):
    """m030 fills usage_model_quarters from the calls an older database holds."""
    monkeypatch.setattr(
        migrations, "MIGRATIONS", migrations.MIGRATIONS[: migrations.MIGRATIONS.index(migrations.m030_usage_per_model_quarter)]
    )
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    tasks.set_task(old, "P1-002")
    for n, (task_id, minute, cost) in enumerate((("P1-001", 1, 0.25), ("P1-002", 2, 0.5), ("P1-002", 20, None))):
        at = to_stored(datetime(2026, 3, 28, 10, minute, tzinfo=UTC))
        interactions.insert(
            old, Interaction(id=f"00000004{n:04d}", started_at=at, task_id=task_id, model="gpt-4o", input_total=10, cost_usd=cost)
        )
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    rows = upgraded.execute(
        "SELECT quarter, model, ai_interactions, input_total, cost_usd, cost_usd_calls FROM usage_model_quarters ORDER BY 1"
    )
    assert [tuple(row) for row in rows] == [
        ("2026-03-28T10:00", "gpt-4o", 2, 20, 0.75, 2),
        ("2026-03-28T10:15", "gpt-4o", 1, 10, 0.0, 0),
    ]
    model_rows, summed = _summed_over_tasks(upgraded)
    assert model_rows == summed


QUARTER_ROW = st.tuples(
    st.sampled_from(["2026-03-28T10:00", "2026-03-28T10:15", "2026-03-29T23:45"]),
    st.sampled_from(["?", "gpt-4o"]),
    st.sampled_from(["", "P1-001", "P1-002"]),
    st.integers(0, 5),
    st.floats(0, 1),
)
QUARTER_CHANGE = st.one_of(
    st.tuples(st.just("add"), QUARTER_ROW),
    st.tuples(st.just("move"), QUARTER_ROW),
    st.tuples(st.just("delete"), QUARTER_ROW),
    st.tuples(st.just("replace"), st.lists(QUARTER_ROW, max_size=4, unique_by=lambda row: row[:3])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(QUARTER_CHANGE, max_size=15))
def test_usage_model_quarters_is_usage_quarters_summed_over_tasks_whatever_changes_it(db, changes):
    """m030's triggers keep usage_model_quarters usage_quarters' sum over tasks through every change
    made to usage_quarters: a call's sums added to its quarter (as m011's triggers do), its row moved
    to another quarter or model, deleted (as a deleted task's rows are), or every row replaced (as a
    team report replaces them with the team store's sums)."""
    from taskmeter.store import scratch

    db.execute("DELETE FROM usage_quarters")
    db.execute("DELETE FROM usage_model_quarters")
    for change, argument in changes:
        if change == "replace":
            scratch.replace_usage_quarters(db, ["ai_interactions", "cost_usd", "cost_usd_calls"], [(*row, 1) for row in argument])
        elif change == "add":
            quarter, model, task_key, calls, cost = argument
            db.execute(
                "INSERT INTO usage_quarters (quarter, model, task_key, ai_interactions, cost_usd, cost_usd_calls)"
                " VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (quarter, model, task_key) DO UPDATE SET"
                " ai_interactions = ai_interactions + excluded.ai_interactions, cost_usd = cost_usd + excluded.cost_usd,"
                " cost_usd_calls = cost_usd_calls + 1",
                (quarter, model, task_key, calls, cost),
            )
        elif change == "move":  # the first row with this task to another quarter hour and model, if no row is there
            quarter, model, task_key = argument[:3]
            db.execute(
                "UPDATE OR IGNORE usage_quarters SET quarter = ?, model = ? WHERE (quarter, model, task_key) ="
                " (SELECT quarter, model, task_key FROM usage_quarters WHERE task_key = ? ORDER BY quarter, model LIMIT 1)",
                (quarter, model, task_key),
            )
        else:
            db.execute("DELETE FROM usage_quarters WHERE quarter = ? AND model = ? AND task_key = ?", argument[:3])
        model_rows, summed = _summed_over_tasks(db)
        assert model_rows == summed, (change, argument)


def test_models_with_the_same_figures_are_listed_alike_from_the_rollup_and_the_calls(db):
    """Calls deleted from a quarter hour leave the last bits of their cost in the rollup:
    models that show no cost must not be ordered by what is left."""
    at = to_stored(datetime(2026, 3, 28, 10, 1, tzinfo=UTC))
    for n, cost in enumerate((0.1, 0.2)):
        interactions.insert(db, Interaction(id=f"00000002{n:04d}", started_at=at, model="gpt-4o", cost_usd=cost))
    db.execute("DELETE FROM interactions")
    for n, model in enumerate((None, "gpt-4o")):
        interactions.insert(db, Interaction(id=f"00000003{n:04d}", started_at=at, model=model, usage_source="reported"))
    rollup, direct = _usage_both_ways(db, "daily", True, None)
    assert [model["model"] for model in rollup["periods"][0]["models"]] == ["?", "gpt-4o"]
    assert rollup == direct


SESSION_CALL = st.fixed_dictionaries(
    {
        "minute": st.integers(0, 5),  # few minutes: calls that start together, ordered by ID
        "task_id": st.sampled_from([None, "P1-001", "P1-001", "P1-002"]),
        "session_id": st.sampled_from([None, "s1", "s1", "s2"]),
        "operation": st.sampled_from(["generate", "generate", "generate", "count_tokens"]),
        "input_total": st.one_of(st.none(), st.integers(0, 10_000)),
        "output_total": st.one_of(st.none(), st.integers(0, 1000)),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1)),
        "http_status": st.sampled_from([200, 200, 400, 500]),  # failed without usage: no rework
    }
)
SESSION_CHANGE = st.tuples(
    st.sampled_from(["flag", "flag", "unflag", "retag", "session", "move", "delete", "call"]), st.integers(0, 7)
)


def _rework_by_scan(db) -> dict:
    """The rule itself, over every call: per task and session, the calls a model
    answered that follow the session's first flagged call."""
    calls = [dict(row) for row in db.execute("SELECT * FROM interactions WHERE operation = 'generate' AND task_id IS NOT NULL")]
    flagged = {row[0] for row in db.execute("SELECT interaction_id FROM flags")}
    firsts: dict = {}
    for call in sorted(calls, key=lambda c: (c["started_at"], c["id"])):
        if call["id"] in flagged:
            firsts.setdefault((call["task_id"], call["session_id"] or call["id"]), call)
    result = {}
    for (task_id, key), first in firsts.items():
        later = [
            c for c in calls
            if c["task_id"] == task_id and c["session_id"] == key and (c["started_at"], c["id"]) > (first["started_at"], first["id"])
            and not (c["input_total"] is None and (c["outcome"] == "failed" or (c["http_status"] or 0) >= 400))
        ]  # fmt: skip
        tokens = sum((c["input_total"] or 0) + (c["output_total"] or 0) for c in later)
        result[(task_id, key)] = (first["id"], len(later), tokens, round(sum(c["cost_usd"] or 0 for c in later), 9))
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(SESSION_CALL, min_size=1, max_size=8),
    flagged=st.lists(st.integers(0, 7), min_size=1, max_size=3),
    changes=st.lists(SESSION_CHANGE, max_size=20),
)
def test_the_rework_rollup_equals_the_rule_after_any_changes(db, calls, flagged, changes):
    """Reports read rework from session_rework; whatever happens to the calls and
    their flags, it stays what the rule gives over the calls themselves."""
    db.execute("DELETE FROM interactions")
    tasks.set_task(db, "P1-001")
    tasks.set_task(db, "P1-002")
    ids = []
    for n, call in enumerate(calls):
        started = datetime(2026, 3, 28, tzinfo=UTC) + timedelta(minutes=call.pop("minute"))
        ids.append(f"00000003{n:04d}")
        interactions.insert(db, Interaction(id=ids[-1], started_at=to_stored(started), usage_source="reported", **call))
    _change_calls(
        db,
        ids,
        [("flag", index) for index in flagged] + changes,  # flags first, then anything
        retag="UPDATE interactions SET task_id = CASE WHEN task_id = 'P1-001' THEN 'P1-002' ELSE 'P1-001' END WHERE id = ?",
        session="UPDATE interactions SET session_id = CASE WHEN session_id = 's1' THEN 's2' ELSE 's1' END WHERE id = ?",
        move="UPDATE interactions SET started_at = '2026-03-28T00:03:00.000000Z' WHERE id = ?",
        # A later call of the same session, under a new ID.
        call="INSERT INTO interactions (id, started_at, task_id, session_id, operation, input_total, usage_source)"
        " SELECT hex(randomblob(6)), '2026-03-28T00:09:00.000000Z', task_id, session_id, 'generate', 7, 'reported'"
        " FROM interactions WHERE id = ?",
    )
    assert _rework_kept(db) == _rework_by_scan(db)


def _rework_kept(db) -> dict:
    return {
        (row["task_id"], row["session_key"]): (row["flagged_id"], row["calls"], row["tokens"], round(row["cost_usd"], 9))
        for row in db.execute("SELECT * FROM session_rework")
    }


def test_upgrading_backfills_the_rework_rollup(db_path, monkeypatch):
    before_rework = [m for m in migrations.MIGRATIONS if m.__name__ < "m013"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before_rework)
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    for n in range(30):
        old.execute(
            "INSERT INTO interactions (id, started_at, task_id, session_id, input_total, output_total, cost_usd, usage_source)"
            " VALUES (?, ?, 'P1-001', ?, 100, ?, 0.01, 'reported')",
            (f"00000004{n:04d}", f"2026-01-01T00:{n:02d}:00.000000Z", f"s{n % 3}", n),
        )
    for n in (4, 5, 10):  # two sessions flagged, one of them twice
        interactions.flag(old, f"00000004{n:04d}")
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    kept = _rework_kept(upgraded)
    assert kept == _rework_by_scan(upgraded)
    assert {key: calls for key, (_, calls, _, _) in kept.items()} == {("P1-001", "s1"): 8, ("P1-001", "s2"): 8}


def test_upgrading_backfills_the_usage_rollup(db_path, monkeypatch):
    before_usage_quarters = [m for m in migrations.MIGRATIONS if m.__name__ < "m011"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before_usage_quarters)
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    for n in range(40):  # the columns of that release
        old.execute(
            "INSERT INTO interactions (id, started_at, task_id, model, input_total, output_total, cost_usd, usage_source,"
            " http_status) VALUES (?, ?, ?, ?, ?, ?, ?, 'reported', ?)",
            (
                f"00000002{n:04d}", f"2026-01-01T{n % 24:02d}:{n:02d}:00.000000Z", "P1-001" if n % 2 else None,
                ("gpt-4o", "claude-sonnet-4-5")[n % 2], None if n % 9 == 0 else 100 + n, n, None if n % 4 == 0 else 0.01,
                503 if n % 9 == 0 else 200,
            ),
        )  # fmt: skip
    interactions.flag(old, "000000020003")
    old.close()
    monkeypatch.undo()
    upgraded = connection.connect(db_path)
    assert upgraded.execute("SELECT count(*) FROM usage_quarters").fetchone()[0] > 0
    for period in ("hourly", "daily", "models"):
        rollup, direct = _usage_both_ways(upgraded, period, True, None)
        assert rollup == direct
        assert rollup["totals"]["ai_interactions"] == 35 and rollup["totals"]["failed_calls"] == 5
        assert rollup["totals"]["hallucination_count"] == 1
