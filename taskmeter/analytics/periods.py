"""Usage by hour, day, week, month or model, like ccusage's reports: AI interactions,
failed calls, tokens (cached and reasoning apart), cost and hallucination flags
per period, each with its per-model breakdown. Periods are local calendar days
(weeks start on Monday) unless `utc`."""

import sqlite3

from taskmeter.analytics.listings import tokens
from taskmeter.store.interactions import FAILED_CALL_SQL


def _period_sql(period: str, utc: bool) -> str:
    moment = "i.started_at" if utc else "i.started_at, 'localtime'"
    return {
        "hourly": f"strftime('%Y-%m-%d %H:00', {moment})",
        "daily": f"date({moment})",
        "weekly": f"date({moment}, 'weekday 0', '-6 days')",  # the Monday of the week
        "monthly": f"strftime('%Y-%m', {moment})",
        "models": "'all'",
    }[period]


def _stats(row: dict) -> dict:
    return {
        "ai_interactions": row["ai_interactions"],
        "failed_calls": row["failed_calls"],
        "tokens": tokens(row),
        "cost_usd": row["cost_usd"],
        "unpriced_interactions": row["ai_interactions"] - row["priced"],
        "hallucination_count": row["hallucination_count"],
    }


def _sum(rows: list[dict]) -> dict:
    total = {key: sum(row[key] for row in rows) for key in ("ai_interactions", "failed_calls", "priced", "hallucination_count")}
    for column in ("input_total", "cache_read", "cache_write", "output_total", "reasoning", "cost_usd"):
        stated = [row[column] for row in rows if row[column] is not None]
        total[column] = sum(stated) if stated else None
    return total


def usage_report(
    db: sqlite3.Connection,
    period: str,
    since: str | None = None,
    until: str | None = None,
    utc: bool = False,
    task_id: str | None = None,
) -> dict:
    """`period` is hourly, daily, weekly, monthly or models; since/until are stored
    timestamps; `task_id` narrows to one task's calls."""
    failed = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"  # a NULL status makes the rule NULL: not failed
    clauses, params = ["i.operation = 'generate'"], []
    if since:
        clauses.append("i.started_at >= ?")
        params.append(since)
    if until:
        clauses.append("i.started_at < ?")
        params.append(until)
    if task_id:
        clauses.append("i.task_id = ?")
        params.append(task_id)
    # sum() of no stated value is NULL: a count no call stated stays missing, never 0.
    rows = db.execute(
        f"""
        SELECT {_period_sql(period, utc)} AS period, coalesce(i.model, '?') AS model,
            sum(NOT {failed}) AS ai_interactions, sum({failed}) AS failed_calls,
            sum(i.input_total) AS input_total, sum(i.cache_read) AS cache_read, sum(i.cache_write) AS cache_write,
            sum(i.output_total) AS output_total, sum(i.reasoning) AS reasoning,
            sum(i.cost_usd) AS cost_usd, sum(i.cost_usd IS NOT NULL AND NOT {failed}) AS priced,
            count(f.interaction_id) AS hallucination_count
        FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id
        WHERE {" AND ".join(clauses)}
        GROUP BY 1, 2 ORDER BY 1, sum(coalesce(i.input_total, 0) + coalesce(i.output_total, 0)) DESC, 2
        """,
        params,
    ).fetchall()
    by_period: dict[str, list[dict]] = {}
    for row in map(dict, rows):
        by_period.setdefault(row["period"], []).append(row)
    every = [row for group in by_period.values() for row in group]
    report = {
        "period": period,
        "since": since,
        "until": until,
        "task_id": task_id,
        "time_zone": "UTC" if utc else "local",
        "totals": _stats(_sum(every)) if every else _stats(_sum([])),
    }
    if period == "models":
        report["models"] = [{"model": row["model"], **_stats(row)} for row in every]
    else:
        report["periods"] = [
            {"period": key, **_stats(_sum(group)), "models": [{"model": row["model"], **_stats(row)} for row in group]}
            for key, group in by_period.items()
        ]
    return report
