"""Attribution and context switches as the writer stores calls (store level)."""

import time

from taskmeter.store import calls, tasks
from taskmeter.store.calls import CallRow
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import now_stored


def _call(n: int, conversation: str | None, task_id=None, attribution=None, operation="generate", **values) -> Interaction:
    time.sleep(0.002)  # distinct, ordered start times
    return Interaction(
        id=f"0000000000{n:02d}",
        started_at=values.pop("started_at", None) or now_stored(),
        conversation_root=conversation,
        task_id=task_id,
        attribution=attribution,
        operation=operation,
        **values,
    )


def _store(db, *rows):
    with write_transaction(db):
        calls.store_calls(db, [CallRow(r) for r in rows])
    return [dict(db.execute("SELECT * FROM interactions WHERE id = ?", (r.id,)).fetchone()) for r in rows]


def test_calls_go_to_the_task_current_when_they_started(db):
    before = _call(1, "a")
    tasks.set_task(db, "P1-001")
    during = _call(2, "a")
    tasks.clear_task(db)
    after = _call(3, "a")
    stored = _store(db, after, during, before)  # stored out of order, as a batch may be
    assert [(r["task_id"], r["attribution"]) for r in stored] == [(None, "none"), ("P1-001", "current"), (None, "none")]


def test_explicit_attribution_creates_the_task_and_wins_over_current(db):
    tasks.set_task(db, "P1-001")
    stored = _store(db, _call(1, "a", task_id="P2-005", attribution="path"))
    assert (stored[0]["task_id"], stored[0]["attribution"]) == ("P2-005", "path")
    created = tasks.get_task(db, "P2-005")
    assert created["phase_id"] == "P2" and created["begin_at"] == stored[0]["started_at"]
    assert tasks.current_task(db).task_id == "P1-001"  # naming a task does not make it current


def test_a_new_agent_session_within_a_task_is_a_context_switch_and_going_back_is_not(db):
    tasks.set_task(db, "P1-001")
    rows = _store(db, *(_call(n, root, client_session=f"cc-{root}") for n, root in enumerate(["a", "a", "b", "b", "a"], 1)))
    assert [r["context_switch"] for r in rows] == [0, 0, 1, 0, 0]
    assert [r["session_id"] for r in rows] == ["cc-a"] * 2 + ["cc-b"] * 2 + ["cc-a"]


def test_sdk_conversations_are_sessions_but_never_context_switches(db):
    """A client that names no session: each new first message is a session of its
    own, yet no context switch (the developer stayed on the task)."""
    tasks.set_task(db, "P1-001")
    rows = _store(db, _call(1, "a"), _call(2, "a"), _call(3, "b"), _call(4, "b"), _call(5, "a"))
    assert [r["context_switch"] for r in rows] == [0] * 5
    assert [r["session_id"] for r in rows] == ["000000000001"] * 2 + ["000000000003"] * 2 + ["000000000001"]


def test_claude_code_traffic_of_one_session_has_no_context_switch(db):
    """One main conversation over 4 turns, a small-model side call before each
    turn, and a 2-turn subagent: 10 calls, 3 conversation roots, one session."""
    tasks.set_task(db, "P1-001")
    shape = ["side", "main", "side", "main", "agent", "agent", "side", "main", "side", "main"]
    rows = _store(db, *(_call(n, root, client_session="cc-1") for n, root in enumerate(shape, 1)))
    assert [r["context_switch"] for r in rows] == [0] * 10
    second = _store(db, _call(11, "main", client_session="cc-2"), _call(12, "side", client_session="cc-2"))
    assert [r["context_switch"] for r in second] == [1, 0]  # two real sessions: one switch


def test_task_switching_counts_one_switch_per_return(db):
    tasks.set_task(db, "P1-001")
    rows = _store(db, _call(1, "a", client_session="cc"))
    for n in range(2, 5):
        tasks.set_task(db, "P1-002")
        tasks.set_task(db, "P1-001")
        rows += _store(db, _call(n, "a", client_session="cc"), _call(n + 10, "side", client_session="cc"))
    assert [r["context_switch"] for r in rows] == [0, 1, 0, 1, 0, 1, 0]


def test_a_conversation_paused_longer_than_the_gap_is_a_new_session(db):
    def call(n: int, at: str) -> Interaction:
        return _call(n, "a", task_id="P1-001", attribution="path", started_at=f"2026-11-20T{at}:00.000000Z")

    rows = _store(db, call(1, "09:00"), call(2, "09:20"), call(3, "10:00"))  # 40 minutes on: past the 30-minute gap
    assert [r["context_switch"] for r in rows] == [0, 0, 0]  # a pause inside one SDK chat is no switch
    assert [r["session_id"] for r in rows] == ["000000000001", "000000000001", "000000000003"]


def test_returning_to_a_task_counts_as_a_context_switch(db):
    tasks.set_task(db, "P1-001")
    first = _store(db, _call(1, "a"))
    tasks.set_task(db, "P1-002")
    other = _store(db, _call(2, "z"))
    tasks.set_task(db, "P1-001")
    back = _store(db, _call(3, "a"))
    assert first[0]["context_switch"] == 0
    assert other[0]["context_switch"] == 0  # P1-002's first call: nothing to switch from
    assert back[0]["context_switch"] == 1


def test_token_counting_calls_are_not_context_switches(db):
    tasks.set_task(db, "P1-001")
    rows = _store(db, _call(1, "a"), _call(2, None, operation="count_tokens"), _call(3, "a"))
    assert [r["context_switch"] for r in rows] == [0, None, 0]
