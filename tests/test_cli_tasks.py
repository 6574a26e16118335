"""Every foundation command's happy path, as a user runs it."""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from taskmeter.store import interactions, tasks
from taskmeter.store.interactions import Interaction


def test_set_task_creates_task_and_phase_and_records_begin(meter, db):
    result = meter("set-task", "P1-010", "--title", "IPC protocol", "--estimate", "1h30m")
    assert result.code == 0, result.err
    assert "Current task: P1-010 (created, began" in result.out
    task = tasks.get_task(db, "P1-010")
    assert task["phase_id"] == "P1"
    assert task["estimate_seconds"] == 5400
    assert task["begin_at"].endswith("Z")
    assert tasks.current_task(db).task_id == "P1-010"


def test_switching_records_a_switch_event_and_keeps_first_begin(meter, db):
    meter("set-task", "P1-010")
    first_begin = tasks.get_task(db, "P1-010")["begin_at"]
    assert "switched from P1-010" in meter("set-task", "P1-011").out
    assert "switched from P1-011" in meter("set-task", "p1-010").out  # IDs are case-insensitive
    assert tasks.get_task(db, "P1-010")["begin_at"] == first_begin
    switches = db.execute("SELECT task_id, previous_task_id FROM task_events WHERE kind = 'switch' ORDER BY id").fetchall()
    assert [tuple(s) for s in switches] == [("P1-010", None), ("P1-011", "P1-010"), ("P1-010", "P1-011")]


def test_setting_the_same_task_again_is_not_a_switch(meter, db):
    meter("set-task", "P1-010")
    assert "already the current task" in meter("set-task", "P1-010").out
    assert db.execute("SELECT count(*) FROM task_events").fetchone()[0] == 1


def test_set_task_none_clears(meter, db):
    meter("set-task", "P1-010")
    assert "No current task (was P1-010)" in meter("set-task", "--none").out
    assert tasks.current_task(db) is None
    assert db.execute("SELECT previous_task_id FROM task_events ORDER BY id DESC").fetchone()[0] == "P1-010"


def test_phase_override_and_dotted_phases(meter, db):
    meter("set-task", "P3.5-002")
    meter("set-task", "AUTH-7", "--phase", "P2")
    assert tasks.get_task(db, "P3.5-002")["phase_id"] == "P3.5"
    assert tasks.get_task(db, "AUTH-7")["phase_id"] == "P2"


def test_task_edits_every_level1_input_and_shows_it(meter):
    meter("set-task", "P1-010")
    result = meter(
        "task",
        "P1-010",
        "--estimate",
        "1h",
        "--projected",
        "workspace compiles",
        "--actual",
        "it compiles",
        "--projection-met",
        "yes",
        "--success",
        "pass",
        "--coverage-target",
        "80",
        "--coverage-actual",
        "87%",
        "--perf-target",
        "<50ms",
        "--perf-actual",
        "47.2ms",
        "--perf-met",
        "yes",
        "--docs",
        "100",
        "--blockers",
        "none",
        "--lessons",
        "faster with AI",
        "--json",
    )
    assert result.code == 0, result.err
    view = json.loads(result.out)
    assert view["estimated_duration"] == 3600
    assert view["projected_outcome"] == "workspace compiles"
    assert view["actual_outcome"] == "it compiles"
    assert view["projection_met"] is True
    assert view["success_criteria"] == "pass"
    assert view["test_coverage_target"] == 80 and view["test_coverage_actual"] == 87
    assert view["performance_target"] == "<50ms" and view["performance_actual"] == "47.2ms"
    assert view["performance_met"] is True
    assert view["doc_completeness"] == 100
    assert view["blockers_encountered"] == "none" and view["lessons_learned"] == "faster with AI"
    text = meter("task", "P1-010").out
    for heading in (
        "=== TIMESTAMPS (ISO 8601 Format) ===",
        "=== QUALITY METRICS ===",
        "=== TOKEN EFFICIENCY ===",
        "=== OUTCOME TRACKING ===",
    ):
        assert heading in text
    assert re.search(r"TEST_COVERAGE_ACTUAL: +87%", text)
    unset = json.loads(meter("task", "P1-010", "--unset", "estimate", "--json").out)
    assert unset["estimated_duration"] is None


def test_milestones_in_order_then_view(meter, db):
    meter("set-task", "P1-001")
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    for seconds, milestone in enumerate(["initial", "tests", "validated", "approved"]):
        stamp = (soon + timedelta(seconds=seconds * 10)).isoformat()  # within the minute a clock may be ahead
        result = meter("mark", milestone, "--at", stamp)
        assert result.code == 0, result.err
    task = tasks.get_task(db, "P1-001")
    assert task["initial_completion_at"] == soon.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert task["final_approval_at"] == (soon + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    report = json.loads(meter("task", "P1-001", "--json").out)
    assert report["status"] == "approved"
    assert report["actual_duration"] == pytest.approx(report["wall_duration"]) and report["wall_duration"] > 0


def test_force_records_out_of_order_milestones(meter, db):
    meter("set-task", "P1-001")
    assert meter("mark", "approved").code == 1
    assert meter("mark", "approved", "--force", "--note", "approved by lead").code == 0
    assert tasks.get_task(db, "P1-001")["final_approval_at"] is not None
    note = db.execute("SELECT note FROM task_events WHERE kind = 'milestone'").fetchone()[0]
    assert note == "approved by lead"


def test_mark_names_a_task_other_than_the_current(meter, db):
    meter("set-task", "P1-001")
    meter("set-task", "P1-002")
    assert meter("mark", "initial", "P1-001").code == 0
    assert tasks.get_task(db, "P1-001")["initial_completion_at"] is not None
    assert tasks.get_task(db, "P1-002")["initial_completion_at"] is None


def test_iterations_count_the_first_attempt(meter, db):
    meter("set-task", "P1-005")
    assert "iteration 2 recorded" in meter("iteration", "--note", "wrong API").out
    assert "iteration 3 recorded" in meter("iteration", "P1-005").out
    assert tasks.iterations(db, "P1-005") == 3
    listed = json.loads(meter("tasks", "--json").out)
    assert listed[0]["iterations_count"] == 3


def test_phase_view_edit_and_milestones(meter):
    meter("set-task", "P1-001")
    result = meter(
        "phase",
        "P1",
        "--title",
        "Foundation",
        "--surprise",
        "fast matching",
        "--win",
        "bindings",
        "--challenge",
        "IPC",
        "--improvements",
        "estimate IPC higher",
        "--patterns",
        "Pattern-IPC-001",
        "--debt",
        "no retries",
        "--deliverables",
        "core lib",
        "--completed",
        "core lib",
        "--blockers",
        "none",
        "--mark",
        "begin",
        "--at",
        "2025-10-04T09:00:00Z",
        "--json",
    )
    assert result.code == 0, result.err
    view = json.loads(result.out)  # the same fields as `meter report phase P1 --format json`
    assert view["title"] == "Foundation" and view["biggest_surprise"] == "fast matching"
    assert view["phase_begin"] == "2025-10-04T09:00:00.000000Z"
    assert [task["task_id"] for task in view["tasks"]] == ["P1-001"]
    text = meter("phase", "P1").out
    assert "=== META-LEARNING ===" in text and "BIGGEST_WIN:" in text
    phases = json.loads(meter("phases", "--json").out)
    assert phases[0]["phase_id"] == "P1" and phases[0]["tasks_total"] == 1


def _call(db, interaction_id, task_id, **usage):
    interactions.insert(
        db,
        Interaction(
            id=interaction_id,
            task_id=task_id,
            started_at=f"2026-01-01T00:00:0{interaction_id[-1]}.000000Z",
            ended_at=f"2026-01-01T00:00:0{interaction_id[-1]}.500000Z",
            model="gpt-4o",
            provider="openai",
            usage_source="reported",
            http_status=200,
            outcome="complete",
            **usage,
        ),
    )


def test_log_status_and_flags(meter, db):
    meter("set-task", "P1-010")
    _call(db, "00000000aaa1", "P1-010", input_total=1149, cache_read=1024, output_total=353, reasoning=0)
    _call(db, "00000000aab2", None, input_total=10, output_total=5)
    rows = json.loads(meter("log", "--json").out)
    assert [r["interaction_id"] for r in rows] == ["00000000aab2", "00000000aaa1"]
    assert json.loads(meter("log", "--task", "P1-010", "--json").out)[0]["tokens"]["input_total"] == 1149
    table = meter("log").out  # piped: tab-separated, plain numbers
    assert table.splitlines()[0].split("\t")[:3] == ["ID", "Started", "Task"]
    assert "00000000aaa1" in table and "\t1149\t" in table and "unassigned" in table

    # `last` is the current task's; the newer unassigned call is another task's.
    assert "Flagged 00000000aaa1" in meter("flag", "last").out
    assert "Flagged 00000000aab2" in meter("flag", "00000000aab", "--note", "invented API").out
    assert "already flagged" in meter("flag", "00000000AAA1").out
    flagged = json.loads(meter("log", "--json").out)
    assert flagged[0]["flag_note"] == "invented API"
    assert "Unflagged 00000000aab2" in meter("unflag", "00000000aab").out

    status = json.loads(meter("status", "--json").out)
    assert status["task_id"] == "P1-010"
    assert status["task"]["token_count_used"] == 1149 + 353
    assert status["task"]["hallucination_count"] == 1
    assert status["proxies"] == []
    assert re.search(r"Tokens so far: +1,502", meter("status").out)


def test_path_honours_db_option_and_env(meter, db_path, tmp_path):
    assert meter("path").out.strip() == str(db_path)
    other = tmp_path / "other.db"
    assert meter("path", "--db", str(other)).out.strip() == str(other)
    assert meter("set-task", "P9-001", "--db", str(other)).code == 0
    assert other.exists()


def test_help_lists_every_command(meter):
    text = meter("--help").out
    for command in ("set-task", "task", "mark", "iteration", "phase", "tasks", "status", "log", "flag", "unflag"):
        assert command in text
