"""The current state: which task is current and why, the budget that binds it, the
open alerts, the proxies running and whether calls are metered. One function for
`meter status --json`, the dashboard's Now page and `meter statusline`, which
runs on every prompt: so this module loads no click, rich or pydantic."""

import sqlite3

from taskmeter.analytics import budgets, history, metrics, worktime
from taskmeter.store import alerts, proxies, tasks
from taskmeter.timefmt import now_stored, parse_moment, to_stored
from taskmeter.tokens import total_tokens


def current_state(db: sqlite3.Connection, defaults: budgets.Defaults, session: str | None = None) -> dict:
    """`session`: a Claude Code session ID; a session bound to a task (`meter claude install`)
    shows its own task, and "metered" means the meter has recorded a call of it. Without one,
    "metered" means a proxy records to this database."""
    current = tasks.current_task(db)
    bound = session and db.execute("SELECT task_id FROM session_tasks WHERE session_id = ?", (session,)).fetchone()
    task_id = bound[0] if bound else current.task_id if current else None
    running = proxies.running(db)
    if session:
        metered = db.execute("SELECT 1 FROM interactions WHERE client_session = ? LIMIT 1", (session,)).fetchone() is not None
    else:
        metered = recording(running)
    covered = budgets.task_budgets(db, budgets.budget_statuses(db, defaults)).get(task_id) if task_id else None
    return {
        "task_id": task_id,
        "current_since": current.since if current else None,
        "current_note": tasks.current_note(db),  # why the meter changed the current task: `P1-010 approved`
        "budget": covered["binding"] if covered else None,  # the one that binds its calls
        "alerts": alerts.listed(db),
        "proxies": running,
        "metered": metered,
    }


def recording(running: list[dict]) -> bool:
    """Whether calls to this database are metered: one of the proxies `proxies.running` gives records."""
    return any(proxy["recording"] == proxies.RECORDING for proxy in running)


def task_figures(db: sqlite3.Connection, task_id: str, idle_seconds: float, now: str | None = None) -> dict | None:
    """What the status line shows of a task, each as its report says it: working time
    (ACTUAL_DURATION), its estimate (ESTIMATED_DURATION: the first), tokens, cost and flags so far. None for a task not stored."""
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    task = dict(row)
    current, activity, events = history.working_inputs(db, [task["id"]])
    spans = metrics.spans_of(
        task, current[task["id"].lower()], activity[task["id"]], events[task["id"]], now or now_stored(), idle_seconds
    )
    usage = history.usages(db, [task["id"]])[task["id"]]
    return {
        "actual_duration": worktime.total(spans) if task["begin_at"] else None,
        "estimate_seconds": metrics.first_estimate(
            task["estimate_seconds"], tasks.estimate_histories(db, [task["id"]])[task["id"]]
        ),
        "token_count_used": total_tokens(usage),
        "cost_usd": usage["cost_usd"],
        "hallucination_count": usage["flagged"],
    }


def last_call_at(db: sqlite3.Connection) -> str | None:
    """When the newest call started (store/interactions.py's `recent` lists from it), read through the index."""
    return db.execute("SELECT max(started_at) FROM interactions").fetchone()[0]


def today_cost(db: sqlite3.Connection) -> float | None:
    """The cost of every call since local midnight, as `meter report daily` counts today's
    (the usage_model_quarters rollup: local midnight is always a quarter hour); None: none priced."""
    since = to_stored(parse_moment("today"))[:16]  # a quarter's key: YYYY-MM-DDTHH:MM, UTC
    row = db.execute(
        "SELECT CASE WHEN sum(cost_usd_calls) > 0 THEN sum(cost_usd) END FROM usage_model_quarters WHERE quarter >= ?", (since,)
    ).fetchone()
    return row[0]


def session_cost(db: sqlite3.Connection, session: str) -> float | None:
    """The cost of an agent session's calls (Claude Code's session ID); None: none priced."""
    row = db.execute(
        "SELECT sum(cost_usd) FROM interactions WHERE client_session = ? AND operation = 'generate'", (session,)
    ).fetchone()
    return row[0]
