"""A running dashboard (`meter ui`) announces its address in the `state` table,
so that the proxy's banner and `meter status` can print it."""

import json
import os
import socket
import sqlite3

from taskmeter.store.db import write_transaction
from taskmeter.store.proxies import meter_process_alive
from taskmeter.timefmt import now_stored

KEY = "dashboard"


def register(db: sqlite3.Connection, address: str) -> None:
    value = json.dumps({"address": address, "pid": os.getpid(), "hostname": socket.gethostname(), "started_at": now_stored()})
    with write_transaction(db):
        db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (KEY, value)
        )


def unregister(db: sqlite3.Connection) -> None:
    """Forget the dashboard, if it is this process's."""
    with write_transaction(db):
        db.execute("DELETE FROM state WHERE key = ? AND json_extract(value, '$.pid') = ?", (KEY, os.getpid()))


def running(db: sqlite3.Connection) -> str | None:
    """The address of the dashboard that serves this database, if one still runs."""
    row = db.execute("SELECT value FROM state WHERE key = ?", (KEY,)).fetchone()
    if row is None:
        return None
    dashboard = json.loads(row[0])
    if dashboard["hostname"] == socket.gethostname() and not meter_process_alive(dashboard["pid"]):
        return None
    return dashboard["address"]
