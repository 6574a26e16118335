"""pytest runs the plugin handed over (automation/testruns.py decides what they mean),
and which red runs are rework: derived when read, never stored."""

import sqlite3

from taskmeter.store import tasks
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


def reworking_runs(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[str]]:
    """Per task, the times of its red full runs that count as iterations: after
    TESTS_COMPLETION and before approval, collecting no more tests than the last
    green full run (a red run that adds tests is the red of red-green TDD), and
    after a commit of the task made since TESTS_COMPLETION or after a VALIDATION
    a person marked (the meter's own moves on with every green run), counting a
    commit from the end of the second git dates it to. In one query:
    a thousand tasks of twenty runs each cost a report nothing in Python."""
    reworks: dict[str, list[str]] = {task_id: [] for task_id in task_ids}
    if not task_ids:
        return reworks
    placeholders = ", ".join("?" for _ in task_ids)
    # The VALIDATION a person marked: none when the task's latest validated mark is the meter's own.
    by_person = (
        "CASE WHEN coalesce(substr((SELECT e.note FROM task_events e WHERE e.kind = 'milestone' AND e.milestone = 'validated'"
        f" AND e.task_id = t.id COLLATE BINARY ORDER BY e.id DESC LIMIT 1), 1, {len(tasks.AUTOMATIC_NOTE)}) = ?, 0)"
        " THEN NULL ELSE t.validation_at END"
    )
    # Git dates a commit to the whole second, so the commit happened before that second
    # ended: a run that ended within the same second may have come before it.
    commit_second_ended = "strftime('%Y-%m-%dT%H:%M:%S.000000Z', c.committed_at, '+1 second')"
    committed = (
        f"(SELECT min({commit_second_ended}) FROM commits c"
        f" WHERE c.task_id = t.id COLLATE BINARY AND {commit_second_ended} > t.tests_completion_at)"
    )
    last_green_tests = (
        "(SELECT g.tests FROM test_runs g WHERE g.task_id = r.task_id AND g.full_run = 1 AND g.exit_status = 0"
        " AND (g.at, g.id) < (r.at, r.id) ORDER BY g.at DESC, g.id DESC LIMIT 1)"
    )
    rows = db.execute(
        f"""
        WITH settling AS (
            SELECT id, tests_completion_at AS tests_done, final_approval_at AS approved,
                {committed} AS committed, {by_person} AS validated
            FROM tasks t WHERE id IN ({placeholders}) AND tests_completion_at IS NOT NULL
        )
        SELECT r.task_id, r.at FROM test_runs r JOIN settling s ON r.task_id = s.id COLLATE BINARY
        WHERE r.task_id IN ({placeholders}) AND r.full_run = 1 AND r.exit_status != 0
            AND r.at > s.tests_done AND (s.approved IS NULL OR r.at <= s.approved)
            -- From the first commit or person's VALIDATION on, a red run is no longer part of the first attempt.
            AND r.at > min(coalesce(s.committed, s.validated), coalesce(s.validated, s.committed))
            AND NOT coalesce(r.tests > {last_green_tests}, 0)
        ORDER BY r.at, r.id
        """,
        [tasks.AUTOMATIC_NOTE, *task_ids, *task_ids],
    )
    for task_id, at in rows:
        reworks[task_id].append(at)
    return reworks
