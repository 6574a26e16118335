"""Running proxies announce themselves so that `meter status` can tell who is metering.

Two places say how a proxy records. The proxies table (a row each, a heartbeat
every HEARTBEAT_SECONDS), and a small health file beside the database, which
the proxy keeps: calls its recorder holds in memory and calls lost, rewritten in
place, so that it is up to date even when the disk is full and the database
cannot be written, which is exactly when it matters.
"""

import contextlib
import json
import os
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import TypedDict

from taskmeter.store.connection import write_transaction
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import now, now_stored, to_stored
from taskmeter.tokens import TOKENS_SQL

HEARTBEAT_SECONDS = 5
# A proxy that missed three heartbeats is taken as gone.
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)


# The host name is os.uname().nodename, what socket.gethostname() returns on Linux and macOS,
# without importing socket on the status line's path.


def register(db: sqlite3.Connection, proxy_id: str, listen: str) -> None:
    stamp = now_stored()
    with write_transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO proxies (id, pid, hostname, listen, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
            (proxy_id, os.getpid(), os.uname().nodename, listen, stamp, stamp),
        )


RECORDING = "recording"


def heartbeat(db: sqlite3.Connection, proxy_id: str, recording: str = RECORDING, dropped: int | None = None) -> None:
    """`recording` is RECORDING or why calls are not being recorded; `dropped`,
    when given, the calls this proxy lost for good so far, so that no loss is silent."""
    with write_transaction(db):
        db.execute(
            "UPDATE proxies SET heartbeat_at = ?, recording = ?, dropped_calls = coalesce(?, dropped_calls) WHERE id = ?",
            (now_stored(), recording, dropped, proxy_id),
        )


# The health file: one JSON object, padded to a fixed size that is written once
# at start, then rewritten in place: on a full disk no new block is needed.
HEALTH_BYTES = 512


def health_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".health.json")


class HealthFile:
    """The proxy's side: `create` at start (while there is room), `write` on every
    change, `remove` at exit. An OSError is the caller's to say."""

    def __init__(self, db_path: Path) -> None:
        self.path = health_path(db_path)
        self._fd: int | None = None

    def create(self, proxy_id: str) -> None:
        self._proxy_id = proxy_id
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.write(held=0, lost=0)
        os.fsync(self._fd)  # the blocks are the file's before any disk fills

    def write(self, held: int, lost: int) -> None:
        if self._fd is None:
            return
        state = {"pid": os.getpid(), "proxy_id": self._proxy_id, "held_calls": held, "dropped_calls": lost, "at": now_stored()}
        os.pwrite(self._fd, json.dumps(state).encode().ljust(HEALTH_BYTES - 1) + b"\n", 0)

    def remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                self.path.unlink()


def read_health(db_path: Path) -> dict | None:
    """What the running proxy's health file says, or None (no proxy runs, or the file is unreadable)."""
    try:
        state = json.loads(health_path(db_path).read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and meter_process_alive(state.get("pid", 0)) else None


def unregister(db: sqlite3.Connection, proxy_id: str) -> None:
    with write_transaction(db):
        db.execute("DELETE FROM proxies WHERE id = ?", (proxy_id,))


class RunTotals(TypedDict):
    calls: int
    failed: int  # failed calls: no model answer (rules.FAILED_CALL_SQL)
    tokens: int
    cost: float


def recorded_by(db: sqlite3.Connection, proxy_id: str) -> RunTotals:
    """Calls a proxy run recorded: its calls, the failed ones, tokens and cost.
    IDs sort by time and one process makes them in order, so the proxy's own ID
    comes before its calls': the primary key finds them."""
    row = db.execute(
        f"SELECT count(*), coalesce(sum(coalesce({FAILED_CALL_SQL.format(r='interactions')}, 0)), 0),"
        f" coalesce(sum({TOKENS_SQL.format(r='')}), 0), coalesce(sum(cost_usd), 0.0)"
        " FROM interactions WHERE id > ? AND proxy_id = ?",
        (proxy_id, proxy_id),
    ).fetchone()
    return {"calls": row[0], "failed": row[1], "tokens": row[2], "cost": row[3]}


def stored_ids(db: sqlite3.Connection, ids: set[str]) -> set[str]:
    """Which of `ids` are stored calls."""
    found: set[str] = set()
    listed = sorted(ids)
    for start in range(0, len(listed), 500):  # within SQLite's limit on parameters
        chunk = listed[start : start + 500]
        placeholders = ", ".join("?" for _ in chunk)
        found.update(row[0] for row in db.execute(f"SELECT id FROM interactions WHERE id IN ({placeholders})", chunk))
    return found


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
    recording (its recorder keeps the heartbeat). Each has `held_calls` and
    `dropped_calls` as its health file says them, which is newer than its row."""
    cutoff = to_stored(now() - STALE_AFTER)
    alive = []
    host = os.uname().nodename
    file = db.execute("PRAGMA database_list").fetchone()[2]  # "" for a database in memory
    health = read_health(Path(file)) if file else None
    for row in db.execute("SELECT * FROM proxies ORDER BY started_at"):
        proxy = dict(row)
        fresh = proxy["heartbeat_at"] >= cutoff
        if proxy["hostname"] == host:
            if not meter_process_alive(proxy["pid"]):
                continue
        elif not fresh:
            continue
        proxy["held_calls"] = 0
        if health and health.get("proxy_id") == proxy["id"]:
            proxy["held_calls"] = health["held_calls"]
            proxy["dropped_calls"] = max(proxy["dropped_calls"], health["dropped_calls"])
        if not fresh and proxy["recording"] == RECORDING:
            # A recorder holding calls is alive: what stops its heartbeat stops the calls too.
            proxy["recording"] = (
                "neither the database nor the spool can be written (is the disk full?)"
                if proxy["held_calls"]
                else f"not recording: no word from its recorder since {proxy['heartbeat_at']}"
            )
        alive.append(proxy)
    return alive
