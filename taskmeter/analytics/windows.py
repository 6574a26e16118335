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

from taskmeter.store import scratch
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import from_stored, now_stored, to_stored
from taskmeter.tokens import STATED_COLUMNS, TOKEN_COLUMNS, tokens_object

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker: the report types cost a report's start-up
    from taskmeter.analytics.records import (
        BlocksReport,
        BurnRate,
        Projection,
        SessionsReport,
        SessionUsage,
        UsageBlock,
        UsageStats,
    )

_FAILED = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"
# The agent that names its sessions in each protocol (protocols/*.py session headers).
_AGENT_OF_PROTOCOL = {"anthropic": "Claude Code", "openai_responses": "Codex", "code_assist": "Gemini CLI"}
BLOCK_HOURS = 5
_SUMS = ", ".join(f"CASE WHEN count(i.{c}) > 0 THEN sum(i.{c}) END AS {c}" for c in STATED_COLUMNS)
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


def _stats(row) -> "UsageStats":
    return {
        "ai_interactions": row["ai_interactions"] or 0,
        "failed_calls": row["failed_calls"] or 0,
        "tokens": tokens_object(row),
        "cost_usd": row["cost_usd"],
        "unpriced_interactions": (row["ai_interactions"] or 0) - (row["priced"] or 0),
        "hallucination_count": row["hallucination_count"] or 0,
    }


def _totals(db: sqlite3.Connection, where: str, params: list) -> "UsageStats":
    row = db.execute(
        f"SELECT {_COUNTS}, {_SUMS}, count(f.interaction_id) AS hallucination_count"
        f" FROM {_SESSION_CALLS} LEFT JOIN flags f ON f.interaction_id = i.id WHERE {where}",
        params,
    ).fetchone()
    return _stats(row)


def session_report(
    db: sqlite3.Connection, since: str | None = None, until: str | None = None, task_id: str | None = None
) -> "SessionsReport":
    """A line per agent session with a call in the window (and of `task_id`), oldest
    first: its agent, tasks, first and last call, and its calls' usage (of `task_id` alone, when given)."""
    from taskmeter.clients import AGENTS, client_name  # here: `report blocks` needs none of it

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
) -> "BlocksReport":
    """The 5-hour blocks of the calls in the window (of `provider`, when given), oldest first, gaps between.

    A block's calls are those from its first call to its end (its start + 5 hours, inclusive): a later call
    is more than 5 hours after the start, and a pause of more than 5 hours after a call ends a block anyway.
    So the blocks are found by two seeks each in the started_at index, all in one statement, and the
    blocks' sums come from usage_model_quarters in one more, the calls of a quarter only partly in a block
    (or of one provider) read one by one."""
    where, params = _window(since, until, None)
    if provider:
        where += " AND i.provider = ?"
        params.append(provider)
    moment = from_stored(now or now_stored())
    span = BLOCK_HOURS * 3600
    # Each first and last call also as POSIX seconds: from_stored gives what seconds_sql would, at a third of the cost.
    edges = [
        (from_stored(first).timestamp(), first, from_stored(last).timestamp(), last, end)
        for first, last, end in db.execute(_block_edges(where), params * 3)
    ]
    usages = _blocks_usage(db, edges, (since, until), where, params, provider)
    blocks: list[UsageBlock] = []
    last = None
    for (first_at, first_started, last_at, last_started, end), usage in zip(edges, usages, strict=True):
        first = {"at": first_at, "started_at": first_started}
        if last is not None and first["at"] - last["at"] > span:
            blocks.append(_gap(last["at"] + span, first["at"]))
        last = {"at": last_at, "started_at": last_started}
        blocks.append(_block(first, last, end, usage, moment))
    return {"since": since, "until": until, "provider": provider, "block_hours": BLOCK_HOURS, "blocks": blocks}


def _block_edges(where: str) -> str:
    """The query of every block's first and last call and its end (stored moments), oldest first,
    among the calls that match `where` (its parameters given three times): the first call; the last
    at most 5 hours after its UTC hour, the block's end; the first after that end, which starts the
    next block. A recursive query: one statement, not two seeks' worth of round trips per block."""

    def seek(condition: str, newest: bool = False) -> str:
        # Ordered by start alone: calls that start together give the same moment.
        return (
            f"(SELECT i.started_at FROM interactions i INDEXED BY interactions_started WHERE {where} AND {condition}"
            f" ORDER BY i.started_at {'DESC' if newest else ''} LIMIT 1)"
        )

    def block_end(first: str) -> str:  # as _stored(_hour_start(at) + BLOCK_HOURS * 3600) gives it
        return f"strftime('%Y-%m-%dT%H:00:00.000000Z', substr({first}, 1, 19), '+{BLOCK_HOURS} hours')"

    return f"""
        WITH RECURSIVE starts(first) AS (
            SELECT {seek("1")}
            UNION ALL
            SELECT {seek("i.started_at > " + block_end("starts.first"))} FROM starts WHERE starts.first IS NOT NULL
        ), edges(first, last) AS (
            SELECT first, {seek("i.started_at <= " + block_end("starts.first"), newest=True)} FROM starts WHERE first IS NOT NULL
        )
        SELECT first, last, {block_end("first")} FROM edges"""


# A block's usage per model, as the rollups keep it: each sum with how many calls stated it.
_USAGE_COLUMNS = ("ai_interactions", "failed_calls", *(f"{c}{n}" for c in STATED_COLUMNS for n in ("", "_calls")), "priced")  # fmt: skip
_CALLS_USAGE = ", ".join(
    (
        f"sum(NOT {_FAILED}) AS ai_interactions, sum({_FAILED}) AS failed_calls",
        *(f"sum(coalesce(i.{c}, 0)) AS {c}, count(i.{c}) AS {c}_calls" for c in STATED_COLUMNS),
        f"sum(i.cost_usd IS NOT NULL AND NOT {_FAILED}) AS priced",
    )
)
_QUARTERS_USAGE = ", ".join(f"sum({column}) AS {column}" for column in _USAGE_COLUMNS)
QUARTER_SECONDS = 15 * 60


def _blocks_usage(
    db: sqlite3.Connection, edges: list, window: tuple, where: str, params: list, provider: str | None
) -> list[dict]:
    """Per block (`edges`: first and last call, each as POSIX seconds and stored moment, and end), its
    usage per model: the calls that match `where` and started from its first call to its last,
    inclusive. Its whole quarter hours come from usage_model_quarters, every block's in one
    statement; the rest call by call. `window`: the window's since and until."""
    since, until = window
    spans: list[tuple[int, str, str]] = []  # (block, first quarter, quarter after its last) of the rollup
    ranges: list[list[tuple[str, str, str]]] = []  # per block, (low, high, "<" or "<=") of calls read one by one
    for number, (_, first, _, last, _) in enumerate(edges):
        if provider is not None:  # the rollup keeps every provider's calls together
            ranges.append([(first, last, "<=")])
            continue
        rollup_from, rollup_until = _quarter_start(first), _quarter_start(last, after=True)
        # A call before the block in its first quarter, or after it in its last, makes that quarter call by call.
        # One in the window is the block before's last call or the block after's first; one the window leaves
        # out can be there only where the window starts or ends within that quarter: only there it is looked for.
        if (number > 0 and edges[number - 1][3] >= rollup_from) or (
            since is not None
            and since > rollup_from
            and _any_call(db, "i.started_at >= ? AND i.started_at < ?", rollup_from, first)
        ):
            rollup_from = _quarter_start(first, after=True)
        if (number + 1 < len(edges) and edges[number + 1][1] < rollup_until) or (
            until is not None
            and until < rollup_until
            and _any_call(db, "i.started_at > ? AND i.started_at < ?", last, rollup_until)
        ):
            rollup_until = _quarter_start(last)
        if rollup_from < rollup_until:
            spans.append((number, rollup_from[:16], rollup_until[:16]))
            parts = [(first, rollup_from, "<"), (rollup_until, last, "<=")]
        else:
            parts = [(first, last, "<=")]
        ranges.append([(low, high, below) for low, high, below in parts if low < high or (below == "<=" and low == high)])
    rollup = _quarters_usage(db, spans)
    usages = []
    for number, parts in enumerate(ranges):
        rows = list(rollup.get(number, ()))
        for low, high, below in parts:
            rows += db.execute(
                f"SELECT coalesce(i.model, '?') AS model, {_CALLS_USAGE} FROM interactions i INDEXED BY interactions_started"
                f" WHERE {where} AND i.started_at >= ? AND i.started_at {below} ? GROUP BY coalesce(i.model, '?')",
                [*params, low, high],
            ).fetchall()
        usages.append(_added(rows))
    return usages


def _quarters_usage(db: sqlite3.Connection, spans: list[tuple[int, str, str]]) -> dict[int, list]:
    """Per block of `spans` (block, first quarter, quarter after its last), its usage_model_quarters rows summed
    per model, by model: the spans held in temp.period_spans and read in order, each model's quarters
    by the primary key (all at once for one model; up to MODEL_PASSES, model by model; else sorted by
    block and model), so that each sum adds its rows in the order a block's own GROUP BY model would."""
    if not spans:
        return {}
    scratch.hold_period_spans(db, [(str(number), low, high) for number, low, high in spans])
    models = [
        row[0]
        for row in db.execute(
            "SELECT DISTINCT model FROM usage_model_quarters WHERE quarter >= ? AND quarter < ?", (spans[0][1], spans[-1][2])
        )
    ]
    if not models:
        return {}
    joined = "FROM temp.period_spans s CROSS JOIN usage_model_quarters q ON q.quarter >= s.lo AND q.quarter < s.hi"
    select = f"SELECT s.k AS k, q.model AS model, {_QUARTERS_USAGE} {joined}"
    values: list[str] = []
    if len(models) == 1:  # one pass, a row a block in order
        query = f"{select} GROUP BY s.k"
    elif len(models) > scratch.MODEL_PASSES:
        query = f"{select} GROUP BY s.k, q.model"
    else:
        query, values = (
            f"{' UNION ALL '.join([f'{select} WHERE q.model = ? GROUP BY s.k'] * len(models))} ORDER BY k, model",
            models,
        )
    usage: dict[int, list] = {}
    for k, *row in db.execute(query, values):
        usage.setdefault(spans[k][0], []).append(row)
    return usage


def _added(rows: list) -> dict:
    """The usage of a block's rows (model, then _USAGE_COLUMNS: of the rollup and of calls), added in their order."""
    sums = [0] * len(_USAGE_COLUMNS)
    models: set[str] = set()
    for model, calls, failed, *values in rows:
        if calls or failed:
            models.add(model)
            sums = [total + value for total, value in zip(sums, (calls, failed, *values), strict=True)]
    return {**dict(zip(_USAGE_COLUMNS, sums, strict=True)), "models": sorted(models)}


def _any_call(db: sqlite3.Connection, between: str, low: str, high: str) -> bool:
    """Whether a generation call started `between` the stored moments `low` and `high`."""
    query = f"SELECT 1 FROM interactions i INDEXED BY interactions_started WHERE i.operation = 'generate' AND {between} LIMIT 1"
    return db.execute(query, (low, high)).fetchone() is not None


def _quarter_start(stored: str, after: bool = False) -> str:
    """The stored moment that starts the UTC quarter hour of `stored`, or with `after` the next one."""
    minute = int(stored[14:16]) // 15 * 15 + (15 if after else 0)
    if minute < 60:  # read from the text (a report works out two a block): the hour's own
        return f"{stored[:14]}{minute:02d}:00.000000Z"
    if (hour := int(stored[11:13]) + 1) < 24:  # the next hour's: after a block's last call, most often
        return f"{stored[:11]}{hour:02d}:00:00.000000Z"
    seconds = from_stored(stored).timestamp()
    return _stored(seconds - seconds % QUARTER_SECONDS + QUARTER_SECONDS)


def _hour_start(seconds: float) -> float:
    return seconds - seconds % 3600


def _stored(seconds: float) -> str:
    return to_stored(datetime.fromtimestamp(seconds, UTC))


def _block(first, last, ends: str, usage: dict, now: datetime) -> "UsageBlock":
    """A block from its first and last call (POSIX seconds `at` and stored moment) and its end (stored)."""
    start = _hour_start(first["at"])
    end = start + BLOCK_HOURS * 3600
    now_seconds = now.timestamp()
    active = now_seconds - last["at"] < BLOCK_HOURS * 3600 and now_seconds < end
    sums = {column: usage[column] if usage[f"{column}_calls"] else None for column in STATED_COLUMNS}
    tokens = tokens_object(sums)
    minutes = (last["at"] - first["at"]) / 60
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
        "start": first["started_at"][:13] + ":00:00.000000Z",  # _stored(start), without the dates' cost
        "end": ends,
        "first_call_at": first["started_at"],
        "last_call_at": last["started_at"],
        "gap": False,
        "active": active,
        "ai_interactions": usage["ai_interactions"],
        "failed_calls": usage["failed_calls"],
        "tokens": tokens,
        "cost_usd": sums["cost_usd"],
        "unpriced_interactions": usage["ai_interactions"] - usage["priced"],
        "models": usage["models"],
        "time_left_seconds": left,
        "burn_rate": burn,
        "projected": projected,
    }


def _gap(start: float, end: float) -> "UsageBlock":
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
