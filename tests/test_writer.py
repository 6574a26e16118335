"""The recorder's loop and its database writer, in-process over a real SQLite file:
poison values, refused rows, a locked or unwritable database, an unwritable
spool. Every other call is stored exactly once."""

import json
import os
import subprocess
import threading
import time

import pytest

from taskmeter.handover import callfile
from taskmeter.handover.call import CapturedCall
from taskmeter.recorder import loop as recorder_module
from taskmeter.recorder.finalize import Finalizer
from taskmeter.recorder.loop import RecorderLoop
from taskmeter.store import connection
from taskmeter.store.calls import CallRow
from taskmeter.store.interactions import Interaction
from taskmeter.store.writer import DatabaseUnavailable, Writer
from taskmeter.timefmt import now_stored
from tests.captured import chat_call


def _row(n: int, **values) -> CallRow:
    return CallRow(Interaction(**{"id": f"00000000{n:04d}", "started_at": now_stored(), "input_total": n, **values}))


def _call(n: int, body: bytes | None = None, model: str = "gpt-4o-mini", **values) -> CapturedCall:
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    response = body if body is not None else json.dumps({"object": "chat.completion", "model": model, "usage": usage}).encode()
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return chat_call(f"00000000{n:04d}", request, response, **values)


def _rows(path) -> dict[str, dict]:
    db = connection.connect(path)
    try:
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM interactions")}
    finally:
        db.close()


def _loop(db_path) -> RecorderLoop:
    return RecorderLoop(db_path, Finalizer(), proxy_id=None)


def test_a_batch_is_stored_in_one_go(db_path):
    writer = Writer(db_path)
    assert writer.store([_row(n) for n in range(1200)]) == []
    writer.close()
    assert len(_rows(db_path)) == 1200


POISON = {
    "an integer past 2^63": dict(input_total=2**63),
    "a float of 1e300": dict(cost_usd=1e300),
    "an infinite float": dict(cost_usd=float("inf")),
    "a lone surrogate": dict(model="gpt-\ud800"),
    "a NUL character": dict(error="bad\x00byte"),
    "an oversized string": dict(error="e" * 1_000_000),
}


@pytest.mark.parametrize("poison", POISON)
def test_a_poison_value_is_stored_clamped_with_a_note_and_costs_no_neighbour(db_path, poison):
    writer = Writer(db_path)
    assert writer.store([_row(1), _row(2, **POISON[poison]), _row(3)]) == []
    writer.close()
    rows = _rows(db_path)
    assert set(rows) == {"000000000001", "000000000002", "000000000003"}
    poisoned = rows["000000000002"]
    assert poisoned["notes"], poisoned
    assert rows["000000000001"]["notes"] is None
    for column, value in POISON[poison].items():
        stored = poisoned[column]
        if isinstance(value, (int, float)):
            assert stored is None
        else:
            assert stored != value and "\x00" not in stored and len(stored) <= 8192
            stored.encode("utf-8")


def test_a_row_the_database_refuses_is_returned_alone(db_path):
    writer = Writer(db_path)
    refused = _row(2, outcome="not-an-outcome")  # the schema's CHECK refuses it
    rejected = writer.store([_row(1), refused, _row(3)])
    writer.close()
    assert [item for item, _ in rejected] == [refused] and "CHECK" in rejected[0][1]
    assert set(_rows(db_path)) == {"000000000001", "000000000003"}


def test_poison_in_the_usage_of_a_response_is_recorded_with_its_neighbours(db_path):
    loop = _loop(db_path)
    huge = json.dumps({"object": "chat.completion", "usage": {"prompt_tokens": 2**63, "completion_tokens": 1e300}}).encode()
    loop.record([_call(1), _call(2, body=huge), _call(3, model="m\udc80"), _call(4)])
    loop.finish()
    rows = _rows(db_path)
    assert len(rows) == 4
    assert rows["000000000002"]["input_total"] is None and rows["000000000002"]["output_total"] is None
    assert "prompt_tokens: 9223372036854775808 is not a plausible count" in rows["000000000002"]["notes"]
    assert rows["000000000003"]["model"] == "m\ufffd"
    assert rows["000000000001"]["input_total"] == 10 and rows["000000000004"]["output_total"] == 5


def test_a_call_the_database_refuses_goes_to_the_quarantine(db_path):
    loop = _loop(db_path)
    loop.record([_call(1), _call(2, outcome="not-an-outcome"), _call(3)])
    loop.finish()
    assert set(_rows(db_path)) == {"000000000001", "000000000003"}
    quarantine = callfile.quarantine_path(db_path)
    (line,) = quarantine.read_text().splitlines()
    assert json.loads(line)["id"] == "000000000002" and "refused" in json.loads(line)["quarantined_because"]
    assert callfile.decode(line).response_body == _call(2).response_body  # kept whole, for a person to look at
    assert os.stat(quarantine).st_mode & 0o777 == 0o600


def _housekeeping_after_the_retry_interval(loop: RecorderLoop) -> None:
    """The loop's housekeeping on a clock moved past its retry interval: a sleep of
    RETRY_SECONDS, without the wait."""
    later = time.monotonic() + recorder_module.RETRY_SECONDS
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: later)
        loop.housekeeping()


def test_a_locked_database_spools_then_catches_up(db_path):
    loop = _loop(db_path)
    loop.record([_call(0)])
    blocker = connection.connect(db_path)
    blocker.execute("BEGIN EXCLUSIVE")
    for n in range(1, 6):
        loop.record([_call(n)])
    spool = callfile.spool_path(db_path)
    assert callfile.count_lines(spool) == 5 and loop.writer.failing
    assert os.stat(spool).st_mode & 0o777 == 0o600
    blocker.execute("ROLLBACK")
    blocker.close()
    _housekeeping_after_the_retry_interval(loop)
    assert len(_rows(db_path)) == 6 and not spool.exists()
    loop.finish()


def test_spooled_calls_are_replayed_even_after_a_torn_line_and_a_poison_one(db_path):
    spool = callfile.spool_path(db_path)
    callfile.append(spool, [_call(1), _call(2, outcome="not-an-outcome"), _call(3, model="\ud800")])
    with open(spool, "a") as handle:
        handle.write('{"id": "torn')
    loop = _loop(db_path)
    assert loop.replay()
    loop.finish()
    assert set(_rows(db_path)) == {"000000000001", "000000000003"}
    assert callfile.count_lines(callfile.quarantine_path(db_path)) == 1
    assert not spool.exists() and not spool.with_name(spool.name + ".replaying").exists()


def immutable(path, on: bool) -> None:
    """chattr +i: not even root may write, rename or delete the file."""
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_with_neither_database_nor_spool_usage_is_held_bounded_and_losses_counted(db_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "HELD_ROWS_MAX", 3)
    connection.connect(db_path).close()
    spool = callfile.spool_path(db_path)
    spool.touch()
    immutable(spool, True)
    blocker = connection.connect(db_path)
    blocker.execute("BEGIN EXCLUSIVE")
    loop = _loop(db_path)
    loop.record([_call(n) for n in range(5)])
    assert loop.dropped == 2
    blocker.execute("ROLLBACK")
    blocker.close()
    immutable(spool, False)
    _housekeeping_after_the_retry_interval(loop)
    rows = _rows(db_path)
    assert set(rows) == {f"00000000000{n}" for n in range(3)}
    assert all(row["input_total"] == 10 and "bodies dropped" in row["notes"] for row in rows.values())
    loop.finish()


def test_an_unusable_database_raises_unavailable_not_a_row_error(tmp_path):
    (tmp_path / "folder.db").mkdir()
    writer = Writer(tmp_path / "folder.db")
    with pytest.raises(DatabaseUnavailable):
        writer.store([_row(1)])


def test_a_terminal_that_stops_reading_never_holds_up_recording():
    from taskmeter.recorder.loop import LIVE_VIEW_BACKLOG, LiveView

    read_end, write_end = os.pipe()
    view = LiveView(open(write_end, "w"))  # nobody reads yet: the pipe fills, the writer thread blocks
    shown = threading.Thread(target=lambda: [view.show("x" * 200 + "\n") for _ in range(5 * LIVE_VIEW_BACKLOG)])
    shown.start()
    shown.join(30)
    assert not shown.is_alive()  # show() never waited for the terminal
    received = []
    reader = threading.Thread(target=lambda: received.append(open(read_end).read()))
    reader.start()  # the terminal reads again
    view.show("last\n")  # written, or counted if the backlog is still full
    view.close(timeout=30)
    reader.join(30)
    (text,) = received
    said = [int(line.split()[1]) for line in text.splitlines() if line.endswith("lines not shown (the terminal was not reading)")]
    written = [line for line in text.splitlines() if not line.startswith("meter: ")]
    assert said and written
    assert sum(said) + len(written) == 5 * LIVE_VIEW_BACKLOG + 1  # every line is either shown or counted
