"""The store: migrations, inclusive token semantics, and several processes at once."""

import multiprocessing
import sqlite3

import pytest

from taskmeter.analytics.history import usages
from taskmeter.errors import MeterError
from taskmeter.store import db as store_db
from taskmeter.store import interactions, migrations, tasks
from taskmeter.store.interactions import Interaction
from tests.conftest import dump, run_concurrently

EXPECTED_TABLES = {"phases", "tasks", "task_events", "state", "interactions", "flags", "bodies", "proxies", "_meter_migrations"}


def test_fresh_database_has_schema_wal_and_foreign_keys(db_path):
    connection = store_db.connect(db_path)
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert EXPECTED_TABLES <= tables
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    names = [r[0] for r in connection.execute("SELECT name FROM _meter_migrations")]
    assert names == [m.__name__ for m in migrations.MIGRATIONS]


def test_older_database_is_upgraded_in_place_keeping_data(db_path, monkeypatch):
    connection = store_db.connect(db_path)
    tasks.set_task(connection, "P1-001", title="kept")
    connection.close()

    def m999_test_column(db):
        db.execute("ALTER TABLE tasks ADD COLUMN colour TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_test_column])
    upgraded = store_db.connect(db_path)
    assert tasks.get_task(upgraded, "P1-001")["title"] == "kept"
    assert "colour" in tasks.get_task(upgraded, "P1-001").keys()
    assert upgraded.execute("SELECT name FROM _meter_migrations ORDER BY rowid DESC").fetchone()[0] == "m999_test_column"


def test_failed_migration_rolls_back_entirely(db_path, monkeypatch):
    store_db.connect(db_path).close()

    def m998_half_done(db):
        db.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m998_half_done])
    with pytest.raises(MeterError):
        store_db.connect(db_path)
    monkeypatch.undo()
    connection = store_db.connect(db_path)
    assert connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_database_from_newer_code_is_refused_and_not_modified(db_path):
    connection = store_db.connect(db_path)
    connection.execute("INSERT INTO _meter_migrations VALUES ('m900_from_the_future', '2030-01-01T00:00:00.000000Z')")
    connection.close()
    before = dump(db_path)
    with pytest.raises(MeterError, match="newer taskmeter"):
        store_db.connect(db_path)
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
        connection = store_db.connect(path)
        for n in range(rounds):
            tasks.set_task(connection, f"P{worker}-{n % 3:03d}")
            interactions.insert(
                connection,
                Interaction(
                    id=f"w{worker}{n:010d}", started_at="2026-01-01T00:00:00.000000Z", ended_at="2026-01-01T00:00:00.000000Z"
                ),
            )
            tasks.add_iteration(connection, None)
            interactions.flag(connection, f"w{worker}{n:010d}")
        connection.close()
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_write_at_once_without_locking_errors(db_path):
    store_db.connect(db_path).close()
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
    connection = store_db.connect(db_path)
    assert connection.execute("SELECT count(*) FROM interactions").fetchone()[0] == 2 * rounds
    assert connection.execute("SELECT count(*) FROM task_events WHERE kind = 'iteration'").fetchone()[0] == 2 * rounds
    assert connection.execute("SELECT count(*) FROM flags").fetchone()[0] >= rounds


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
    old = store_db.connect(db_path)
    tasks.set_task(old, "P1-001")
    for n in range(5):
        old.execute(  # the first release's columns
            "INSERT INTO interactions (id, started_at, task_id, input_total, output_total, cost_usd) VALUES (?, ?, ?, ?, ?, ?)",
            (f"00000000000{n}", f"2026-01-01T00:00:0{n}.000000Z", "P1-001", 100, n, 0.25),
        )
    interactions.flag(old, "000000000002")
    old.close()
    monkeypatch.undo()
    upgraded = store_db.connect(db_path)
    assert upgraded.execute("SELECT count(*) FROM _meter_migrations").fetchone()[0] == len(migrations.MIGRATIONS)
    rollup = _rollup(upgraded, "P1-001")
    assert (rollup["interactions"], rollup["input_total"], rollup["output_total"], rollup["flagged"]) == (5, 500, 10, 1)
    assert rollup["cost_usd"] == pytest.approx(1.25)


def test_several_processes_creating_the_database_at_once_all_succeed(tmp_path):
    for attempt in range(60):
        path = tmp_path / f"new-{attempt}.db"
        assert run_concurrently(lambda path=path: store_db.connect(path).close(), 3) == []


def test_upgrading_repairs_task_and_phase_ids_of_mixed_case(db_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    old = store_db.connect(db_path)
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
    upgraded = store_db.connect(db_path)
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
