"""Building reports: history from the store, then the pure computations.
`idle_seconds` is the working-time rule's idle gap (config: record.idle_minutes)."""

import sqlite3

from taskmeter.analytics import history, metrics
from taskmeter.analytics.worktime import DEFAULT_IDLE_SECONDS
from taskmeter.timefmt import now_stored


def task_report(db: sqlite3.Connection, task_id: str, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> dict:
    return metrics.task_fields(history.task_history(db, task_id), now or now_stored(), idle_seconds)


def phase_report(
    db: sqlite3.Connection, phase_id: str, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> dict:
    now = now or now_stored()
    current = history.phase_history(db, phase_id)
    ordered = history.phase_ids(db)
    position = ordered.index(current.phase["id"])
    previous_tokens = None
    if position > 0:  # only its tokens per task: from the rollup, not a whole report
        previous_ids = [row["id"] for row in db.execute("SELECT id FROM tasks WHERE phase_id = ?", (ordered[position - 1],))]
        previous_tokens = metrics.tokens_per_task(list(history.usages(db, previous_ids).values()), current.usage_columns)
    report = metrics.phase_fields(current, now, previous_tokens, idle_seconds)
    report["previous_phase_id"] = ordered[position - 1] if position > 0 else None
    return report


def phase_reports(db: sqlite3.Connection, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> list[dict]:
    """Every phase's Level 2 fields (as `phase --json` gives them), in phase order."""
    now = now or now_stored()
    phases = []
    previous_tokens = None
    for phase_history in history.phase_histories(db):
        fields = metrics.phase_fields(phase_history, now, previous_tokens, idle_seconds)
        previous_tokens = fields["tokens_per_task_avg"]
        phases.append(fields)
    return phases


def overview_report(db: sqlite3.Connection, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> dict:
    return metrics.overview(phase_reports(db, now, idle_seconds), history.unassigned_usage(db))
