"""The scratch database a team report loads the team's rows into: an empty database
with the local schema, migrated once and then copied from the user cache folder (each
team report used to migrate one from nothing: 0.2-0.4 s of CPU). The copy is the
migrated schema exactly; a kept file that is damaged, made by other migrations, or
that another account could have written is not used. In process, with real files."""

import functools
import os
import sqlite3

import pytest

from taskmeter.store import migrations, scratch

MIGRATE = migrations.migrate  # the real one: the tests count the calls to migrations.migrate


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "taskmeter" / "scratch-schema.sqlite"


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> bytes:
    """The file scratch_database keeps, made once for the tests that start from it."""
    folder = tmp_path_factory.mktemp("kept")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        scratch.scratch_database()
    return (folder / "taskmeter" / "scratch-schema.sqlite").read_bytes()


def keep(cache, data: bytes) -> None:
    cache.parent.mkdir(parents=True, mode=0o700)
    cache.write_bytes(data)
    cache.chmod(0o600)


@pytest.fixture
def migrated():
    """Counts the databases migrations.migrate applied migrations to."""
    counted = []

    def counting(db):
        ran = MIGRATE(db)
        if ran:
            counted.append(ran)
        return ran

    return counted, counting


def schema(db: sqlite3.Connection) -> list[tuple]:
    return [tuple(row) for row in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")]


@functools.cache
def fresh_schema() -> list[tuple]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    MIGRATE(db)
    return schema(db)


def test_the_schema_is_migrated_once_then_copied_exactly(cache, migrated, monkeypatch):
    counted, counting = migrated
    monkeypatch.setattr(migrations, "migrate", counting)
    first = scratch.scratch_database()
    assert len(counted) == 1 and cache.exists() and os.stat(cache).st_mode & 0o777 == 0o600
    copies = [scratch.scratch_database() for _ in range(3)]
    assert len(counted) == 1, "the copies are not migrated again"
    for db in (first, *copies):
        assert schema(db) == fresh_schema()
        assert [row["name"] for row in db.execute("SELECT name FROM _meter_migrations ORDER BY rowid")] == [
            fn.__name__ for fn in migrations.MIGRATIONS
        ]
    # Each copy is its own: what one report loads is in no other.
    copies[0].execute("INSERT INTO phases (id, created_at) VALUES ('P1', '2026-01-01T00:00:00.000000Z')")
    assert copies[1].execute("SELECT count(*) FROM phases").fetchone()[0] == 0
    assert scratch.scratch_database().execute("SELECT count(*) FROM phases").fetchone()[0] == 0


def test_a_damaged_file_is_replaced(cache, kept, migrated, monkeypatch):
    key = kept.split(b"\n", 1)[0] + b"\n"
    keep(cache, key + b"not a database" * 100)
    counted, counting = migrated
    monkeypatch.setattr(migrations, "migrate", counting)
    assert schema(scratch.scratch_database()) == fresh_schema()
    assert len(counted) == 1 and cache.read_bytes().startswith(key) and b"not a database" not in cache.read_bytes()
    assert schema(scratch.scratch_database()) == fresh_schema() and len(counted) == 1


def test_a_file_made_by_other_migrations_is_replaced(cache, migrated, monkeypatch):
    other = sqlite3.connect(":memory:")
    other.execute("CREATE TABLE _meter_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    other.execute("CREATE TABLE from_other_migrations (x)")
    keep(cache, b"0" * 64 + b"\n" + other.serialize())
    counted, counting = migrated
    monkeypatch.setattr(migrations, "migrate", counting)
    db = scratch.scratch_database()
    assert len(counted) == 1 and schema(db) == fresh_schema()
    assert b"from_other_migrations" not in cache.read_bytes()


def test_a_file_others_could_have_written_is_not_read(cache, kept, migrated, monkeypatch):
    keep(cache, kept)
    cache.chmod(0o666)
    counted, counting = migrated
    monkeypatch.setattr(migrations, "migrate", counting)
    assert schema(scratch.scratch_database()) == fresh_schema()
    assert len(counted) == 1 and os.stat(cache).st_mode & 0o777 == 0o600, "made again, the user's alone"


def test_a_cache_folder_that_cannot_be_written_still_gives_the_schema(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert schema(scratch.scratch_database()) == fresh_schema()
