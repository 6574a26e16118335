"""How much work SQLite does for a piece of ours, counted without a clock."""

import sqlite3
from collections.abc import Callable


def sqlite_steps(db: sqlite3.Connection, work: Callable[[], object]) -> int:
    """The virtual machine steps (in hundreds) SQLite takes on `db` while `work()` runs."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        work()
    finally:
        db.set_progress_handler(None, 0)
    return steps
