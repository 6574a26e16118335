"""The team store's outbox (migration m027; docs/team.md): which local rows
changed since they were last sent, and the rows themselves.

Triggers fill `team_outbox` while the meter is in a team, so every code path
that writes a row lists it. The syncer (taskmeter/team/sync.py) reads a batch,
sends it, and only after the server's COMMIT removes the entries it sent, each
by its `seq`: an entry listed again meanwhile has a new `seq` and stays.
"""

import sqlite3
from dataclasses import dataclass
from typing import Any

from taskmeter.store.connection import write_transaction
from taskmeter.store.migrations import _m027_synced_tables

# The tables m027's triggers list (a migration that syncs another table changes this).
OWNED, SHARED = _m027_synced_tables()

TABLES = {kind: (table, key) for kind, table, key in OWNED} | {kind: (table, "id") for kind, table in SHARED}
# A shared field's time when the meter joins: its row's creation, so that a
# value set in the team meanwhile is not overwritten by an older one.
_JOINED_FIELD_TIME = "created_at"


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    key: str
    field: str
    changed_at: str


def device_id(db: sqlite3.Connection) -> str:
    return db.execute("SELECT device_id FROM team_sync WHERE id = 1").fetchone()[0]


def joined(db: sqlite3.Connection) -> str | None:
    """When this database joined a team (the outbox fills from then on), or None."""
    row = db.execute("SELECT enabled, joined_at FROM team_sync WHERE id = 1").fetchone()
    return row[1] if row[0] else None


def join(db: sqlite3.Connection, at: str) -> int:
    """List every row from now on, and the whole history once (joining late).
    Returns how many entries the history added."""
    with write_transaction(db):
        before = pending_count(db)
        db.execute("UPDATE team_sync SET enabled = 1, joined_at = ? WHERE id = 1", (at,))
        for kind, table, key in OWNED:
            db.execute(f"INSERT OR IGNORE INTO team_outbox (kind, key, changed_at) SELECT ?, {key}, ? FROM {table}", (kind, at))
        for kind, table in SHARED:
            for column in _columns(db, table):
                db.execute(
                    f"INSERT OR IGNORE INTO team_outbox (kind, key, field, changed_at)"
                    f" SELECT ?, id, ?, {_JOINED_FIELD_TIME} FROM {table} WHERE {column} IS NOT NULL",
                    (kind, column),
                )
            db.execute(
                f"INSERT OR IGNORE INTO team_outbox (kind, key, field, changed_at)"
                f" SELECT ?, id, 'deleted', {_JOINED_FIELD_TIME} FROM {table}",
                (kind,),
            )
        return pending_count(db) - before


def leave(db: sqlite3.Connection) -> int:
    """Stop listing rows, and forget the entries not sent; how many there were."""
    with write_transaction(db):
        dropped = pending_count(db)
        db.execute("UPDATE team_sync SET enabled = 0, joined_at = NULL WHERE id = 1")
        db.execute("DELETE FROM team_outbox")
        return dropped


def pending_count(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM team_outbox").fetchone()[0]


def oldest_pending(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT min(changed_at) FROM team_outbox").fetchone()
    return row[0] if row else None


def next_batch(db: sqlite3.Connection, limit: int) -> list[tuple[Entry, dict[str, Any] | None]]:
    """The oldest `limit` entries, each with its row as it is now (None: deleted).
    Each kind's entries come with their rows from one statement, so an entry and
    its row are read at one moment; an entry listed again meanwhile has a `seq`
    past this batch and goes with the next. A shared field's row is `{field: value}`."""
    last = db.execute("SELECT seq FROM team_outbox ORDER BY seq LIMIT 1 OFFSET ?", (limit - 1,)).fetchone()
    last_seq = last[0] if last else db.execute("SELECT max(seq) FROM team_outbox").fetchone()[0]
    if last_seq is None:
        return []
    found: list[tuple[Entry, dict[str, Any] | None]] = []
    for kind, (table, key) in TABLES.items():
        cursor = db.cursor()
        cursor.row_factory = None  # plain tuples: a dict made from sqlite3.Row costs twice as much
        cursor.execute(
            f"SELECT o.seq, o.kind, o.key, o.field, o.changed_at, t.* FROM team_outbox o"
            f" LEFT JOIN {table} t ON t.{key} = o.key"
            " WHERE +o.kind = ? AND o.seq <= ?",  # by the seq range, never all entries of a kind
            (kind, last_seq),
        )
        names = [column[0] for column in cursor.description[5:]]
        for seq, kind_, key_, field, changed_at, *values in cursor:
            entry = Entry(seq, kind_, key_, field, changed_at)
            row = dict(zip(names, values, strict=True)) if values[names.index(key)] is not None else None
            if field and row is not None:
                row = {field: False} if field == "deleted" else {field: row.get(field)}
            found.append((entry, row))
    found.sort(key=lambda pair: pair[0].seq)
    return found


def mark_sent(db: sqlite3.Connection, entries: list[Entry]) -> None:
    """Remove the entries the server has committed; one listed again since keeps its newer entry."""
    with write_transaction(db):
        db.executemany("DELETE FROM team_outbox WHERE seq = ?", [(entry.seq,) for entry in entries])


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})") if row[1] != "id"]
