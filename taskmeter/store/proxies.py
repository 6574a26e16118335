"""Running proxies announce themselves so that `meter status` can tell who is metering."""

import os
import socket
import sqlite3
from datetime import timedelta
from pathlib import Path

from taskmeter.store.db import write_transaction
from taskmeter.timefmt import now, now_stored, to_stored

HEARTBEAT_SECONDS = 5
# A proxy that missed three heartbeats is taken as gone.
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)


def register(db: sqlite3.Connection, proxy_id: str, listen: str) -> None:
    stamp = now_stored()
    with write_transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO proxies (id, pid, hostname, listen, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
            (proxy_id, os.getpid(), socket.gethostname(), listen, stamp, stamp),
        )


RECORDING = "recording"


def heartbeat(db: sqlite3.Connection, proxy_id: str, recording: str = RECORDING, newly_dropped: int = 0) -> None:
    """`recording` is RECORDING or why calls are not being recorded; newly_dropped
    adds calls lost for good since the last report, so that no loss is silent."""
    db.execute(
        "UPDATE proxies SET heartbeat_at = ?, recording = ?, dropped_calls = dropped_calls + ? WHERE id = ?",
        (now_stored(), recording, newly_dropped, proxy_id),
    )


def unregister(db: sqlite3.Connection, proxy_id: str) -> None:
    with write_transaction(db):
        db.execute("DELETE FROM proxies WHERE id = ?", (proxy_id,))


def meter_process_alive(pid: int) -> bool:
    """The process runs, and (where /proc tells) is a meter, not a reused pid or
    a zombie (whose command line is empty)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"meter" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def running(db: sqlite3.Connection) -> list[dict]:
    """Proxies that still run: on this host, those whose process exists; elsewhere,
    those with a fresh heartbeat. A live proxy without a fresh heartbeat is not
    recording (its recorder keeps the heartbeat)."""
    cutoff = to_stored(now() - STALE_AFTER)
    alive = []
    host = socket.gethostname()
    for row in db.execute("SELECT * FROM proxies ORDER BY started_at"):
        proxy = dict(row)
        fresh = proxy["heartbeat_at"] >= cutoff
        if proxy["hostname"] == host:
            if not meter_process_alive(proxy["pid"]):
                continue
        elif not fresh:
            continue
        if not fresh and proxy["recording"] == RECORDING:
            proxy["recording"] = f"not recording: no word from its recorder since {proxy['heartbeat_at']}"
        alive.append(proxy)
    return alive
