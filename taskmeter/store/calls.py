"""Storing finished calls: attribution to the task current when each call began,
sessions and context switches (rules in store/sessions.py). Used for live calls
and spool replay alike, so a replayed call gets exactly the row it would have had."""

import sqlite3
from dataclasses import dataclass

from taskmeter.errors import NotFound
from taskmeter.store import tasks
from taskmeter.store.connection import require_transaction, write_transaction
from taskmeter.store.interactions import Interaction, insert_many, storable_text
from taskmeter.store.sessions import (
    DEFAULT_SESSION_GAP_SECONDS,
    context_switches,
    conversation_of,
    is_context_switch,
    later_calls_judged_afresh,
    session_of,
)


@dataclass(slots=True)
class CallRow:
    """One call as the store takes it: its interactions row, what it said (the
    call_texts columns: prompt, steps, response) and, when whole bodies are kept,
    its request and response bodies."""

    interaction: Interaction
    texts: tuple[str | None, str | None, str | None] | None = None
    request_body: str | None = None
    response_body: str | None = None
    # What a loop of near-identical requests would repeat (analytics/alerts.py); not stored.
    loop_signatures: tuple[str, ...] = ()
    # The model the request asked for and the one the response named (OpenTelemetry export); not stored.
    request_model: str | None = None
    response_model: str | None = None


def attribute(db: sqlite3.Connection, row: Interaction) -> None:
    """Explicit attribution (a /t/<TASK>/ prefix or x-meter-task header) wins;
    then the task a Claude Code session was bound to (`meter claude install`: 'session');
    otherwise the task current at the call's start; otherwise unassigned."""
    if row.task_id:
        row.task_id = tasks.ensure_task(db, row.task_id, row.started_at)
        return
    bound = (
        row.client_session
        and db.execute("SELECT task_id FROM session_tasks WHERE session_id = ?", (row.client_session,)).fetchone()
    )
    if bound:
        row.task_id, row.attribution = bound["task_id"], "session"  # the session header, bound to a task
        return
    row.task_id = tasks.task_current_at(db, row.started_at)
    row.attribution = "current" if row.task_id else "none"


def store_calls(db: sqlite3.Connection, items: list[CallRow], session_gap_seconds: float = DEFAULT_SESSION_GAP_SECONDS) -> None:
    """Store finished calls, oldest first, in the caller's transaction."""
    require_transaction(db, "store_calls")
    for item in sorted(items, key=lambda i: (i.interaction.started_at, i.interaction.id)):
        row = item.interaction
        attribute(db, row)
        row.session_id = session_of(db, row, session_gap_seconds)
        row.conversation_id = conversation_of(row.conversation_root, row.task_id, row.session_id)
        if row.task_id is not None and row.operation == "generate":
            row.context_switch = is_context_switch(db, row)
        insert_many(db, [row])
        if row.task_id is not None and row.operation == "generate":
            # Calls of the task that started later but were stored first are judged again with this one.
            db.executemany("UPDATE interactions SET context_switch = ? WHERE id = ?", later_calls_judged_afresh(db, row))
        insert_texts(db, item)


def insert_texts(db: sqlite3.Connection, item: CallRow) -> None:
    """What a stored call said, and its bodies when kept; replaying them is a no-op.
    Runs in the caller's transaction."""
    require_transaction(db, "insert_texts")
    if item.texts is not None and any(item.texts):
        db.execute(
            "INSERT OR IGNORE INTO call_texts (interaction_id, prompt, steps, response) VALUES (?, ?, ?, ?)",
            (item.interaction.id, *(None if text is None else storable_text(text)[0] for text in item.texts)),
        )
    if item.request_body is not None or item.response_body is not None:
        db.execute(
            "INSERT OR IGNORE INTO bodies (interaction_id, request_body, response_body) VALUES (?, ?, ?)",
            (
                item.interaction.id,
                *(None if body is None else storable_text(body)[0] for body in (item.request_body, item.response_body)),
            ),
        )


def recompute_context_switches(db: sqlite3.Connection, task_id: str) -> int:
    """Apply the context-switch rule afresh to every call of a task (after a retag);
    returns how many calls changed. Runs in the caller's transaction."""
    require_transaction(db, "recompute_context_switches")
    updates = [(value, call_id) for call_id, value, stored in context_switches(db, task_id) if stored != value]
    db.executemany("UPDATE interactions SET context_switch = ? WHERE id = ?", updates)
    return len(updates)


def move_task_calls(db: sqlite3.Connection, from_task: str, to_task: str) -> int:
    """Move every call of `from_task` to `to_task` (a merge), set-wise, by retag's
    rules: conversations rescoped to the new task, its context switches recomputed.
    Runs in the caller's transaction; returns how many calls moved."""
    require_transaction(db, "move_task_calls")
    moved = db.execute("SELECT id, conversation_root, session_id FROM interactions WHERE task_id = ?", (from_task,)).fetchall()
    db.execute("UPDATE interactions SET task_id = ?, attribution = 'retag' WHERE task_id = ?", (to_task, from_task))
    db.executemany(
        "UPDATE interactions SET conversation_id = ? WHERE id = ?",
        [
            (conversation_of(row["conversation_root"], to_task, row["session_id"]), row["id"])
            for row in moved
            if row["conversation_root"]
        ],
    )
    recompute_context_switches(db, to_task)
    return len(moved)


def retag(db: sqlite3.Connection, interaction_ids: list[str], task_id: str | None, create: bool = False) -> int:
    """Move interactions to `task_id` (None: unassigned); context switches of every
    task involved are recomputed. An unknown task is created only with `create`,
    so a typo never makes a task. The move and the context switches it changes
    are stored at once (a savepoint of the caller's transaction, if one is open)."""
    if not interaction_ids:
        return 0
    with write_transaction(db):
        return _retag(db, interaction_ids, task_id, create)


def _retag(db: sqlite3.Connection, interaction_ids: list[str], task_id: str | None, create: bool) -> int:
    if task_id is not None and not create and not db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone():
        raise NotFound(f"unknown task {task_id!r}: check the ID with `meter tasks`, or give --create to make it")
    placeholders = ", ".join("?" for _ in interaction_ids)
    touched = {
        row[0]
        for row in db.execute(
            f"SELECT DISTINCT task_id FROM interactions WHERE id IN ({placeholders}) AND task_id IS NOT NULL", interaction_ids
        )
    }
    if task_id is not None:
        first = db.execute(f"SELECT min(started_at) FROM interactions WHERE id IN ({placeholders})", interaction_ids).fetchone()[
            0
        ]
        task_id = tasks.ensure_task(db, task_id, first)
        touched.add(task_id)
    changed = db.execute(
        f"UPDATE interactions SET task_id = ?, attribution = ?, context_switch = CASE WHEN ? IS NULL THEN NULL ELSE context_switch END"
        f" WHERE id IN ({placeholders})",
        (task_id, "retag" if task_id else "none", task_id, *interaction_ids),
    ).rowcount
    # A conversation belongs to one task: the moved calls' is scoped to their new one.
    moved = db.execute(
        f"SELECT id, conversation_root, session_id FROM interactions WHERE id IN ({placeholders})"
        " AND conversation_root IS NOT NULL",
        interaction_ids,
    ).fetchall()
    db.executemany(
        "UPDATE interactions SET conversation_id = ? WHERE id = ?",
        [(conversation_of(row["conversation_root"], task_id, row["session_id"]), row["id"]) for row in moved],
    )
    for touched_task in touched:
        recompute_context_switches(db, touched_task)
    return changed
