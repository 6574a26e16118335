"""Listings in the names every `--json` uses. One name per thing everywhere:
task_id, interaction_id, model, ai_interactions, failed_calls,
hallucination_count, cost_usd, tokens{input_total, cache_read, cache_write,
output_total, reasoning, total}; timestamps as stored (ISO 8601 UTC, `…Z`);
yes/no as true/false. docs/schema.md lists them."""

import sqlite3

from taskmeter.analytics import history, metrics
from taskmeter.analytics.reports import task_record
from taskmeter.analytics.worktime import DEFAULT_IDLE_SECONDS
from taskmeter.store import tasks
from taskmeter.timefmt import now_stored
from taskmeter.tokens import tokens_object

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: importing them costs every command
    from taskmeter.analytics.records import TaskListing, TaskRow


def _flag(value) -> bool | None:
    return None if value is None else bool(value)


def call_record(row: dict) -> dict:
    """One call as `log --json`, `show --json` and `flag --json` give it."""
    return {
        "interaction_id": row["id"],
        "task_id": row["task_id"],
        "attribution": row["attribution"],
        "started_at": row["started_at"],
        "first_byte_at": row["first_byte_at"],
        "ended_at": row["ended_at"],
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
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    intervals: bool = True,
) -> list["TaskListing"] | list["TaskRow"]:
    """Every task's Level 1 fields (as `task --json` gives them), and whether it is current.
    Without `intervals`, no `working_intervals`: tens of thousands of timestamps to write
    for a history of a million calls, which only JSON shows."""
    now = now or now_stored()
    current = tasks.current_task(db)
    current_id = current.task_id.lower() if current else None
    task_histories = history.histories(db, [dict(row) for row in tasks.list_task_rows(db, phase_id)])
    if intervals:
        listings: list[TaskListing] = [
            {**task_record(h, now, idle_seconds), "current": h.task["id"].lower() == current_id} for h in task_histories
        ]
        return listings
    rows: list[TaskRow] = [
        {**metrics.task_fields(h, now, idle_seconds), "current": h.task["id"].lower() == current_id} for h in task_histories
    ]
    return rows
