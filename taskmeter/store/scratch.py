"""A scratch database in memory with the local schema, filled with rows from
elsewhere: the team store's, for team reports (taskmeter/team/reports.py).
Its triggers rebuild the rollups from those rows as they do from a meter's own.
And the temporary tables a read fills for its own statements (the connection's
alone, gone when it closes)."""

import itertools
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def scratch_database() -> sqlite3.Connection:
    """An empty database in memory with the local schema. Migrating one from nothing costs
    0.2-0.4 s of CPU (each ALTER TABLE has SQLite read the whole schema again), so the empty
    database is kept in the user cache folder once migrated, under the migrations' own hash,
    and each team report takes a copy of it (about 1 ms)."""
    from taskmeter.private import read_own_cache, write_own_cache  # here, as migrations: see below
    from taskmeter.store import migrations  # here: a read that holds period spans never needs it

    cache = _empty_schema_file()
    key = _schema_key(migrations.__file__)
    kept = read_own_cache(cache)
    if kept is not None and kept.startswith(key):
        db = _in_memory()
        try:
            db.deserialize(kept[len(key) :])
            migrations.migrate(db)  # reads what the copy has applied: a damaged file fails here
            return db
        except sqlite3.DatabaseError:
            db.close()
    db = _in_memory()
    migrations.migrate(db)
    write_own_cache(cache, key + db.serialize())
    return db


def _in_memory() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def _empty_schema_file() -> Path:
    from taskmeter.userdirs import user_path

    return user_path("cache") / "scratch-schema.sqlite"


def _schema_key(migrations_source: str) -> bytes:
    """What the kept empty database was made by: the migrations' source and the SQLite that ran them."""
    import hashlib

    made_by = Path(migrations_source).read_bytes() + sqlite3.sqlite_version.encode()
    return hashlib.sha256(made_by).hexdigest().encode() + b"\n"


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def insert_rows(db: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]], keep_first: bool = False) -> None:
    """Each row's values for the columns `table` has (others are ignored: a newer meter's);
    with `keep_first`, a row whose key is there already is left out."""
    known = columns(db, table)
    verb = "INSERT OR IGNORE" if keep_first else "INSERT"
    # Runs of rows with the same columns go in one executemany, in order (integer IDs follow it).
    for names, run in itertools.groupby(rows, key=lambda row: tuple(name for name in known if name in row)):
        db.executemany(
            f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            ([row[name] for name in names] for row in run),
        )


def drop_derived_estimates(db: sqlite3.Connection) -> None:
    """The estimates the tasks' trigger (m018) made as the tasks went in: the history loaded next replaces them."""
    db.execute("DELETE FROM task_estimates")


def replace_rollups(
    db: sqlite3.Connection,
    tasks: list[str],
    usage_columns: list[str],
    usage: list[tuple],
    runs: list[tuple],
    rework: list[tuple],
) -> None:
    """The rollups of `tasks` replaced by sums made elsewhere (the team store's, over
    its developers): task_usage rows (task_key, *usage_columns), task_activity_runs
    (task_id, start, end) and session_rework (task_id, session_key, flagged_at,
    flagged_id, calls, tokens, cost_usd)."""
    marks = ", ".join("?" for _ in tasks)
    db.execute(f"DELETE FROM task_usage WHERE task_key IN ({marks})", tasks)
    db.executemany(
        f"INSERT INTO task_usage (task_key, {', '.join(usage_columns)}) VALUES (?, {', '.join('?' for _ in usage_columns)})",
        usage,
    )
    db.execute(f"DELETE FROM task_activity_runs WHERE task_id IN ({marks})", tasks)
    db.executemany("INSERT INTO task_activity_runs (task_id, start, end) VALUES (?, ?, ?)", runs)
    db.execute(f"DELETE FROM session_rework WHERE task_id IN ({marks})", tasks)
    db.executemany(
        "INSERT INTO session_rework (task_id, session_key, flagged_at, flagged_id, calls, tokens, cost_usd)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rework,
    )


def replace_usage_quarters(db: sqlite3.Connection, columns: list[str], quarters: list[tuple]) -> None:
    """The usage_quarters rollup replaced by sums made elsewhere (the team store's):
    rows of (quarter, model, task_key, *columns)."""
    db.execute("DELETE FROM usage_quarters")
    db.executemany(
        f"INSERT INTO usage_quarters (quarter, model, task_key, {', '.join(columns)})"
        f" VALUES (?, ?, ?, {', '.join('?' for _ in columns)})",
        quarters,
    )


# Up to this many models, a pass per model over the held spans, reading the rollup by its primary
# key, costs less than sorting the spans' rows (a pass reads every row of the spans: 1 ms per 20,000).
MODEL_PASSES = 8


def hold_period_spans(db: sqlite3.Connection, spans: list[tuple[str, str, str]]) -> None:
    """temp.period_spans holds `spans` (period, first quarter hour, the one after its last),
    `k` their order: what the usage reports and the 5-hour blocks sum a rollup over
    (analytics/periods.py, analytics/windows.py)."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS period_spans (k INTEGER PRIMARY KEY, period TEXT, lo TEXT, hi TEXT)")
    db.execute("DELETE FROM temp.period_spans")
    db.executemany("INSERT INTO temp.period_spans VALUES (?, ?, ?, ?)", [(k, *span) for k, span in enumerate(spans)])
