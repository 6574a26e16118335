"""Alerts the recorder raised (budget crossings, loops, burn rate), each once
while open; `meter alerts clear` closes them (docs/budgets.md)."""

import json
import sqlite3

from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored


def raise_alert(
    db: sqlite3.Connection,
    kind: str,
    key: str,
    message: str,
    task_id: str | None = None,
    session_id: str | None = None,
    conversation_id: str | None = None,
    blocks: bool = False,
    once: bool = False,
) -> dict | None:
    """Record an alert unless one with `key` is open (with `once`, unless one was
    ever raised: clearing it does not bring it back); the new alert, or None."""
    with write_transaction(db):
        cursor = db.execute(
            "INSERT OR IGNORE INTO alerts (at, kind, key, task_id, session_id, conversation_id, blocks, message)"
            " SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT ? OR NOT EXISTS (SELECT 1 FROM alerts WHERE key = ?)",
            (now_stored(), kind, key, task_id, session_id, conversation_id, int(blocks), message, once, key),
        )
    if not cursor.rowcount:
        return None
    return dict(db.execute("SELECT * FROM alerts WHERE id = ?", (cursor.lastrowid,)).fetchone())


def listed(db: sqlite3.Connection, include_cleared: bool = False) -> list[dict]:
    where = "" if include_cleared else "WHERE cleared_at IS NULL"
    return [dict(row) for row in db.execute(f"SELECT * FROM alerts {where} ORDER BY at DESC, id DESC")]


def clear(db: sqlite3.Connection, alert_ids: list[int] | None = None, key_prefix: str | None = None) -> int:
    """Close the open alerts given (every open one when none is given); how many were closed."""
    clauses = ["cleared_at IS NULL"]
    params: list[str | int] = [now_stored()]
    if alert_ids:
        clauses.append(f"id IN ({', '.join('?' for _ in alert_ids)})")
        params += alert_ids
    if key_prefix:
        clauses.append("substr(key, 1, ?) = ?")
        params += [len(key_prefix), key_prefix]
    with write_transaction(db):
        return db.execute(f"UPDATE alerts SET cleared_at = ? WHERE {' AND '.join(clauses)}", params).rowcount


def loop_key(session_id: str, task_id: str | None, client: str | None, signature: str) -> str:
    """The key of a loop alert: one per signature and looping scope, the recorder's
    session with the task and the client (user-agent) it looped in."""
    return "loop:" + json.dumps([session_id, task_id, client, signature])


def blocked(db: sqlite3.Connection) -> dict[str, dict]:
    """What open loop alerts in block mode refuse, with their messages: the client
    sessions (Claude Code's, Codex's) and, for clients with none, per task
    (lower-case, '' for none) and client ('' for none) the conversations, by the
    root hash the proxy computes from a request (protocols/conversation.py)."""
    found: dict[str, dict] = {"sessions": {}, "conversations": {}}
    rows = db.execute(
        "SELECT key, task_id, session_id, message,"
        " (SELECT conversation_root FROM interactions WHERE conversation_id = alerts.conversation_id LIMIT 1) AS root"
        " FROM alerts WHERE kind = 'loop' AND blocks = 1 AND cleared_at IS NULL"
    )
    for row in rows:
        if row["session_id"]:
            found["sessions"][row["session_id"]] = row["message"]
        elif row["root"]:
            try:
                _, _, client, _ = json.loads(row["key"].removeprefix("loop:"))
            except ValueError:
                continue  # raised before loops were scoped to a client: its conversation is not refused
            by_client = found["conversations"].setdefault((row["task_id"] or "").lower(), {})
            by_client.setdefault(client or "", {})[row["root"]] = row["message"]
    return found
