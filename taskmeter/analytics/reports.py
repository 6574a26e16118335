"""Building reports: history from the store, then the pure computations."""

import sqlite3

from taskmeter.analytics import history, metrics
from taskmeter.timefmt import now_stored


def task_report(db: sqlite3.Connection, task_id: str, now: str | None = None) -> dict:
    return metrics.task_fields(history.task_history(db, task_id), now or now_stored())


def phase_report(db: sqlite3.Connection, phase_id: str, now: str | None = None) -> dict:
    now = now or now_stored()
    current = history.phase_history(db, phase_id)
    ordered = history.phase_ids(db)
    position = ordered.index(current.phase["id"])
    previous_tokens = None
    if position > 0:
        previous = metrics.phase_fields(history.phase_history(db, ordered[position - 1]), now)
        previous_tokens = previous["tokens_per_task_avg"]
    report = metrics.phase_fields(current, now, previous_tokens)
    report["previous_phase_id"] = ordered[position - 1] if position > 0 else None
    return report


def phase_reports(db: sqlite3.Connection, now: str | None = None) -> list[dict]:
    """Every phase's Level 2 fields (as `phase --json` gives them), in phase order."""
    now = now or now_stored()
    phases = []
    previous_tokens = None
    for phase_id in history.phase_ids(db):
        fields = metrics.phase_fields(history.phase_history(db, phase_id), now, previous_tokens)
        previous_tokens = fields["tokens_per_task_avg"]
        phases.append(fields)
    return phases


def overview_report(db: sqlite3.Connection, now: str | None = None) -> dict:
    return metrics.overview(phase_reports(db, now), history.unassigned_usage(db))
