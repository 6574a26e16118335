"""Building reports: history from the store, then the pure computations.
`idle_seconds` is the working-time rule's idle gap (config: record.idle_minutes)."""

import sqlite3
from datetime import UTC, datetime

from taskmeter.analytics import history, metrics
from taskmeter.analytics.worktime import DEFAULT_IDLE_SECONDS, union
from taskmeter.timefmt import now_stored, to_stored

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: importing them costs every command
    from taskmeter.analytics.records import OverviewReport, PhaseReport, PhaseReportAlone, TaskRecord


def task_report(
    db: sqlite3.Connection, task_id: str, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> "TaskRecord":
    return task_record(history.task_history(db, task_id), now or now_stored(), idle_seconds)


def task_record(task_history: history.TaskHistory, now: str, idle_seconds: float) -> "TaskRecord":
    """A task's Level 1 fields, and the working intervals its working time adds up
    (`report task`, `task` and `tasks --json`; phase reports leave the intervals out)."""
    spans = metrics.task_spans(task_history, now, idle_seconds)
    record = metrics.task_fields(task_history, now, idle_seconds, spans)
    return {**record, "working_intervals": [[_stored(start), _stored(end)] for start, end in union(spans)]}


def _stored(seconds: float) -> str:
    return to_stored(datetime.fromtimestamp(seconds, UTC))


def phase_report(
    db: sqlite3.Connection, phase_id: str, now: str | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> "PhaseReportAlone":
    now = now or now_stored()
    current = history.phase_history(db, phase_id)
    ordered = history.phase_ids(db)
    position = ordered.index(current.phase["id"])
    # Only the previous phase's tokens per task: from the rollup, not a whole report.
    previous_tokens = _tokens_per_task(db, ordered[position - 1]) if position > 0 else None
    report = metrics.phase_fields(current, now, previous_tokens, idle_seconds)
    return {**report, "previous_phase_id": ordered[position - 1] if position > 0 else None}


def phase_reports(
    db: sqlite3.Connection,
    now: str | None = None,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    working_time: bool = True,
) -> list["PhaseReport"]:
    """Every phase's Level 2 fields (as `phase --json` gives them), in phase order.
    Without `working_time`, every duration comes out 0, as in overview_report: for a
    caller that shows none (the `meter phases` table), which then reads no switch or minute."""
    return _phase_fields_in_order(history.phase_histories(db, working_time), now or now_stored(), idle_seconds)


def overview_report(db: sqlite3.Connection, now: str | None = None) -> "OverviewReport":
    """One line per phase, from the rows and rollups alone. A line shows no
    duration, so no working time is read and every duration in the phases'
    fields comes out 0; whether one is present, all that tracking completeness
    counts, depends on the tasks' begins and estimates, never on their spans.
    metrics.overview picks no duration."""
    phases = history.phase_histories(db, working_time=False)
    return metrics.overview(_phase_fields_in_order(phases, now or now_stored()), history.unassigned_usage(db))


def _phase_fields_in_order(
    phases: list[history.PhaseHistory], now: str, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> list["PhaseReport"]:
    """Each phase's fields, its token change taken against the phase before."""
    reports = []
    previous_tokens = None
    for phase_history in phases:
        fields = metrics.phase_fields(phase_history, now, previous_tokens, idle_seconds)
        previous_tokens = fields["tokens_per_task_avg"]
        reports.append(fields)
    return reports


def _tokens_per_task(db: sqlite3.Connection, phase_id: str) -> float | None:
    approved = "SELECT id FROM tasks WHERE phase_id = ? AND final_approval_at IS NOT NULL"  # as metrics.phase_fields
    task_ids = [row["id"] for row in db.execute(approved, (phase_id,))]
    usages = list(history.usages(db, task_ids).values())
    return metrics.tokens_per_task(metrics.sum_usage(usages, history.rollup_columns(db)), len(usages))
