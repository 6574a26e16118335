"""A task's latencies (`meter report models --task`, the dashboard's task page) are
read through the task's calls, however many calls of the same model came later."""

from datetime import UTC, datetime, timedelta

from taskmeter.analytics.periods import model_latencies
from taskmeter.store import calls
from taskmeter.store.calls import CallRow
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored
from tests.sqlite_work import sqlite_steps

DAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _calls(db, task_id: str, first: int, count: int, total_seconds: float) -> None:
    rows = []
    for n in range(first, first + count):
        began = DAY + timedelta(seconds=n)
        rows.append(
            CallRow(
                Interaction(
                    id=f"{n:012d}",
                    started_at=to_stored(began),
                    first_byte_at=to_stored(began + timedelta(seconds=total_seconds / 2)),
                    ended_at=to_stored(began + timedelta(seconds=total_seconds)),
                    task_id=task_id,
                    attribution="path",
                    protocol="openai_chat",
                    model="gpt-4o-mini",
                    http_status=200,
                )
            )
        )
    with write_transaction(db):
        calls.store_calls(db, rows)


def test_a_task_s_latency_costs_the_same_beside_fifty_or_five_thousand_later_calls_of_its_model(db):
    _calls(db, "P1-001", 0, 3, total_seconds=2.0)
    _calls(db, "P1-002", 10, 50, total_seconds=9.0)

    def read() -> dict:
        return model_latencies(db, ["gpt-4o-mini"], task_id="P1-001")["gpt-4o-mini"]

    few = sqlite_steps(db, read)
    _calls(db, "P1-002", 60, 5_000, total_seconds=9.0)
    many = sqlite_steps(db, read)
    assert read()["timed_calls"] == 3 and read()["total_p50_seconds"] == 2.0  # the task's own calls alone
    assert many < 2 * few, (few, many)
