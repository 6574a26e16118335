"""Reading what reports need from the store, a few set-wise queries per report.
Sums come from the task_usage rollup, so a report costs about the same over a
thousand calls or a million."""

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from taskmeter.store.tasks import get_phase, get_task, iterations_of, natural_key

# Each summed column and the count of calls that stated it: a sum no call stated is missing.
STATED_BY = {
    "input_total": "input_total_calls",
    "cache_read": "cache_read_calls",
    "cache_write": "cache_write_calls",
    "output_total": "output_total_calls",
    "reasoning": "reasoning_calls",
    "cost_usd": "cost_calls",
}


def missing_when_unstated(usage: dict) -> dict:
    for column, calls in STATED_BY.items():
        if not usage.get(calls):
            usage[column] = None
    return usage


@dataclass
class TaskHistory:
    task: dict
    iterations: int
    usage: dict
    switches: list[tuple[str, str | None]]  # (at, task made current), every switch in time order
    rework_tokens: int | None
    rework_cost_usd: float | None
    rework_calls: int


@dataclass
class PhaseHistory:
    phase: dict
    usage_columns: list[str]  # the task_usage rollup's columns, as the schema defines them
    tasks: list[TaskHistory] = field(default_factory=list)


def _placeholders(values) -> str:
    return ", ".join("?" for _ in values)


def all_switches(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    return [
        (row["at"], row["task_id"])
        for row in db.execute("SELECT at, task_id FROM task_events WHERE kind = 'switch' ORDER BY at, id")
    ]


def _rollup_columns(db: sqlite3.Connection) -> list[str]:
    return [row["name"] for row in db.execute("PRAGMA table_info(task_usage)") if row["name"] != "task_key"]


def usages(db: sqlite3.Connection, task_keys: list[str]) -> dict[str, dict]:
    """Rollup sums per task key ('' = unassigned); a task with no calls has zeros."""
    columns = _rollup_columns(db)
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
    """Per task: tokens, cost and count of the calls after each flagged call, up to
    the task's next context switch (the user steering the model back on course)."""
    flagged: dict[str, list[str]] = defaultdict(list)
    # Flags are few: walk them and look each interaction up, never the other way round.
    for row in db.execute(
        "SELECT i.task_id, i.started_at FROM flags f CROSS JOIN interactions i ON i.id = f.interaction_id"
        " WHERE i.operation = 'generate' AND i.task_id IS NOT NULL ORDER BY i.started_at"
    ):
        flagged[row["task_id"]].append(row["started_at"])
    result: dict[str, tuple[int | None, float | None, int]] = {task_id: (None, None, 0) for task_id in task_ids}
    for task_id in task_ids:
        if task_id not in flagged:
            continue
        counted: set[str] = set()
        tokens, cost = 0, 0.0
        for started_at in flagged[task_id]:
            cursor = db.execute(
                "SELECT id, input_total, output_total, cost_usd, context_switch FROM interactions"
                " WHERE task_id = ? AND operation = 'generate' AND started_at > ? ORDER BY started_at",
                (task_id, started_at),
            )
            for row in cursor:
                if row["context_switch"]:
                    break
                if row["id"] not in counted:
                    counted.add(row["id"])
                    tokens += (row["input_total"] or 0) + (row["output_total"] or 0)
                    cost += row["cost_usd"] or 0.0
            cursor.close()
        result[task_id] = (tokens, cost, len(counted))
    return result


def histories(db: sqlite3.Connection, task_rows: list[dict]) -> list[TaskHistory]:
    ids = [row["id"] for row in task_rows]
    if not ids:
        return []
    switches = all_switches(db)
    usage, iterations, rework = usages(db, ids), iterations_of(db, ids), _rework(db, ids)
    return [TaskHistory(row, iterations[row["id"]], usage[row["id"]], switches, *rework[row["id"]]) for row in task_rows]


def task_history(db: sqlite3.Connection, task_id: str) -> TaskHistory:
    return histories(db, [dict(get_task(db, task_id))])[0]


def phase_history(db: sqlite3.Connection, phase_id: str) -> PhaseHistory:
    phase = dict(get_phase(db, phase_id))
    rows = [dict(row) for row in db.execute("SELECT * FROM tasks WHERE phase_id = ?", (phase["id"],))]
    rows.sort(key=lambda row: natural_key(row["id"]))
    return PhaseHistory(phase, _rollup_columns(db), histories(db, rows))


def phase_ids(db: sqlite3.Connection) -> list[str]:
    return sorted((row["id"] for row in db.execute("SELECT id FROM phases")), key=natural_key)


def unassigned_usage(db: sqlite3.Connection) -> dict:
    return usages(db, [""])[""]
