"""Usage by hour, day, week, month or model, like ccusage's reports: AI interactions,
failed calls, tokens (cached and reasoning apart), cost and hallucination flags
per period, each with its per-model breakdown. Periods are local hours and calendar
days (weeks start on Monday) unless `utc`. An hour is a real hour: on the day the
clock goes back the repeated hour is two periods, each labelled with its zone."""

import sqlite3

from taskmeter.analytics.history import STATED_BY, seconds_sql
from taskmeter.analytics.records import ModelLatency, ModelUsage, PeriodUsage, UsageReport, UsageStats
from taskmeter.store.interactions import FAILED_CALL_SQL
from taskmeter.timefmt import hour_label
from taskmeter.tokens import tokens_object

# The columns summed with a count of the calls that stated each; usage_quarters (m011) names that count `{column}_calls`.
_COUNTED = tuple(STATED_BY)
_FAILED = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"  # a NULL status makes the rule NULL: not failed
_SUMS = f"""ai_interactions, failed_calls, {", ".join(f"{c}, {c}_calls" for c in _COUNTED)}, priced, flagged"""

# Usage per quarter hour, model and task, kept by triggers (migration m011).
_QUARTERS = f"SELECT quarter || ':00.000000Z' AS at, model, task_key, {_SUMS} FROM usage_quarters"
# Each call as the rollup counts it: for a window that does not start and end on a quarter hour.
_CALLS = f"""
    SELECT i.started_at AS at, coalesce(i.model, '?') AS model, coalesce(i.task_id, '') AS task_key,
        NOT {_FAILED} AS ai_interactions, {_FAILED} AS failed_calls,
        {", ".join(f"coalesce(i.{c}, 0) AS {c}, i.{c} IS NOT NULL AS {c}_calls" for c in _COUNTED)},
        i.cost_usd IS NOT NULL AND NOT {_FAILED} AS priced, f.interaction_id IS NOT NULL AS flagged
    FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id
    WHERE i.operation = 'generate'
"""


def _on_quarter(stored: str | None) -> bool:
    """Whether a window's edge falls on a quarter hour (local midnight always does)."""
    return stored is None or (stored[14:16] in ("00", "15", "30", "45") and stored[16:] == ":00.000000Z")


# The UTC start of the call's local hour: the local hour's text would merge the hour a clock
# change repeats. Minus the local minute, as an offset can be half or three quarters of an hour.
_LOCAL_HOUR_START = "strftime('%Y-%m-%dT%H:%M:00.000000Z', at, printf('-%d minutes', strftime('%M', at, 'localtime')))"


def _period_sql(period: str, utc: bool) -> str:
    moment = "at" if utc else "at, 'localtime'"
    return {
        "hourly": "strftime('%Y-%m-%dT%H:00:00.000000Z', at)" if utc else _LOCAL_HOUR_START,
        "daily": f"date({moment})",
        "weekly": f"date({moment}, 'weekday 0', '-6 days')",  # the Monday of the week
        "monthly": f"strftime('%Y-%m', {moment})",
        "models": "'all'",
    }[period]


def _stats(row: dict) -> UsageStats:
    return {
        "ai_interactions": row["ai_interactions"],
        "failed_calls": row["failed_calls"],
        "tokens": tokens_object(row),
        "cost_usd": row["cost_usd"],
        "unpriced_interactions": row["ai_interactions"] - row["priced"],
        "hallucination_count": row["hallucination_count"],
    }


def _sum(rows: list[dict]) -> dict:
    total = {key: sum(row[key] for row in rows) for key in ("ai_interactions", "failed_calls", "priced", "hallucination_count")}
    for column in _COUNTED:
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
) -> UsageReport:
    """`period` is hourly, daily, weekly, monthly or models; since/until are stored
    timestamps; `task_id` narrows to one task's calls."""
    clauses, params = [], []
    if since:
        clauses.append("at >= ?")
        params.append(since)
    if until:
        clauses.append("at < ?")
        params.append(until)
    if task_id:
        clauses.append("task_key = ?")
        params.append(task_id)
    source = _QUARTERS if _on_quarter(since) and _on_quarter(until) else _CALLS
    # A count no call stated stays missing, never 0.
    stated = ", ".join(f"CASE WHEN sum({c}_calls) > 0 THEN sum({c}) END AS {c}" for c in _COUNTED)
    rows = db.execute(
        f"""
        SELECT {_period_sql(period, utc)} AS period, model, sum(ai_interactions) AS ai_interactions,
            sum(failed_calls) AS failed_calls, {stated}, sum(priced) AS priced, sum(flagged) AS hallucination_count
        FROM ({source}) WHERE {" AND ".join(clauses) or "1"}
        GROUP BY 1, 2 HAVING sum(ai_interactions) + sum(failed_calls) > 0
        ORDER BY 1, coalesce(sum(cost_usd), -1) DESC, sum(input_total + output_total) DESC, 2
        """,
        params,
    ).fetchall()
    by_period: dict[str, list[dict]] = {}
    for row in map(dict, rows):
        by_period.setdefault(row["period"], []).append(row)
    every = [row for group in by_period.values() for row in group]
    report: UsageReport = {
        "period": period,
        "since": since,
        "until": until,
        "task_id": task_id,
        "time_zone": "UTC" if utc else "local",
        "totals": _stats(_sum(every)) if every else _stats(_sum([])),
    }
    if period == "models":
        latencies = model_latencies(db, since, until, task_id)
        report["models"] = [{**_model_usage(row), "latency": latencies.get(row["model"], _NO_LATENCY)} for row in every]
    else:
        report["periods"] = [_period_usage(key, group, period == "hourly", utc) for key, group in by_period.items()]
    return report


def _model_usage(row: dict) -> ModelUsage:
    return {"model": row["model"], **_stats(row)}


def _period_usage(key: str, group: list[dict], hourly: bool, utc: bool) -> PeriodUsage:
    stats, models = _stats(_sum(group)), [_model_usage(row) for row in group]
    if hourly:  # An hour's key is its UTC start (`start`, for JSON); its label reads local, with the zone.
        return {"period": hour_label(key, utc), "start": key, **stats, "models": models}
    return {"period": key, **stats, "models": models}


_NO_LATENCY: ModelLatency = {
    "timed_calls": 0,
    "first_token_p50_seconds": None,
    "first_token_p95_seconds": None,
    "total_p50_seconds": None,
    "total_p95_seconds": None,
}


def _rank(percent: int, count: str) -> str:
    """The nearest-rank percentile's rank among `count` values: ceil(percent/100 × count)."""
    return f"({percent} * {count} + 99) / 100"


def model_latencies(
    db: sqlite3.Connection, since: str | None = None, until: str | None = None, task_id: str | None = None
) -> dict[str, ModelLatency]:
    """Per model, the p50 and p95 (nearest rank) of its answered calls' seconds to the
    first byte of the answer (a stream's first token) and to the end. Calls imported
    from agents' logs were never timed by the meter and count in neither."""
    clauses, params = [], []
    for clause, value in (("i.started_at >= ?", since), ("i.started_at < ?", until), ("i.task_id = ?", task_id)):
        if value:
            clauses.append(clause)
            params.append(value)
    rows = db.execute(
        f"""
        WITH timed AS (
            SELECT coalesce(i.model, '?') AS model,
                {seconds_sql("i.first_byte_at")} - {seconds_sql("i.started_at")} AS first_token,
                {seconds_sql("i.ended_at")} - {seconds_sql("i.started_at")} AS total
            FROM interactions i
            WHERE i.operation = 'generate' AND NOT {_FAILED} AND i.ended_at IS NOT NULL
                AND i.usage_source IS NOT 'agent-log' AND {" AND ".join(clauses) or "1"}
        ), ranked AS (
            SELECT model, first_token, total,
                row_number() OVER (PARTITION BY model ORDER BY first_token NULLS LAST) AS first_rank,
                row_number() OVER (PARTITION BY model ORDER BY total) AS total_rank,
                count(first_token) OVER (PARTITION BY model) AS first_calls,
                count(*) OVER (PARTITION BY model) AS calls
            FROM timed
        )
        SELECT model, calls,
            max(CASE WHEN first_rank = {_rank(50, "first_calls")} THEN first_token END) AS first_p50,
            max(CASE WHEN first_rank = {_rank(95, "first_calls")} THEN first_token END) AS first_p95,
            max(CASE WHEN total_rank = {_rank(50, "calls")} THEN total END) AS total_p50,
            max(CASE WHEN total_rank = {_rank(95, "calls")} THEN total END) AS total_p95
        FROM ranked GROUP BY model
        """,
        params,
    ).fetchall()
    return {
        row["model"]: {
            "timed_calls": row["calls"],
            "first_token_p50_seconds": _microseconds(row["first_p50"]),
            "first_token_p95_seconds": _microseconds(row["first_p95"]),
            "total_p50_seconds": _microseconds(row["total_p50"]),
            "total_p95_seconds": _microseconds(row["total_p95"]),
        }
        for row in rows
    }


def _microseconds(seconds: float | None) -> float | None:
    """A difference of stored moments, without the float noise of its subtraction."""
    return None if seconds is None else round(seconds, 6)
