"""Usage by hour, day, week, month or model, like ccusage's reports: AI interactions,
failed calls, tokens (cached and reasoning apart), cost and hallucination flags
per period, each with its per-model breakdown. Periods are local hours and calendar
days (weeks start on Monday) unless `utc`. An hour is a real hour: on the day the
clock goes back the repeated hour is two periods, each labelled with its zone."""

import sqlite3
import time
from datetime import date, datetime, timedelta

from taskmeter.store import scratch
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import hour_label, seconds_sql
from taskmeter.tokens import STATED_COLUMNS, tokens_object

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker: the report types cost a report's start-up
    from taskmeter.analytics.records import ModelLatency, ModelUsage, PeriodUsage, UsageReport, UsageStats

_FAILED = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"  # a NULL status makes the rule NULL: not failed

# A rollup's rows (_quarters_table) with the moment each quarter hour starts.
_QUARTERS = "SELECT quarter || ':00.000000Z' AS at, * FROM {table}"


def _quarters_table(task_id: str | None) -> str:
    """The rollup a window of whole quarter hours is read from: usage per quarter hour, model and
    task (migration m011) for a task's report; for every task's, the same summed over tasks (m030)."""
    return "usage_quarters" if task_id else "usage_model_quarters"


# Each call as the rollup counts it: for a window that does not start and end on a quarter hour.
_CALLS = f"""
    SELECT i.started_at AS at, coalesce(i.model, '?') AS model, coalesce(i.task_id, '') AS task_key,
        NOT {_FAILED} AS ai_interactions, {_FAILED} AS failed_calls,
        {", ".join(f"coalesce(i.{c}, 0) AS {c}, i.{c} IS NOT NULL AS {c}_calls" for c in STATED_COLUMNS)},
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
    for column in STATED_COLUMNS:
        stated = [row[column] for row in rows if row[column] is not None]
        total[column] = sum(stated) if stated else None
    return total


# A period's models, the costliest first, then the most tokens: from the figures the report
# shows (a cost no call stated is none, sums to the nano-dollar), so the rollup and the calls
# order them alike (a rollup keeps 0, and the last bits of costs its deleted calls took away).
_RANKS = {
    "cost_rank": "coalesce(round(CASE WHEN sum(cost_usd_calls) > 0 THEN sum(cost_usd) END, 9), -1)",
    "token_rank": "coalesce(sum(input_total), 0) + coalesce(sum(output_total), 0)",
}
_LARGEST_FIRST = ", ".join(f"{rank} DESC" for rank in _RANKS.values())
# A count no call stated stays missing, never 0 (the rollups keep how many calls stated each: `{column}_calls`).
_STATED = ", ".join(f"CASE WHEN sum({c}_calls) > 0 THEN sum({c}) END AS {c}" for c in STATED_COLUMNS)
_GROUP_SUMS = f"""sum(ai_interactions) AS ai_interactions, sum(failed_calls) AS failed_calls, {_STATED},
    sum(priced) AS priced, sum(flagged) AS hallucination_count"""
_HAVING = "HAVING sum(ai_interactions) + sum(failed_calls) > 0"


def usage_rows(
    db: sqlite3.Connection, period: str, since: str | None, until: str | None, utc: bool, task_id: str | None
) -> list[sqlite3.Row]:
    """A row per period and model with calls (`period`, `model` and the sums), in the report's
    order: by period, then the costliest model first."""
    rows = _rows_by_span(db, period, since, until, utc, task_id) if on_quarter(since) and on_quarter(until) else None
    return _rows_by_key(db, period, since, until, utc, task_id) if rows is None else rows


def _rows_by_key(
    db: sqlite3.Connection, period: str, since: str | None, until: str | None, utc: bool, task_id: str | None
) -> list[sqlite3.Row]:
    """A row per period and model, the period of each quarter hour (or call) worked out in SQL, the
    rows sorted into periods: whatever the window, zone or number of models."""
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
    source = _QUARTERS.format(table=_quarters_table(task_id)) if on_quarter(since) and on_quarter(until) else _CALLS
    return db.execute(
        f"""
        SELECT {_period_sql(period, utc)} AS period, model, {_GROUP_SUMS}
        FROM ({source}) WHERE {" AND ".join(clauses) or "1"}
        GROUP BY 1, 2 {_HAVING}
        ORDER BY 1, {_LARGEST_FIRST}, 2
        """,
        params,
    ).fetchall()


# Beyond this many periods (an hourly report over more than half a year: 3 µs a span to work
# out), sorting the rows into periods costs less than a span per hour.
SPAN_LIMIT = 5_000


def _rows_by_span(
    db: sqlite3.Connection, period: str, since: str | None, until: str | None, utc: bool, task_id: str | None
) -> list[sqlite3.Row] | None:
    """`_rows_by_key`'s rows over a window of whole quarter hours, in its order and to the last bit
    of each cost: each period a span of quarter hours (period_spans), summed model by model (a single
    model in one pass) as the primary key reads them, with no sort but of the few rows made. None
    where `_rows_by_key` must answer: more than MODEL_PASSES models (store/scratch.py) or SPAN_LIMIT
    periods, or periods that are no spans."""
    clauses, params = [], []
    for clause, value in (
        ("quarter >= ?", since and since[:16]),
        ("quarter < ?", until and until[:16]),
        ("task_key = ?", task_id),
    ):
        if value:
            clauses.append(clause)
            params.append(value)
    where, table = " AND ".join(clauses) or "1", _quarters_table(task_id)
    # Two statements: SQLite reads a lone min() or max() from the index's end, but scans for both.
    first = db.execute(f"SELECT min(quarter) FROM {table} WHERE {where}", params).fetchone()[0]
    if first is None:
        return []
    last = db.execute(f"SELECT max(quarter) FROM {table} WHERE {where}", params).fetchone()[0]
    models = [row[0] for row in db.execute(f"SELECT DISTINCT model FROM {table} WHERE {where}", params)]
    spans = period_spans(period, utc, first, last) if len(models) <= scratch.MODEL_PASSES else None
    if spans is None:
        return None
    scratch.hold_period_spans(db, spans)
    # The spans in order (CROSS JOIN keeps them the outer loop), each read by the primary key:
    # a group's rows come in the order the sort of _rows_by_key leaves them, so its sums are the same.
    task = "AND task_key = ?" if task_id else ""
    joined = f"FROM temp.period_spans s CROSS JOIN {table} q ON q.quarter >= s.lo AND q.quarter < s.hi"
    if len(models) == 1:  # one pass of all the rows, a row a period in the order of the spans: no models to rank
        return db.execute(
            f"SELECT s.period AS period, model, {_GROUP_SUMS} {joined} WHERE 1 {task} GROUP BY s.k {_HAVING}",
            [task_id] if task_id else [],
        ).fetchall()
    ranks = ", ".join(f"{rank} AS {name}" for name, rank in _RANKS.items())
    passes = " UNION ALL ".join(
        f"SELECT s.period AS period, model, {_GROUP_SUMS}, {ranks} {joined} WHERE q.model = ? {task} GROUP BY s.k {_HAVING}"
        for _ in models
    )
    columns = ", ".join(("period", "model", "ai_interactions", "failed_calls", *STATED_COLUMNS, "priced", "hallucination_count"))
    return db.execute(
        f"SELECT {columns} FROM ({passes}) ORDER BY period, {', '.join(f'{name} DESC' for name in _RANKS)}, model",
        [value for model in models for value in (model, *([task_id] if task_id else []))],
    ).fetchall()


# SQLite reads local time through the C library for moments from 1970 to 2038-01-18 alone (outside,
# it takes a like year); Python's `time` reads the same C library, so between these the two agree
# (and, in UTC too, years of four digits are written alike).
_LOCAL_TIME_FROM, _LOCAL_TIME_UNTIL = 86_400, 2_147_385_600 - 86_400
_QUARTER_SECONDS, _DAY_SECONDS = 900, 86_400


def period_spans(period: str, utc: bool, first: str, last: str) -> list[tuple[str, str, str]] | None:
    """The periods from quarter hour `first` to quarter hour `last` (the rollups' keys), as
    (period, first quarter, quarter after the last): the period each quarter hour has in
    `_period_sql`, worked out where it can change alone: where a local hour or day begins and
    where the offset from UTC changes. None where a period would be two spans (a clock put back
    over midnight), outside 1970-2037, where SQLite's local time is not the C library's, or beyond
    SPAN_LIMIT."""
    start = int(datetime.fromisoformat(first + ":00+00:00").timestamp())
    end = int(datetime.fromisoformat(last + ":00+00:00").timestamp()) + _QUARTER_SECONDS
    if period == "models":
        return [("all", first, _quarter(end))]
    if not _LOCAL_TIME_FROM <= start < end <= _LOCAL_TIME_UNTIL:
        return None
    step = 3600 if period == "hourly" else _DAY_SECONDS
    changes = [(start, 0)] if utc else _offset_changes(start, end)
    starts: set[int] = set()
    for (begins, offset), (ends, _) in zip(changes, [*changes[1:], (end, 0)], strict=True):
        starts.add(-(-begins // _QUARTER_SECONDS) * _QUARTER_SECONDS)
        moment = begins + (-(begins + offset)) % step  # the first local hour or midnight from `begins`
        while moment < ends:
            starts.add(-(-moment // _QUARTER_SECONDS) * _QUARTER_SECONDS)  # the first quarter hour in it
            moment += step
        if len(starts) > SPAN_LIMIT:
            return None
    key = _PERIOD_KEYS[period]
    spans: list[tuple[str, str]] = []  # (period, its first quarter hour)
    for moment in sorted(starts):
        if moment >= end:
            break
        quarter = _quarter(moment)
        period_key = key(moment, time.gmtime(moment) if utc else time.localtime(moment), quarter)
        if spans and spans[-1][0] == period_key:
            continue
        if spans and spans[-1][0] > period_key:
            return None  # the clock went back over the start of a period: it is two spans
        spans.append((period_key, quarter))
    quarters = [quarter for _, quarter in spans] + [_quarter(end)]
    return [(period_key, quarters[n], quarters[n + 1]) for n, (period_key, _) in enumerate(spans)]


def _offset_changes(start: int, end: int) -> list[tuple[int, int]]:
    """(moment, offset from UTC in seconds from then on) over [start, end): the offset at `start`,
    then each change, to the second. Probed a day apart: no zone has changed its offset twice
    within a week since 1970 (the shortest was Brazil's, 7 days in October 2000)."""
    changes = [(start, time.localtime(start).tm_gmtoff)]
    probe = start
    while probe < end:
        ahead = min(probe + _DAY_SECONDS, end)
        if time.localtime(ahead).tm_gmtoff == changes[-1][1]:
            probe = ahead
            continue
        before, after = probe, ahead  # the offset changes after `before`, by `after`
        while after - before > 1:
            middle = (before + after) // 2
            before, after = (middle, after) if time.localtime(middle).tm_gmtoff == changes[-1][1] else (before, middle)
        changes.append((after, time.localtime(after).tm_gmtoff))
        probe = after
    return changes


def _quarter(moment: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(moment))


def _day(clock: time.struct_time) -> date:
    return date(clock.tm_year, clock.tm_mon, clock.tm_mday)


def _hour_key(moment: int, clock: time.struct_time, quarter: str) -> str:
    # The UTC start of the local hour: most often the quarter hour's own (written once, a third of the spans' cost).
    return (quarter if clock.tm_min == 0 else _quarter(moment - 60 * clock.tm_min)) + ":00.000000Z"


# The period of the quarter hour starting at `moment`, whose clock (local or UTC) is `clock` and
# text (`_quarter`) is `quarter`: `_period_sql`'s text.
_PERIOD_KEYS = {
    "hourly": _hour_key,
    "daily": lambda moment, clock, quarter: _day(clock).isoformat(),
    "weekly": lambda moment, clock, quarter: (_day(clock) - timedelta(days=clock.tm_wday)).isoformat(),
    "monthly": lambda moment, clock, quarter: f"{clock.tm_year:04d}-{clock.tm_mon:02d}",
}


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
    rows = usage_rows(db, period, since, until, utc, task_id)
    keys = rows[0].keys() if rows else []
    every = [dict(zip(keys, row, strict=True)) for row in rows]  # by name, a Row looks each key up in turn
    report: UsageReport = {
        "period": period,
        "since": since,
        "until": until,
        "task_id": task_id,
        "time_zone": "UTC" if utc else "local",
        "totals": _stats(_sum(every)),
    }
    if period == "models":
        latencies = model_latencies(db, [row["model"] for row in every], since, until, task_id)
        report["models"] = [{**_model_usage(row), "latency": latencies[row["model"]]} for row in every]
    else:
        by_period: dict[str, list[dict]] = {}
        for row in every:
            by_period.setdefault(row["period"], []).append(row)
        report["periods"] = [_period_usage(key, group, period == "hourly", utc) for key, group in by_period.items()]
    return report


def _model_usage(row: dict) -> "ModelUsage":
    return {"model": row["model"], **_stats(row)}


def _period_usage(key: str, group: list[dict], hourly: bool, utc: bool) -> "PeriodUsage":
    if len(group) == 1:  # one model (most hours): its figures are the period's, sum() of one number the number
        stats = _stats(group[0])
        models: list[ModelUsage] = [{"model": group[0]["model"], **stats}]
    else:
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
