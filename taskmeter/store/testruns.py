"""pytest runs the plugin handed over (automation/testruns.py decides what they mean),
and which red runs are rework: derived when read, never stored."""

import sqlite3

from taskmeter.store import commits, tasks
from taskmeter.store.connection import write_transaction


def record_test_run(
    db: sqlite3.Connection,
    at: str,
    repo: str,
    task_id: str | None,
    exit_status: int,
    tests: int | None,
    failed: int | None,
    full_run: bool,
    coverage: float | None,
    coverage_target: float | None,
) -> None:
    with write_transaction(db):
        db.execute(
            "INSERT INTO test_runs (at, repo, task_id, exit_status, tests, failed, full_run, coverage, coverage_target)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, repo, task_id, exit_status, tests, failed, int(full_run), coverage, coverage_target),
        )


def full_runs(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[sqlite3.Row]]:
    """Each task's full runs (at, exit_status, tests), oldest first (a task with none is left out)."""
    placeholders = ", ".join("?" for _ in task_ids)
    runs: dict[str, list[sqlite3.Row]] = {}
    for run in db.execute(
        f"SELECT task_id, at, exit_status, tests FROM test_runs WHERE full_run = 1 AND task_id IN ({placeholders})"
        " ORDER BY at, id",
        task_ids,
    ):
        runs.setdefault(run["task_id"], []).append(run)
    return runs


def reworking_runs(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[str]]:
    """Per task, the times of its red full runs that count as iterations: after
    TESTS_COMPLETION and before approval, collecting no more tests than the last
    green full run (a red run that adds tests is the red of red-green TDD), and
    after a commit of the task made since TESTS_COMPLETION or after a VALIDATION
    a person marked (the meter's own moves on with every green run)."""
    reworks: dict[str, list[str]] = {task_id: [] for task_id in task_ids}
    if not task_ids:
        return reworks
    runs, commit_times = full_runs(db, task_ids), commits.commit_times(db, task_ids)
    meter_validated = tasks.meter_set(db, task_ids, "validated")
    for task in tasks.tasks_by_id(db, task_ids):
        tests_done, approved = task["tests_completion_at"], task["final_approval_at"]
        if tests_done is None or task["id"] not in runs:
            continue
        validated = task["validation_at"] if task["id"] not in meter_validated else None
        committed = min((at for at in commit_times.get(task["id"], []) if at > tests_done), default=None)
        # From then on, a red run is no longer part of the first attempt.
        settled = min((at for at in (committed, validated) if at is not None), default=None)
        last_green_tests = None
        for run in runs[task["id"]]:
            if run["exit_status"] == 0:
                last_green_tests = run["tests"]
                continue
            if run["at"] <= tests_done or (approved is not None and run["at"] > approved):
                continue
            adds_tests = last_green_tests is not None and run["tests"] > last_green_tests
            if settled is not None and run["at"] > settled and not adds_tests:
                reworks[task["id"]].append(run["at"])
    return reworks
