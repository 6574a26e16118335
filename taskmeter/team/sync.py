"""Sending the outbox to the team store, exactly once.

`meter team sync` runs this in a process of its own; `meter proxy` starts one
when `[team] url` is set (team/process.py). A batch is upserted in one server
transaction, `INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE rev < EXCLUDED.rev`,
and its outbox entries are removed only after that COMMIT. A meter killed in
between sends the batch again: the same revisions, which change nothing.
An older revision never overwrites a newer one.

Offline, the outbox simply waits; the syncer says once that the team store is
unreachable, once that it is back, and keeps its state in `<db>.team.json`
for `meter team status`.
"""

import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taskmeter.errors import MeterError
from taskmeter.store import outbox
from taskmeter.team import schema
from taskmeter.team.address import TeamStoreError, connect, connection_failure, describe
from taskmeter.timefmt import from_stored, now_stored

log = logging.getLogger(__name__)

BATCH_ROWS = 2000
# An idle syncer looks at the outbox this often: a stored call reaches the team well within 5 s.
POLL_SECONDS = 0.5
RETRY_SECONDS = 5.0

# The time column of each kind of record (ordering them when a report rebuilds the tables).
_RECORD_TIMES = {
    "flag": "flagged_at",
    "task_event": "at",
    "commit": "committed_at",
    "test_run": "at",
    "automatic_mark": "at",
    "phase_mark": "at",
    "task_estimate": "set_at",
    "task_approval": "approved_at",
}

# Each batch is copied into a temporary table (COPY: one round trip), then upserted from
# it in one statement: a row's newer revision wins, a resend or an older one changes nothing.
_CALL_COLUMNS = "id, device, rev, deleted, task_id, started_at, model, operation, input_total, output_total, cost_usd, row"
_RECORD_COLUMNS = "id, device, rev, deleted, kind, task_id, phase_id, at, row"
_FIELD_COLUMNS = "id, entity, entity_id, field, value, device, rev, set_at"
_UPSERTS = {
    "calls": (
        _CALL_COLUMNS,
        """
        rev = EXCLUDED.rev, deleted = EXCLUDED.deleted, task_id = EXCLUDED.task_id, started_at = EXCLUDED.started_at,
        model = EXCLUDED.model, operation = EXCLUDED.operation, input_total = EXCLUDED.input_total,
        output_total = EXCLUDED.output_total, cost_usd = EXCLUDED.cost_usd, row = EXCLUDED.row, synced_at = now()""",
    ),
    "records": (
        _RECORD_COLUMNS,
        """
        rev = EXCLUDED.rev, deleted = EXCLUDED.deleted, task_id = EXCLUDED.task_id, phase_id = EXCLUDED.phase_id,
        at = EXCLUDED.at, row = EXCLUDED.row, synced_at = now()""",
    ),
    # A shared field: the latest writer wins, and the writer and time are kept.
    "fields": (
        _FIELD_COLUMNS,
        """
        value = EXCLUDED.value, developer = current_user, device = EXCLUDED.device, rev = EXCLUDED.rev,
        set_at = EXCLUDED.set_at, synced_at = now()""",
    ),
}


def _upsert(cursor, table: str, rows: list[tuple]) -> None:
    columns, updates = _UPSERTS[table]
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS staged_{table} (LIKE taskmeter.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    with cursor.copy(f"COPY staged_{table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cursor.execute(
        f"INSERT INTO taskmeter.{table} AS team ({columns}) SELECT {columns} FROM staged_{table}"
        f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE team.rev < EXCLUDED.rev"
    )


def status_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".team.json")


@dataclass
class SyncState:
    """What `meter team status` shows, as the syncer last wrote it."""

    pid: int = 0
    url: str = ""
    last_sync_at: str | None = None
    error: str | None = None
    error_since: str | None = None
    sent_rows: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, db_path: Path) -> "SyncState | None":
        try:
            data = json.loads(status_path(db_path).read_text())
        except (OSError, ValueError):
            return None
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data and name != "extra"}
        return cls(**known)

    def write(self, db_path: Path) -> None:
        """Replace the file whole; on a full disk the old one stays (status reads the disk too)."""
        path = status_path(db_path)
        temporary = path.with_name(path.name + f".{os.getpid()}")
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "extra"}
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(temporary, path)
        except OSError:
            try:
                temporary.unlink()
            except OSError:
                pass


class Syncer:
    """Sends one database's outbox to one team store."""

    def __init__(self, db: sqlite3.Connection, db_path: Path, url: str, share_text: bool) -> None:
        self.db = db
        self.db_path = db_path
        self.url = url
        self.share_text = share_text
        self.device = outbox.device_id(db)
        self.state = SyncState(pid=os.getpid(), url=describe(url))
        previous = SyncState.read(db_path)
        if previous is not None:
            self.state.last_sync_at, self.state.sent_rows = previous.last_sync_at, previous.sent_rows
        self._conn: Any = None

    def sync_until_empty(self) -> int:
        """Send batches until the outbox is empty; the rows sent. Raises TeamStoreError when the store fails."""
        import psycopg

        sent = 0
        try:
            conn = self._connection()
            while True:
                batch = outbox.next_batch(self.db, BATCH_ROWS)
                if not batch:
                    break
                with conn.transaction():  # one server transaction: its COMMIT ends this block
                    sent += self._send(conn, batch)
                outbox.mark_sent(self.db, [entry for entry, _ in batch])
        except psycopg.Error as exc:
            self.close()
            raise TeamStoreError(connection_failure(exc, self.url)) from None
        except TeamStoreError:
            self.close()
            raise
        if sent:
            self.state.sent_rows += sent
            self.state.last_sync_at = now_stored()
        return sent

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connection(self):
        if self._conn is None or self._conn.closed:
            conn = connect(self.url)
            try:
                schema.check(conn, describe(self.url))
                conn.rollback()  # end the check's read transaction: each batch runs in its own
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _send(self, conn, batch: list[tuple[outbox.Entry, dict[str, Any] | None]]) -> int:
        from psycopg.types.json import Jsonb

        calls, records, fields = [], [], []
        for entry, row in batch:
            if entry.kind == "call":
                calls.append(_call_params(self.device, entry, row, Jsonb))
            elif entry.kind in ("task_field", "phase_field"):
                shared = _field_params(self.device, entry, row, Jsonb)
                if shared is not None:
                    fields.append(shared)
            elif entry.kind != "call_text" or self.share_text:
                records.append(_record_params(self.device, entry, row, Jsonb))
        with conn.cursor() as cursor:
            for table, rows in (("calls", calls), ("records", records), ("fields", fields)):
                if rows:
                    _upsert(cursor, table, rows)
        return len(calls) + len(records) + len(fields)


# An escaped NUL in JSON text: \u0000 after an even number of backslashes (an odd one escapes the text "\u0000").
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _json(value: object) -> str:
    """JSON that PostgreSQL takes: a NUL character (which a jsonb or text value cannot hold) is left out."""
    return _NUL.sub(r"\1", json.dumps(value))


def _call_params(device: str, entry: outbox.Entry, row: dict | None, Jsonb) -> tuple:
    if row is None:
        return (f"{device}:{entry.key}", device, entry.seq, True, None, None, None, None, None, None, None, Jsonb({}))
    return (
        f"{device}:{entry.key}",
        device,
        entry.seq,
        False,
        row["task_id"],
        row["started_at"],
        row["model"],
        row["operation"],
        row["input_total"],
        row["output_total"],
        row["cost_usd"],
        Jsonb(row, dumps=_json),
    )


def _record_params(device: str, entry: outbox.Entry, row: dict | None, Jsonb) -> tuple:
    record_id = f"{entry.kind}:{device}:{entry.key}"
    if row is None:
        return (record_id, device, entry.seq, True, entry.kind, None, None, None, Jsonb({}))
    at = row.get(_RECORD_TIMES.get(entry.kind, ""))
    return (record_id, device, entry.seq, False, entry.kind, row.get("task_id"), row.get("phase_id"), at, Jsonb(row, dumps=_json))


def _field_params(device: str, entry: outbox.Entry, row: dict | None, Jsonb) -> tuple | None:
    """A shared field as the team stores it; None for a field of a row deleted since (its
    deletion is listed on its own)."""
    if row is None:
        if entry.field != "deleted":
            return None
        value: object = True
    else:
        value = row[entry.field]
    entity = "task" if entry.kind == "task_field" else "phase"
    field_id = f"{entity}:{entry.key}:{entry.field}"
    if entry.field == "created_at":  # each device's creation is kept: the team's is the earliest
        field_id += f":{device}"
    set_at = from_stored(entry.changed_at)
    # The latest set wins: its time in milliseconds (as the trigger states it), then its outbox
    # order, so that two sets of one field within a millisecond keep their order.
    revision = int(set_at.timestamp() * 1000) * 1_000_000 + entry.seq % 1_000_000
    return (field_id, entity, entry.key, entry.field, Jsonb(value, dumps=_json), device, revision, set_at)


def run(db_path: Path, url: str, share_text: bool, once: bool = False, parent: int | None = None) -> int:
    """Sync until stopped (SIGTERM) or the `parent` process is gone, or once; the
    rows sent. Says once when the team store becomes unreachable and once when it is back."""
    from taskmeter.store import connection

    db = connection.connect(db_path, create=False)
    syncer = Syncer(db, db_path, url, share_text)
    if outbox.joined(db) is None:
        raise MeterError(f"{db_path} has not joined a team: run `meter team join URL` first")
    total = 0
    written: SyncState | None = None

    def write_if_changed() -> None:
        # An idle syncer passes every POLL_SECONDS: it writes nothing until rows go or its error changes.
        nonlocal written
        if syncer.state != written:
            syncer.state.write(db_path)
            written = replace(syncer.state)

    try:
        while parent is None or os.getppid() == parent:
            try:
                total += syncer.sync_until_empty()
                if syncer.state.error is not None:
                    log.warning("meter: team store %s reachable again; the outbox is sent", syncer.state.url)
                syncer.state.error = syncer.state.error_since = None
                write_if_changed()
                if once:
                    return total
                time.sleep(POLL_SECONDS)
            except (TeamStoreError, sqlite3.OperationalError) as exc:
                message = str(exc) if isinstance(exc, TeamStoreError) else f"the local database: {exc}"
                if once:  # the caller says it, as the command's one error line
                    syncer.state.error, syncer.state.error_since = message, now_stored()
                    syncer.state.write(db_path)
                    raise TeamStoreError(message) from None
                if message != syncer.state.error:
                    log.warning("meter: team sync paused: %s; rows are kept and sent when it works again", message)
                    syncer.state.error_since = now_stored()
                syncer.state.error = message
                write_if_changed()
                time.sleep(RETRY_SECONDS)
        return total
    finally:
        syncer.close()
        db.close()
