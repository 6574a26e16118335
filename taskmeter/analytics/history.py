"""Reading what reports need from the store, a few set-wise queries per report.
Sums come from the task_usage rollup, so a report costs about the same over a
thousand calls or a million."""

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.store.tasks import approval_histories, estimate_histories, get_phase, get_task, iterations_of, natural_key
from taskmeter.timefmt import seconds_sql
from taskmeter.tokens import TOKEN_COLUMNS

# Each summed column and the count of calls that stated it, as task_usage names it:
# a sum no call stated is missing.
STATED_BY = {column: f"{column}_calls" for column in TOKEN_COLUMNS} | {"cost_usd": "cost_calls"}


def missing_when_unstated(usage: dict) -> dict:
    for column, calls in STATED_BY.items():
        if not usage.get(calls):
            usage[column] = None
    return usage


class TaskHistory(NamedTuple):
    task: dict
    iterations: int
    usage: dict
    current: list[tuple[float, float | None]]  # (from, until) the task was current, POSIX seconds; until None: still is
    rework_tokens: int | None
    rework_cost_usd: float | None
    rework_calls: int
    # Its minutes with an AI call, joined where one follows another: (start, end), POSIX seconds.
    activity: Sequence[tuple[float, float]] = ()
    events: Sequence[float] = ()  # its milestones, iterations, commits and test runs, POSIX seconds
    after_approval: tuple[int, int | None] = (0, None)  # AI calls and tokens after its final approval
    estimates: Sequence[tuple[str, int | None]] = ()  # (set at, seconds; None: unset), in order
    withdrawn_approvals: Sequence[tuple[str, str]] = ()  # (approved at, reopened at)


class PhaseHistory(NamedTuple):
    phase: dict
    usage_columns: list[str]  # the task_usage rollup's columns, as the schema defines them
    tasks: list[TaskHistory]


def _placeholders(values) -> str:
    return ", ".join("?" for _ in values)


def _tuples(db: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor whose rows are plain tuples: for the queries that return a row per switch or
    activity run, tens of thousands for `meter tasks`, where sqlite3.Row costs a fifth of the fetch."""
    cursor = db.cursor()
    cursor.row_factory = None
    return cursor


def current_intervals(db: sqlite3.Connection, ids: list[str]) -> dict[str, list[tuple[float, float | None]]]:
    """Per task of `ids` (keyed by lower-case ID), when `meter set-task` had it current:
    from each switch to it until the next switch (None: still current), from the
    switch_spans rollup (m024), which keeps each switch's moment and the next's. In no
    particular order: the working-time rule sorts them (worktime.working_spans), and the
    index's order would cost a look-up in the table per switch."""
    intervals: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    wanted = {task_id.lower() for task_id in ids}
    if len(wanted) < db.execute("SELECT count(*) FROM tasks").fetchone()[0]:
        query = f"SELECT lower(task_id), since, until FROM switch_spans WHERE lower(task_id) IN ({_placeholders(ids)})"
    else:  # every task (`meter tasks`): one scan of the table
        query, ids = "SELECT lower(task_id), since, until FROM switch_spans", []
    for task_id, since, until in _tuples(db).execute(query, [i.lower() for i in ids]):
        if task_id in wanted:
            intervals[task_id].append((since, until))
    return intervals


def _activity(db: sqlite3.Connection, ids: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per task, its minutes with an AI call as (start, end) seconds, a run of consecutive
    minutes as one (the task_activity_runs rollup, m024): the working-time rule joins them anyway."""
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    query = f"SELECT task_id, start, end FROM task_activity_runs WHERE task_id IN ({_placeholders(ids)}) ORDER BY task_id, start"
    for task_id, start, end in _tuples(db).execute(query, ids):
        runs[task_id].append((start, end))
    return runs


def rollup_columns(db: sqlite3.Connection) -> list[str]:
    return [row["name"] for row in db.execute("PRAGMA table_info(task_usage)") if row["name"] != "task_key"]


def usages(db: sqlite3.Connection, task_keys: list[str]) -> dict[str, dict]:
    """Rollup sums per task key ('' = unassigned); a task with no calls has zeros."""
    columns = rollup_columns(db)
    found = {
        row["task_key"]: dict(row)
        for row in db.execute(f"SELECT * FROM task_usage WHERE task_key IN ({_placeholders(task_keys)})", task_keys)
    }
    result = {}
    for key in task_keys:
        usage = found.get(key) or dict.fromkeys(columns, 0)
        usage.pop("task_key", None)
        result[key] = missing_when_unstated(usage)
    return result


def _rework(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, tuple[int | None, float | None, int]]:
    """Per task: tokens, cost and count of the calls that followed a flagged call
    in its session (the developer steering the model back on course), from the
    session_rework rollup; (None, None, 0) for a task with no flagged call."""
    result: dict[str, tuple[int | None, float | None, int]] = {task_id: (None, None, 0) for task_id in task_ids}
    for row in db.execute(
        "SELECT task_id, sum(tokens) AS tokens, sum(cost_usd) AS cost, sum(calls) AS calls FROM session_rework"
        f" WHERE task_id IN ({_placeholders(task_ids)}) GROUP BY task_id",
        task_ids,
    ):
        result[row["task_id"]] = (row["tokens"], row["cost"], row["calls"])
    return result


def working_inputs(db: sqlite3.Connection, ids: list[str]) -> tuple[dict, dict, dict]:
    """What the working time of the tasks `ids` is made of, per task: when it was current
    (keyed by lower-case ID), its activity and its events (TaskHistory's fields)."""
    events: dict[str, list[float]] = defaultdict(list)
    for task_id, at in db.execute(
        f"SELECT task_id, {seconds_sql('at')} FROM task_events WHERE kind IN ('milestone', 'iteration')"
        f" AND task_id IN ({_placeholders(ids)})"
        f" UNION ALL SELECT task_id, {seconds_sql('committed_at')} FROM commits WHERE task_id IN ({_placeholders(ids)})"
        f" UNION ALL SELECT task_id, {seconds_sql('at')} FROM test_runs WHERE task_id IN ({_placeholders(ids)})",
        ids + ids + ids,
    ):
        events[task_id].append(at)
    return current_intervals(db, ids), _activity(db, ids), events


def histories(db: sqlite3.Connection, task_rows: list[dict], working_time: bool = True) -> list[TaskHistory]:
    """Each task's history. `working_time=False` reads only the rows and rollups,
    not the switches, activity minutes, events and calls after approval: for a
    caller that shows nothing they give (the overview)."""
    ids = [row["id"] for row in task_rows]
    if not ids:
        return []
    usage, iterations, rework = usages(db, ids), iterations_of(db, ids), _rework(db, ids)
    estimates, approvals = estimate_histories(db, ids), approval_histories(db, ids)
    if not working_time:
        return [
            TaskHistory(
                row,
                iterations[row["id"]],
                usage[row["id"]],
                [],
                *rework[row["id"]],
                estimates=estimates[row["id"]],
                withdrawn_approvals=approvals[row["id"]],
            )
            for row in task_rows
        ]
    current, activity, events = working_inputs(db, ids)
    return [
        TaskHistory(
            row,
            iterations[row["id"]],
            usage[row["id"]],
            current[row["id"].lower()],
            *rework[row["id"]],
            activity=activity[row["id"]],
            events=events[row["id"]],
            after_approval=calls_after_approval(db, row),
            estimates=estimates[row["id"]],
            withdrawn_approvals=approvals[row["id"]],
        )
        for row in task_rows
    ]


def calls_after_approval(db: sqlite3.Connection, task: dict) -> tuple[int, int | None]:
    """The AI calls and tokens of `task` after its final approval (TaskHistory.after_approval)."""
    if task["final_approval_at"] is None:
        return 0, None
    row = db.execute(
        "SELECT count(*) AS calls, sum(input_total) + sum(coalesce(output_total, 0)) AS tokens FROM interactions i"
        f" WHERE task_id = ? AND operation = 'generate' AND NOT coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"
        " AND started_at > ?",
        (task["id"], task["final_approval_at"]),
    ).fetchone()
    return row["calls"], row["tokens"]


def task_history(db: sqlite3.Connection, task_id: str) -> TaskHistory:
    return histories(db, [dict(get_task(db, task_id))])[0]


def phase_history(db: sqlite3.Connection, phase_id: str) -> PhaseHistory:
    phase = dict(get_phase(db, phase_id))
    rows = [dict(row) for row in db.execute("SELECT * FROM tasks WHERE phase_id = ?", (phase["id"],))]
    rows.sort(key=lambda row: natural_key(row["id"]))
    return PhaseHistory(phase, rollup_columns(db), histories(db, rows))


def phase_histories(db: sqlite3.Connection, working_time: bool = True) -> list[PhaseHistory]:
    """Every phase's history, in phase order, from one pass over the switches and flags."""
    phases = {row["id"]: dict(row) for row in db.execute("SELECT * FROM phases")}
    rows = sorted((dict(row) for row in db.execute("SELECT * FROM tasks")), key=lambda row: natural_key(row["id"]))
    by_phase: dict[str, list[TaskHistory]] = defaultdict(list)
    for task_history in histories(db, rows, working_time):
        by_phase[task_history.task["phase_id"]].append(task_history)
    columns = rollup_columns(db)
    return [PhaseHistory(phases[phase_id], columns, by_phase[phase_id]) for phase_id in phase_ids(db)]


def phase_ids(db: sqlite3.Connection) -> list[str]:
    return sorted((row["id"] for row in db.execute("SELECT id FROM phases")), key=natural_key)


def unassigned_usage(db: sqlite3.Connection) -> dict:
    return usages(db, [""])[""]
