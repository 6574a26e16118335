"""Reopening a task withdraws the phase's "integration complete" mark when the
meter set it (every task was approved), and leaves a person's mark alone."""

from taskmeter.store import tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored


def approve_the_whole_phase(db, task_ids):
    with write_transaction(db):
        for task_id in task_ids:
            tasks.ensure_task(db, task_id, now_stored())
            tasks.auto_mark(db, "tasks", task_id, "approved", now_stored(), "commit abc in main")
        tasks.auto_mark(db, "phases", "P1", "integration", now_stored(), "every task of P1 approved")


def integration(db):
    return db.execute("SELECT integration_complete_at FROM phases WHERE id = 'P1'").fetchone()[0]


def test_reopening_withdraws_the_meter_s_integration_mark(db):
    approve_the_whole_phase(db, ["P1-010", "P1-011"])
    assert integration(db) is not None
    reopening = tasks.reopen(db, "P1-011")
    assert (reopening.task_id, reopening.integration_withdrawn) == ("P1-011", "P1")
    assert integration(db) is None
    withdrawal = db.execute("SELECT value, source FROM automatic_marks WHERE phase_id = 'P1' ORDER BY id DESC").fetchone()
    assert (withdrawal["value"], withdrawal["source"]) == (None, "withdrawn: P1-011 reopened")
    # Approved again, the meter may mark the phase integrated again.
    with write_transaction(db):
        assert tasks.auto_mark(db, "phases", "P1", "integration", now_stored(), "every task of P1 approved")
    assert integration(db) is not None


def test_reopening_keeps_a_person_s_integration_mark(db):
    approve_the_whole_phase(db, ["P1-010"])
    marked = tasks.mark_phase(db, "P1", "integration", force=True)
    reopening = tasks.reopen(db, "P1-010")
    assert reopening.integration_withdrawn is None
    assert integration(db) == marked.stamp


def test_reopening_a_task_whose_phase_was_never_integrated_changes_no_phase(db):
    with write_transaction(db):
        tasks.ensure_task(db, "P1-010", now_stored())
        tasks.auto_mark(db, "tasks", "P1-010", "approved", now_stored(), "commit abc in main")
    assert tasks.reopen(db, "P1-010").integration_withdrawn is None
    assert db.execute("SELECT count(*) FROM automatic_marks WHERE phase_id = 'P1'").fetchone()[0] == 0
