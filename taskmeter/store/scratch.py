"""A scratch database in memory with the local schema, filled with rows from
elsewhere: the team store's, for team reports (taskmeter/team/reports.py).
Its triggers rebuild the rollups from those rows as they do from a meter's own."""

import sqlite3
from collections.abc import Iterable
from typing import Any

from taskmeter.store import migrations


def scratch_database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    migrations.migrate(db)
    return db


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def insert_rows(db: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]], keep_first: bool = False) -> None:
    """Each row's values for the columns `table` has (others are ignored: a newer meter's);
    with `keep_first`, a row whose key is there already is left out."""
    known = columns(db, table)
    verb = "INSERT OR IGNORE" if keep_first else "INSERT"
    for row in rows:
        names = [name for name in known if name in row]
        db.execute(
            f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", [row[name] for name in names]
        )


def drop_derived_estimates(db: sqlite3.Connection) -> None:
    """The estimates the tasks' trigger (m018) made as the tasks went in: the history loaded next replaces them."""
    db.execute("DELETE FROM task_estimates")
