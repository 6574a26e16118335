"""Issue 23, instant commands: the usage reports (`meter report hourly|daily|weekly|monthly|models`)
over a window of whole quarter hours sum each period as a span of a rollup (usage_quarters for
a task, usage_model_quarters for every task), read model by model along its primary key, with no sort of its rows and no local time worked
out row by row in SQL. Held equal, to the last bit of every cost, to the SQL the reports ran
before (kept here as the oracle), over random histories on a real SQLite file: around every
change of the clock in 2026 and the new year, in zones an hour, half an hour or three quarters
off whole hours, whose offset changes by half an hour (Lord Howe), whose clock goes back at
midnight (Santiago), and a rule whose clock goes back over midnight (then a day is no span,
and the reports sort rows as before); in local time and UTC, through windows on and off the
quarter hour, of every task or one, with failed, unpriced, unstated and flagged calls."""

import contextlib
import functools
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmeter.analytics import periods
from taskmeter.analytics.history import STATED_BY
from taskmeter.store import interactions, scratch, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.store.rules import FAILED_CALL_SQL
from taskmeter.timefmt import to_stored
from tests.migrated import migrated_database

# The reports' SQL before spans, whole: each quarter hour's (or call's) period worked out in SQL, then sorted.
_COUNTED = tuple(STATED_BY)
_FAILED = f"coalesce({FAILED_CALL_SQL.format(r='i')}, 0)"
_SUMS = f"""ai_interactions, failed_calls, {", ".join(f"{c}, {c}_calls" for c in _COUNTED)}, priced, flagged"""
# A task's quarter hours (usage_quarters), or every task's summed (usage_model_quarters, m030): the rollup the reports read.
_QUARTERS = f"SELECT quarter || ':00.000000Z' AS at, model, {{task_key}} {_SUMS} FROM {{table}}"
_CALLS = f"""
    SELECT i.started_at AS at, coalesce(i.model, '?') AS model, coalesce(i.task_id, '') AS task_key,
        NOT {_FAILED} AS ai_interactions, {_FAILED} AS failed_calls,
        {", ".join(f"coalesce(i.{c}, 0) AS {c}, i.{c} IS NOT NULL AS {c}_calls" for c in _COUNTED)},
        i.cost_usd IS NOT NULL AND NOT {_FAILED} AS priced, f.interaction_id IS NOT NULL AS flagged
    FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id
    WHERE i.operation = 'generate'
"""
_LOCAL_HOUR_START = "strftime('%Y-%m-%dT%H:%M:00.000000Z', at, printf('-%d minutes', strftime('%M', at, 'localtime')))"
_WHOLE_HOUR_LOCAL_START = (
    "CASE WHEN strftime('%M', at, 'localtime') = substr(at, 15, 2) THEN substr(at, 1, 13) || ':00:00.000000Z'"
    f" ELSE {_LOCAL_HOUR_START} END"
)
_LARGEST_FIRST = (
    "coalesce(round(CASE WHEN sum(cost_usd_calls) > 0 THEN sum(cost_usd) END, 9), -1) DESC,"
    " coalesce(sum(input_total), 0) + coalesce(sum(output_total), 0) DESC"
)


def _old_rows(db, period: str, since: str | None, until: str | None, utc: bool, task_id: str | None) -> list[tuple]:
    moment = "at" if utc else "at, 'localtime'"
    local_hour = _WHOLE_HOUR_LOCAL_START if time.localtime().tm_gmtoff % 3600 == 0 else _LOCAL_HOUR_START
    key = {
        "hourly": "strftime('%Y-%m-%dT%H:00:00.000000Z', at)" if utc else local_hour,
        "daily": f"date({moment})",
        "weekly": f"date({moment}, 'weekday 0', '-6 days')",
        "monthly": f"strftime('%Y-%m', {moment})",
        "models": "'all'",
    }[period]
    clauses, params = [], []
    for clause, value in (("at >= ?", since), ("at < ?", until), ("task_key = ?", task_id)):
        if value:
            clauses.append(clause)
            params.append(value)
    rollup = (
        _QUARTERS.format(task_key="task_key,", table="usage_quarters")
        if task_id
        else _QUARTERS.format(task_key="", table="usage_model_quarters")
    )
    source = rollup if periods.on_quarter(since) and periods.on_quarter(until) else _CALLS
    stated = ", ".join(f"CASE WHEN sum({c}_calls) > 0 THEN sum({c}) END AS {c}" for c in _COUNTED)
    rows = db.execute(
        f"""
        SELECT {key} AS period, model, sum(ai_interactions) AS ai_interactions,
            sum(failed_calls) AS failed_calls, {stated}, sum(priced) AS priced, sum(flagged) AS hallucination_count
        FROM ({source}) WHERE {" AND ".join(clauses) or "1"}
        GROUP BY 1, 2 HAVING sum(ai_interactions) + sum(failed_calls) > 0
        ORDER BY 1, {_LARGEST_FIRST}, 2
        """,
        params,
    ).fetchall()
    return [tuple(row) for row in rows]


# A POSIX rule (no such zone, but the C library and SQLite read it): summer time at +3 ends at
# 00:30 on the last Sunday of October, back to 22:30 at +1, the day before: a day that is two spans.
BACK_OVER_MIDNIGHT = "AAA-1BBB-3,M3.5.0/2,M10.5.0/0:30"
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",  # -03:30, and -02:30 in summer
    "Australia/Lord_Howe",  # +10:30, and +11 in summer: half an hour changes
    "Pacific/Chatham",  # +12:45 and +13:45
    "America/Santiago",  # back from 00:00 to 23:00 the day before, forward from 00:00 to 01:00
    "Africa/Casablanca",  # an hour back for Ramadan
    BACK_OVER_MIDNIGHT,
]


@functools.cache
def _anchors(zone: str) -> list[datetime]:
    """Moments to put calls around: each change of the zone's offset in 2026 (to the hour), its new year."""
    if zone == BACK_OVER_MIDNIGHT:
        return [datetime(2026, 10, 24, 21, 30, tzinfo=UTC), datetime(2026, 12, 31, 23, 0, tzinfo=UTC)]
    clock = ZoneInfo(zone)
    found, moment = [], datetime(2026, 1, 1, tzinfo=UTC)
    while moment < datetime(2027, 1, 1, tzinfo=UTC):
        if moment.astimezone(clock).utcoffset() != (moment + timedelta(hours=1)).astimezone(clock).utcoffset():
            found.append(moment + timedelta(hours=1))
        moment += timedelta(hours=1)
    return [*found, datetime(2027, 1, 1, tzinfo=clock).astimezone(UTC)]


@contextlib.contextmanager
def local_zone(zone: str):
    """This process's local time zone, as TZ sets it for a shell; SQLite's 'localtime' reads it too."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


MODELS = ["claude-sonnet-4-6", "gpt-5", None]
NAMED_TASKS = ["P1-001", "P1-002"]
TASKS = [*NAMED_TASKS, None]
# Seconds from the anchor: on quarter hours, on minutes, anywhere (to the microsecond), three days
# either side; and within two hours of it, where calls of several tasks share quarter hours.
offsets = st.one_of(
    st.integers(-288, 288).map(lambda quarters: quarters * 900.0),
    st.integers(-4320, 4320).map(lambda minutes: minutes * 60.0),
    st.integers(-3 * 86_400 * 10**6, 3 * 86_400 * 10**6).map(lambda micros: micros / 10**6),
    st.integers(-7200, 7200).map(float),
)
# A cost's sum depends on the order of its terms in the last bits: these show it.
costs = st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, 0.7, 1e-7, 0.0123456789, 3.3, 1 / 3]))
calls = st.lists(
    st.tuples(
        offsets,
        st.integers(0, len(MODELS) - 1),
        st.integers(0, len(TASKS) - 1),
        st.sampled_from(["answered", "failed", "unstated"]),
        st.integers(0, 5000),
        costs,
        st.booleans(),  # flagged, if answered
    ),
    max_size=60,
)
edges = st.one_of(
    st.none(),
    st.integers(-288, 288).map(lambda quarters: quarters * 900.0),  # on a quarter hour: the spans
    st.integers(-3 * 86_400, 3 * 86_400).map(float),  # off it, mostly: the calls
)


def _store(db, anchor: datetime, history, models: list) -> None:
    with write_transaction(db):
        for task_id in NAMED_TASKS:
            tasks.ensure_task(db, task_id, "2026-01-01T00:00:00.000000Z")
    rows, flagged = [], []
    for number, (at, model, task, kind, tokens, cost, flag) in enumerate(history):
        moment = to_stored(anchor + timedelta(seconds=at))
        answered, stated = kind != "failed", kind == "answered"
        rows.append(
            CallRow(
                Interaction(
                    id=f"0000000p{number:04d}",
                    started_at=moment,
                    ended_at=moment,
                    task_id=TASKS[task],
                    attribution="path" if TASKS[task] else None,
                    provider="openai",
                    model=models[model % len(models)],
                    http_status=200 if answered else 502,
                    outcome="complete" if answered else "failed",
                    input_total=tokens if stated else None,
                    cache_read=tokens // 3 if stated else None,
                    output_total=tokens // 2 if answered else None,
                    reasoning=tokens // 7 if stated and tokens % 2 else None,
                    cost_usd=cost if answered else None,
                    usage_source="reported" if answered else None,
                )
            )
        )
        if answered and flag:
            flagged.append(f"0000000p{number:04d}")
    with write_transaction(db):
        store_calls(db, rows)
    for interaction_id in flagged:
        interactions.flag(db, interaction_id)


def _check(zone: str, anchor_index: int, history, window, period: str, utc: bool, task: int, models: list = MODELS) -> None:
    anchors = _anchors(zone)
    anchor = anchors[anchor_index % len(anchors)]
    since, until = (None if edge is None else to_stored(anchor + timedelta(seconds=edge)) for edge in window)
    task_id = TASKS[task]
    with local_zone(zone), tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            _store(db, anchor, history, models)
            expected = _old_rows(db, period, since, until, utc, task_id)
            assert [tuple(row) for row in periods.usage_rows(db, period, since, until, utc, task_id)] == expected
            if not (periods.on_quarter(since) and periods.on_quarter(until)):
                return
            spans = periods._rows_by_span(db, period, since, until, utc, task_id)
            if spans is not None:
                assert [tuple(row) for row in spans] == expected
            elif zone != BACK_OVER_MIDNIGHT and len(models) <= scratch.MODEL_PASSES:
                raise AssertionError("a window of whole quarter hours in a zone of today's rules is read by spans")
        finally:
            db.close()


# A usage report's arguments over a drawn history: its zone, when the history starts, the window, the period...
USAGE_REPORT_CASES = {
    "zone": st.sampled_from(ZONES),
    "anchor_index": st.integers(0, 3),
    "history": calls,
    "window": st.tuples(edges, edges),
    "period": st.sampled_from(["hourly", "daily", "weekly", "monthly", "models"]),
    "utc": st.booleans(),
    "task": st.integers(0, len(TASKS) - 1),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**USAGE_REPORT_CASES)
@example(  # three tasks' calls in each quarter hour: a cost's sum shows the order its terms were added in
    zone="America/New_York",
    anchor_index=1,
    history=[(n * 100.0, n % 2, n % 3, "answered", n, [0.1, 0.2, 0.3, 0.7, 1e-7][n % 5], False) for n in range(-30, 30)],
    window=(None, None),
    period="hourly",
    utc=False,
    task=2,
)
@example(  # Lord Howe puts its clock back half an hour: 02:00 +11 is 01:30 +10:30
    zone="Australia/Lord_Howe",
    anchor_index=0,
    history=[(q * 900.0, q % 3, q % 2, "answered", 100 + q, 0.1, q % 5 == 0) for q in range(-12, 12)],
    window=(None, None),
    period="hourly",
    utc=False,
    task=2,
)
@example(  # Kathmandu's days begin at 18:15 UTC; the window is two whole days from a local midnight
    zone="Asia/Kathmandu",
    anchor_index=0,
    history=[(q * 1800.0 + 60, q % 3, 0, "answered", 10 * q, 0.7, False) for q in range(-100, 100)],
    window=(-6 * 900.0 - 3600 * 5, 48 * 3600.0 - 6 * 900.0 - 3600 * 5),
    period="daily",
    utc=False,
    task=2,
)
@example(  # the clock goes back over midnight: the day is two spans, and the rows are sorted as before
    zone=BACK_OVER_MIDNIGHT,
    anchor_index=0,
    history=[(q * 900.0, 0, 0, "answered", 5, 0.1, False) for q in range(-20, 20)],
    window=(None, None),
    period="daily",
    utc=False,
    task=2,
)
@example(  # a week across the new year, in UTC, of one task
    zone="America/St_Johns",
    anchor_index=3,
    history=[(q * 3600.0, q % 3, q % 3, "answered", q, 1 / 3, False) for q in range(-72, 72)],
    window=(-48 * 3600.0, None),
    period="weekly",
    utc=True,
    task=0,
)
def test_spans_sum_each_period_as_the_sorted_rows_did(zone, anchor_index, history, window, period, utc, task):
    _check(zone, anchor_index, history, window, period, utc, task)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=calls, period=st.sampled_from(["hourly", "daily", "models"]))
def test_more_models_than_passes_are_sorted_into_periods_as_before(history, period):
    models = [f"model-{n}" for n in range(scratch.MODEL_PASSES + 2)]
    spread = [(at, number, *rest) for number, (at, _, *rest) in enumerate(history)]  # a model a call
    _check("Europe/Berlin", 1, spread, (None, None), period, False, 2, models)


def test_periods_past_2038_are_sorted_as_before():
    """SQLite takes a like year for local time after 2038-01-18, where the C library is not asked."""
    with local_zone("Europe/Berlin"):
        for utc in (False, True):
            assert periods.period_spans("daily", utc, "2038-03-01T00:00", "2038-03-02T00:00") is None
            assert periods.period_spans("daily", utc, "1969-03-01T00:00", "1969-03-02T00:00") is None
            assert periods.period_spans("daily", utc, "2037-03-01T00:00", "2037-03-02T00:00") is not None


def test_an_hourly_report_over_years_is_sorted_as_before():
    with local_zone("UTC"):
        assert periods.period_spans("hourly", False, "2026-01-01T00:00", "2026-12-31T23:45") is None
        assert len(periods.period_spans("daily", False, "2026-01-01T00:00", "2026-12-31T23:45") or []) == 365
        assert len(periods.period_spans("hourly", False, "2026-01-01T00:00", "2026-01-31T23:45") or []) == 31 * 24


def test_a_report_sorts_only_the_rows_it_makes(tmp_path):
    """Each model's pass reads the spans in order and usage_quarters by its primary key (or a
    task's index): SQLite sorts no quarter hour into its period, only the rows of the report."""
    statements: list[str] = []
    db = migrated_database(tmp_path / "meter.db")
    try:
        _store(
            db,
            datetime(2026, 3, 8, 7, tzinfo=UTC),
            [(n * 600.0, n % 3, n % 3, "answered", n, 0.1, False) for n in range(50)],
            MODELS,
        )
        db.set_trace_callback(statements.append)
        for task_id in (None, "P1-001"):
            assert periods._rows_by_span(db, "daily", None, "2026-03-09T00:00:00.000000Z", False, task_id)
        db.set_trace_callback(None)
        passes = [statement for statement in statements if "period_spans s" in statement]
        assert len(passes) == 2
        for statement in passes:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}")]
            assert not any("FOR GROUP BY" in step for step in plan), plan
            assert any(step.startswith("SEARCH q USING") and "quarter>? AND quarter<?" in step for step in plan), plan
    finally:
        db.close()
