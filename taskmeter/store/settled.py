"""Settled working time (m029's settled_work): a task's working time kept once it
can no longer change while nothing it is made of changes, which m029's triggers
forget the moment anything does. Kept by whoever computes one, so that the next
`meter tasks` reads a row per task instead of walking every switch and minute."""

import sqlite3

from taskmeter.store.connection import write_transaction

# How long keeping what was computed may wait for the write lock: a listing that
# could not keep it only computes it again the next time.
KEEP_WAIT_MS = 100


def known(db: sqlite3.Connection, idle_seconds: float, now: str) -> dict[str, float]:
    """The working seconds of each task (by ID) settled for this idle gap at `now`."""
    rows = db.execute(
        "SELECT task_id, working_seconds FROM settled_work WHERE idle_seconds = ? AND holds_from <= ?",
        (idle_seconds, now),
    )
    return dict(rows.fetchall())


def changes(db: sqlite3.Connection) -> int:
    """How many changes to what working time is made of m029's triggers have counted."""
    return db.execute("SELECT changes FROM settled_work_changes").fetchone()[0]


def keep(db: sqlite3.Connection, settled: dict[str, tuple[str, float]], idle_seconds: float, read_at: int) -> bool:
    """Keep `settled` ({task ID: (holds from, working seconds)}, metrics.settled_since) computed from rows
    read after `read_at` changes, unless a change came since: the triggers forgot it before it was
    kept, and it would come back. Only such a change counts, not every call the proxy stores: a
    listing keeps what it computed while calls come. Never waits long, never fails a listing: a
    read-only or busy database keeps nothing. Whether it kept them."""
    if not settled or db.in_transaction:
        return False
    (timeout,) = db.execute("PRAGMA busy_timeout").fetchone()
    db.execute(f"PRAGMA busy_timeout = {KEEP_WAIT_MS}")
    try:
        with write_transaction(db):
            if changes(db) != read_at:
                return False
            db.executemany(
                "INSERT OR REPLACE INTO settled_work (task_id, idle_seconds, holds_from, working_seconds) VALUES (?, ?, ?, ?)",
                [(key, idle_seconds, holds_from, seconds) for key, (holds_from, seconds) in settled.items()],
            )
        return True
    except sqlite3.OperationalError:  # read-only, or the lock stayed taken
        return False
    finally:
        db.execute(f"PRAGMA busy_timeout = {timeout}")
