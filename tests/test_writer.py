"""The writer thread: batching, spooling when the database is unusable, replay."""

import json
import time
from dataclasses import asdict

from taskmeter.store import db as store_db
from taskmeter.store.interactions import Interaction
from taskmeter.store.recording import Recorded
from taskmeter.store.writer import Writer, spool_path
from taskmeter.timefmt import now_stored


def _row(n: int) -> Recorded:
    return Recorded(Interaction(id=f"000000000{n:03d}", started_at=now_stored(), input_total=n))


def _count(path) -> int:
    db = store_db.connect(path)
    try:
        return db.execute("SELECT count(*) FROM interactions").fetchone()[0]
    finally:
        db.close()


def test_everything_submitted_is_stored_by_stop(db_path):
    writer = Writer(db_path, prepare=lambda item: item)
    writer.start()
    for n in range(1200):
        writer.submit(_row(n))
    writer.stop()
    assert _count(db_path) == 1200 and writer.written == 1200


def test_a_call_that_cannot_be_read_is_still_stored(db_path):
    class Broken:
        id, started, provider, protocol, operation, endpoint, status, outcome = "0000000000zz", time.time(), "openai", "openai_chat", "generate", "/v1/x", 200, "complete"

    def prepare(item):
        raise ValueError("boom")

    writer = Writer(db_path, prepare=prepare)
    writer.start()
    writer.submit(Broken())
    writer.stop()
    db = store_db.connect(db_path)
    row = db.execute("SELECT * FROM interactions").fetchone()
    assert row["id"] == "0000000000zz" and "boom" in row["error"] and row["provider"] == "openai"


def test_spooled_calls_are_replayed_at_start_even_after_a_torn_line(db_path):
    store_db.connect(db_path).close()
    spool = spool_path(db_path)
    lines = [json.dumps({"interaction": asdict(_row(n).interaction)}) for n in range(3)]
    spool.write_text("\n".join(lines) + '\n{"interaction": {"id": "torn')
    writer = Writer(db_path, prepare=lambda item: item)
    writer.start()
    writer.stop()
    assert _count(db_path) == 3
    assert not spool.exists()


def test_locked_database_spools_then_catches_up(db_path):
    writer = Writer(db_path, prepare=lambda item: item)
    writer.start()
    blocker = store_db.connect(db_path)
    blocker.execute("BEGIN EXCLUSIVE")
    writer.submit(_row(0))
    deadline = time.monotonic() + 10
    while writer.spooled < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the first batch waits out the writer's busy timeout, then spools
    assert writer.spooled == 1 and writer.failing
    for n in range(1, 10):
        writer.submit(_row(n))
        time.sleep(0.3)
    # Later batches are spooled at once instead of each waiting out the busy timeout.
    deadline = time.monotonic() + 1.0
    while writer.spooled < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.spooled == 10
    blocker.execute("ROLLBACK")
    blocker.close()
    writer.submit(_row(99))
    writer.stop()
    assert _count(db_path) == 11 and not spool_path(db_path).exists()
