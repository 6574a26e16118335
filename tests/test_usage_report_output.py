"""Issue 23, instant commands: a usage report (`meter report hourly|daily|weekly|monthly|models`)
of one model sums its periods in one pass with no sort, builds its dicts from the rows once (a
period of one model shares that model's figures), and a piped table writes its cells column by
column. Held equal, byte for byte, to the report's JSON
and the piped table as they were made before (kept here as the oracles): the reports over random
histories in several zones on a real SQLite file, the table over random cells of every kind."""

import io
import json
import tempfile
from contextlib import redirect_stdout
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmeter import terminal
from taskmeter.analytics import periods
from taskmeter.terminal import Column
from taskmeter.timefmt import hour_label, to_stored
from tests.migrated import migrated_database
from tests.test_period_grouping import MODELS, TASKS, USAGE_REPORT_CASES, _anchors, _store, local_zone


def _old_report(db, period: str, since, until, utc: bool, task_id) -> dict:
    """usage_report as it was: every row made a dict by name, each figure worked out per period and per model."""
    rows = periods.usage_rows(db, period, since, until, utc, task_id)
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
        "totals": periods._stats(periods._sum(every)),
    }
    if period == "models":
        latencies = periods.model_latencies(db, [row["model"] for row in every], since, until, task_id)
        report["models"] = [{"model": row["model"], **periods._stats(row), "latency": latencies[row["model"]]} for row in every]
    else:
        report["periods"] = []
        for key, group in by_period.items():
            stats = periods._stats(periods._sum(group) if len(group) > 1 else group[0])
            models = [{"model": row["model"], **periods._stats(row)} for row in group]
            when = {"period": hour_label(key, utc), "start": key} if period == "hourly" else {"period": key}
            report["periods"].append({**when, **stats, "models": models})
    return report


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**USAGE_REPORT_CASES)
@example(  # hours of two models and of one, three tasks' calls in a quarter hour
    zone="America/New_York",
    anchor_index=1,
    history=[
        (n * 100.0, n % 2 if n < 0 else 0, n % 3, "answered", n, [0.1, 0.2, 0.3, 0.7, 1e-7][n % 5], n % 4 == 0)
        for n in range(-30, 30)
    ],
    window=(None, None),
    period="hourly",
    utc=False,
    task=2,
)
def test_a_usage_report_is_the_json_it_was(zone, anchor_index, history, window, period, utc, task):
    anchors = _anchors(zone)
    anchor = anchors[anchor_index % len(anchors)]
    since, until = (None if edge is None else to_stored(anchor + timedelta(seconds=edge)) for edge in window)
    with local_zone(zone), tempfile.TemporaryDirectory() as folder:
        db = migrated_database(Path(folder) / "meter.db")
        try:
            _store(db, anchor, history, MODELS)
            report = periods.usage_report(db, period, since, until, utc, TASKS[task])
            assert json.dumps(report) == json.dumps(_old_report(db, period, since, until, utc, TASKS[task]))
        finally:
            db.close()


def _old_piped_table(columns: list[Column], rows: list[list], utc: bool) -> str:
    """terminal.table's piped output as it was: row by row, a call per cell but for counts."""
    plain = [column.kind not in ("time", "money") for column in columns]
    cells = [
        [
            str(value) if type(value) is int and as_is else terminal._cell(column, value, utc, True)
            for column, as_is, value in zip(columns, plain, row, strict=True)
        ]
        for row in rows
    ]
    return "\t".join(column.header for column in columns) + "\n" + "".join("\t".join(row) + "\n" for row in cells)


KINDS = ["text", "id", "time", "count", "money", "figure"]
values = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.sampled_from(["all", "claude-sonnet-4-6", "2026-10-25 02:00 CEST", " two  spaces ", "tab\there", "line\nbreak"]),
    st.sampled_from(["esc\x1b[2J", "\x9b31m", "nbsp\xa0", "2026-11-21T08:10:00.000000Z", "2026-03-29T01:00:00.000000Z"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6), data=st.data(), utc=st.booleans())
def test_a_piped_table_is_the_text_it_was(kinds, data, utc):
    columns = [Column(f"Head {n}", kind) for n, kind in enumerate(kinds)]
    # A time column is given stored moments, a money column numbers; either may be empty.
    moments = st.one_of(st.none(), st.sampled_from(["2026-11-21T08:10:00.000000Z", "2026-03-29T01:00:00.000000Z"]))
    amounts = st.one_of(st.none(), st.integers(-(10**9), 10**9), st.floats(allow_nan=False, width=64), st.booleans())
    row = st.tuples(*({"time": moments, "money": amounts}.get(kind, values) for kind in kinds)).map(list)
    rows = data.draw(st.lists(row, max_size=8).flatmap(lambda drawn: st.just(drawn + drawn[:2])))  # texts come back
    written = io.StringIO()
    with redirect_stdout(written):
        terminal.table(columns, rows, utc=utc)
    assert written.getvalue() == _old_piped_table(columns, rows, utc)


def test_a_report_of_one_model_sums_its_periods_in_one_pass_and_sorts_nothing(tmp_path):
    """One model in the window: one pass over the spans, along the primary key (or a task's index),
    with no sort at all; its rows are the rows the model's own pass gave before."""
    statements: list[str] = []
    db = migrated_database(tmp_path / "meter.db")
    try:
        anchor = _anchors("Europe/Berlin")[0]
        _store(db, anchor, [(n * 600.0, 0, n % 3, "answered", n, 0.1 * (n % 4), n % 5 == 0) for n in range(-50, 50)], MODELS)
        db.set_trace_callback(statements.append)
        for task_id in (None, "P1-001"):
            assert periods._rows_by_span(db, "hourly", None, None, False, task_id)
        db.set_trace_callback(None)
        passes = [statement for statement in statements if "period_spans s" in statement]
        assert len(passes) == 2 and all("UNION" not in statement for statement in passes)
        for statement in passes:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}")]
            assert not any("TEMP B-TREE" in step for step in plan), plan
            assert any(step.startswith("SEARCH q USING") and "quarter>? AND quarter<?" in step for step in plan), plan
    finally:
        db.close()
