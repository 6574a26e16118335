"""Usage by hour, day, week, month or model, like ccusage's reports: AI interactions,
failed calls, tokens (cached and reasoning apart), cost and hallucination flags
per period, each with its per-model breakdown. Periods are local hours and calendar
days (weeks start on Monday) unless `utc`. An hour is a real hour: on the day the
clock goes back the repeated hour is two periods, each labelled with its zone."""

import sqlite3
import time

from taskmeter.analytics.history import STATED_BY, seconds_sql
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import hour_label
from taskmeter.tokens import tokens_object

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker: the report types cost a report's start-up
    from taskmeter.analytics.records import ModelLatency, ModelUsage, PeriodUsage, UsageReport, UsageStats

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


def on_quarter(stored: str | None) -> bool:
    """Whether a window's edge falls on a quarter hour (local midnight always does)."""
    return stored is None or (stored[14:16] in ("00", "15", "30", "45") and stored[16:] == ":00.000000Z")


# The UTC start of the call's local hour: the local hour's text would merge the hour a clock
# change repeats. Minus the local minute, as an offset can be half or three quarters of an hour.
_LOCAL_HOUR_START = "strftime('%Y-%m-%dT%H:%M:00.000000Z', at, printf('-%d minutes', strftime('%M', at, 'localtime')))"


# Where the clock is a whole number of hours from UTC, as in most zones, a call's local minute is
# its UTC minute, and its local hour starts with its UTC hour: the same key as _LOCAL_HOUR_START,
# without a second date conversion a row (a third of an hourly report over a million calls).
_WHOLE_HOUR_LOCAL_START = (
    "CASE WHEN strftime('%M', at, 'localtime') = substr(at, 15, 2) THEN substr(at, 1, 13) || ':00:00.000000Z'"
    f" ELSE {_LOCAL_HOUR_START} END"
)


def _local_hour_sql() -> str:
    # Both keys are exact in any zone; elsewhere (India, Nepal, Newfoundland...) the test would cost more than it saves.
    return _WHOLE_HOUR_LOCAL_START if time.localtime().tm_gmtoff % 3600 == 0 else _LOCAL_HOUR_START


def _period_sql(period: str, utc: bool) -> str:
    moment = "at" if utc else "at, 'localtime'"
    return {
        "hourly": "strftime('%Y-%m-%dT%H:00:00.000000Z', at)" if utc else _local_hour_sql(),
        "daily": f"date({moment})",
        "weekly": f"date({moment}, 'weekday 0', '-6 days')",  # the Monday of the week
        "monthly": f"strftime('%Y-%m', {moment})",
        "models": "'all'",
    }[period]


def _stats(row: dict) -> "UsageStats":
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


# A period's models, the costliest first, then the most tokens: from the figures the report
# shows (a cost no call stated is none, sums to the nano-dollar), so the rollup and the calls
# order them alike (a rollup keeps 0, and the last bits of costs its deleted calls took away).
_LARGEST_FIRST = (
    "coalesce(round(CASE WHEN sum(cost_usd_calls) > 0 THEN sum(cost_usd) END, 9), -1) DESC,"
    " coalesce(sum(input_total), 0) + coalesce(sum(output_total), 0) DESC"
)


def usage_report(
    db: sqlite3.Connection,
    period: str,
    since: str | None = None,
    until: str | None = None,
    utc: bool = False,
    task_id: str | None = None,
) -> "UsageReport":
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
    source = _QUARTERS if on_quarter(since) and on_quarter(until) else _CALLS
    # A count no call stated stays missing, never 0.
    stated = ", ".join(f"CASE WHEN sum({c}_calls) > 0 THEN sum({c}) END AS {c}" for c in _COUNTED)
    rows = db.execute(
        f"""
        SELECT {_period_sql(period, utc)} AS period, model, sum(ai_interactions) AS ai_interactions,
            sum(failed_calls) AS failed_calls, {stated}, sum(priced) AS priced, sum(flagged) AS hallucination_count
        FROM ({source}) WHERE {" AND ".join(clauses) or "1"}
        GROUP BY 1, 2 HAVING sum(ai_interactions) + sum(failed_calls) > 0
        ORDER BY 1, {_LARGEST_FIRST}, 2
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
        latencies = model_latencies(db, [row["model"] for row in every], since, until, task_id)
        report["models"] = [{**_model_usage(row), "latency": latencies[row["model"]]} for row in every]
    else:
        report["periods"] = [_period_usage(key, group, period == "hourly", utc) for key, group in by_period.items()]
    return report


def _model_usage(row: dict) -> "ModelUsage":
    return {"model": row["model"], **_stats(row)}


def _period_usage(key: str, group: list[dict], hourly: bool, utc: bool) -> "PeriodUsage":
    stats, models = _stats(_sum(group)), [_model_usage(row) for row in group]
    if hourly:  # An hour's key is its UTC start (`start`, for JSON); its label reads local, with the zone.
        return {"period": hour_label(key, utc), "start": key, **stats, "models": models}
    return {"period": key, **stats, "models": models}


# Latency is taken over the newest calls of each model in the window: what it is now,
# read through the (model, started_at) index however long the history.
LATENCY_SAMPLE = 1000


def _nearest_rank(ordered: list[float], percent: int) -> float | None:
    """The nearest-rank percentile of sorted values: the ceil(percent/100 × n)-th."""
    return ordered[-(-percent * len(ordered) // 100) - 1] if ordered else None


def model_latencies(
    db: sqlite3.Connection,
    models: list[str],
    since: str | None = None,
    until: str | None = None,
    task_id: str | None = None,
) -> "dict[str, ModelLatency]":
    """Per model (`?`: calls that named none), over its newest LATENCY_SAMPLE answered
    calls in the window, the p50 and p95 (nearest rank) of the seconds to the first
    byte of the answer (a stream's first token) and to the end. Calls imported from
    agents' logs were never timed by the meter and count in neither. A task's are read
    through the (task_id, started_at) index: through the model's, a task of long ago
    would walk every later call of the model."""
    clauses, params = [], []
    for clause, value in (("i.started_at >= ?", since), ("i.started_at < ?", until), ("i.task_id = ?", task_id)):
        if value:
            clauses.append(clause)
            params.append(value)
    latencies: dict[str, ModelLatency] = {}
    for model in models:
        rows = db.execute(
            f"""
            SELECT {seconds_sql("i.first_byte_at")} - {seconds_sql("i.started_at")} AS first_token,
                {seconds_sql("i.ended_at")} - {seconds_sql("i.started_at")} AS total
            FROM interactions i {"INDEXED BY interactions_task" if task_id else ""}
            WHERE {"i.model IS NULL" if model == "?" else "i.model = ?"} AND i.operation = 'generate'
                AND NOT {_FAILED} AND i.ended_at IS NOT NULL AND i.usage_source IS NOT 'agent-log'
                AND {" AND ".join(clauses) or "1"}
            ORDER BY i.started_at DESC LIMIT ?
            """,
            [*([] if model == "?" else [model]), *params, LATENCY_SAMPLE],
        ).fetchall()
        firsts = sorted(row["first_token"] for row in rows if row["first_token"] is not None)
        totals = sorted(row["total"] for row in rows)
        latencies[model] = {
            "timed_calls": len(rows),
            "first_token_p50_seconds": _microseconds(_nearest_rank(firsts, 50)),
            "first_token_p95_seconds": _microseconds(_nearest_rank(firsts, 95)),
            "total_p50_seconds": _microseconds(_nearest_rank(totals, 50)),
            "total_p95_seconds": _microseconds(_nearest_rank(totals, 95)),
        }
    return latencies


def _microseconds(seconds: float | None) -> float | None:
    """A difference of stored moments, without the float noise of its subtraction."""
    return None if seconds is None else round(seconds, 6)
