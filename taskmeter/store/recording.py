"""Storing finished calls: attribution to the task current when each call began,
and context switches. Used by the proxy's writer and by spool replay alike, so a
replayed call gets exactly the row it would have had."""

import sqlite3
from dataclasses import dataclass

from taskmeter.store import tasks
from taskmeter.store.interactions import Interaction, insert_many


@dataclass(slots=True)
class Recorded:
    interaction: Interaction
    request_body: str | None = None
    response_body: str | None = None


def attribute(db: sqlite3.Connection, row: Interaction) -> None:
    """Explicit attribution (a /t/<TASK>/ prefix or x-meter-task header) wins;
    otherwise the task current at the call's start; otherwise unassigned."""
    if row.task_id:
        row.task_id = tasks.ensure_task(db, row.task_id, row.started_at)
        return
    row.task_id = tasks.task_current_at(db, row.started_at)
    row.attribution = "current" if row.task_id else "none"


def mark_context_switch(db: sqlite3.Connection, row: Interaction) -> None:
    """A call is a context switch when the previous AI call of its task belonged to
    another conversation, or when the task was switched away from and back since."""
    if row.task_id is None or row.operation != "generate":
        return
    previous = db.execute(
        "SELECT conversation_id, started_at FROM interactions"
        " WHERE task_id = ? AND operation = 'generate' AND started_at < ? AND id != ?"
        " ORDER BY started_at DESC LIMIT 1",
        (row.task_id, row.started_at, row.id),
    ).fetchone()
    if previous is None:
        row.context_switch = False
        return
    other_conversation = previous["conversation_id"] != row.conversation_id
    came_back = tasks.switched_into_between(db, row.task_id, previous["started_at"], row.started_at)
    row.context_switch = other_conversation or came_back


def record(db: sqlite3.Connection, items: list[Recorded]) -> None:
    """Store finished calls, oldest first, in the caller's transaction."""
    for item in sorted(items, key=lambda i: i.interaction.started_at):
        attribute(db, item.interaction)
        mark_context_switch(db, item.interaction)
        insert_many(db, [item.interaction])
        if item.request_body is not None or item.response_body is not None:
            db.execute(
                "INSERT OR IGNORE INTO bodies (interaction_id, request_body, response_body) VALUES (?, ?, ?)",
                (item.interaction.id, item.request_body, item.response_body),
            )
