"""Reports over small histories with known answers."""

import csv
import io
import json

import pytest

from taskmeter.analytics import formats
from taskmeter.analytics.reports import overview_report, phase_report, task_report
from taskmeter.store import interactions, tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction

NOW = "2025-10-05T12:00:00.000000Z"


def at(hour: int, minute: int = 0) -> str:
    return f"2025-10-04T{hour:02d}:{minute:02d}:00.000000Z"


def switch(db, task_id, when):
    with write_transaction(db):
        db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (?, 'switch', ?)", (task_id, when))


def new_task(db, task_id, begin, estimate=None, **fields):
    tasks.set_task(db, task_id, estimate_seconds=estimate)
    tasks.clear_task(db)
    with write_transaction(db):
        db.execute("DELETE FROM task_events WHERE kind = 'switch'")  # tests place switches themselves
        db.execute("DELETE FROM state")
        db.execute("UPDATE tasks SET begin_at = ? WHERE id = ?", (begin, task_id))
    if fields:
        tasks.update_task(db, task_id, fields)


def call(db, n, task_id, when, conversation="c1", **usage):
    usage.setdefault("usage_source", "reported")
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=f"0000000{n:05d}",
                        task_id=task_id,
                        attribution="path",
                        started_at=when,
                        ended_at=when,
                        conversation_root=conversation,
                        **usage,
                    )
                )
            ],
        )
    return f"0000000{n:05d}"


@pytest.fixture
def phase_one(db):
    """P1: P1-001 done on estimate with a hallucination and rework; P1-002 open, no estimate."""
    new_task(
        db,
        "P1-001",
        at(9),
        estimate=3600,
        projected_outcome="lib compiles",
        projection_met=1,
        coverage_actual=90.0,
        performance_met=1,
        success="pass",
    )
    new_task(db, "P1-002", at(9, 30), projected_outcome="IPC", projection_met=0, coverage_actual=70.0, performance_met=0)
    tasks.mark(db, "P1-001", "approved", at=_dt(at(10, 30)), force=True)
    tasks.add_iteration(db, "P1-002", at=_dt(at(10)))
    switch(db, "P1-001", at(9))
    switch(db, "P1-002", at(9, 30))
    switch(db, "P1-001", at(10))
    switch(db, None, at(10, 15))
    # P1-001: 3 calls; the first is flagged, the second follows it in the same conversation.
    flagged = call(
        db,
        1,
        "P1-001",
        at(9, 5),
        input_total=1000,
        cache_read=600,
        cache_write=0,
        output_total=200,
        reasoning=50,
        cost_usd=0.01,
        model="gpt-4o",
    )
    call(db, 2, "P1-001", at(9, 10), input_total=500, cache_read=0, cache_write=0, output_total=100, reasoning=0, cost_usd=0.005)
    call(db, 3, "P1-001", at(10, 5), conversation="c2", input_total=300, output_total=30, usage_source="estimated")
    # P1-002: a model nobody has a price for.
    call(db, 4, "P1-002", at(9, 40), conversation="c9", input_total=100, output_total=10, model="local-llama")
    interactions.flag(db, flagged, "invented API")
    return db


def _dt(stored):
    from taskmeter.timefmt import from_stored

    return from_stored(stored)


def test_task_report_fields(phase_one):
    report = task_report(phase_one, "P1-001", now=NOW)
    assert report["begin_timestamp"] == at(9) and report["final_approval_timestamp"] == at(10, 30)
    assert report["estimated_duration"] == 3600
    # Working time: current 09:00-09:30 and 10:00-10:15, less the 19 idle minutes after the 09:10 call;
    # and since issue 22 (a task's activity counts whether or not it is current) to the approval at
    # 10:30, its activity 15 minutes after it was cleared: within the idle gap.
    assert report["actual_duration"] == 41 * 60 and report["actual_duration_is_elapsed_so_far"] is False
    assert report["wall_duration"] == 5400  # begin to approval, labelled apart
    assert report["variance"] == 41 * 60 - 3600 and report["efficiency_ratio"] == pytest.approx(41 / 60)
    assert report["stage_durations"] == {
        "begin_to_initial": None,
        "initial_to_tests": None,
        "tests_to_validation": None,
        "validation_to_approval": None,
    }
    assert report["after_approval"] == {"ai_interactions": 0, "token_count_used": None}
    assert report["iterations_count"] == 1
    assert report["token_count_used"] == 1000 + 200 + 500 + 100 + 300 + 30
    assert report["tokens"] == {
        "input_total": 1800,
        "cache_read": 600,
        "cache_write": 0,
        "output_total": 330,
        "reasoning": 50,
        "total": 2130,
    }
    assert report["tokens_by_source"] == {"reported": 1800, "estimated": 330, "partial": 0, "agent_log": 0}
    assert report["ai_interactions"] == 3 and report["hallucination_count"] == 1
    assert report["hallucination_rate"] == pytest.approx(1 / 3)
    # The return at 10:00 after P1-002 (c2 is a new SDK conversation: no switch by itself).
    assert report["context_switches"] == 1
    assert report["cost_usd"] == pytest.approx(0.015) and report["unpriced_interactions"] == 1
    assert report["cache_hit_ratio"] == pytest.approx(600 / 1500)  # calls that state cache reads
    assert report["reasoning_share"] == pytest.approx(50 / 300)
    assert report["rework_tokens"] == 600 and report["rework_interactions"] == 1  # call 2; call 3 is another session


def test_open_task_without_estimate_is_missing_not_invented(phase_one):
    report = task_report(phase_one, "P1-002", now=NOW)
    assert report["status"] == "open"
    assert report["estimated_duration"] is None and report["variance"] is None and report["efficiency_ratio"] is None
    # Current 09:30-10:00 with a call at 09:40: 11 minutes, then 19 idle; a night later it is still 11.
    assert report["actual_duration"] == 11 * 60 and report["actual_duration_is_elapsed_so_far"]
    assert report["wall_duration"] == (24 + 2) * 3600 + 30 * 60
    assert report["iterations_count"] == 2
    assert report["cost_usd"] is None and report["unpriced_interactions"] == 1
    missing = report["tracking_completeness"]["missing"]
    assert "ESTIMATED_DURATION" in missing and "FINAL_APPROVAL_TIMESTAMP" in missing and "VARIANCE" in missing
    assert report["tracking_completeness"]["percent"] == pytest.approx(100 * (24 - len(missing)) / 24)
    assert report["rework_tokens"] is None


def test_phase_report_fields_and_targets(phase_one):
    report = phase_report(phase_one, "P1", now=NOW)
    assert report["phase_begin"] == at(9)
    assert report["tasks_total"] == 2 and report["tasks_completed"] == 1
    assert report["tasks_failed_first_attempt"] == 1 and report["tasks_reworked"] == ["P1-002"]
    assert report["average_iterations_per_task"] == 1.0  # approved tasks only: P1-002 is open
    assert report["estimated_total"] is None and report["tasks_without_estimate"] == ["P1-002"]
    assert report["actual_total"] == (41 + 11) * 60  # the tasks never overlapped
    assert report["parallel_efficiency"] == 0  # one person working serially saves nothing
    assert report["variance_tasks"] == ["P1-001"] and report["variance"] == 41 * 60 - 3600
    assert report["open_tasks_so_far"] == [{"task_id": "P1-002", "actual_duration": 11 * 60, "estimated_duration": None}]
    assert report["test_coverage_overall"] == 80.0
    assert report["performance_targets_met"] == "1 / 2"
    assert report["total_tokens_used"] == 2130 + 110 and report["tokens_per_task_avg"] == 2130  # P1-001's
    assert report["ai_interactions_total"] == 4 and report["hallucination_count_total"] == 1
    assert report["hallucination_rate"] == 0.25
    assert report["theory_accuracy"] == 0.5
    targets = {t["metric"]: t for t in report["pattern_effectiveness"]}
    assert targets["projection_accuracy"]["passed"] is False
    assert targets["iteration_efficiency"]["passed"] is True
    assert targets["hallucination_rate"]["passed"] is False
    assert targets["tracking_completeness"]["passed"] is False
    assert targets["token_efficiency_improvement"]["value"] is None  # no earlier phase


def test_token_trend_phase_over_phase(phase_one):
    new_task(phase_one, "P2-001", at(11), estimate=3600)
    call(phase_one, 10, "P2-001", at(11, 5), input_total=800, output_total=100)
    tasks.mark(phase_one, "P2-001", "approved", at=_dt(at(11, 30)), force=True)
    report = phase_report(phase_one, "P2", now=NOW)
    assert report["previous_phase_id"] == "P1"
    assert report["token_efficiency_change"] == pytest.approx((900 - 2130) / 2130)
    assert {t["metric"]: t["passed"] for t in report["pattern_effectiveness"]}["token_efficiency_improvement"] is True
    overview = overview_report(phase_one, now=NOW)
    assert [p["phase_id"] for p in overview["phases"]] == ["P1", "P2"]
    assert overview["phases"][1]["token_efficiency_change"] == pytest.approx((900 - 2130) / 2130)


def test_overview_lines_equal_the_phase_reports(phase_one):
    """The overview reads no working time; each of its lines still says what the
    phase's full report says, tracking completeness included."""
    new_task(phase_one, "P2-001", at(11), estimate=3600)
    new_task(phase_one, "P2-002", None)  # never begun: no duration at all
    call(phase_one, 10, "P2-001", at(11, 5), input_total=800, output_total=100)
    for line in overview_report(phase_one, now=NOW)["phases"]:
        full = phase_report(phase_one, line["phase_id"], now=NOW)
        assert full["actual_total"] is not None
        assert line == {key: full[key] for key in line} | {"tracking_completeness": full["tracking_completeness"]["percent"]}


def test_overview_shows_the_unassigned_bucket(phase_one):
    call(phase_one, 20, None, at(12), input_total=40, output_total=2, cost_usd=0.001)
    overview = overview_report(phase_one, now=NOW)
    assert overview["unassigned"]["ai_interactions"] == 1
    assert overview["unassigned"]["tokens"]["total"] == 42


def test_retag_moves_calls_and_reports_follow(phase_one, meter):
    assert meter("retag", "000000000004", "--to", "P1-001").code == 0
    moved = task_report(phase_one, "P1-001", now=NOW)
    assert moved["ai_interactions"] == 4 and moved["token_count_used"] == 2130 + 110
    assert task_report(phase_one, "P1-002", now=NOW)["ai_interactions"] == 0
    row = phase_one.execute("SELECT attribution, context_switch FROM interactions WHERE id = '000000000004'").fetchone()
    # c9 is an SDK conversation new to P1-001: no switch; the return at 10:00 stays one.
    assert row["attribution"] == "retag" and row["context_switch"] == 0
    assert phase_one.execute("SELECT context_switch FROM interactions WHERE id = '000000000003'").fetchone()[0] == 1
    assert meter("retag", "--since", "2025-10-04T09:00:00Z", "--until", "2025-10-04T09:07:00Z", "--unassign").code == 0
    assert overview_report(phase_one, now=NOW)["unassigned"]["ai_interactions"] == 1
    assert meter("retag", "--between", "000000000002", "000000000003", "--to", "P1-009", "--create").code == 0
    assert task_report(phase_one, "P1-009", now=NOW)["ai_interactions"] == 2
    bad = meter("retag", "--to", "P1-001")
    assert bad.code == 1 and "choose the calls one way" in bad.err


@pytest.mark.parametrize("kind", ["task", "phase"])
def test_every_format(phase_one, meter, kind):
    target = "P1-001" if kind == "task" else "P1"
    as_json = json.loads(meter("report", kind, target, "--format", "json").out)
    assert as_json["hallucination_rate"] is not None
    assert "tokens" in as_json and "cost_usd" in as_json
    rows = list(csv.reader(io.StringIO(meter("report", kind, target, "--format", "csv").out)))
    assert len(rows) == 2 and "hallucination_rate" in rows[0] and "tokens.input_total" in rows[0]
    markdown = meter("report", kind, target, "--format", "markdown").out
    headings = [
        "=== TIMESTAMPS (ISO 8601 Format) ===",
        "=== DURATION ANALYSIS ===",
        "=== TOKEN EFFICIENCY ===",
        "=== OUTCOME TRACKING ===",
    ]
    if kind == "phase":
        headings = [
            "## 📈 Phase P1 Aggregate Tracking",
            "=== PHASE-LEVEL TIMESTAMPS ===",
            "=== PHASE DURATION ANALYSIS ===",
            "=== PHASE QUALITY METRICS ===",
            "=== PHASE TOKEN EFFICIENCY ===",
            "=== META-LEARNING ===",
            "### Pattern effectiveness",
        ]
    for heading in headings:
        assert heading in markdown
    assert "_____" in markdown  # missing fields keep the seed's placeholder
    assert meter("report", kind, target).code == 0


def test_overview_formats(phase_one, meter):
    assert json.loads(meter("report", "--format", "json").out)["phases"][0]["phase_id"] == "P1"
    rows = list(csv.reader(io.StringIO(meter("report", "--format", "csv").out)))
    assert rows[0][0] == "phase_id" and rows[-1][0] == "unassigned"
    assert "| P1 |" in meter("report", "--format", "markdown").out
    assert "unassigned" in meter("report").out


def test_seed_style_values_in_markdown(phase_one):
    text = formats.phase_markdown(phase_report(phase_one, "P1", now=NOW))
    assert "TASKS_COMPLETED:              1 / 2 (50%)" in text
    assert "HALLUCINATION_RATE:           25.00% (1 / 4 interactions)" in text
    assert "THEORY_ACCURACY:              50% (1/2 projections materialized)" in text
    assert "TASKS_FAILED_FIRST_ATTEMPT:   1 (P1-002 required rework)" in text


def test_calls_that_never_reached_a_model_are_counted_apart(db):
    new_task(db, "P4-001", at(9), estimate=3600)
    flagged = call(db, 1, "P4-001", at(9, 1), input_total=100, output_total=10, http_status=200, outcome="complete")
    # An SDK retrying an unreachable upstream, then a rate limit, then an overloaded server.
    call(db, 2, "P4-001", at(9, 2), http_status=502, outcome="failed", usage_source=None)
    call(db, 3, "P4-001", at(9, 3), http_status=429, outcome="complete", usage_source=None)
    call(db, 4, "P4-001", at(9, 4), http_status=503, outcome="complete", usage_source=None)
    # A bad request ran no model either: a failed call too.
    call(db, 5, "P4-001", at(9, 5), http_status=400, outcome="complete", usage_source=None)
    call(db, 6, "P4-001", at(9, 6), input_total=50, output_total=5, http_status=200, outcome="complete")
    interactions.flag(db, flagged)
    report = task_report(db, "P4-001")
    assert report["ai_interactions"] == 2 and report["failed_calls"] == 4
    assert report["hallucination_rate"] == pytest.approx(1 / 2)
    assert report["token_count_used"] == 165
    assert "FAILED_CALLS:      4 (never reached a model" in formats.task_markdown(report)
    assert phase_report(db, "P4")["failed_calls"] == 4


def test_working_time_leaves_out_nights_and_counts_interleaved_work_once(db):
    new_task(db, "P3-001", at(9), estimate=4 * 3600)
    new_task(db, "P3-002", at(9), estimate=3600)
    switch(db, "P3-001", at(9))
    for n, minute in enumerate(range(0, 60, 10)):  # a call every 10 minutes, 09:00-09:50
        call(db, n, "P3-001", at(9, minute))
    switch(db, "P3-002", at(10))
    call(db, 10, "P3-002", at(10, 5), conversation="c5")
    switch(db, "P3-001", at(10, 10))
    call(db, 11, "P3-001", at(10, 15))
    # Next morning, after a night with nothing: 08:00-08:30.
    call(db, 12, "P3-001", "2025-10-05T08:00:00.000000Z")
    call(db, 13, "P3-001", "2025-10-05T08:30:00.000000Z")
    report = phase_report(db, "P3", now="2025-10-05T08:31:00.000000Z")
    first, second = report["tasks"]
    # P3-001: 09:00-10:00 (the switch away is activity), 10:10-10:16, then the night is idle,
    # and each of the two morning calls is a minute of its own: 29 minutes apart is idle too.
    assert first["actual_duration"] == 60 * 60 + 6 * 60 + 2 * 60
    assert first["wall_duration"] == 23.5 * 3600 + 60
    assert second["actual_duration"] == 10 * 60  # 10:00-10:10, current and active
    assert report["actual_total"] == first["actual_duration"] + second["actual_duration"]
    assert report["parallel_efficiency"] == 0
    assert report["variance"] is None and [t["task_id"] for t in report["open_tasks_so_far"]] == ["P3-001", "P3-002"]


def test_parallel_work_saves_time_and_calls_after_approval_are_reported(db):
    new_task(db, "P4-001", at(9))
    new_task(db, "P4-002", at(9))
    for minute in range(0, 31, 5):  # both worked at once: one current, the other through /t/P4-002/
        call(db, minute, "P4-001", at(9, minute))
        call(db, 100 + minute, "P4-002", at(9, minute), conversation="other")
    switch(db, "P4-001", at(9))
    tasks.mark(db, "P4-002", "approved", at=_dt(at(9, 31)), force=True)
    call(db, 200, "P4-002", at(11), conversation="other", input_total=40_000, output_total=10_000)
    report = phase_report(db, "P4", now=at(9, 40))
    first, second = report["tasks"]
    assert second["actual_duration"] == 31 * 60 and second["after_approval"] == {"ai_interactions": 1, "token_count_used": 50_000}
    assert report["parallel_efficiency"] == min(first["actual_duration"], second["actual_duration"])
    assert "AFTER_APPROVAL:    1 AI calls, 50,000 tokens after FINAL_APPROVAL" in formats.task_text(second)
