"""Guard rails for schema changes: released migrations are locked by the hash of
their source, docs/schema.md lists the live schema, and rebuild_table() carries
out SQLite's 12-step procedure for a change that ALTER TABLE cannot make."""

import hashlib
import inspect
import re
import sqlite3

import pytest

from taskmeter.errors import MeterError
from taskmeter.store import connection, migrations, schema_doc

# Every migration listed here has run on users' databases (there is no m023 or m028): editing
# one reaches none of them. Its private helpers and constants (`_mNNN_...`) are part of it.
RELEASED = {
    "m001_initial": "e1215df1759d1e41050b733cad832c1883bedc2f7399d5f62e99ad5ac9944155",
    "m002_task_usage_rollup": "f8f71a592a098a9c8dce8c7a238be42dc4a4bfa8c42d94ed640b8924439ae937",
    "m003_canonical_ids_and_recording_health": "fa1252eac82af99a2d34a4eb4c4d1432a767cdba2ee00c3635b640335a98d428",
    "m004_failed_calls_apart": "47637499020a7902346a55feb34ea2329eb23d7c7887bd2eda1bca784d498692",
    "m005_call_texts": "60dca1478065a00c4bb3b456f52e486f8b73b14bf7945f53ce876ffc87de7d77",
    "m006_sessions": "eacd313b0dae4e7813ca9d91ee510f41980103b8c72b5abaa08f070addccdfcd",
    "m007_task_activity": "ec92828686c05f7f897e0e4098a4f34503c9c14305d9b37d705d0cf88716c45a",
    "m008_commits_and_automatic_marks": "3cd1c4e47fd28950a6e77898508f33e1d1d2979827d890ba4c54b373246a3c79",
    "m009_test_runs": "3583aa254b576217f6e98b967b3f6b5b34b3e40464daff1eacae73e5e5c00d88",
    "m010_session_tasks": "bb9911b6e47ef601b49377ac812d27d6c7e8cf04e8f1fcd5698491db1ea485f7",
    "m011_usage_quarters": "04557d60561b65248911644c4848b9ba7cf5c77d0d275e841c5b6e873267bc15",
    "m012_budgets_and_alerts": "e9c450d56de6d106ba440b892f59ba99970c979e275c3e062c004ef119080154",
    "_m013_ReworkSql": "efeb827c5860071cd54d9ed775b67f0bc22c22de886bc7ce47a795c408b67279",
    "m013_rework_rollup": "73bd3b09f079cc3e1b802c7a0bafacb696a87ad1c80ace298375e2537f915464",
    "m014_response_ids_and_agent_logs": "3ffd2f0f51994aaa12a63e375c8143ab08a13d4b15ffa472af52f3cc1bbaae8f",
    "m015_price_basis": "fba02711a732cec25b569a64b8bc7d73d29cf21e12d910e5551d85364df346fe",
    "m016_conversation_roots": "733566e1843fe4931b5c885175280ba919e79af816a0351e1bfb3548b9f958db",
    "m017_failed_calls_one_rule": "a643ce1e063e1f825f06eb38b440b5bc40789ca383597d706a48d13a6c0765a6",
    "_m017_FAILED_CALL": "d1516a6301a9f86cb2825208f17e27a26a023d1396e12f98357c20a0132d15f9",
    "_m017_usage_quarters": "94e712b812b56d5d31a337ce0309f054be6369d89b139cb18b9c239caa49b0c8",
    "m018_estimate_and_approval_history": "73654b5aaa9d1012ac5b57841c9d8dfc23a97ccd6eb14e8d8148b053aa7df658",
    "m019_phase_marks": "efa5fd2160487cf76025cb1818fc1fd6c17670e30d6ebb1848f8d74232f60234",
    "m020_context_switches_as_developers_mean_them": "08b9d5dd919b67668e96de893f9db7b10c26d6c36dcea7b92d8a7c2b0bf31ce6",
    "m021_derived_iterations_and_no_zero_coverage_target": "c7d3a3b12d5894a1a41dc95e9d59dc9790f5ba4a60405f7621ff0b62ea5ddd86",
    "m022_rework_counts_answered_calls": "a566090a72b2c68214fba1b40c69a4f46b514feba2ac2e8904ef83679601bd0c",
    "m024_working_time_rollups": "78d3d1e9ebc53828e15103ac30063f35d5d35434cfbed825dfa3e751a180cccf",
    "_m024_SECONDS": "07ee5d596844375f85195a375c8e498ab35e38e36fceb592ce9f2bf6b68696e3",
    "m025_attribution_session": "7b2f0a93a035f57a72b6aaebd0113e8054e87fe6b31fbde167a557361da5f4ef",
    "m026_task_tags_and_forecast_alerts": "dd5ad92be0a4352d636acafea1e91d47d7726c8b0e24c770769862dfda54ba60",
    "_m027_synced_tables": "82d7450ef3177a227a93f5d0ab25590660e91a7bef29a8fdc6425813e7ea4751",
    "m027_team_identity_and_outbox": "e059a06f846b6420b7752c5835a6b027fa7cc969eec259e9f5906da7d467e932",
    "m029_settled_working_time": "15f8a45700551df6d53e0281f3f9bf1b29157f31b3922149cc4fe1d9b9aeccc6",
    "m030_usage_per_model_quarter": "988ed3b9a17d3a1ff46496b68512bf683eb187ad94f029a4b8088f8399ebdd4c",
}


def _source_hash(name: str) -> str:
    """The hash of a migration's or helper's source; of a helper constant's value."""
    value = getattr(migrations, name)
    return hashlib.sha256((value if isinstance(value, str) else inspect.getsource(value)).encode()).hexdigest()


def test_released_migrations_are_never_edited():
    edited = [name for name, digest in RELEASED.items() if not hasattr(migrations, name) or _source_hash(name) != digest]
    assert not edited, (
        f"released migration {', '.join(edited)} changed: it has already run on users' databases, so an edit never reaches "
        "them. Undo the edit and add a new migration (the next mNNN_...) that makes the change instead."
    )


def test_released_migrations_keep_their_order_and_new_ones_come_after():
    released = [name for name in RELEASED if not name.startswith("_")]
    assert [fn.__name__ for fn in migrations.MIGRATIONS[: len(released)]] == released, (
        "released migrations run in the order they were released: never remove, rename or reorder one; add new ones at the end"
    )
    helpers = [name for name in vars(migrations) if re.match(r"_m\d{3}_", name) and int(name[2:5]) <= len(released)]
    assert set(helpers) <= RELEASED.keys(), "a released migration's helper is not locked: add its hash to RELEASED"


# ---------------------------------------------------------------- docs/schema.md


def test_the_schema_section_of_the_docs_is_current():
    text = schema_doc.DOC.read_text()
    assert schema_doc.with_current_section(text) == text, (
        "docs/schema.md lists a schema the migrations no longer make: run `.venv/bin/python -m taskmeter.store.schema_doc`"
    )


def test_the_schema_section_is_generated_from_the_live_schema(tmp_path, capsys):
    stale = tmp_path / "schema.md"
    stale.write_text(f"# intro\n\n{schema_doc.BEGIN}\n### `gone`\n{schema_doc.END}\n\nafter\n")
    assert schema_doc.main(["--check", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert schema_doc.main([str(stale)]) == 0
    text = stale.read_text()
    assert schema_doc.main(["--check", str(stale)]) == 0
    assert text.startswith("# intro\n\n") and text.endswith(f"{schema_doc.END}\n\nafter\n") and "`gone`" not in text
    db = connection.connect(tmp_path / "meter.db")
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(interactions)")]
    finally:
        db.close()
    assert all(f"| `{column}` |" in text for column in columns) and "### `interactions`" in text


# ---------------------------------------------------------------- rebuild_table()

SCRATCH = """
CREATE TABLE scratch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('a', 'b', 'c')),
    n INTEGER DEFAULT 0
);
CREATE INDEX scratch_kind ON scratch (kind);
CREATE TABLE scratch_child (id INTEGER PRIMARY KEY, scratch_id INTEGER REFERENCES scratch(id) ON DELETE CASCADE);
CREATE TABLE scratch_log (what TEXT);
CREATE TRIGGER scratch_logged AFTER INSERT ON scratch BEGIN INSERT INTO scratch_log VALUES ('row ' || NEW.id); END;
CREATE TRIGGER scratch_log_counts AFTER INSERT ON scratch_log BEGIN UPDATE scratch SET n = n + 1 WHERE id = 1; END;
CREATE VIEW scratch_kinds AS SELECT kind, count(*) AS rows FROM scratch GROUP BY kind;
INSERT INTO scratch (kind) VALUES ('a'), ('b'), ('c'), ('b');
INSERT INTO scratch_child (scratch_id) VALUES (1), (2);
DELETE FROM scratch WHERE id = 4;
"""
NO_C = {"CHECK (kind IN ('a', 'b', 'c'))": "CHECK (kind IN ('a', 'b'))"}


@pytest.fixture
def scratch_db(tmp_path, monkeypatch):
    """A real database with a scratch table full of what a rebuild must keep:
    rows, an index, triggers on it and on a neighbour that names it, a view, a
    child table that cascades, an AUTOINCREMENT past its largest ID."""
    db = connection.connect(tmp_path / "meter.db")
    migrations.run_script(db, SCRATCH)
    monkeypatch.setattr(migrations, "_REBUILDING", set(migrations._REBUILDING))
    yield db
    db.close()


def _run(db, monkeypatch, migration) -> list[str]:
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, migrations.rebuilds_tables(migration)])
    return migrations.migrate(db)


def test_rebuild_table_makes_a_check_stricter_and_keeps_everything_else(scratch_db, monkeypatch):
    db = scratch_db

    def m900_scratch_without_c(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM scratch WHERE kind = 'c'")
        migrations.rebuild_table(db, "scratch", NO_C)

    assert _run(db, monkeypatch, m900_scratch_without_c) == ["m900_scratch_without_c"]
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # on again
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        db.execute("INSERT INTO scratch (kind) VALUES ('c')")
    assert [tuple(row) for row in db.execute("SELECT id, kind FROM scratch ORDER BY id")] == [(1, "a"), (2, "b")]
    assert [row[0] for row in db.execute("SELECT scratch_id FROM scratch_child ORDER BY id")] == [1, 2]  # no cascade ran
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'scratch'")}
    assert {"scratch_kind", "scratch_logged"} <= names
    n_before = db.execute("SELECT n FROM scratch WHERE id = 1").fetchone()[0]
    db.execute("INSERT INTO scratch (kind) VALUES ('a')")
    # The next ID is past the deleted row 4 (AUTOINCREMENT), its trigger logged it,
    # and the neighbour's trigger, which names scratch, still runs.
    assert db.execute("SELECT max(id) FROM scratch").fetchone()[0] == 5
    assert db.execute("SELECT what FROM scratch_log ORDER BY rowid DESC LIMIT 1").fetchone()[0] == "row 5"
    assert db.execute("SELECT n FROM scratch WHERE id = 1").fetchone()[0] == n_before + 1
    assert dict(db.execute("SELECT kind, rows FROM scratch_kinds").fetchall()) == {"a": 2, "b": 1}
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.execute("DELETE FROM scratch WHERE id = 2")  # foreign keys work again: the child goes with it
    assert [row[0] for row in db.execute("SELECT scratch_id FROM scratch_child")] == [1]


def test_a_row_the_rebuilt_table_refuses_fails_the_migration_and_changes_nothing(scratch_db, monkeypatch):
    db = scratch_db
    before = db.execute("SELECT sql FROM sqlite_master WHERE name = 'scratch'").fetchone()[0]

    def m900_scratch_without_c(db: sqlite3.Connection) -> None:
        migrations.rebuild_table(db, "scratch", NO_C)  # row 3 is a 'c'

    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        _run(db, monkeypatch, m900_scratch_without_c)
    assert db.execute("SELECT sql FROM sqlite_master WHERE name = 'scratch'").fetchone()[0] == before
    assert db.execute("SELECT count(*) FROM scratch").fetchone()[0] == 3
    assert "m900_scratch_without_c" not in migrations.applied(db)
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_rebuild_that_would_orphan_rows_fails(scratch_db, monkeypatch):
    def m900_scratch_loses_a_parent(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM scratch WHERE id = 2")  # foreign keys are off: the child stays
        migrations.rebuild_table(db, "scratch", {})

    with pytest.raises(MeterError, match="a row of scratch_child refers to a missing row of scratch"):
        _run(scratch_db, monkeypatch, m900_scratch_loses_a_parent)
    assert scratch_db.execute("SELECT count(*) FROM scratch").fetchone()[0] == 3


def test_rebuild_table_outside_a_marked_migration_is_refused(scratch_db):
    with pytest.raises(MeterError, match="only in a migration marked @rebuilds_tables"):
        migrations.rebuild_table(scratch_db, "scratch", NO_C)
