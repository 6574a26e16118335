"""Issue 23, instant commands: `meter report blocks` sums every block's whole quarter hours from
usage_quarters in one statement (the blocks' spans held in a temporary table, read model by model
along the primary key), and tells from the blocks' own edges whether a block shares its first or
last quarter hour with the block before or after. Held equal, to the last bit of every cost and
byte of JSON, to the report as it was made before, a usage_quarters statement and two seeks per
block (kept here as the oracle), over random histories of several tasks on a real SQLite file."""

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmeter.analytics import windows
from taskmeter.store import scratch, tasks
from taskmeter.store.calls import store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import from_stored, now_stored, seconds_sql, to_stored
from tests.migrated import migrated_database
from tests.test_blocks_from_rollups import _stored, blocks_call

NOW = "2026-11-21T08:10:00.000000Z"
SPAN = windows.BLOCK_HOURS * 3600
TASKS = ["P1-001", "P1-002", None]
MODELS = [None, "claude-sonnet-4-6", "gpt-5"]


def _old_quarter_start(stored: str, after: bool = False) -> str:
    seconds = from_stored(stored).timestamp()
    start = seconds - seconds % windows.QUARTER_SECONDS + (windows.QUARTER_SECONDS if after else 0)
    return to_stored(datetime.fromtimestamp(start, UTC))


def _old_block_usage(db, first, last, edges, where, params, provider) -> dict:
    """A block's usage as block_report summed it before: its own usage_quarters statement, after two looks."""
    parts: list[tuple[str, list]] = []
    since, until, end_before, end = edges
    rollup_from, rollup_until = _old_quarter_start(first), _old_quarter_start(last, after=True)
    if provider is None:
        maybe_before = (end_before is not None and rollup_from <= end_before) or (since is not None and since > rollup_from)
        if maybe_before and windows._any_call(db, "i.started_at >= ? AND i.started_at < ?", rollup_from, first):
            rollup_from = _old_quarter_start(first, after=True)
        maybe_after = last == end or (until is not None and until < rollup_until)
        if maybe_after and windows._any_call(db, "i.started_at > ? AND i.started_at < ?", last, rollup_until):
            rollup_until = _old_quarter_start(last)
    if provider is None and rollup_from < rollup_until:
        parts.append(
            (
                f"SELECT model, {windows._QUARTERS_USAGE} FROM usage_quarters WHERE quarter >= ? AND quarter < ? GROUP BY model",
                [rollup_from[:16], rollup_until[:16]],
            )
        )
        ranges = [(first, rollup_from, "<"), (rollup_until, last, "<=")]
    else:
        ranges = [(first, last, "<=")]
    for low, high, below in ranges:
        if low < high or (below == "<=" and low == high):
            parts.append(
                (
                    f"SELECT coalesce(i.model, '?') AS model, {windows._CALLS_USAGE} FROM interactions i INDEXED BY interactions_started"
                    f" WHERE {where} AND i.started_at >= ? AND i.started_at {below} ? GROUP BY coalesce(i.model, '?')",
                    [*params, low, high],
                )
            )
    usage: dict = dict.fromkeys(windows._USAGE_COLUMNS, 0)
    models: set[str] = set()
    for query, values in parts:
        for row in db.execute(query, values):
            if row["ai_interactions"] or row["failed_calls"]:
                models.add(row["model"])
                for column in windows._USAGE_COLUMNS:
                    usage[column] += row[column]
    return {**usage, "models": sorted(models)}


def _old_block(first, last, usage: dict, now: datetime) -> dict:
    """A block's record as block_report made it before: its start and end worked out from POSIX seconds
    (the rest of the record is made as it is now)."""
    start = windows._hour_start(first["at"])
    record = windows._block(first, last, windows._stored(start + SPAN), usage, now)
    return {**record, "start": windows._stored(start)}


def _old_block_edges(where: str) -> str:
    """The query of every block's first and last call and end as it was before: each call also as
    POSIX seconds, worked out by SQLite."""
    return f"""WITH edges(first, last, block_end) AS ({windows._block_edges(where)})
        SELECT {seconds_sql("first")}, first, {seconds_sql("last")}, last, block_end FROM edges"""


def _old_block_report(db, since=None, until=None, provider=None, now=None) -> dict:
    where, params = windows._window(since, until, None)
    if provider:
        where += " AND i.provider = ?"
        params.append(provider)
    moment = from_stored(now or now_stored())
    blocks: list = []
    last = None
    end = None
    for first_at, first_started, last_at, last_started, block_end in db.execute(_old_block_edges(where), params * 3):
        first, end_before, end = {"at": first_at, "started_at": first_started}, end, block_end
        if last is not None and first["at"] - last["at"] > SPAN:
            blocks.append(windows._gap(last["at"] + SPAN, first["at"]))
        last = {"at": last_at, "started_at": last_started}
        usage = _old_block_usage(
            db, first["started_at"], last["started_at"], (since, until, end_before, end), where, params, provider
        )
        blocks.append(_old_block(first, last, usage, moment))
    return {"since": since, "until": until, "provider": provider, "block_hours": windows.BLOCK_HOURS, "blocks": blocks}


def _store(db, history, models: list) -> None:
    with write_transaction(db):
        for task_id in TASKS[:-1]:
            tasks.ensure_task(db, task_id, "2026-01-01T00:00:00.000000Z")
    rows = [
        blocks_call(number, at, provider, answered, tokens, cost, models[model % len(models)], TASKS[task])
        for number, (at, provider, answered, tokens, cost, model, task) in enumerate(history)
    ]
    with write_transaction(db):
        store_calls(db, rows)


moments = st.one_of(
    st.integers(0, 30 * 3600).map(float),
    st.integers(0, 120).map(lambda quarter: quarter * 900.0),  # a block's end, a quarter's start
    st.integers(0, 30 * 3600 * 10**6).map(lambda micros: micros / 10**6),
    st.integers(-3, 3).map(lambda step: SPAN + 3600.0 * step),  # near the first block's end
)
# A cost's sum depends on the order of its terms in the last bits: these show it.
costs = st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, 0.7, 1e-7, 0.0123456789, 3.3, 1 / 3]))
calls = st.lists(
    st.tuples(
        moments,
        st.sampled_from(["anthropic", "openai"]),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 5000)),
        costs,
        st.integers(0, 2),  # model
        st.integers(0, len(TASKS) - 1),
    ),
    max_size=60,
)
edges = st.one_of(
    st.none(),
    st.integers(0, 120).map(lambda quarter: quarter * 900.0),
    st.integers(0, 30 * 3600 * 10**6).map(lambda micros: micros / 10**6),
)


def _check(history, window, models: list = MODELS) -> None:
    since, until, provider = window
    since, until = (None if value is None else _stored(value) for value in (since, until))
    with tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            _store(db, history, models)
            expected = _old_block_report(db, since, until, provider, now=NOW)
            report = windows.block_report(db, since, until, provider, now=NOW)
        finally:
            db.close()
    assert json.dumps(report) == json.dumps(expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=calls, window=st.tuples(edges, edges, st.sampled_from([None, None, "anthropic"])))
@example(  # three tasks' calls in every quarter hour over blocks back to back: each sum's order shows
    history=[(n * 300.0 + 7, "anthropic", True, n, [0.1, 0.2, 0.3, 0.7, 1e-7][n % 5], n % 3, n % 3) for n in range(0, 200)],
    window=(None, None, None),
)
@example(  # a block's last call exactly at its end, the next block's first 1 µs later in the same quarter
    history=[
        (3300.0, "anthropic", True, 10, 0.1, 0, 0),
        (SPAN, "anthropic", True, 20, 0.2, 1, 1),
        (SPAN + 0.000001, "openai", True, 30, 0.3, 2, 2),
        (SPAN + 600, "openai", True, 30, 1 / 3, 2, 0),
        (2 * SPAN + 60, "anthropic", False, None, None, 0, 0),
    ],
    window=(None, None, None),
)
@example(  # a window that starts and ends inside the quarter hours of calls it leaves out
    history=[(x * 400.0, "anthropic", True, 100, 0.1, 1, x % 3) for x in range(60)],
    window=(610.5, 20000.25, None),
)
def test_blocks_summed_in_one_statement_are_the_blocks_summed_one_by_one(history, window):
    _check(history, window)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=calls)
def test_more_models_than_passes_are_sorted_by_block_and_model_as_before(history):
    models = [f"model-{n}" for n in range(scratch.MODEL_PASSES + 2)]
    spread = [(at, provider, answered, tokens, cost, number, task) for number, (at, provider, answered, tokens, cost, _, task) in enumerate(history)]  # fmt: skip
    _check(spread, (None, None, None), models)


def test_blocks_take_three_statements_however_many_there_are(tmp_path):
    """The edges, the models of the rollup and the sums: no statement per block where no block shares a quarter."""
    db = migrated_database(tmp_path / "meter.db")
    try:
        # A call every 20 minutes for 4 hours, every 6 hours: 12 blocks, none sharing a quarter hour.
        history = [
            (day * 6 * 3600.0 + n * 1200.0 + 60, "anthropic", True, 10, 0.1, 1, n % 2) for day in range(12) for n in range(13)
        ]
        _store(db, history, MODELS)
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        report = windows.block_report(db, now=NOW)
        db.set_trace_callback(None)
        assert sum(not block["gap"] for block in report["blocks"]) == 12
        reads = [statement for statement in statements if statement.lstrip().upper().startswith(("SELECT", "WITH"))]
        assert len(reads) == 3, reads
        assert json.dumps(report) == json.dumps(_old_block_report(db, now=NOW))
    finally:
        db.close()


@given(st.integers(0, 4_000_000_000 * 10**6).map(lambda micros: to_stored(datetime.fromtimestamp(micros / 10**6, UTC))))
@example("2026-12-31T23:59:59.999999Z")
@example("2026-11-20T13:59:59.000001Z")
@example("2026-02-28T23:45:00.000000Z")
def test_a_quarter_hour_read_from_the_text_is_the_one_worked_out_from_the_moment(stored):
    for after in (False, True):
        assert windows._quarter_start(stored, after) == _old_quarter_start(stored, after)
