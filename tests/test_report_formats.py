"""Reports people hand on (issue 24): every report takes every format (table, CSV,
Markdown, JSON), per-day and per-model CSV included; the period and model reports
show cache-write and total-token columns and list models dearest first; at 80
columns the phase overview keeps its Trend, the Level 2 headline."""

import csv
import io
import json

import pytest

from taskmeter.store import tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction

REPORTS = [
    ["report"],
    ["report", "task", "P1-001"],
    ["report", "phase", "P1"],
    ["report", "hourly"],
    ["report", "daily"],
    ["report", "weekly"],
    ["report", "monthly"],
    ["report", "models"],
    ["report", "sessions"],
    ["report", "blocks"],
]


def _call(db, number: int, task_id: str | None, model: str, tokens: tuple, cost: float, session: str | None = None):
    at = f"2026-11-20T1{number}:00:00.000000Z"
    input_total, cache_read, cache_write, output_total = tokens
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=f"0000000f{number:04d}",
                        task_id=task_id,
                        attribution="path" if task_id else "none",
                        started_at=at,
                        first_byte_at=at.replace(":00.000000Z", ":00.400000Z"),
                        ended_at=at.replace(":00.000000Z", ":02.000000Z"),
                        model=model,
                        protocol="anthropic",
                        http_status=200,
                        input_total=input_total,
                        cache_read=cache_read,
                        cache_write=cache_write,
                        output_total=output_total,
                        reasoning=0,
                        cost_usd=cost,
                        usage_source="reported",
                        client="claude-cli/2.1.197 (external, cli)" if session else None,
                        client_session=session,
                    )
                )
            ],
        )


@pytest.fixture
def stored(db, meter):
    """Three calls of P1-001 on 2026-11-20: a cheap model with many tokens, a dear one with few."""
    tasks.set_task(db, "P1-001", create=True)
    _call(db, 1, "P1-001", "local-big", (90_000, 0, 0, 1_000), 0.001)
    _call(db, 2, "P1-001", "claude-opus-4-1", (2_000, 500, 300, 200), 0.09, session="cc-1")
    _call(db, 3, "P1-001", "claude-opus-4-1", (1_000, 0, 100, 100), 0.05, session="cc-1")
    return db


@pytest.mark.parametrize("report", REPORTS, ids=" ".join)
def test_every_report_takes_every_format(stored, meter, report):
    for output_format in ("table", "csv", "markdown", "json"):
        done = meter(*report, "--format", output_format)
        assert done.code == 0 and done.out, (output_format, done.err)
        if output_format == "csv":
            lines = list(csv.reader(io.StringIO(done.out)))
            assert len(lines) >= 2 and all(len(line) == len(lines[0]) for line in lines)
        if output_format == "markdown":
            assert "| " in done.out or "```" in done.out
        if output_format == "json":
            json.loads(done.out)


def test_per_day_and_per_model_csv_is_what_finance_asks_for(stored, meter):
    days = list(csv.DictReader(io.StringIO(meter("report", "daily", "--format", "csv").out)))
    assert [(line["period"], line["model"]) for line in days] == [
        ("2026-11-20", "all"),
        ("2026-11-20", "claude-opus-4-1"),  # dearest first
        ("2026-11-20", "local-big"),
        ("total", "all"),
    ]
    day = days[0]
    assert (day["ai_interactions"], day["cache_write"], day["total_tokens"], day["cost_usd"]) == ("3", "400", "94300", "0.141")
    models = list(csv.DictReader(io.StringIO(meter("report", "models", "--format", "csv", "--utc").out)))
    assert [line["model"] for line in models] == ["claude-opus-4-1", "local-big", "total"]
    assert (models[0]["total_p50_seconds"], models[0]["first_token_p95_seconds"]) == ("2.0", "0.4")
    markdown = meter("report", "daily", "--format", "markdown").out.splitlines()
    assert markdown[0] == (
        "| Day | Model | Calls | Failed | Input | Cache read | Cache write | Output | Reasoning | Total tokens | Cost | Flags |"
    )
    assert markdown[2] == "| 2026-11-20 | all | 3 | 0 | 93,000 | 500 | 400 | 1,300 | 0 | 94,300 | $0.1410 | 0 |"


def test_period_and_model_tables_show_cache_write_and_total_tokens(stored, meter):
    for report in ("daily", "models"):
        lines = [line.split("\t") for line in meter("report", report).out.splitlines()]
        header, total = lines[0], lines[-1]
        assert "Cache W" in header and "Total" in header
        assert (total[header.index("Cache W")], total[header.index("Total")]) == ("400", "94300")
    models = [line.split("\t")[0] for line in meter("report", "models").out.splitlines()[1:]]
    assert models == ["claude-opus-4-1", "local-big", "Total"]


@pytest.mark.e2e
def test_the_overview_keeps_its_trend_at_80_columns(stored, db_path):
    from tests.test_views import in_terminal

    tasks.mark(stored, "P1-001", "approved", force=True)
    tasks.set_task(stored, "P2-001", create=True)
    _call(stored, 4, "P2-001", "claude-opus-4-1", (500, 0, 0, 50), 0.01)
    tasks.mark(stored, "P2-001", "approved", force=True)  # its tokens per task against P1's: the trend
    code, screen = in_terminal(db_path, "report", columns=80)
    lines = screen.splitlines()
    assert code == 0 and all(len(line) <= 80 for line in lines), screen
    header = lines[0].split()
    assert "Trend" in header and header.index("Trend") < header.index("Cost")
    assert lines[-1].startswith("unassigned")
    p2 = lines[2].split()
    assert p2[0] == "P2" and p2[header.index("Trend")] == f"{550 / 94_300 - 1:+.1%}"


def test_latency_is_taken_over_each_model_s_newest_calls(stored, meter, monkeypatch):
    """Read through the (model, started_at) index, however long the history: the newest
    LATENCY_SAMPLE answered calls of each model in the window."""
    from taskmeter.analytics import periods

    monkeypatch.setattr(periods, "LATENCY_SAMPLE", 1)
    with write_transaction(stored):
        # The older call of claude-opus-4-1 answered slowly: out of the sample of one.
        stored.execute("UPDATE interactions SET ended_at = '2026-11-20T12:00:09.000000Z' WHERE id = '0000000f0002'")
    latency = {model["model"]: model["latency"] for model in json.loads(meter("report", "models", "--json").out)["models"]}
    assert latency["claude-opus-4-1"] == {
        "timed_calls": 1,
        "first_token_p50_seconds": 0.4,
        "first_token_p95_seconds": 0.4,
        "total_p50_seconds": 2.0,
        "total_p95_seconds": 2.0,
    }
    monkeypatch.setattr(periods, "LATENCY_SAMPLE", 1000)
    both = json.loads(meter("report", "models", "--json").out)["models"][0]["latency"]
    assert (both["timed_calls"], both["total_p50_seconds"], both["total_p95_seconds"]) == (2, 2.0, 9.0)
