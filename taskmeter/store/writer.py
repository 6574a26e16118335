"""The proxy's single database writer: a thread that batches finished calls into
transactions, so no proxy hook ever waits on SQLite.

If the database cannot be written (locked, read-only, disk full), batches go to a
spool file beside it (JSON lines) and are replayed once it can be written again;
inserts are idempotent, so a batch replayed twice is stored once.
"""

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from taskmeter.ids import new_id
from taskmeter.store import db as store_db
from taskmeter.store import proxies
from taskmeter.store.interactions import Interaction
from taskmeter.store.recording import Recorded, record
from taskmeter.timefmt import now_stored, to_stored

log = logging.getLogger("taskmeter.writer")

BATCH_MAX = 500
FLUSH_SECONDS = 0.05
RETRY_SECONDS = 1.0
# A locked database makes the writer wait this long before it spools instead.
WRITER_BUSY_SECONDS = 2.0
PROBE_BUSY_SECONDS = 0.1

_STOP = object()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Submitted after a group of calls: reported to `on_checkpoint` once every
    call submitted before it is stored or spooled."""

    seq: int


def spool_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".spool.jsonl")


class Writer:
    """submit() from any thread; a daemon thread turns items into rows and stores them."""

    def __init__(
        self,
        db_path: Path,
        prepare: Callable[[object], Recorded],
        proxy_id: str | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        self.db_path = db_path
        self.spool = spool_path(db_path)
        self._prepare = prepare
        self._proxy_id = proxy_id  # whose heartbeat this writer keeps in `proxies`
        self._on_checkpoint = on_checkpoint
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="taskmeter-writer", daemon=True)
        self._db: sqlite3.Connection | None = None
        self._last_heartbeat = 0.0
        self._last_retry = 0.0
        self.failing: str | None = None  # why the database cannot be written, while it cannot
        self.written = 0
        self.spooled = 0

    def start(self) -> None:
        # An unusable database is not fatal here: calls go to the spool until it is
        # usable. (`meter proxy` refuses to start on a bad database before listening.)
        self._thread.start()

    def submit(self, item: object) -> None:
        self._queue.put(item)

    def stop(self, timeout: float = 30.0) -> None:
        """Store everything submitted so far, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._connect()
            self._replay_spool()
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                calls = [item for item in batch if not isinstance(item, Checkpoint)]
                if calls:
                    self._store([self._prepare_safely(item) for item in calls])
                if self._on_checkpoint:
                    for item in batch:
                        if isinstance(item, Checkpoint):
                            self._on_checkpoint(item.seq)
                self._housekeeping()
            self._replay_spool()
            self._unregister()
        except Exception:
            log.exception("meter: the database writer stopped unexpectedly")
        finally:
            if self._db is not None:
                self._db.close()

    def _next_batch(self) -> tuple[list, bool]:
        timeout = RETRY_SECONDS if self.failing else FLUSH_SECONDS * 20
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + FLUSH_SECONDS
        while len(batch) < BATCH_MAX:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _prepare_safely(self, item) -> Recorded:
        if isinstance(item, Recorded):
            return item
        try:
            return self._prepare(item)
        except Exception as exc:  # never lose the call because its body puzzled us
            log.exception("meter: could not read call %s", getattr(item, "id", "?"))
            return Recorded(_fallback_row(item, exc))

    def _connect(self) -> bool:
        if self._db is not None:
            return True
        try:
            # While the database is failing, a retry only probes: it must not stall the spooling.
            busy = PROBE_BUSY_SECONDS if self.failing else WRITER_BUSY_SECONDS
            self._db = store_db.connect(self.db_path, busy_timeout=busy)
            return True
        except Exception as exc:
            self._failed(exc)
            return False

    def _store(self, items: list[Recorded]) -> None:
        if self.failing and time.monotonic() - self._last_retry < RETRY_SECONDS:
            # Do not wait out a busy timeout for every batch while the database is
            # unusable: spool at once; _housekeeping retries once a second.
            self._write_spool(items)
            return
        self._last_retry = time.monotonic()
        if self.spool.exists() and not self._replay_spool():
            self._write_spool(items)
            return
        if not self._write(items):
            self._write_spool(items)

    def _write(self, items: list[Recorded]) -> bool:
        if not self._connect():
            return False
        try:
            with store_db.write_transaction(self._db):
                record(self._db, items)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return False
        if self.failing:
            log.warning("meter: database %s is writable again", self.db_path)
            self.failing = None
            self._db.execute(f"PRAGMA busy_timeout = {int(WRITER_BUSY_SECONDS * 1000)}")
        self.written += len(items)
        return True

    def _failed(self, exc: Exception) -> None:
        if self.failing is None:
            log.error("meter: cannot write %s (%s); calls are kept in %s until it can", self.db_path, exc, self.spool)
        self.failing = str(exc)
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _write_spool(self, items: list[Recorded]) -> None:
        lines = "".join(json.dumps(asdict(item), separators=(",", ":")) + "\n" for item in items)
        try:
            with open(self.spool, "a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
        except OSError as exc:
            # Nowhere to put them: keep them queued in memory and try again later.
            log.error("meter: cannot write the spool %s either (%s); holding %d calls in memory", self.spool, exc, len(items))
            time.sleep(RETRY_SECONDS)
            for item in items:
                self._queue.put(item)
            return
        self.spooled += len(items)

    def _replay_spool(self) -> bool:
        """Store the spooled calls; True when the spool is gone."""
        if not self.spool.exists():
            return True
        try:
            text = self.spool.read_text(encoding="utf-8")
        except OSError as exc:
            self._failed(exc)
            return False
        items = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue  # the torn last line of a crash: the rest is still replayed
            items.append(Recorded(Interaction(**data["interaction"]), data.get("request_body"), data.get("response_body")))
        if items and not self._write(items):
            return False
        try:
            # Only what was read is removed: a line appended meanwhile stays.
            remaining = self.spool.read_text(encoding="utf-8")[len(text) :]
            if remaining:
                self.spool.write_text(remaining, encoding="utf-8")
            else:
                self.spool.unlink()
        except OSError as exc:
            self._failed(exc)
            return False
        if items:
            log.warning("meter: replayed %d spooled calls into %s", len(items), self.db_path)
        return True

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.failing and now - self._last_retry >= RETRY_SECONDS:
            self._last_retry = now
            self._replay_spool()
        if self._proxy_id and now - self._last_heartbeat >= proxies.HEARTBEAT_SECONDS and self._connect():
            self._last_heartbeat = now
            try:
                proxies.heartbeat(self._db, self._proxy_id)
            except sqlite3.Error:
                pass

    def _unregister(self) -> None:
        if self._proxy_id and self._connect():
            try:
                proxies.unregister(self._db, self._proxy_id)
            except sqlite3.Error:
                pass


def _fallback_row(item, exc: Exception) -> Interaction:
    started = getattr(item, "started", None)
    return Interaction(
        id=getattr(item, "id", None) or new_id(),
        started_at=to_stored(datetime.fromtimestamp(started, UTC)) if started else now_stored(),
        provider=getattr(item, "provider", None),
        protocol=getattr(item, "protocol", None),
        operation=getattr(item, "operation", "generate"),
        endpoint=getattr(item, "endpoint", None),
        http_status=getattr(item, "status", None),
        outcome=getattr(item, "outcome", None),
        error=f"meter could not read this call: {type(exc).__name__}: {exc}"[:500],
    )
