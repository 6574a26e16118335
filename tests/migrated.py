"""A database with every migration applied, made by copying one migrated once
per test process: running the migrations takes about 50 ms, a copy about 3, and
a property test makes a database per example (and the suite starts about 200 proxies)."""

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

from taskmeter.store import connection, migrations

# Every migration, as imported: a test that cuts the list down to make an old database
# may be the one that first asks for the template.
EVERY_MIGRATION = list(migrations.MIGRATIONS)


@functools.cache
def _template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="meter-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "meter.db"
    with mock.patch.object(migrations, "MIGRATIONS", EVERY_MIGRATION):
        connection.connect(path).close()  # the last connection closed checkpoints the WAL and removes it
    return path


def migrated_file(path: Path) -> None:
    """A new database file at `path` as `connection.connect` leaves it once it has made one
    (WAL mode, migrated, readable by the user alone), copied file-wise: no connection to open
    (each parses the schema's triggers) and close."""
    shutil.copy(_template(), path)


def migrated_database(path: Path) -> sqlite3.Connection:
    """The meter's connection to a new database at `path`, as `connection.connect` makes it."""
    migrated_file(path)
    return connection.connect(path)
