"""Usage per agent session and per 5-hour window, like ccusage's `session` and
`blocks` views, from the meter's own calls (answered or failed generations).

An agent session is one the agent names itself (`client_session`: Claude Code,
Codex, Gemini CLI; store/sessions.py). A block is the 5-hour window subscription
plans count usage in, as ccusage finds them: the first call's UTC hour starts
one; a call more than 5 hours after its block's start, or after the call before
it, starts the next; a pause longer than 5 hours is a gap between them. A block
is active while now is within 5 hours of its last call and before its end; its
burn rate is its tokens and cost over its first to last call."""

import json
import sqlite3
from datetime import UTC, datetime

from taskmeter.analytics.history import seconds_sql
from taskmeter.analytics.records import (
    BlocksReport,
    BurnRate,
    Projection,
    SessionsReport,
    SessionUsage,
    UsageBlock,
    UsageStats,
)
from taskmeter.clients import AGENTS, client_name
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import from_stored, now_stored, to_stored
from taskmeter.tokens import TOKEN_COLUMNS, tokens_object

_FAILED = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"
# The agent that names its sessions in each protocol (protocols/*.py session headers).
_AGENT_OF_PROTOCOL = {"anthropic": "Claude Code", "openai_responses": "Codex", "code_assist": "Gemini CLI"}
BLOCK_HOURS = 5
_SUMS = ", ".join(f"CASE WHEN count(i.{c}) > 0 THEN sum(i.{c}) END AS {c}" for c in (*TOKEN_COLUMNS, "cost_usd"))
_COUNTS = f"""sum(NOT {_FAILED}) AS ai_interactions, sum({_FAILED}) AS failed_calls,
    sum(i.cost_usd IS NOT NULL AND NOT {_FAILED}) AS priced"""
# The calls an agent named its session in, through their index: without statistics SQLite
# reads every call to test `client_session IS NOT NULL` (1 s over a million calls).
_SESSION_CALLS = "interactions i INDEXED BY interactions_client_session"


def _window(since: str | None, until: str | None, task_id: str | None) -> tuple[str, list]:
    clauses, params = ["i.operation = 'generate'"], []
    for clause, value in (("i.started_at >= ?", since), ("i.started_at < ?", until), ("i.task_id = ?", task_id)):
        if value:
            clauses.append(clause)
            params.append(value)
    return " AND ".join(clauses), params


def _stats(row) -> UsageStats:
    return {
        "ai_interactions": row["ai_interactions"] or 0,
        "failed_calls": row["failed_calls"] or 0,
        "tokens": tokens_object(row),
        "cost_usd": row["cost_usd"],
        "unpriced_interactions": (row["ai_interactions"] or 0) - (row["priced"] or 0),
        "hallucination_count": row["hallucination_count"] or 0,
    }


def _totals(db: sqlite3.Connection, where: str, params: list) -> UsageStats:
    row = db.execute(
        f"SELECT {_COUNTS}, {_SUMS}, count(f.interaction_id) AS hallucination_count"
        f" FROM {_SESSION_CALLS} LEFT JOIN flags f ON f.interaction_id = i.id WHERE {where}",
        params,
    ).fetchone()
    return _stats(row)


def session_report(
    db: sqlite3.Connection, since: str | None = None, until: str | None = None, task_id: str | None = None
) -> SessionsReport:
    """A line per agent session with a call in the window (and of `task_id`), oldest
    first: its agent, tasks, first and last call, and its calls' usage (of `task_id` alone, when given)."""
    where, params = _window(since, until, task_id)
    where += " AND i.client_session IS NOT NULL"
    rows = db.execute(
        f"""
        SELECT i.session_id, min(i.started_at) AS first_call_at, max(i.started_at) AS last_call_at,
            max(i.client) AS client, max(i.protocol) AS protocol, {_COUNTS}, {_SUMS},
            count(f.interaction_id) AS hallucination_count,
            json_group_array(DISTINCT coalesce(i.model, '?')) AS models
        FROM {_SESSION_CALLS} LEFT JOIN flags f ON f.interaction_id = i.id
        WHERE {where} GROUP BY i.session_id ORDER BY first_call_at, i.session_id
        """,
        params,
    ).fetchall()
    tasks_of: dict[str, list[str | None]] = {}
    for session, task in db.execute(
        f"SELECT i.session_id, i.task_id FROM {_SESSION_CALLS} WHERE {where}"
        " GROUP BY i.session_id, i.task_id ORDER BY min(i.started_at)",
        params,
    ):
        tasks_of.setdefault(session, []).append(task)
    sessions: list[SessionUsage] = []
    for row in rows:
        named = client_name(row["client"])
        agent = next((a for a in AGENTS if named and named.startswith(a + " ")), None) or _AGENT_OF_PROTOCOL.get(row["protocol"])
        sessions.append(
            {
                "session_id": row["session_id"],
                "agent": agent,
                "client": named or row["client"],
                "task_ids": tasks_of.get(row["session_id"], []),
                "first_call_at": row["first_call_at"],
                "last_call_at": row["last_call_at"],
                "duration_seconds": (from_stored(row["last_call_at"]) - from_stored(row["first_call_at"])).total_seconds(),
                **_stats(row),
                "models": sorted(json.loads(row["models"])),
            }
        )
    return {
        "since": since,
        "until": until,
        "task_id": task_id,
        "sessions": sessions,
        "totals": _totals(db, where, params),
    }


def block_report(
    db: sqlite3.Connection,
    since: str | None = None,
    until: str | None = None,
    provider: str | None = None,
    now: str | None = None,
) -> BlocksReport:
    """The 5-hour blocks of the calls in the window (of `provider`, when given), oldest first, gaps between."""
    where, params = _window(since, until, None)
    if provider:
        where += " AND i.provider = ?"
        params.append(provider)
    calls = db.execute(
        f"""
        SELECT {seconds_sql("i.started_at")} AS at, i.started_at, coalesce(i.model, '?') AS model,
            NOT {_FAILED} AS answered, i.cost_usd, {", ".join(f"i.{c}" for c in TOKEN_COLUMNS)}
        FROM interactions i WHERE {where} ORDER BY i.started_at, i.id
        """,
        params,
    ).fetchall()
    moment = from_stored(now or now_stored())
    span = BLOCK_HOURS * 3600
    blocks: list[UsageBlock] = []
    current: list = []
    for call in calls:
        if current and (call["at"] - _hour_start(current[0]["at"]) > span or call["at"] - current[-1]["at"] > span):
            blocks.append(_block(current, moment))
            if call["at"] - current[-1]["at"] > span:
                blocks.append(_gap(current[-1]["at"] + span, call["at"]))
            current = []
        current.append(call)
    if current:
        blocks.append(_block(current, moment))
    return {"since": since, "until": until, "provider": provider, "block_hours": BLOCK_HOURS, "blocks": blocks}


def _hour_start(seconds: float) -> float:
    return seconds - seconds % 3600


def _stored(seconds: float) -> str:
    return to_stored(datetime.fromtimestamp(seconds, UTC))


def _block(calls: list, now: datetime) -> UsageBlock:
    start = _hour_start(calls[0]["at"])
    end, first, last = start + BLOCK_HOURS * 3600, calls[0]["at"], calls[-1]["at"]
    now_seconds = now.timestamp()
    active = now_seconds - last < BLOCK_HOURS * 3600 and now_seconds < end
    sums: dict = {}
    for column in (*TOKEN_COLUMNS, "cost_usd"):
        stated = [call[column] for call in calls if call[column] is not None]
        sums[column] = sum(stated) if stated else None
    answered = sum(call["answered"] for call in calls)
    tokens = tokens_object(sums)
    minutes = (last - first) / 60
    burn: BurnRate | None = None
    if minutes > 0:
        burn = {
            "tokens_per_minute": (tokens["total"] or 0) / minutes,
            "cost_per_hour_usd": (sums["cost_usd"] or 0) / minutes * 60,
        }
    left = end - now_seconds if active else None
    projected: Projection | None = None
    if active and burn is not None and left is not None:
        projected = {
            "tokens": round((tokens["total"] or 0) + burn["tokens_per_minute"] * left / 60),
            "cost_usd": (sums["cost_usd"] or 0) + burn["cost_per_hour_usd"] * left / 3600,
        }
    return {
        "start": _stored(start),
        "end": _stored(end),
        "first_call_at": calls[0]["started_at"],
        "last_call_at": calls[-1]["started_at"],
        "gap": False,
        "active": active,
        "ai_interactions": answered,
        "failed_calls": len(calls) - answered,
        "tokens": tokens,
        "cost_usd": sums["cost_usd"],
        "unpriced_interactions": sum(1 for call in calls if call["answered"] and call["cost_usd"] is None),
        "models": sorted({call["model"] for call in calls}),
        "time_left_seconds": left,
        "burn_rate": burn,
        "projected": projected,
    }


def _gap(start: float, end: float) -> UsageBlock:
    """A pause of more than a block: nothing was used from 5 hours after the last call until the next."""
    return {
        "start": _stored(start),
        "end": _stored(end),
        "first_call_at": None,
        "last_call_at": None,
        "gap": True,
        "active": False,
        "ai_interactions": 0,
        "failed_calls": 0,
        "tokens": tokens_object(dict.fromkeys(TOKEN_COLUMNS)),
        "cost_usd": None,
        "unpriced_interactions": 0,
        "models": [],
        "time_left_seconds": None,
        "burn_rate": None,
        "projected": None,
    }
