"""A running dashboard (`meter ui`) announces itself in the `state` table, so
that the proxy's banner and `meter status` can print the URL that opens it.

That URL holds the dashboard's access token. It is stored only while the
database file is the user's alone (mode 0600, as the meter creates it):
whoever can read the file can read every prompt the dashboard would show, so
the token gives them nothing more. Otherwise only the address is stored, and
the token stays in the terminal of `meter ui`."""

import json
import os
import sqlite3
import stat
from pathlib import Path

from taskmeter.store.connection import write_transaction
from taskmeter.store.proxies import meter_process_alive
from taskmeter.timefmt import now_stored

KEY = "dashboard"


def private_to_user(path: Path) -> bool:
    """Whether only this user may read and write the file at `path`."""
    status = os.stat(path)
    return status.st_uid == os.getuid() and not stat.S_IMODE(status.st_mode) & 0o077


def register(db: sqlite3.Connection, db_path: Path, address: str, url: str) -> None:
    """`url` is the address with the access token, stored only in a private database file."""
    import socket  # here and in running(), not at the top: `meter status` reads no dashboard most of the time

    value = json.dumps(
        {
            "address": address,
            "url": url if private_to_user(db_path) else None,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started_at": now_stored(),
        }
    )
    with write_transaction(db):
        db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (KEY, value)
        )


def unregister(db: sqlite3.Connection) -> None:
    """Forget the dashboard, if it is this process's."""
    with write_transaction(db):
        db.execute("DELETE FROM state WHERE key = ? AND json_extract(value, '$.pid') = ?", (KEY, os.getpid()))


def running(db: sqlite3.Connection) -> str | None:
    """The URL that opens the dashboard serving this database (its bare address,
    when the token is not stored), if one still runs."""
    row = db.execute("SELECT value FROM state WHERE key = ?", (KEY,)).fetchone()
    if row is None:
        return None
    import socket

    dashboard = json.loads(row[0])
    if dashboard["hostname"] == socket.gethostname() and not meter_process_alive(dashboard["pid"]):
        return None
    return dashboard.get("url") or dashboard["address"]
