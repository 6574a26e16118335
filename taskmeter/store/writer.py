"""The recorder's database writer: a batch in one transaction, and, when a row
of it cannot be stored, each row alone, so that one bad row never costs its
neighbours.

Two kinds of failure are told apart. The database may be unusable for a while
(locked, read-only, disk full, unreachable): then nothing can be stored and the
caller keeps the calls elsewhere (DatabaseUnavailable). Or a row itself cannot
be stored: it is returned, with the reason, for the caller to quarantine.

Before each use, the writer checks that the file it writes is still the one at
the database's path. One deleted or replaced under it (`rm meter.db`) is said
once, loudly, and a new database is made there (with the proxies row, so that
`meter status` still knows the proxy): calls never go into a file nobody sees.
"""

import contextlib
import logging
import sqlite3
from pathlib import Path

from taskmeter.store import connection, proxies, texts
from taskmeter.store.calls import CallRow, insert_texts, store_calls
from taskmeter.store.sessions import DEFAULT_SESSION_GAP_SECONDS

log = logging.getLogger(__name__)

# A locked database makes the recorder wait this long before it spools instead.
WRITER_BUSY_SECONDS = 2.0
# While the database is failing, a retry only probes: it must not stall spooling.
PROBE_BUSY_SECONDS = 0.1


_PROXY_COLUMNS = "id, pid, hostname, listen, started_at, heartbeat_at, recording, dropped_calls"
_REGISTER = f"INSERT OR IGNORE INTO proxies ({_PROXY_COLUMNS}) VALUES ({', '.join('?' * 8)})"


class DatabaseUnavailable(Exception):
    """The database cannot be written now; nothing of the batch was stored."""


def _is_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (OSError, DatabaseUnavailable)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        # Locked, busy, read-only, disk I/O or full, cannot open: the database's
        # state, not the row's. (A malformed statement would be a bug of ours.)
        text = str(exc).lower()
        return any(word in text for word in ("locked", "busy", "readonly", "disk", "full", "open", "i/o"))
    return False


class Writer:
    def __init__(self, db_path: Path, session_gap_seconds: float = DEFAULT_SESSION_GAP_SECONDS) -> None:
        self.db_path = db_path
        self._session_gap_seconds = session_gap_seconds
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # of the file self._db writes
        self.failing: str | None = None  # why the database cannot be written, while it cannot
        self._running_proxies: list[tuple] = []  # to register again in a database made anew

    def store(self, items: list[CallRow], texts_only: bool = False) -> list[tuple[CallRow, str]]:
        """Store `items` (with `texts_only`, only what they said, for calls already
        stored); returns those that cannot be stored at all, each with the reason.
        Raises DatabaseUnavailable when nothing can be stored now."""
        if not items:
            return []
        try:
            self._transaction(items, texts_only)
            return []
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if len(items) == 1:
                return [(items[0], f"{type(exc).__name__}: {exc}"[:500])]
        rejected = []
        for item in items:
            rejected += self.store([item], texts_only)
        return rejected

    def heartbeat(self, proxy_id: str, recording: str) -> bool:
        # proxies.heartbeat returns None: False means the database could not be used.
        return self.quietly(proxies.heartbeat, proxy_id, recording, default=False) is not False

    def prune_texts(self, before: str) -> int:
        """Delete stored text of calls started before `before`; 0 when the database cannot be written now."""
        try:
            return texts.purge(self._connect(), before)
        except (DatabaseUnavailable, sqlite3.Error):
            self.close()
            return 0

    def unregister(self, proxy_id: str) -> bool:
        return self.quietly(proxies.unregister, proxy_id, default=False) is not False

    def make_room(self) -> None:
        """Copy the WAL into the database and truncate it, without waiting for
        readers: on a nearly full disk the WAL, which SQLite checkpoints only
        past 4 MB, would otherwise keep the space the data needs."""

        def checkpoint(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA busy_timeout = 0")
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                busy = PROBE_BUSY_SECONDS if self.failing else WRITER_BUSY_SECONDS
                db.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")

        self.quietly(checkpoint)

    def rollback(self) -> None:
        """End a transaction someone left open on our connection."""
        # A plain ROLLBACK: the code that opened it is gone (its own rollback failed),
        # and the open transaction would hold the write lock against the next batch.
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------ internals

    def _transaction(self, items: list[CallRow], texts_only: bool) -> None:
        db = self._connect()
        try:
            # BEGIN IMMEDIATE: the batch waits WRITER_BUSY_SECONDS for the lock, then spools.
            with connection.write_transaction(db):
                if texts_only:
                    for item in items:
                        insert_texts(db, item)
                else:
                    store_calls(db, items, self._session_gap_seconds)
        except Exception as exc:
            if _is_unavailable(exc):
                self._failed(exc)
                raise DatabaseUnavailable(str(exc)) from None
            raise
        if self.failing:
            log.warning("meter: database %s is writable again", self.db_path)
            self.failing = None
            db.execute(f"PRAGMA busy_timeout = {int(WRITER_BUSY_SECONDS * 1000)}")

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None and connection.file_identity(self.db_path) != self._identity:
            self._replaced(self._db)
        if self._db is None:
            busy = PROBE_BUSY_SECONDS if self.failing else WRITER_BUSY_SECONDS
            try:
                self._db = connection.connect(self.db_path, busy_timeout=busy)
            except Exception as exc:
                self._failed(exc)
                raise DatabaseUnavailable(str(exc)) from None
            # After the open: the file SQLite has open is the one at the path now.
            self._identity = connection.file_identity(self.db_path)
            if self._running_proxies:
                with contextlib.suppress(sqlite3.Error), connection.write_transaction(self._db):  # the heartbeat says the rest
                    self._db.executemany(_REGISTER, self._running_proxies)
                self._running_proxies = []
        return self._db

    def _replaced(self, db: sqlite3.Connection) -> None:
        """The file we write was deleted or replaced: say so, and go on in a new
        one at the path, keeping the proxies rows (read from the old file, still
        open) so that `meter status` and a second `meter proxy` know about us."""
        gone = not self.db_path.exists()
        log.error(
            "meter: the database %s was %s while calls were recorded to it; %s, and recording goes on there",
            self.db_path,
            "deleted" if gone else "replaced by another file",
            "a new database is made" if gone else "calls now go into the file at that path",
        )
        try:
            self._running_proxies = [tuple(row) for row in db.execute(f"SELECT {_PROXY_COLUMNS} FROM proxies")]
        except sqlite3.Error:
            self._running_proxies = []
        # Closing must not checkpoint: SQLite would write, and then delete, the -wal
        # file at the path, which may by now be the new database's.
        db.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
        self.close()

    def _failed(self, exc: Exception) -> None:
        if self.failing is None:
            log.error("meter: cannot write %s (%s); calls are kept in the spool until it can", self.db_path, exc)
        self.failing = str(exc)
        self.close()

    def quietly(self, action, *args, default=None):
        """`action(db, *args)`'s result, or `default` when the database cannot be used now."""
        try:
            return action(self._connect(), *args)
        except (DatabaseUnavailable, sqlite3.Error):
            self.close()
            return default
