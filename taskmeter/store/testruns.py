"""pytest runs the plugin handed over (automation/testruns.py decides what they mean)."""

import sqlite3

from taskmeter.store.db import write_transaction


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
