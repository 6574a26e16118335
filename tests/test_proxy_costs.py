"""The proxy's cost per call, and the defects found on its way: the spool is opened
before a batch is encoded, the queue before the sender thread is bounded (past
it, calls go to the spool and are still stored exactly once), a stream
observer's error is said once per call, and calls that come one by one reach
the recorder together. Speed itself is measured by `make bench --only proxy`."""

import errno
import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from taskmeter.handover import callfile
from taskmeter.handover.call import CapturedCall
from taskmeter.handover.pipe import QUIET_SECONDS, Handover
from taskmeter.ids import new_id
from taskmeter.proxy.tee import ResponseTee
from tests.captured import chat_call
from tests.waiting import until

ANSWER = json.dumps(
    {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8},
    }
).encode()


def _call(prompt_bytes: int = 100) -> CapturedCall:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * prompt_bytes}]}
    return chat_call(new_id(), ask, ANSWER)


def _stored(db_path: Path) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return db.execute("SELECT id, input_total, output_total FROM interactions").fetchall()
    except sqlite3.OperationalError:
        return []  # not made yet: the recorder makes it


# ---------------------------------------------------------------- the spool


def test_a_spool_that_cannot_be_opened_costs_no_encoding(tmp_path, monkeypatch):
    encoded = []
    real_encode = callfile.encode
    monkeypatch.setattr(callfile, "encode", lambda call, reason=None: encoded.append(call) or real_encode(call, reason))
    spool = tmp_path / "no such folder" / "meter.db.spool.jsonl"
    with pytest.raises(FileNotFoundError):
        callfile.append(spool, [_call(1 << 20) for _ in range(3)])
    assert encoded == []
    # Where it can be opened, every call is written whole, and read back as it was.
    spool = tmp_path / "meter.db.spool.jsonl"
    calls = [_call(), _call()]
    callfile.append(spool, calls)
    assert len(encoded) == 2
    assert [(c.id, c.request_body, bytes(c.response_body)) for c in callfile.read(spool)] == [
        (c.id, c.request_body, bytes(c.response_body)) for c in calls
    ]


def test_a_spool_renamed_for_replay_while_a_batch_was_encoded_gets_it_in_the_new_file(tmp_path, monkeypatch):
    spool = tmp_path / "meter.db.spool.jsonl"
    spool.write_text("")
    real_encode = callfile.encode
    renamed = []

    def encode_while_the_recorder_takes_the_spool(call, reason=None):
        if not renamed:
            renamed.append(callfile.take_for_replay(spool))
        return real_encode(call, reason)

    monkeypatch.setattr(callfile, "encode", encode_while_the_recorder_takes_the_spool)
    call = _call()
    callfile.append(spool, [call])
    assert [c.id for c in callfile.read(spool)] == [call.id]
    assert renamed[0].read_text() == ""  # nothing went into the file taken for replay


# ---------------------------------------------------------------- the stream observer


class _Unwritable(bytearray):
    """A body buffer that refuses every chunk: the observer's bug, in miniature."""

    def __iadd__(self, other):
        raise RuntimeError("observer bug")


def test_a_stream_observer_error_is_said_once_per_call_and_the_stream_goes_on(caplog):
    chunks = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    for _ in range(2):  # two calls: once each
        call = _call()
        call.response_body = _Unwritable()
        tee = ResponseTee(call, limit=1 << 20, usage_stripper=None)
        with caplog.at_level(logging.ERROR, logger="taskmeter.proxy.tee"):
            assert [tee(chunk) for chunk in chunks] == chunks
            assert tee(b"") == b""
    said = [record for record in caplog.records if "stream observer failed" in record.getMessage()]
    assert len(said) == 2 and all(record.exc_info for record in said)


# ---------------------------------------------------------------- the queue before the sender


@pytest.mark.e2e
def test_calls_past_the_queue_bound_go_to_the_spool_and_are_each_stored_once(db_path, caplog):
    bound = 1 << 20
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), bound)
    handover.start()
    calls = [_call(300_000) for _ in range(12)]  # 3.6 MB of prompts against a 1 MB bound
    try:
        with caplog.at_level(logging.WARNING, logger="taskmeter.handover"):
            # The sender is held up (it waits for the hand-over's lock), as by a slow disk.
            with handover._lock:
                for call in calls:
                    handover.submit(call)
                    assert handover.queued_bytes <= bound
                # Those past the bound went to the spool, which the recorder stores meanwhile: at
                # least 6, as the queue holds 3 and the sender may have taken 3 before it was held up.
                until(lambda: len(_stored(db_path)) >= 6, what="the spilled calls stored")
    finally:
        handover.stop()
    rows = _stored(db_path)
    assert sorted(row[0] for row in rows) == sorted(call.id for call in calls)  # each exactly once
    assert {row[1:] for row in rows} == {(7, 8)}
    assert handover.lost == 0
    assert "calls go to the spool" in caplog.text
    assert not callfile.spool_path(db_path).exists()


@pytest.mark.e2e
def test_a_spool_that_cannot_be_written_keeps_the_calls_past_the_bound_for_the_sender(db_path, caplog, monkeypatch):
    def full_disk(path, calls, reason=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(callfile, "append", full_disk)  # in this process, the proxy's: the recorder writes as usual
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20)
    handover.start()
    calls = [_call(300_000) for _ in range(8)]
    try:
        with caplog.at_level(logging.WARNING, logger="taskmeter.handover"):
            with handover._lock:
                for call in calls:
                    handover.submit(call)
                until(lambda: "spooling calls past the hand-over queue's bound" in caplog.text, what="the spill to fail")
    finally:
        handover.stop()
    # Nothing lost: the sender took them, and went on as it does when the spool cannot be written.
    assert sorted(row[0] for row in _stored(db_path)) == sorted(call.id for call in calls)
    assert handover.lost == 0


# ---------------------------------------------------------------- gathering


def _one_by_one(handover: Handover, db_path: Path, spacing: float) -> int:
    """Six calls, the first alone (stored before the others start), then five, each
    `spacing` after the one before; every one stored once. The batches handed over."""
    calls = [_call() for _ in range(6)]
    handover.submit(calls[0])
    until(lambda: len(_stored(db_path)) == 1, what="the first call")
    for call in calls[1:]:
        time.sleep(spacing)  # paces the input: calls that end one by one
        handover.submit(call)
    until(lambda: len(_stored(db_path)) == 6, what="every call")
    assert sorted(row[0] for row in _stored(db_path)) == sorted(call.id for call in calls)
    return handover.batches


@pytest.mark.e2e
def test_calls_that_come_one_by_one_reach_the_recorder_together(db_path):
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20)
    handover.start()
    try:
        batches = _one_by_one(handover, db_path, spacing=QUIET_SECONDS / 5)
    finally:
        handover.stop()
    assert batches <= 3  # the first alone, then the five in one or two (a loaded machine may pace them late)


@pytest.mark.e2e
def test_while_a_budget_counts_calls_in_flight_each_call_goes_over_at_once(db_path):
    handover = Handover(db_path, ["--store-bodies", "none"], new_id(), 1 << 20, urgent=lambda: True)
    handover.start()
    try:
        batches = _one_by_one(handover, db_path, spacing=QUIET_SECONDS / 5)  # gathered, were they not urgent
    finally:
        handover.stop()
    assert batches == 6
