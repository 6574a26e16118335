"""Each report's `--json` output has exactly the keys of its type in
analytics/records.py, in the type's order, down every nested record: the code
typed with them and what scripts read cannot drift apart."""

import json
import types
import typing

import pytest

from taskmeter.analytics import records
from taskmeter.store import tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import now_stored


def _is_record(hint) -> bool:
    return typing.is_typeddict(hint)


def _records_in(hint) -> list:
    """The record types a value of this type may be (X, X | None, list[X])."""
    if _is_record(hint):
        return [hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return [found for arg in typing.get_args(hint) for found in _records_in(arg)]
    return []


def assert_shape(value, record_type, where: str) -> int:
    """The keys of `value` are `record_type`'s, in order (a NotRequired key may be absent);
    returns how many records were checked, nested ones included."""
    hints = typing.get_type_hints(record_type)
    present = [key for key in hints if key in value or key in record_type.__required_keys__]
    assert list(value) == present, f"{where}: keys differ from {record_type.__name__}"
    checked = 1
    for key, hint in hints.items():
        if key not in value or value[key] is None:
            continue
        if typing.get_origin(hint) is list:
            (item_hint,) = typing.get_args(hint)
            for position, item in enumerate(value[key]):
                for item_type in _records_in(item_hint):
                    checked += assert_shape(item, item_type, f"{where}.{key}[{position}]")
        for nested in _records_in(hint):
            checked += assert_shape(value[key], nested, f"{where}.{key}")
    return checked


def _call(db, number: int, task_id: str | None, **usage) -> None:
    at = now_stored()
    with write_transaction(db):
        store_calls(
            db,
            [
                CallRow(
                    Interaction(
                        id=f"0000000{number:05d}",
                        task_id=task_id,
                        attribution="path" if task_id else "none",
                        started_at=at,
                        ended_at=at,
                        conversation_root=f"c{number}",
                        usage_source="reported",
                        **usage,
                    )
                )
            ],
        )


@pytest.fixture
def stored(db, meter):
    """Two phases; P1-001 approved, P1-002 open without an estimate; a call of no task."""
    for args in (
        ["set-task", "P1-001", "--estimate", "1h", "--create"],
        ["set-task", "P1-002", "--create"],
        ["set-task", "P2-001", "--estimate", "30m", "--create"],
    ):
        assert meter(*args).code == 0
    usage = {"input_total": 1000, "cache_read": 600, "cache_write": 0, "output_total": 200, "reasoning": 50, "cost_usd": 0.01}
    _call(db, 1, "P1-001", model="gpt-4o", **usage)
    _call(db, 2, "P1-002", model="local-llama", input_total=100, output_total=10)
    tasks.add_iteration(db, "P1-002")
    tasks.mark(db, "P1-001", "approved", force=True)
    _call(db, 3, "P1-001", model="gpt-4o", **usage)  # after its approval
    tasks.clear_task(db)
    _call(db, 4, None, model="gpt-4o", input_total=10, output_total=1)
    return db


def _json(meter, *args: str):
    result = meter(*args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_the_task_reports_have_their_types_keys(stored, meter):
    approved = _json(meter, "report", "task", "P1-001", "--json")
    assert approved["after_approval"] is not None and approved["approvals"]  # nested records to check
    assert assert_shape(approved, records.TaskRecord, "report task") == 8
    assert assert_shape(_json(meter, "task", "P1-002", "--json"), records.TaskRecord, "task --json") >= 5
    listing = _json(meter, "tasks", "--json")
    assert [task["task_id"] for task in listing] == ["P1-001", "P1-002", "P2-001"]
    for task in listing:
        assert_shape(task, records.TaskListing, f"tasks --json {task['task_id']}")


def test_the_phase_reports_and_the_overview_have_their_types_keys(stored, meter):
    phase = _json(meter, "report", "phase", "P2", "--json")
    assert phase["previous_phase_id"] == "P1"
    assert_shape(phase, records.PhaseReportAlone, "report phase")
    assert assert_shape(_json(meter, "phase", "P1", "--json"), records.PhaseReportAlone, "phase --json") > 10
    phases = _json(meter, "phases", "--json")
    assert [p["phase_id"] for p in phases] == ["P1", "P2"]
    for each in phases:
        assert_shape(each, records.PhaseReport, f"phases --json {each['phase_id']}")
    overview = _json(meter, "report", "--json")
    assert len(overview["phases"]) == 2 and overview["unassigned"]["ai_interactions"] == 1
    assert_shape(overview, records.OverviewReport, "report")


@pytest.mark.parametrize("period", ["hourly", "daily", "weekly", "monthly", "models"])
def test_the_usage_reports_have_their_types_keys(stored, meter, period):
    report = _json(meter, "report", period, "--json")
    rows = report["models"] if period == "models" else report["periods"]
    assert rows, "a report with rows to check"
    assert ("start" in rows[0]) == (period == "hourly")  # only an hour gives its UTC start
    assert_shape(report, records.UsageReport, f"report {period}")


def test_the_status_has_its_types_keys(stored, meter):
    assert meter("set-task", "P1-002").code == 0
    status = _json(meter, "status", "--json")
    assert status["task"]["task_id"] == "P1-002"
    assert assert_shape(status, records.StatusReport, "status --json") > 5
