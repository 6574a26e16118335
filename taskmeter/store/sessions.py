"""Sessions, conversations and context switches: the one definition of each (docs/metrics.md).

A session is a stretch of work with one client in one context:
- the client's own session, where it names one (`client_session`): Claude Code's
  `x-claude-code-session-id` header (or the `session_id` in `metadata.user_id`),
  Codex's `session-id` header (or `client_metadata.session_id`), Gemini CLI's
  Code Assist `request.session_id`; whatever calls it makes inside: side calls
  to a small model, subagents, title generation, retries;
- a Responses API chain (calls linked by previous_response_id) in one task;
- for other clients, a conversation root that is continued in the same task
  within `session_gap` of its previous call; a longer pause starts a new session.

A conversation is a conversation root (protocols/conversation.py) in one task and
one session: its stored ID hashes the three, so separate runs with the same first
prompt are separate conversations.

A call is a context switch when its task had an earlier AI call and either the
task was switched away from and back since that call (`meter set-task`), or the
call starts a session new to the task. Calls are ordered by (started_at, id).
"""

import sqlite3
from datetime import timedelta

from taskmeter import protocols
from taskmeter.protocols.conversation import short_hash
from taskmeter.store import tasks
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import from_stored, to_stored

DEFAULT_SESSION_GAP_SECONDS = 30 * 60
# Protocols whose calls chain to earlier responses: a chain is one session in each task.
_CHAINED_PROTOCOLS = frozenset(protocol.name for protocol in protocols.ALL if protocol.chains_responses)


def session_of(db: sqlite3.Connection, row: Interaction, gap_seconds: float = DEFAULT_SESSION_GAP_SECONDS) -> str:
    """The session a call belongs to, given the calls stored before it and its task."""
    if row.client_session:
        return row.client_session
    if row.conversation_root is None:
        return row.id  # nothing ties it to another call
    if row.protocol in _CHAINED_PROTOCOLS:
        return short_hash([row.conversation_root, row.task_id])
    since = to_stored(from_stored(row.started_at) - timedelta(seconds=gap_seconds))
    previous = db.execute(
        "SELECT session_id FROM interactions WHERE conversation_root = ? AND task_id IS ? AND started_at >= ?"
        " AND started_at <= ? AND id != ? ORDER BY started_at DESC, id DESC LIMIT 1",
        (row.conversation_root, row.task_id, since, row.started_at, row.id),
    ).fetchone()
    return previous["session_id"] if previous and previous["session_id"] else row.id


def conversation_of(root: str | None, task_id: str | None, session_id: str | None) -> str | None:
    """The stored conversation ID of a call: its conversation root in its task and session."""
    return None if root is None else short_hash([root, task_id, session_id])


def is_context_switch(db: sqlite3.Connection, task_id: str, call_id: str, started_at: str, session_id: str) -> bool:
    """The context-switch rule, for a generation call of `task_id`."""
    previous = db.execute(
        "SELECT started_at FROM interactions WHERE task_id = ? AND operation = 'generate' AND (started_at, id) < (?, ?)"
        " ORDER BY started_at DESC, id DESC LIMIT 1",
        (task_id, started_at, call_id),
    ).fetchone()
    if previous is None:
        return False
    if tasks.switched_into_between(db, task_id, previous["started_at"], started_at):
        return True
    seen = db.execute(
        "SELECT 1 FROM interactions WHERE session_id = ? AND task_id = ? AND operation = 'generate' AND (started_at, id) < (?, ?)"
        " LIMIT 1",
        (session_id, task_id, started_at, call_id),
    ).fetchone()
    return seen is None
