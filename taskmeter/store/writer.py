"""The recorder's database writer: a batch in one transaction, and, when a row
of it cannot be stored, each row alone, so that one bad row never costs its
neighbours.

Two kinds of failure are told apart. The database may be unusable for a while
(locked, read-only, disk full, unreachable): then nothing can be stored and the
caller keeps the calls elsewhere (DatabaseUnavailable). Or a row itself cannot
be stored: it is returned, with the reason, for the caller to quarantine.
"""

import logging
import sqlite3
from pathlib import Path

from taskmeter.store import db as store_db
from taskmeter.store import proxies, texts
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.sessions import DEFAULT_SESSION_GAP_SECONDS

log = logging.getLogger("taskmeter.writer")

# A locked database makes the recorder wait this long before it spools instead.
WRITER_BUSY_SECONDS = 2.0
# While the database is failing, a retry only probes: it must not stall spooling.
PROBE_BUSY_SECONDS = 0.1


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
        self.failing: str | None = None  # why the database cannot be written, while it cannot

    def store(self, items: list[CallRow]) -> list[tuple[CallRow, str]]:
        """Store `items`; returns those that cannot be stored at all, each with the
        reason. Raises DatabaseUnavailable when nothing can be stored now."""
        if not items:
            return []
        try:
            self._transaction(items)
            return []
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if len(items) == 1:
                return [(items[0], f"{type(exc).__name__}: {exc}"[:500])]
        rejected = []
        for item in items:
            rejected += self.store([item])
        return rejected

    def heartbeat(self, proxy_id: str, recording: str, newly_dropped: int) -> bool:
        # proxies.heartbeat returns None: False means the database could not be used.
        return self.quietly(proxies.heartbeat, proxy_id, recording, newly_dropped, default=False) is not False

    def prune_texts(self, before: str) -> int:
        """Delete stored text of calls started before `before`; 0 when the database cannot be written now."""
        try:
            return texts.purge(self._connect(), before)
        except (DatabaseUnavailable, sqlite3.Error):
            self.close()
            return 0

    def unregister(self, proxy_id: str) -> bool:
        return self.quietly(proxies.unregister, proxy_id, default=False) is not False

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------ internals

    def _transaction(self, items: list[CallRow]) -> None:
        db = self._connect()
        try:
            with store_db.write_transaction(db):
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
        if self._db is None:
            busy = PROBE_BUSY_SECONDS if self.failing else WRITER_BUSY_SECONDS
            try:
                self._db = store_db.connect(self.db_path, busy_timeout=busy)
            except Exception as exc:
                self._failed(exc)
                raise DatabaseUnavailable(str(exc)) from None
        return self._db

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
