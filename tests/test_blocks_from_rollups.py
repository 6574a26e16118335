"""Issue 23, instant commands: `meter report blocks` finds each 5-hour block with two
seeks in the started_at index and sums it from the usage_quarters rollup, reading call
by call only a quarter hour the block shares (with the block before, or with calls the
window or --provider leaves out). Held equal to the plain rule, call by call, over
random histories on a real SQLite file: calls on quarter and hour boundaries, exactly
5 hours after a block's start, after pauses, failed, unpriced, of unknown model, of two
providers, seen through windows that start and end inside a quarter hour. Every field
is the same; a cost sum only to the last bits of a double (the rollup adds as calls come,
as the daily report's sums do)."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmeter.analytics.windows import BLOCK_HOURS, block_report
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import from_stored, to_stored
from taskmeter.tokens import TOKEN_COLUMNS, tokens_object
from tests.migrated import migrated_database

ORIGIN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = "2026-11-21T08:10:00.000000Z"  # some blocks done, one active at times
SPAN = BLOCK_HOURS * 3600

# A call: seconds after ORIGIN (many on quarter and hour marks), provider, answered, tokens, cost, model.
moments = st.one_of(
    st.integers(0, 24 * 3600).map(float),
    st.integers(0, 96).map(lambda quarter: quarter * 900.0),  # on a quarter hour: a block's end, a quarter's start
    st.integers(0, 24 * 3600 * 10**6).map(lambda micros: micros / 10**6),
)
calls = st.lists(
    st.tuples(
        moments,
        st.sampled_from(["anthropic", "openai"]),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 5000)),
        st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, 0.25, 1e-7, 0.0123456789])),
        st.sampled_from([None, "claude-sonnet-4-6", "gpt-5"]),
    ),
    max_size=40,
)
windows = st.tuples(
    st.one_of(st.none(), st.integers(0, 24 * 3600 * 10**6).map(lambda micros: micros / 10**6)),
    st.one_of(st.none(), st.integers(0, 24 * 3600 * 10**6).map(lambda micros: micros / 10**6)),
    st.sampled_from([None, "anthropic"]),
)


def _stored(seconds: float) -> str:
    return to_stored(ORIGIN + timedelta(seconds=seconds))


def blocks_call(number: int, at: float, provider, answered: bool, tokens, cost, model: str, task_id=None) -> CallRow:
    """A call `at` seconds after ORIGIN, as the blocks' property tests draw them (ids 0000000c...)."""
    moment = _stored(at)
    return CallRow(
        Interaction(
            id=f"0000000c{number:04d}",
            started_at=moment,
            ended_at=moment,
            task_id=task_id,
            attribution="path" if task_id else None,
            provider=provider,
            model=model,
            http_status=200 if answered else 500,
            input_total=tokens if answered else None,
            output_total=None if tokens is None else tokens // 2,
            cost_usd=cost,
            usage_source="reported",
        )
    )


def _store(db, history) -> None:
    rows = [blocks_call(number, *call) for number, call in enumerate(history)]
    with write_transaction(db):
        store_calls(db, rows)


def _plain_blocks(db, since, until, provider) -> list[dict]:
    """The rule as the report states it, call by call: the first call's UTC hour starts a block;
    a call more than 5 hours after its start, or after the call before it, starts the next."""
    where, params = ["operation = 'generate'"], []
    for clause, value in (("started_at >= ?", since), ("started_at < ?", until), ("provider = ?", provider)):
        if value:
            where.append(clause)
            params.append(value)
    rows = db.execute(f"SELECT * FROM interactions WHERE {' AND '.join(where)} ORDER BY started_at, id", params).fetchall()
    groups: list[list] = []
    for row in rows:
        at = from_stored(row["started_at"]).timestamp()
        if groups:
            start = groups[-1][0][0] - groups[-1][0][0] % 3600
            if at - start > SPAN or at - groups[-1][-1][0] > SPAN:
                groups.append([])
        else:
            groups.append([])
        groups[-1].append((at, row))
    blocks = []
    for number, group in enumerate(groups):
        if number and group[0][0] - groups[number - 1][-1][0] > SPAN:
            blocks.append({"gap": True, "start": to_stored(datetime.fromtimestamp(groups[number - 1][-1][0] + SPAN, UTC))})
        members = [row for _, row in group]
        failed = [row["input_total"] is None and row["http_status"] >= 400 for row in members]
        sums = {}
        for column in (*TOKEN_COLUMNS, "cost_usd"):
            stated = [row[column] for row in members if row[column] is not None]
            sums[column] = sum(stated) if stated else None
        start = group[0][0] - group[0][0] % 3600
        blocks.append(
            {
                "gap": False,
                "start": to_stored(datetime.fromtimestamp(start, UTC)),
                "first_call_at": members[0]["started_at"],
                "last_call_at": members[-1]["started_at"],
                "ai_interactions": failed.count(False),
                "failed_calls": failed.count(True),
                "tokens": tokens_object(sums),
                "cost_usd": sums["cost_usd"],
                "unpriced_interactions": sum(
                    1 for row, no_answer in zip(members, failed, strict=True) if not no_answer and row["cost_usd"] is None
                ),
                "models": sorted({row["model"] or "?" for row in members}),
            }
        )
    return blocks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=calls, window=windows)
@example(  # the last call of a block exactly 5 hours after its start, the next 1 µs later, in the same quarter
    history=[
        (3300.0, "anthropic", True, 10, 0.1, None),
        (SPAN, "anthropic", True, 20, 0.2, None),  # the block of 3300 s starts at 0
        (SPAN + 0.000001, "openai", True, 30, 0.3, "gpt-5"),
        (2 * SPAN + 60, "anthropic", False, None, None, None),
    ],
    window=(None, None, None),
)
@example(  # a window that starts and ends inside quarter hours, a pause of more than 5 hours
    history=[(x * 400.0, "anthropic", True, 100, 0.1, "claude-sonnet-4-6") for x in range(20)]
    + [(30000.0 + x * 500.0, "openai", True, 50, 0.3, None) for x in range(40)],
    window=(610.5, 45000.25, None),
)
def test_blocks_from_the_rollup_are_the_blocks_of_the_calls(history, window):
    since, until, provider = window
    since, until = (None if value is None else _stored(value) for value in (since, until))
    with tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            _store(db, history)
            report = block_report(db, since, until, provider, now=NOW)["blocks"]
            expected = _plain_blocks(db, since, until, provider)
        finally:
            db.close()
    assert len(report) == len(expected)
    for block, plain in zip(report, expected, strict=True):
        assert {name: block[name] for name in plain if name != "cost_usd"} == {
            name: value for name, value in plain.items() if name != "cost_usd"
        }
        if not block["gap"]:
            assert block["cost_usd"] == (None if plain["cost_usd"] is None else pytest.approx(plain["cost_usd"], rel=1e-12))
