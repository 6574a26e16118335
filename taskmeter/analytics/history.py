"""Reading what reports need from the store. Sums come from the task_usage rollup,
so a report costs the same over a thousand calls or a million."""

import re
import sqlite3
from dataclasses import dataclass, field

from taskmeter.store.interactions import usage_totals
from taskmeter.store.tasks import get_phase, get_task, iterations


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
    tasks: list[TaskHistory] = field(default_factory=list)


def natural_key(identifier: str) -> list:
    """P2 before P10, P3 before P3.5."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", identifier)]


def all_switches(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    return [(row["at"], row["task_id"]) for row in db.execute("SELECT at, task_id FROM task_events WHERE kind = 'switch' ORDER BY at, id")]


def _rework(db: sqlite3.Connection, task_id: str) -> tuple[int | None, float | None, int]:
    """Tokens and cost of the calls after each flagged call of the task, up to the
    next context switch (the user steering the model back on course)."""
    flagged = db.execute(
        "SELECT i.started_at FROM flags f JOIN interactions i ON i.id = f.interaction_id"
        " WHERE i.task_id = ? AND i.operation = 'generate' ORDER BY i.started_at",
        (task_id,),
    ).fetchall()
    if not flagged:
        return None, None, 0
    counted: set[str] = set()
    tokens, cost, calls = 0, 0.0, 0
    for (started_at,) in flagged:
        cursor = db.execute(
            "SELECT id, input_total, output_total, cost_usd, context_switch FROM interactions"
            " WHERE task_id = ? AND operation = 'generate' AND started_at > ? ORDER BY started_at",
            (task_id, started_at),
        )
        for row in cursor:
            if row["context_switch"]:
                break
            if row["id"] in counted:
                continue
            counted.add(row["id"])
            calls += 1
            tokens += (row["input_total"] or 0) + (row["output_total"] or 0)
            cost += row["cost_usd"] or 0.0
        cursor.close()
    return tokens, cost, calls


def task_history(db: sqlite3.Connection, task_id: str, switches=None) -> TaskHistory:
    task = dict(get_task(db, task_id))
    rework_tokens, rework_cost, rework_calls = _rework(db, task["id"])
    return TaskHistory(
        task=task,
        iterations=iterations(db, task["id"]),
        usage=usage_totals(db, task["id"]),
        switches=all_switches(db) if switches is None else switches,
        rework_tokens=rework_tokens,
        rework_cost_usd=rework_cost,
        rework_calls=rework_calls,
    )


def phase_history(db: sqlite3.Connection, phase_id: str) -> PhaseHistory:
    phase = dict(get_phase(db, phase_id))
    switches = all_switches(db)
    ids = [row["id"] for row in db.execute("SELECT id FROM tasks WHERE phase_id = ?", (phase["id"],))]
    ids.sort(key=natural_key)
    return PhaseHistory(phase, [task_history(db, task_id, switches) for task_id in ids])


def phase_ids(db: sqlite3.Connection) -> list[str]:
    return sorted((row["id"] for row in db.execute("SELECT id FROM phases")), key=natural_key)


def unassigned_usage(db: sqlite3.Connection) -> dict:
    return usage_totals(db, "")
