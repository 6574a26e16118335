"""Real stored tasks for the forecast tests: approved tasks with a known estimate,
working time (the time they were current) and tokens, written through the store."""

from datetime import UTC, datetime, timedelta

from taskmeter.store import tasks
from taskmeter.store.calls import CallRow, store_calls
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def stored_task(db, task_id, begin, worked, estimate=None, tokens=None, cost=None, approve=True, tag=None, number=0):
    """A task current from `begin` for `worked` seconds, with calls of `tokens`
    (input) in all costing `cost`, approved at its end when `approve`."""
    tasks.set_task(db, task_id, estimate_seconds=estimate, create=True)
    tasks.clear_task(db)
    end = begin + timedelta(seconds=worked)
    with write_transaction(db):
        db.execute("DELETE FROM task_events WHERE kind = 'switch' AND (task_id = ? OR previous_task_id = ?)", (task_id, task_id))
        db.execute("DELETE FROM state")
        db.execute("UPDATE tasks SET begin_at = ? WHERE id = ?", (to_stored(begin), task_id))
        db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (?, 'switch', ?)", (task_id, to_stored(begin)))
        db.execute("INSERT INTO task_events (task_id, kind, at) VALUES (NULL, 'switch', ?)", (to_stored(end),))
        # A call every 10 minutes keeps it working (the idle gap is 15): its working time is `worked`.
        moments = [begin + timedelta(seconds=offset) for offset in range(0, int(worked), 600)] + [end]
        share = (tokens or 0) // len(moments)
        rows = [
            CallRow(
                Interaction(
                    id=f"{number:08d}{index:04d}",
                    task_id=task_id,
                    attribution="path",
                    started_at=to_stored(moment),
                    ended_at=to_stored(moment),
                    input_total=(tokens or 0) - share * (len(moments) - 1) if index == 0 else share,
                    output_total=0,
                    cost_usd=None if cost is None else cost / len(moments),
                    usage_source="reported",
                    model="gpt-4o",
                )
            )
            for index, moment in enumerate(moments)
        ]
        store_calls(db, rows)
    if tag:
        tasks.update_task(db, task_id, {"tag": tag})
    if approve:
        tasks.mark(db, task_id, "approved", at=end, force=True)
    return end
