"""Listings in the names every `--json` uses. One name per thing everywhere:
task_id, interaction_id, model, ai_interactions, failed_calls,
hallucination_count, cost_usd, tokens{input_total, cache_read, cache_write,
output_total, reasoning, total}; timestamps as stored (ISO 8601 UTC, `…Z`);
yes/no as true/false. docs/schema.md lists them."""

import sqlite3

from taskmeter.analytics import history, metrics, worktime
from taskmeter.analytics.reports import task_record
from taskmeter.clients import client_name
from taskmeter.printable import first_line
from taskmeter.store import settled, tasks
from taskmeter.timefmt import now_stored, seconds_between
from taskmeter.tokens import AGENT_LOG, tokens_object

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: importing them costs every command
    from taskmeter.analytics.records import TaskListing, TaskRow


def _flag(value) -> bool | None:
    return None if value is None else bool(value)


def latency(row: dict) -> tuple[float | None, float | None]:
    """Seconds from the call's start to the first byte of its answer (for a stream, its
    first token; otherwise the whole answer, which comes at once) and to its end."""
    first = seconds_between(row["started_at"], row["first_byte_at"]) if row["first_byte_at"] else None
    total = seconds_between(row["started_at"], row["ended_at"]) if row["ended_at"] else None
    return first, total


def call_record(row: dict) -> dict:
    """One call as `log --json`, `show --json` and `flag --json` give it."""
    return {
        "interaction_id": row["id"],
        "task_id": row["task_id"],
        "attribution": row["attribution"],
        "started_at": row["started_at"],
        "first_byte_at": row["first_byte_at"],
        "ended_at": row["ended_at"],
        "first_token_seconds": latency(row)[0],
        "total_seconds": latency(row)[1],
        "provider": row["provider"],
        "protocol": row["protocol"],
        "operation": row["operation"],
        "method": row["method"],
        "endpoint": row["endpoint"],
        "model": row["model"],
        "streamed": _flag(row["streamed"]),
        "http_status": row["http_status"],
        "outcome": row["outcome"],
        "failed": bool(row["failed"]),  # got no model answer: a failed call, not an AI interaction
        "error": row["error"],
        "tokens": tokens_object(row),
        "usage_source": row["usage_source"],
        "cost_usd": row["cost_usd"],
        "price_source": row["price_source"],
        "price_basis": row["price_basis"],
        "conversation_id": row["conversation_id"],
        "context_switch": _flag(row["context_switch"]),
        "client": row["client"],
        "client_name": client_name(row["client"]),
        "client_session": row["client_session"],
        "response_id": row["response_id"],
        "flagged": row["flagged_at"] is not None,
        "flagged_at": row["flagged_at"],
        "flag_note": row["flag_note"],
        "notes": row["notes"],
    }


def task_records(
    db: sqlite3.Connection,
    phase_id: str | None = None,
    now: str | None = None,
    idle_seconds: float = worktime.DEFAULT_IDLE_SECONDS,
    intervals: bool = True,
    keep_settled: bool = False,
) -> list["TaskListing"] | list["TaskRow"]:
    """Every task's Level 1 fields (as `task --json` gives them), and whether it is current.
    Without `intervals`, no `working_intervals`: tens of thousands of timestamps to write
    for a history of a million calls, which only JSON shows; then a settled task's working
    time is read (store/settled.py), not walked again, and `keep_settled` keeps the ones computed."""
    now = now or now_stored()
    current = tasks.current_task(db)
    current_id = current.task_id.lower() if current else None
    rows = [dict(row) for row in tasks.list_task_rows(db, phase_id)]
    if intervals:
        listings: list[TaskListing] = [
            {**task_record(h, now, idle_seconds), "current": h.task["id"].lower() == current_id}
            for h in history.histories(db, rows)
        ]
        return listings
    listed: list[TaskRow] = [
        {**metrics.task_fields(h, now, idle_seconds, working_seconds=seconds), "current": h.task["id"].lower() == current_id}
        for h, seconds in _with_working_time(db, rows, now, idle_seconds, keep_settled)
    ]
    return listed


def _with_working_time(
    db: sqlite3.Connection, rows: list[dict], now: str, idle_seconds: float, keep: bool
) -> list[tuple[history.TaskHistory, float | None]]:
    """Each task's history, in the order of `rows`, with its working time when settled (as
    kept, the history then holding no switch or minute); the others' histories hold what
    their working time is made of, and those that are settled now are kept."""
    read_at = settled.changes(db)
    known = settled.known(db, idle_seconds, now)
    fresh = [row["id"] for row in rows if row["id"] not in known]
    current, activity, events = history.working_inputs(db, fresh) if fresh else ({}, {}, {})
    found: list[tuple[history.TaskHistory, float | None]] = []
    computed: dict[str, tuple[str, float]] = {}
    for h in history.histories(db, rows, working_time=False):
        task_id = h.task["id"]
        h = h._replace(after_approval=history.calls_after_approval(db, h.task))
        if task_id in known:
            found.append((h, known[task_id]))
            continue
        h = h._replace(
            current=current.get(task_id.lower(), []), activity=activity.get(task_id, []), events=events.get(task_id, [])
        )
        since = metrics.settled_since(h, now)
        seconds = worktime.total(metrics.task_spans(h, now, idle_seconds)) if since is not None else None
        if since is not None and seconds is not None:
            computed[task_id] = (since, seconds)
        found.append((h, seconds))
    if keep:
        settled.keep(db, computed, idle_seconds, read_at)
    return found


# Why a call has its task, per stored attribution (store/calls.py decides it).
_ATTRIBUTION = {
    "path": "named by the request: a /t/{task}/ path, `meter run --task` or `meter env --task`",
    "header": "named by the request's x-meter-task header",
    "session": "its agent session {session} is bound to {task} (`meter claude install`)",
    "header-or-session": "the x-meter-task header or its bound agent session {session}:"
    " unknown which (recorded before migration m025 told them apart)",
    "current": "{task} was the current task when it began (`meter set-task`)",
    "branch": "its git branch names {task} (no task was current)",
    "retag": "moved there by `meter retag`",
    "none": "no task was current when it began",
}


def why_attributed(row: dict) -> str:
    """In words, why the call has its task."""
    attribution, task = row["attribution"], row["task_id"] or "unassigned"
    why = _ATTRIBUTION.get(attribution, attribution or "unknown").format(task=task, session=row["client_session"] or "?")
    if row["usage_source"] == AGENT_LOG:
        why = f"imported from the agent's log (`meter reconcile --import`): {why}"
    return why


def show_record(db: sqlite3.Connection, row, skipped: list[dict] | None = None) -> dict:
    """One call (its stored `row`) as `meter show --json` gives it, and the dashboard's
    call page embeds: its listing, why it has its task, a flag set aside, the newer
    calls `last` passed over (`skipped`, only when it was named so) and its text."""
    from taskmeter.store import interactions, texts

    record = {
        **call_record(row),
        "attribution_reason": why_attributed(row),
        "flag_set_aside": interactions.set_aside_flag(db, row["id"]),
    }
    if skipped is not None:
        record["skipped"] = skipped
    record["text"] = texts.of_call(db, row["id"])
    return record


# How much of a long line a preview keeps; a table clips it further to fit.
PREVIEW_CHARACTERS = 200
# Characters kept each side of a search's match.
SNIPPET_CONTEXT = 40


def preview(said: dict | None) -> str | None:
    """A call in a line: its response's first line, else the last message typed (after `> `)."""
    if said is None:
        return None
    response = first_line(said["response"], PREVIEW_CHARACTERS)
    if response:
        return response
    prompt = first_line(said["prompt"], PREVIEW_CHARACTERS)
    return f"> {prompt}" if prompt else None


def search_match(said: dict | None, row: dict, search: str) -> dict | None:
    """Where `search` is in the call (as CallFilter.search finds it, any case): the
    field and the line that holds it, cut to SNIPPET_CONTEXT characters each side."""
    places = [("prompt", (said or {}).get("prompt")), *(("steps", step) for step in (said or {}).get("steps", []))]
    places += [("response", (said or {}).get("response")), ("model", row["model"]), ("error", row["error"])]
    wanted = search.casefold()
    for field, text in places:
        for line in (text or "").splitlines():
            at = line.casefold().find(wanted)
            if at >= 0:
                start, end = max(0, at - SNIPPET_CONTEXT), min(len(line), at + len(search) + SNIPPET_CONTEXT)
                snippet = ("…" if start else "") + line[start:end].strip() + ("…" if end < len(line) else "")
                return {"field": field, "snippet": snippet}
    return None
