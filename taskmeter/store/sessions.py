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

A call is a context switch (docs/metrics.md) when its task had an earlier AI
call and, since that call, either
- the developer returned to the task: `meter set-task` made it current again
  after another task had been current (calls of other tasks in between, from a
  second terminal, do not count: the meter cannot tell them from parallel work);
- or the call starts an agent session of the task after its first one. Agent
  sessions are those the agent names itself (`client_session`: Claude Code,
  Codex, Gemini CLI) and Responses chains, which become one at their second
  call. Other sessions (scripts, one-shot SDK calls, an SDK chat resumed after
  a pause) never make a switch.
Calls are ordered by (started_at, id). `is_context_switch` judges a call as it
is stored (and the few calls stored before it that a late call can change:
`later_calls_judged_afresh`); `context_switches` judges every call of a task at
once (after a retag, and in migration m020); both decide by the same predicates below.
"""

import sqlite3
from bisect import bisect_right
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


def _returned(task_id: str, current_then: str | None, switched_to: list[str | None]) -> bool:
    """Was `task_id` made current again after another task had been current?
    `current_then`: the task current at its previous call; `switched_to`: each
    `meter set-task` since, in order (None: cleared)."""
    away = current_then not in (None, task_id)
    for target in switched_to:
        if target == task_id and away:
            return True
        away = away or target not in (None, task_id)
    return False


def _agent_work(client_session: str | None, protocol: str | None, earlier_in_session: bool) -> bool:
    """Is a call part of an agent session: one its client names, or a Responses
    chain it continues (a first Responses call alone is a one-shot call)?"""
    return client_session is not None or (protocol in _CHAINED_PROTOCOLS and earlier_in_session)


_CHAINED_SQL = ", ".join(f"'{name}'" for name in sorted(_CHAINED_PROTOCOLS))
_BEFORE = "e.task_id = ? AND e.operation = 'generate' AND (e.started_at, e.id) < (?, ?)"
# _agent_work of an earlier call `e` of the same task, in SQL.
_AGENT_WORK_SQL = (
    f"(e.client_session IS NOT NULL OR (e.protocol IN ({_CHAINED_SQL}) AND EXISTS (SELECT 1 FROM interactions f"
    " WHERE f.task_id = e.task_id AND f.session_id = e.session_id AND f.operation = 'generate'"
    " AND (f.started_at, f.id) < (e.started_at, e.id))))"
)


def is_context_switch(db: sqlite3.Connection, row: Interaction) -> bool:
    """The context-switch rule for a generation call of a task, as it is stored
    after the calls that started before it."""
    if row.task_id is None:  # a call of no task switches no context
        return False
    before = (row.task_id, row.started_at, row.id)
    previous = db.execute(
        f"SELECT e.started_at FROM interactions e WHERE {_BEFORE} ORDER BY e.started_at DESC, e.id DESC LIMIT 1", before
    ).fetchone()
    if previous is None:
        return False
    switched_to = [
        event["task_id"]
        for event in db.execute(
            "SELECT task_id FROM task_events WHERE kind = 'switch' AND at > ? AND at <= ? ORDER BY at, id",
            (previous["started_at"], row.started_at),
        )
    ]
    # (The task current at the previous call matters only when the task was switched into since.)
    if row.task_id in switched_to and _returned(row.task_id, tasks.task_current_at(db, previous["started_at"]), switched_to):
        return True
    in_session = f"SELECT 1 FROM interactions e WHERE {_BEFORE} AND e.session_id = ?"
    # Asked one at a time: a script's session of thousands of calls has no agent work to find.
    earlier_in_session = db.execute(in_session, (*before, row.session_id)).fetchone() is not None
    if not _agent_work(row.client_session, row.protocol, earlier_in_session):
        return False
    if db.execute(f"{in_session} AND {_AGENT_WORK_SQL} LIMIT 1", (*before, row.session_id)).fetchone():
        return False  # its agent session had begun already
    return (
        db.execute(f"SELECT 1 FROM interactions e WHERE {_BEFORE} AND {_AGENT_WORK_SQL} LIMIT 1", before).fetchone() is not None
    )


def later_calls_judged_afresh(db: sqlite3.Connection, row: Interaction) -> list[tuple[int, str]]:
    """(value, call ID) for each call of the task that started after `row` but
    was stored before it (a stream that finished after shorter calls began) and
    that the rule now judges otherwise, `row` being stored. Usually none start
    after it, found in one indexed query. Otherwise only these can change,
    however many calls started after `row`:
    - the next call of the task, whose previous call `row` now is;
    - in `row`'s session, its next call (a Responses chain's second call is
      agent work) and its next two calls of agent work (the session's agent
      work began already, or began with that next call instead);
    - the task's next agent work in another session, if `row` brings the
      task's first agent work forward."""
    later = "e.task_id = ? AND e.operation = 'generate' AND (e.started_at, e.id) > (?, ?)"
    after = (row.task_id, row.started_at, row.id)

    def first(condition: str = "1", *params: object, count: int = 1) -> list[sqlite3.Row]:
        return db.execute(
            f"SELECT e.id, e.started_at, e.session_id, e.client_session, e.protocol, e.context_switch FROM interactions e"
            f" WHERE {later} AND {condition} ORDER BY e.started_at, e.id LIMIT {count}",
            (*after, *params),
        ).fetchall()

    candidates = first()
    if not candidates:
        return []
    agent_work = db.execute(f"SELECT {_AGENT_WORK_SQL} FROM interactions e WHERE e.id = ?", (row.id,)).fetchone()[0]
    if row.session_id is not None:
        same_session = first("e.session_id = ?", row.session_id)
        candidates += same_session + first(f"e.session_id = ? AND {_AGENT_WORK_SQL}", row.session_id, count=2)
        agent_work = agent_work or bool(same_session)
    if agent_work:
        candidates += first(f"e.session_id IS NOT ? AND {_AGENT_WORK_SQL}", row.session_id)
    judged = {
        call["id"]: (
            int(
                is_context_switch(
                    db,
                    Interaction(
                        id=call["id"],
                        started_at=call["started_at"],
                        task_id=row.task_id,
                        protocol=call["protocol"],
                        client_session=call["client_session"],
                        session_id=call["session_id"],
                    ),
                )
            ),
            call["context_switch"],
        )
        for call in candidates
    }
    return [(value, call_id) for call_id, (value, stored) in judged.items() if value != stored]


def switch_events(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    """Every `meter set-task` (at, task ID; None: cleared), in order."""
    return [
        (row["at"], row["task_id"])
        for row in db.execute("SELECT at, task_id FROM task_events WHERE kind = 'switch' ORDER BY at, id")
    ]


def context_switches(
    db: sqlite3.Connection, task_id: str, switches: list[tuple[str, str | None]] | None = None
) -> list[tuple[str, int, int | None]]:
    """Every generation call of a task judged afresh: (call ID, the rule's value,
    the stored value). `switches`: switch_events(db), when the caller has them."""
    if switches is None:
        switches = switch_events(db)
    moments = [at for at, _ in switches]
    judged = []
    previous: str | None = None
    seen: set[str] = set()  # sessions with a call of the task so far
    agent_sessions: set[str] = set()  # those with agent work so far
    for row in db.execute(
        "SELECT id, started_at, session_id, client_session, protocol, context_switch FROM interactions"
        " WHERE task_id = ? AND operation = 'generate' ORDER BY started_at, id",
        (task_id,),
    ):
        session = row["session_id"] or row["id"]
        work = _agent_work(row["client_session"], row["protocol"], session in seen)
        switch = False
        if previous is not None:
            then = bisect_right(moments, previous)
            switched_to = [target for _, target in switches[then : bisect_right(moments, row["started_at"])]]
            returned = _returned(task_id, switches[then - 1][1] if then else None, switched_to)
            switch = returned or (work and session not in agent_sessions and bool(agent_sessions))
        if work:
            agent_sessions.add(session)
        seen.add(session)
        previous = row["started_at"]
        judged.append((row["id"], int(switch), row["context_switch"]))
    return judged
