"""Running proxies announce themselves so that `meter status` can tell who is metering."""

import os
import socket
import sqlite3
from datetime import timedelta

from taskmeter.store.db import write_transaction
from taskmeter.timefmt import now, now_stored, to_stored

HEARTBEAT_SECONDS = 5
# A proxy that missed three heartbeats is taken as gone.
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)


def register(db: sqlite3.Connection, proxy_id: str, listen: str) -> None:
    stamp = now_stored()
    with write_transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO proxies (id, pid, hostname, listen, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (proxy_id, os.getpid(), socket.gethostname(), listen, stamp, stamp),
        )


def heartbeat(db: sqlite3.Connection, proxy_id: str) -> None:
    db.execute("UPDATE proxies SET heartbeat_at = ? WHERE id = ?", (now_stored(), proxy_id))


def unregister(db: sqlite3.Connection, proxy_id: str) -> None:
    with write_transaction(db):
        db.execute("DELETE FROM proxies WHERE id = ?", (proxy_id,))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(db: sqlite3.Connection) -> list[dict]:
    """Proxies with a fresh heartbeat whose process (on this host) still exists."""
    cutoff = to_stored(now() - STALE_AFTER)
    alive = []
    host = socket.gethostname()
    for row in db.execute("SELECT * FROM proxies WHERE heartbeat_at >= ? ORDER BY started_at", (cutoff,)):
        if row["hostname"] == host and not _pid_alive(row["pid"]):
            continue
        alive.append(dict(row))
    return alive
