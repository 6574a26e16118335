"""The team store's outbox (m027) in the meter's own database: nothing is listed
before joining, joining lists the history once, every change after is listed
by a trigger with a revision that only grows, and an entry listed again while
its batch was being sent survives that batch's mark."""

import pytest

from taskmeter.store import connection, outbox

AT = "2026-01-01T00:00:00.000000Z"


@pytest.fixture
def db(tmp_path):
    database = connection.connect(tmp_path / "meter.db")
    yield database
    database.close()


def _add(db, call_id: str = "0000000000001") -> None:
    with connection.write_transaction(db):
        db.execute("INSERT OR IGNORE INTO phases (id, created_at) VALUES ('P1', ?)", (AT,))
        db.execute("INSERT OR IGNORE INTO tasks (id, phase_id, created_at, title) VALUES ('P1-001', 'P1', ?, 'a')", (AT,))
        db.execute(
            "INSERT INTO interactions (id, task_id, started_at, operation, model) VALUES (?, 'P1-001', ?, 'generate', 'm')",
            (call_id, AT),
        )


def _entries(db) -> list[tuple]:
    return [tuple(row) for row in db.execute("SELECT kind, key, field FROM team_outbox ORDER BY seq")]


def test_nothing_is_listed_before_joining_and_joining_lists_the_history_once(db):
    device = outbox.device_id(db)
    assert len(device) == 36 and outbox.device_id(db) == device, "minted once per database"
    _add(db)
    assert _entries(db) == [] and outbox.joined(db) is None
    listed = outbox.join(db, AT)
    entries = _entries(db)
    assert ("call", "0000000000001", "") in entries
    assert ("task_field", "P1-001", "title") in entries and ("phase_field", "P1", "created_at") in entries
    assert listed == len(entries) and outbox.joined(db) == AT
    assert outbox.join(db, AT) == 0, "joining again lists no entry twice"


def test_every_change_is_listed_with_a_revision_that_only_grows(db):
    outbox.join(db, AT)
    _add(db)
    first = db.execute("SELECT seq FROM team_outbox WHERE kind = 'call'").fetchone()[0]
    with connection.write_transaction(db):
        db.execute("UPDATE interactions SET model = 'other' WHERE id = '0000000000001'")
    second = db.execute("SELECT seq FROM team_outbox WHERE kind = 'call'").fetchone()[0]
    assert second > first, "a change lists the row again, with a higher revision"
    with connection.write_transaction(db):
        db.execute("UPDATE tasks SET estimate_seconds = 60 WHERE id = 'P1-001'")
    fields = [field for kind, _, field in _entries(db) if kind == "task_field"]
    assert "estimate_seconds" in fields and fields.count("estimate_seconds") == 1
    with connection.write_transaction(db):
        db.execute("DELETE FROM interactions WHERE id = '0000000000001'")
    batch = {(entry.kind, entry.key, entry.field): row for entry, row in outbox.next_batch(db, 100)}
    assert batch[("call", "0000000000001", "")] is None, "a deleted row goes as a tombstone"
    assert batch[("task_field", "P1-001", "estimate_seconds")] == {"estimate_seconds": 60}
    assert batch[("task_estimate", "1", "")]["estimate_seconds"] == 60


def test_an_entry_listed_again_while_its_batch_was_sent_survives_the_mark(db):
    outbox.join(db, AT)
    _add(db, "0000000000001")
    _add(db, "0000000000002")
    batch = outbox.next_batch(db, 1000)
    with connection.write_transaction(db):
        db.execute("UPDATE interactions SET model = 'changed' WHERE id = '0000000000002'")
    outbox.mark_sent(db, [entry for entry, _ in batch])
    assert _entries(db) == [("call", "0000000000002", "")], "the newer change waits for the next batch"
    (entry, row), *rest = outbox.next_batch(db, 1000)
    assert rest == [] and row["model"] == "changed"


def test_a_batch_takes_the_oldest_entries_first(db):
    outbox.join(db, AT)
    for n in range(5):
        _add(db, f"000000000000{n}")
    first = outbox.next_batch(db, 3)
    assert [entry.seq for entry, _ in first] == sorted(entry.seq for entry, _ in first)
    outbox.mark_sent(db, [entry for entry, _ in first])
    rest = outbox.next_batch(db, 100)
    assert min(entry.seq for entry, _ in rest) > max(entry.seq for entry, _ in first)
    assert outbox.pending_count(db) == len(rest)
