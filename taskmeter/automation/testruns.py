"""What a pytest session means for the task record (docs/automation.md). The
plugin (pytest_plugin/taskmeter_pytest.py) hands each session over on stdin:
`meter hooks test-run`.

- A full run: at least one test collected, and the run not narrowed (-k, -m,
  a file or node ID, a sub-folder, --lf, --collect-only, deselected tests).
  Green: exit status 0; red: 1 (tests failed).
- TESTS_COMPLETION: the first full green run after INITIAL_COMPLETION.
- An iteration (rework): a red full run after TESTS_COMPLETION and before
  approval that adds no tests (collects no more than the last green full
  run) and comes after a commit of the task made since TESTS_COMPLETION, or
  after a VALIDATION a person marked. Red runs of red-green TDD before the
  next commit are not rework. Derived when read (store/testruns.py `reworking_runs`).
- VALIDATION: the last full green run before approval.
- TEST_COVERAGE_ACTUAL: pytest-cov's total of the last full green run;
  TEST_COVERAGE_TARGET: coverage's fail_under, else automation.coverage_target
  (a fail_under of 0, coverage's default, is no target).
- PHASE_TESTS_PASSING: the first full green run once every task of the phase
  has INITIAL_COMPLETION.
Marks the meter set itself may be moved on by later runs; a person's never are.
"""

import json
import logging
import sys
from datetime import UTC, datetime

from taskmeter.store import connection, tasks
from taskmeter.store import testruns as stored_runs
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import to_stored

log = logging.getLogger(__name__)


def coverage_target_of(fail_under: float | None, configured: float | None) -> float | None:
    """TEST_COVERAGE_TARGET: coverage's fail_under, else the configured target.
    A fail_under of 0 is coverage's default, which pytest-cov reports when nobody
    set one: it is no target."""
    return fail_under if fail_under else configured


def record_run(db, run: dict, task_id: str | None, coverage_target: float | None = None) -> None:
    at = to_stored(datetime.fromtimestamp(run["at"], UTC))
    full = bool(run["tests"]) and not run["selected"] and run["exit_status"] in (0, 1)
    green = full and run["exit_status"] == 0
    own_target = coverage_target_of(run["coverage_target"], None)
    with write_transaction(db):
        if task_id:
            task_id = tasks.ensure_task(db, task_id, at)
        stored_runs.record_test_run(
            db, at, run["repo"], task_id, run["exit_status"], run["tests"], run["failed"], full, run["coverage"], own_target
        )
        if task_id is None or not green:
            return  # a red run's meaning (rework or not) is derived when read: store/testruns.py reworking_runs
        task = tasks.get_task(db, task_id)
        source = f"pytest run at {at}: {run['tests']} tests, {run['failed'] or 0} failed"
        if task["final_approval_at"] is not None or task["initial_completion_at"] is None or at < task["initial_completion_at"]:
            return
        tasks.auto_mark(db, "tasks", task_id, "tests", at, source)
        tasks.auto_mark(db, "tasks", task_id, "validated", at, source, replace_own=True)
        if run["coverage"] is not None:
            tasks.auto_mark(db, "tasks", task_id, "coverage_actual", round(run["coverage"], 2), source, replace_own=True)
        target = coverage_target_of(own_target, coverage_target)
        if target is not None:
            tasks.auto_mark(db, "tasks", task_id, "coverage_target", target, source, replace_own=True)
        if not tasks.phase_tasks_without(db, task["phase_id"], "initial"):
            tasks.auto_mark(db, "phases", task["phase_id"], "tests-passing", at, source)


def main(argv: list[str] | None = None) -> None:
    """A pytest run handed over on stdin (`meter hooks test-run`, which the pytest plugin runs)."""
    import argparse

    from taskmeter.automation.git import log_to_hooks_log, task_of_work
    from taskmeter.config.automation import automation_values

    parser = argparse.ArgumentParser(prog="meter hooks test-run", description="a pytest run on stdin")
    parser.add_argument("--db", help="the database the repository's hooks record to (default: $METER_DB, else the default)")
    args = parser.parse_args(argv)
    log_to_hooks_log()
    try:
        run = json.loads(sys.stdin.read())
        settings = automation_values()
        db = connection.connect(args.db)
        try:
            task_id = task_of_work(db, run.get("branch"), settings.branch_pattern)
            record_run(db, run, task_id, settings.coverage_target)
        finally:
            db.close()
    except Exception as exc:  # never the developer's problem: a line in the meter's log
        log.error("meter: pytest run: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":  # what the pytest plugin ran from hooks installed by earlier versions
    # The imported module's main: its log lines are then under `taskmeter`, which writes hooks.log.
    from taskmeter.automation import testruns

    testruns.main()
