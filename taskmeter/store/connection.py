"""Opening the database: one file, WAL, busy timeout, foreign keys, migrations."""

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from taskmeter.errors import MeterError
from taskmeter.private import private_dir

ENV_VAR = "METER_DB"
# Long enough that a CLI command waits out the proxy's writer instead of failing.
BUSY_TIMEOUT_SECONDS = 30.0


def default_path() -> Path:
    from taskmeter.userdirs import user_path  # here, not at the top: `meter statusline` with $METER_DB never pays for it

    return user_path("data") / "meter.db"


def resolve_path(explicit: str | os.PathLike | None = None) -> Path:
    """`--db` beats `$METER_DB` beats the per-user default."""
    chosen = explicit or os.environ.get(ENV_VAR) or default_path()
    return Path(chosen).expanduser()


class NoDatabase(MeterError):
    """The database file does not exist, and the command only reads one."""


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA foreign_keys = ON")
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


def _refuse_foreign_database(db: sqlite3.Connection, path: Path) -> None:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "_meter_migrations" not in tables:
        raise MeterError(f"{path} is an SQLite database that taskmeter did not create; left untouched")


def connect(
    path: str | os.PathLike | None = None, busy_timeout: float = BUSY_TIMEOUT_SECONDS, create: bool = True
) -> sqlite3.Connection:
    """Open (upgrading as needed) the taskmeter database at `path`, waiting up to
    `busy_timeout` seconds whenever another process holds the lock. It is created
    when missing, unless `create` is false (commands that only read): then
    NoDatabase says so, and no file is made."""
    target = resolve_path(path)
    if target.is_dir():
        raise MeterError(f"database path {target} is a directory; give a file path")
    if create:
        _create(target)
    elif not target.exists():
        raise NoDatabase(
            f"no database at {target}: nothing was recorded there (`meter proxy` creates it; --db or ${ENV_VAR} names another)"
        )
    try:
        # mode=rw: a file deleted since the check above is not made again here.
        where = target if create else f"file:{quote(str(target))}?mode=rw"
        db = sqlite3.connect(where, timeout=busy_timeout, isolation_level=None, uri=not create)
    except sqlite3.Error as exc:
        if not create and not target.exists():
            raise NoDatabase(f"no database at {target}: it was deleted") from None
        raise MeterError(f"cannot open database {target}: {exc}") from None
    db.row_factory = sqlite3.Row
    from taskmeter.store import migrations  # here: a reader such as `meter statusline` never needs it

    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _refuse_foreign_database(db, target)  # before anything writes to the file
            _configure(db)
            migrations.migrate(db)
            return db
        except MeterError:
            db.close()
            raise
        except sqlite3.OperationalError as exc:
            # Switching a brand-new file to WAL is not covered by the busy handler:
            # two processes creating the database at once retry here instead.
            if "locked" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            db.close()
            raise describe_sqlite_error(exc, target) from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise describe_sqlite_error(exc, target) from None


def _create(target: Path) -> None:
    try:
        private_dir(target.parent)
    except OSError as exc:
        raise MeterError(f"cannot create the folder for database {target}: {exc.strerror}") from None
    # A -wal or -shm file there before the database is the leftover of one that
    # was deleted: SQLite would apply its pages to the new file and corrupt it.
    leftovers = {path: file_identity(path) for path in (Path(f"{target}-wal"), Path(f"{target}-shm"))}
    try:
        # Prompts and answers may be stored: only the user may read the file.
        # SQLite gives its -wal and -shm files the database's permissions.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    except OSError as exc:
        raise MeterError(f"cannot create database {target}: {exc.strerror}") from None
    for path, identity in leftovers.items():
        if identity is not None and file_identity(path) == identity:  # not one a concurrent creator just made
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def describe_sqlite_error(exc: sqlite3.Error, path: Path | str) -> MeterError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return MeterError(f"{path} is not a readable taskmeter database ({text}); left untouched")
    if "locked" in text or "busy" in text:
        return MeterError(f"database {path} stayed locked by another process; try again")
    if "readonly" in text or "unable to open" in text:
        return MeterError(f"cannot write database {path}: check its permissions ({text})")
    if "disk" in text or "full" in text:
        return MeterError(f"cannot write database {path}: {text}")
    return MeterError(f"database {path}: {text}")


class NotInTransaction(RuntimeError):
    """A store function that is one step of a larger write ran outside a
    transaction: a bug of ours, never the user's input."""


def require_transaction(db: sqlite3.Connection, what: str) -> None:
    """For a store function that is one step of a larger write ("runs in the
    caller's transaction"): on an autocommit connection each of its statements
    would commit alone, and a failure halfway would leave half of it stored."""
    if not db.in_transaction:
        raise NotInTransaction(f"{what} runs in the caller's transaction: call it inside `with write_transaction(db):`")


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """The one way the store writes: every write runs inside it.
    BEGIN IMMEDIATE takes the write lock up front, so a busy database waits
    (busy_timeout) instead of failing halfway through a read-then-write.
    Inside a transaction already open, it is a savepoint of that one: a failure
    undoes only its own part, and the whole commits with the outer transaction
    or not at all (a command that makes several edits: docs/tracking-pattern.md)."""
    if db.in_transaction:
        db.execute("SAVEPOINT nested_write")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled the whole transaction back already (a full disk)
                db.execute("ROLLBACK TO nested_write")
                db.execute("RELEASE nested_write")
            raise
        db.execute("RELEASE nested_write")
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
