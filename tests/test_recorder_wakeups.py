"""The hand-over wakes on data, not on a timer: an idle recorder sleeps until
something of its housekeeping is due, and the proxy's sender gathers calls
while they keep coming (up to GATHER_SECONDS) but stops waiting as soon as
waiting has no point (no call for QUIET_SECONDS, a batch's worth of calls, a
call that must go over at once, the proxy stopping). Each
wake costs CPU, which at a few calls a second weighs on every call: `make bench
--only proxy` measures it. Every call of each test is stored exactly once."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskmeter.config.settings import load_settings
from taskmeter.handover import pipe
from taskmeter.handover.call import CapturedCall
from taskmeter.handover.pipe import Handover
from taskmeter.ids import new_id
from taskmeter.proxy.runner import guard_settings
from taskmeter.recorder.loop import RETRY_SECONDS
from taskmeter.recorder.planner import REFRESH_SECONDS
from tests.captured import chat_call
from tests.waiting import until

ANSWER = (
    b'{"object": "chat.completion", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 8},'
    b' "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}'
)
# The window over which an idle recorder's wakes are counted.
IDLE_WINDOW_SECONDS = 4.0
# A long gather: a test that depends on it ending early fails (by its deadline) if it does not.
HOUR = 3600.0


def _call(prompt_bytes: int = 10) -> CapturedCall:
    return chat_call(new_id(), {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * prompt_bytes}]}, ANSWER)


def _stored_ids(db_path: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return sorted(row[0] for row in db.execute("SELECT id FROM interactions"))
    except sqlite3.OperationalError:
        return []  # not made yet: the recorder makes it


def _wakes(pid: int) -> int:
    """The times the process's threads went to sleep and were woken: its voluntary context switches."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def _idle_wakes_per_second(db_path: Path, arguments: list[str]) -> float:
    """A recorder run with `arguments`: once it stored a first call and said so, its wakes per
    second over IDLE_WINDOW_SECONDS."""
    handover = Handover(db_path, arguments, new_id(), 1 << 20)
    handover.start()
    try:
        first = _call()
        handover.submit(first)
        until(lambda: _stored_ids(db_path) == [first.id], what="the first call")
        until(lambda: not handover._unacknowledged, what="its acknowledgement")
        assert handover._process is not None
        pid = handover._process.pid
        before, started = _wakes(pid), time.monotonic()
        deadline = started + IDLE_WINDOW_SECONDS
        while time.monotonic() < deadline:  # the window itself is what is measured
            time.sleep(deadline - time.monotonic())
        return (_wakes(pid) - before) / (time.monotonic() - started)
    finally:
        handover.stop()


@pytest.mark.e2e
def test_an_idle_recorder_wakes_only_when_its_housekeeping_is_due(db_path):
    # No budgets to refresh: what waits (the spool, a database to retry) is looked at once a RETRY_SECONDS.
    rate = _idle_wakes_per_second(db_path, ["--store-bodies", "none"])
    assert rate <= 1.25 / RETRY_SECONDS  # it used to wake four times a second


@pytest.mark.e2e
def test_an_idle_recorder_with_budgets_wakes_for_their_refresh_and_no_more(db_path):
    # As `meter proxy` runs it: the budgets and alerts are refreshed every REFRESH_SECONDS.
    rate = _idle_wakes_per_second(db_path, ["--store-bodies", "none", "--guard", guard_settings(load_settings())])
    assert rate <= 1.25 / REFRESH_SECONDS  # it used to wake four times a second


def _gathering(handover: Handover) -> CapturedCall:
    """A call the sender took, and gathers others for GATHER_SECONDS after."""
    call = _call()
    handover.submit(call)
    until(lambda: handover._queue.qsize() == 0, what="the sender to take the call")
    return call


@pytest.fixture
def long_gather(monkeypatch):
    monkeypatch.setattr(pipe, "GATHER_SECONDS", HOUR)
    monkeypatch.setattr(pipe, "QUIET_SECONDS", HOUR)


@pytest.mark.e2e
def test_a_batch_worth_of_calls_ends_the_gather(db_path, long_gather):
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 30)
    handover.start()
    try:
        calls = [_gathering(handover)] + [_call() for _ in range(pipe.BATCH - 1)]
        for call in calls[1:]:
            handover.submit(call)
        until(lambda: len(_stored_ids(db_path)) == pipe.BATCH, what="the batch to be stored before the hour is over")
    finally:
        handover.stop()
    assert _stored_ids(db_path) == sorted(call.id for call in calls)
    assert handover.batches == 1
    assert handover.lost == 0


@pytest.mark.e2e
def test_calls_holding_a_share_of_the_pending_limit_end_the_gather(db_path, long_gather):
    limit = 1 << 20
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), limit)
    handover.start()
    try:
        gathered = _gathering(handover)
        large = _call(int(limit * pipe.GATHERED_SHARE))
        handover.submit(large)
        until(lambda: len(_stored_ids(db_path)) == 2, what="both calls to be stored before the hour is over")
    finally:
        handover.stop()
    assert _stored_ids(db_path) == sorted([gathered.id, large.id])
    assert handover.batches == 1 and handover.lost == 0


@pytest.mark.e2e
def test_a_call_that_must_go_over_at_once_ends_the_gather(db_path, long_gather):
    urgent = threading.Event()  # a budget in block mode: the proxy counts calls in flight
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20, urgent=urgent.is_set)
    handover.start()
    try:
        gathered = _gathering(handover)
        urgent.set()
        counted = _call()
        handover.submit(counted)
        until(lambda: len(_stored_ids(db_path)) == 2, what="both calls to be stored before the hour is over")
    finally:
        handover.stop()
    assert _stored_ids(db_path) == sorted([gathered.id, counted.id])
    assert handover.lost == 0


@pytest.mark.e2e
def test_a_call_alone_goes_over_once_no_other_comes_for_quiet_seconds(db_path, monkeypatch):
    monkeypatch.setattr(pipe, "GATHER_SECONDS", HOUR)  # the quiet ends it, not the gather's bound
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20)
    handover.start()
    try:
        call = _call()
        handover.submit(call)
        until(lambda: _stored_ids(db_path) == [call.id], what="the call to be stored before the hour is over")
    finally:
        handover.stop()
    assert handover.batches == 1 and handover.lost == 0


@pytest.mark.e2e
def test_stopping_ends_the_gather_and_stores_the_call(db_path, long_gather):
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20)
    handover.start()
    gathered = _gathering(handover)
    stopper = threading.Thread(target=handover.stop, daemon=True)
    stopper.start()
    until(lambda: not stopper.is_alive(), what="stop() to return before the hour is over")
    assert _stored_ids(db_path) == [gathered.id] and handover.lost == 0
