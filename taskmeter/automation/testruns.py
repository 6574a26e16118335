"""What a pytest session means for the task record (docs/automation.md). The
plugin (pytest_plugin/taskmeter_pytest.py) hands each session over on stdin:
`python -m taskmeter.automation.testruns`.

- A full run: at least one test collected, and the run not narrowed (-k, -m,
  a file or node ID, a sub-folder, --lf, --collect-only, deselected tests).
  Green: exit status 0; red: 1 (tests failed).
- TESTS_COMPLETION: the first full green run after INITIAL_COMPLETION.
- An iteration: a red full run after TESTS_COMPLETION.
- VALIDATION: the last full green run before approval.
- TEST_COVERAGE_ACTUAL: pytest-cov's total of the last full green run;
  TEST_COVERAGE_TARGET: coverage's fail_under, else automation.coverage_target.
- PHASE_TESTS_PASSING: the first full green run once every task of the phase
  has INITIAL_COMPLETION.
Marks the meter set itself may be moved on by later runs; a person's never are.
"""

import json
import logging
import sys
from datetime import UTC, datetime

from taskmeter.store import db as store_db
from taskmeter.store import tasks
from taskmeter.store.db import write_transaction
from taskmeter.timefmt import to_stored

log = logging.getLogger("taskmeter.automation")


def record_run(db, run: dict, task_id: str | None, coverage_target: float | None = None) -> None:
    at = to_stored(datetime.fromtimestamp(run["at"], UTC))
    full = bool(run["tests"]) and not run["selected"] and run["exit_status"] in (0, 1)
    green = full and run["exit_status"] == 0
    with write_transaction(db):
        if task_id:
            task_id = tasks.ensure_task(db, task_id, at)
        db.execute(
            "INSERT INTO test_runs (at, repo, task_id, exit_status, tests, failed, full_run, coverage, coverage_target)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                run["repo"],
                task_id,
                run["exit_status"],
                run["tests"],
                run["failed"],
                int(full),
                run["coverage"],
                run["coverage_target"],
            ),
        )
        if task_id is None or not full:
            return
        task = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        source = f"pytest run at {at}: {run['tests']} tests, {run['failed'] or 0} failed"
        if task["final_approval_at"] is not None or task["initial_completion_at"] is None or at < task["initial_completion_at"]:
            return
        if not green:
            if task["tests_completion_at"] is not None:
                db.execute(
                    "INSERT INTO task_events (task_id, kind, at, note) VALUES (?, 'iteration', ?, ?)",
                    (task_id, at, f"automatic: {source}"),
                )
            return
        tasks.auto_mark(db, "tasks", task_id, "tests", at, source)
        tasks.auto_mark(db, "tasks", task_id, "validated", at, source, replace_own=True)
        if run["coverage"] is not None:
            tasks.auto_mark(db, "tasks", task_id, "coverage_actual", round(run["coverage"], 2), source, replace_own=True)
        target = run["coverage_target"] if run["coverage_target"] is not None else coverage_target
        if target is not None:
            tasks.auto_mark(db, "tasks", task_id, "coverage_target", target, source, replace_own=True)
        waiting = db.execute(
            "SELECT count(*) FROM tasks WHERE phase_id = ? AND initial_completion_at IS NULL", (task["phase_id"],)
        ).fetchone()[0]
        if not waiting:
            tasks.auto_mark(db, "phases", task["phase_id"], "tests-passing", at, source)


def main() -> None:
    import argparse

    from taskmeter.automation.git import log_to_hooks_log, task_of_work
    from taskmeter.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m taskmeter.automation.testruns", description="a pytest run on stdin")
    parser.add_argument("--db", help="the database the repository's hooks record to (default: $METER_DB, else the default)")
    args = parser.parse_args()
    log_to_hooks_log()
    try:
        run = json.loads(sys.stdin.read())
        settings = load_settings().automation
        db = store_db.connect(args.db)
        try:
            task_id = task_of_work(db, run.get("branch"), settings.branch_pattern)
            record_run(db, run, task_id, settings.coverage_target)
        finally:
            db.close()
    except Exception as exc:  # never the developer's problem: a line in the meter's log
        log.error("meter: pytest run: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":
    main()
