"""The second round of hostile drills, on what must never be lost: a full disk
(a real 4 MB tmpfs), a database deleted under a running proxy, planning code
that raises, a summary after recorder restarts, secrets on their way to the
spool. Each through a real `meter proxy` where one can show it, asserting that
every call is stored exactly once, or that the calls lost are counted exactly."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from taskmeter.handover import callfile
from taskmeter.handover.call import CapturedCall
from taskmeter.handover.pipe import Handover
from taskmeter.recorder.finalize import Finalizer
from taskmeter.recorder.loop import RecorderLoop
from taskmeter.store import connection
from taskmeter.timefmt import now_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.meter_forks import METER
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config
from tests.waiting import until

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
# Each answer says about 3 KB, and each prompt 2 KB: what `store_bodies = "text"` keeps.
ANSWER = json.dumps(
    {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer " * 300}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8},
    }
).encode()


def _ask(n: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {n} " + "words " * 330}]}


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=ANSWER)
        yield fake


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB filesystem of its own (tests run as root), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _fill(folder: Path) -> Path:
    """Fill the filesystem to the last byte; the filler file, to free space with."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def _proxy(tmp_path, upstream, db_path: Path, **settings) -> RunningProxy:
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"}, **settings)
    return RunningProxy(config, db_path)


def _post(client: httpx.Client, proxy: RunningProxy, n: int) -> str:
    response = client.post(f"{proxy.origin}/openai{CHAT}", json=_ask(n), timeout=30)
    assert response.status_code == 200
    return response.headers["x-meter-interaction-id"]


def _read(db_path: Path, query: str) -> list:
    """Rows of `query`, read without creating or writing anything (the disk may be full)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _stored_ids(db_path: Path) -> list[str]:
    return [row[0] for row in _read(db_path, "SELECT id FROM interactions")]


def _status(db_path: Path) -> dict:
    """`meter status --json`, which the tests poll: a fork of a process that imported the CLI once (tests/meter_forks.py)."""
    done = METER.run(["status", "--json", "--db", str(db_path)], timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _status_saying(db_path: Path, words: str) -> str | None:
    """What `meter status` prints, once it says `words`."""
    text = METER.run(["status", "--db", str(db_path)], timeout=60).stdout
    return text if words in text else None


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_holds_calls_then_stores_each_once_usage_first_and_said_while_it_happens(tmp_path, upstream, small_disk):
    db_path = small_disk / "meter.db"
    proxy = _proxy(tmp_path, upstream, db_path, store_bodies="text")
    try:
        with httpx.Client() as client:
            ids = [_post(client, proxy, 0)]
            until(lambda: len(_stored_ids(db_path)) == 1, what="the first call")
            filler = _fill(small_disk)
            ids += [_post(client, proxy, n) for n in range(1, 151)]  # clients notice nothing
            # While the disk is full, `meter status` counts what the recorder holds.
            running = until(
                lambda: next((p for p in _status(db_path)["proxies"] if p["held_calls"]), None), what="held calls in status"
            )
            assert 0 < running["held_calls"] <= 150 and running["dropped_calls"] == 0
            # Once the heartbeat is overdue, the reason is said too (not "no word from its recorder").
            text = until(lambda: _status_saying(db_path, "NOT RECORDING"), what="the reason in status")
            assert "NOT RECORDING: neither the database nor the spool can be written (is the disk full?)" in text
            assert "calls are held in the recorder's memory until the database can be written" in text
            # Some room again, less than the held calls' text needs in one go: usage first.
            os.truncate(filler, filler.stat().st_size - 700 * 1024)
            until(lambda: len(_stored_ids(db_path)) == 151, what="the usage of every call")
            # Room for the text too, if the WAL gives back what it took (as the drill's 3.6 MB for 600 calls),
            # with a margin for the rollups the calls' rows feed (working time's runs, the team outbox's checks),
            # and for a WAL that grows while this test's reads keep a checkpoint from resetting it (600 KB was
            # once too little on a machine with a load average of 11).
            os.truncate(filler, filler.stat().st_size - 1200 * 1024)
            try:
                until(lambda: _read(db_path, "SELECT count(*) FROM call_texts")[0][0] == 151, what="what every call said")
            except AssertionError as missing:  # what the recorder said of it, for whoever reads the failure
                raise AssertionError(f"{missing}; the proxy said: {proxy.stderr()[-2000:]}") from None
            after = _status(db_path)["proxies"][0]
    finally:
        assert proxy.stop() == 0
    rows = _read(db_path, "SELECT id, input_total, output_total, notes FROM interactions")
    assert sorted(row[0] for row in rows) == sorted(ids)  # each call exactly once
    assert all((row[1], row[2]) == (7, 8) for row in rows)
    assert (after["held_calls"], after["dropped_calls"]) == (0, 0)
    assert "lost" not in proxy.stderr()
    # A spool write the full disk cut short was cut back whole: no half line to trip over later.
    assert "unreadable spool line" not in proxy.stderr() and not callfile.spool_path(db_path).exists()


def test_calls_still_held_when_the_proxy_stops_on_a_full_disk_are_counted_lost_exactly(tmp_path, upstream, small_disk):
    db_path = small_disk / "meter.db"
    proxy = _proxy(tmp_path, upstream, db_path, store_bodies="text")
    try:
        with httpx.Client() as client:
            ids = [_post(client, proxy, 0)]
            until(lambda: len(_stored_ids(db_path)) == 1, what="the first call")
            _fill(small_disk)
            ids += [_post(client, proxy, n) for n in range(1, 41)]
            until(
                lambda: sum(p["held_calls"] for p in _status(db_path)["proxies"]) + len(_stored_ids(db_path)) == 41,
                what="every call stored or held",
            )
    finally:
        assert proxy.stop() == 0  # the disk is still full
    stored = set(_stored_ids(db_path))
    assert stored <= set(ids) and len(stored) < 41
    lost = [line for line in proxy.stderr().splitlines() if "calls were lost in this run" in line]
    assert len(lost) == 1 and f"meter: {41 - len(stored)} calls were lost in this run" in lost[0]


def test_losses_on_a_full_disk_with_a_stalled_recorder_are_counted_exactly_while_they_happen(tmp_path, upstream, small_disk):
    big = ANSWER[:-1] + b', "padding": "' + b"x" * 200_000 + b'"}'
    upstream.routes["/big" + CHAT] = Scenario(body=big)
    db_path = small_disk / "meter.db"
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"openai": f"http://127.0.0.1:{upstream.port}", "big": f"http://127.0.0.1:{upstream.port}/big"},
        # Calls stripped of their bodies take ~200 bytes each in a batch: a limit this small
        # (1.25 x 20 KB for them) fills within the 300 calls.
        max_pending_mb=0.02,
    )
    proxy = RunningProxy(config, db_path)
    try:
        with httpx.Client() as client:
            ids = [_post(client, proxy, 0)]
            until(lambda: len(_stored_ids(db_path)) == 1, what="the first call")
            recorder = _recorder_of(proxy)
            os.kill(recorder, signal.SIGSTOP)  # it takes nothing: the proxy's memory limit fills
            filler = _fill(small_disk)  # and the spool cannot be written
            try:
                for n in range(1, 301):
                    response = client.post(f"{proxy.origin}/big{CHAT}", json=_ask(n), timeout=30)
                    ids.append(response.headers["x-meter-interaction-id"])
                # Said while it happens, though no database can be written.
                lost_so_far = until(lambda: sum(p["dropped_calls"] for p in _status(db_path)["proxies"]), what="losses in status")
            finally:
                os.kill(recorder, signal.SIGCONT)
            filler.unlink()

            def settled():
                (running,) = _status(db_path)["proxies"]
                done = len(_stored_ids(db_path)) + running["dropped_calls"] >= 301 and not running["held_calls"]
                return running if done else None

            running = until(settled, timeout=60, what="every call stored or lost")
    finally:
        assert proxy.stop() == 0
    stored = set(_stored_ids(db_path))
    assert stored <= set(ids) and len(ids) == 301
    assert 0 < lost_so_far <= running["dropped_calls"] == 301 - len(stored)
    assert f"meter: {301 - len(stored)} calls were lost in this run" in proxy.stderr()
    assert "unreadable spool line" not in proxy.stderr()


@pytest.mark.parametrize("free_kb", [128, 512])  # the disk fills while the schema is being made
def test_a_disk_that_fills_while_a_new_database_is_made_says_so_and_a_later_command_makes_it(small_disk, free_kb):
    filler = _fill(small_disk)
    os.truncate(filler, os.path.getsize(filler) - free_kb * 1024)
    db_path = small_disk / "meter.db"
    meter = [str(VENV_BIN / "meter"), "set-task", "P1-001", "--db", str(db_path)]
    failed = subprocess.run(meter, capture_output=True, text=True, timeout=60)
    # SQLite rolled the migration back itself: its error is told, not our ROLLBACK's "no transaction".
    assert (failed.returncode, failed.stderr) == (1, f"meter: error: cannot write database {db_path}: database or disk is full\n")
    filler.unlink()
    made = subprocess.run(meter, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert [row[0] for row in _read(db_path, "SELECT id FROM tasks")] == ["P1-001"]


# ---------------------------------------------------------------- a deleted database


@pytest.mark.parametrize("deleted", [("",), ("", "-wal", "-shm")], ids=["the-file", "with-its-wal-and-shm"])
def test_a_database_deleted_under_a_running_proxy_is_made_again_and_every_later_call_stored(tmp_path, upstream, deleted):
    db_path = tmp_path / "meter.db"
    proxy = _proxy(tmp_path, upstream, db_path)
    try:
        with httpx.Client() as client:
            before = [_post(client, proxy, n) for n in range(5)]
            until(lambda: len(_stored_ids(db_path)) == 5, what="the calls before")
            for suffix in deleted:
                os.unlink(f"{db_path}{suffix}")
            after = [_post(client, proxy, n) for n in range(5, 20)]
            until(lambda: db_path.exists() and len(_stored_ids(db_path)) == 15, what="the calls after")
        (running,) = _status(db_path)["proxies"]  # the new database knows the proxy
    finally:
        assert proxy.stop() == 0
    assert sorted(_stored_ids(db_path)) == sorted(after) and not set(before) & set(_stored_ids(db_path))
    assert running["pid"] == proxy.process.pid
    assert proxy.stderr().count("was deleted while calls were recorded to it") == 1  # said once, loudly
    assert _read(db_path, "PRAGMA integrity_check") == [("ok",)]


COMMANDS_ON_STORED_DATA = [
    ["log"],
    ["log", "--follow"],
    ["show", "last"],
    ["tasks"],
    ["phases"],
    ["report"],
    ["report", "task", "P1-010"],
    ["report", "phase", "P1"],
    ["report", "daily"],
    ["report", "models"],
    ["budget"],
    ["alerts"],
    # Commands that change stored calls or alerts: with no database there is nothing to change.
    ["flag", "last"],
    ["unflag", "abcdef"],
    ["retag", "--unassigned", "--to", "P1-010"],
    ["purge"],
    ["alerts", "clear"],
    ["reconcile"],
]


@pytest.mark.parametrize("command", COMMANDS_ON_STORED_DATA, ids=" ".join)
def test_a_command_on_stored_data_never_creates_a_database_and_says_there_is_none(meter, db_path, command):
    result = meter(*command)
    assert result.code == 1 and not db_path.exists() and not db_path.parent.joinpath("meter.db-wal").exists()
    assert result.err.strip().splitlines() == [
        f"meter: error: no database at {db_path}: nothing was recorded there (`meter proxy` creates it; --db or $METER_DB names another)"
    ]


def test_status_without_a_database_says_so_and_creates_none(meter, db_path):
    result = meter("status")
    assert result.code == 0 and not db_path.exists()
    assert f"No database at {db_path}" in result.out and "No proxy is running on this database" in result.out
    as_json = json.loads(meter("status", "--json").out)
    service = {"installed": False, "ok": True, "path": None, "detail": as_json["service"]["detail"]}
    assert as_json == {"database": str(db_path), "database_exists": False, "proxies": [], "service": service}
    assert as_json["service"]["detail"].startswith("not installed") and not db_path.exists()


def test_the_dashboard_never_creates_a_database(tmp_path):
    db_path = tmp_path / "nowhere" / "meter.db"
    done = subprocess.run(
        [str(VENV_BIN / "meter"), "ui", "--port", "0", "--db", str(db_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and not db_path.parent.exists()
    assert done.stderr.strip().splitlines() == [
        f"meter: error: no database at {db_path}: nothing was recorded there (`meter proxy` creates it; --db or $METER_DB names another)"
    ]


# ---------------------------------------------------------------- planning and the hand-over


def _call(n: int, **values) -> CapturedCall:
    call = CapturedCall(
        **{
            "id": f"00000000{n:04d}",
            "started": time.time(),
            "provider": "openai",
            "protocol": "openai_chat",
            "operation": "generate",
            "method": "POST",
            "endpoint": CHAT,
            "status": 200,
            "content_type": "application/json",
            "outcome": "complete",
            "request_body": json.dumps(_ask(n)).encode(),
            **values,
        }
    )
    call.response_body += ANSWER
    return call


class RaisingGuard:
    """Budget and alert planning at its worst: it raises every time, and once
    leaves a transaction open on the recorder's connection."""

    def __init__(self, writer) -> None:
        self._writer = writer

    def stored(self, rows) -> None:
        self._writer.quietly(lambda db: db.execute("BEGIN IMMEDIATE"))
        raise ZeroDivisionError("the burn-rate rule divided by zero")

    def refresh(self) -> None:
        raise KeyError("no such budget")


def test_planning_that_raises_never_stops_recording_and_is_said_once_per_kind(db_path, caplog):
    loop = RecorderLoop(db_path, Finalizer("text"), proxy_id=None)
    loop.guard = RaisingGuard(loop.writer)
    with caplog.at_level(logging.ERROR, logger="taskmeter.recorder"):
        for n in range(20):
            loop.record([_call(n)])
            loop.housekeeping()
        loop.finish()
    assert sorted(_stored_ids(db_path)) == [f"00000000{n:04d}" for n in range(20)]
    said = [record for record in caplog.records if "planning failed" in record.getMessage()]
    assert [record.exc_info[0] for record in said] == [ZeroDivisionError, KeyError]  # once each, with the traceback


def test_a_malformed_budget_row_stops_no_call_through_a_real_proxy(tmp_path, upstream):
    db_path = tmp_path / "meter.db"
    db = connection.connect(db_path)
    # SQLite keeps what it is given: text passes `CHECK (tokens > 0)`, and budgets then divide by it.
    db.execute("INSERT INTO budgets (scope, target, tokens, set_at) VALUES ('task', 'P1-010', 'lots', ?)", (now_stored(),))
    db.close()
    proxy = _proxy(tmp_path, upstream, db_path)
    try:
        with httpx.Client() as client:
            ids = [_post(client, proxy, n) for n in range(20)]
        until(lambda: len(_stored_ids(db_path)) == 20, what="every call")
    finally:
        assert proxy.stop() == 0
    assert sorted(_stored_ids(db_path)) == sorted(ids)
    assert proxy.stderr().count("budget and alert planning failed") == 1
    assert "recorder process exited" not in proxy.stderr()


def test_an_error_in_the_sender_costs_only_the_call_that_caused_it(db_path, caplog):
    from taskmeter.ids import new_id

    handover = Handover(db_path, ["--store-bodies", "text"], new_id(), 1 << 20)
    handover.start()
    good = [_call(n) for n in range(10)]
    broken = [_call(n, notes=lambda: "cannot be pickled, nor written as JSON") for n in (90, 91)]
    with caplog.at_level(logging.ERROR, logger="taskmeter.handover"):
        for call in [*good[:5], broken[0], *good[5:8], broken[1], *good[8:]]:
            handover.submit(call)
        handover.stop()
    assert sorted(_stored_ids(db_path)) == sorted(call.id for call in good)
    assert handover.lost == 2
    unexpected = [record.getMessage() for record in caplog.records if "unexpected error" in record.getMessage()]
    assert len(unexpected) == len(set(unexpected)) >= 2  # each kind said once, with its traceback
    assert "meter: 2 calls were lost in this run" in caplog.text
    assert not callfile.spool_path(db_path).exists()


@pytest.mark.parametrize("how", ["config check", "proxy"])
def test_max_pending_mb_past_the_pipe_frame_is_refused_in_one_line(tmp_path, how):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {}, max_pending_mb=5000)
    command = {
        "config check": ["config", "check", str(config)],
        "proxy": ["proxy", "--port", "0", "--config", str(config), "--db", str(tmp_path / "meter.db")],
    }[how]
    done = subprocess.run([str(VENV_BIN / "meter"), *command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"meter: error: config {config}: proxy.max_pending_mb: Value error, at most 3276 "
        "(a batch for the recorder must fit one frame of its pipe), not 5000"
    ]


# ---------------------------------------------------------------- the summary


def _recorder_of(proxy: RunningProxy) -> int:
    (pid,) = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children").read_text().split()
    return int(pid)


def test_the_summary_counts_every_call_of_the_run_after_a_recorder_was_killed(tmp_path, upstream):
    db_path = tmp_path / "meter.db"
    proxy = _proxy(tmp_path, upstream, db_path)
    try:
        with httpx.Client() as client:
            ids = [_post(client, proxy, n) for n in range(10)]
            until(lambda: len(_stored_ids(db_path)) == 10, what="the first calls")
            os.kill(_recorder_of(proxy), signal.SIGKILL)
            ids += [_post(client, proxy, n) for n in range(10, 25)]
            until(lambda: len(_stored_ids(db_path)) == 25, what="every call")
    finally:
        assert proxy.stop() == 0
    assert sorted(_stored_ids(db_path)) == sorted(ids)
    (summary,) = [line for _, line in proxy.live_view if "calls recorded" in line]
    assert "25 calls recorded (0 failed), 375 tokens" in summary and summary.endswith("; all 25 calls seen are stored")


# ---------------------------------------------------------------- secrets and the spool

SECRET_KEY = "sk-proj-" + "Q7" * 24
SECRET_PASSWORD = "correct-horse-battery"


def test_a_secret_in_a_body_never_reaches_the_spool(tmp_path, upstream):
    upstream.routes[CHAT] = Scenario(body=ANSWER.replace(b"an answer", f"your key {SECRET_KEY}".encode(), 1))
    db_path = tmp_path / "meter.db"
    proxy = _proxy(tmp_path, upstream, db_path, max_pending_mb=0.001)  # every batch goes to the spool first
    spool = callfile.spool_path(db_path)
    try:
        recorder = _recorder_of(proxy)
        os.kill(recorder, signal.SIGSTOP)  # so that the spool stays to be read
        try:
            body = {**_ask(1), "password": SECRET_PASSWORD}
            body["messages"][0]["content"] += f" my key is {SECRET_KEY}"
            with httpx.Client() as client:
                response = client.post(f"{proxy.origin}/openai{CHAT}", json=body, timeout=30)
            assert SECRET_KEY in response.text  # the client gets its answer as it was
            until(lambda: callfile.count_lines(spool) == 1, what="the spooled call")
            raw = spool.read_bytes()
            (spooled,) = callfile.read(spool)
        finally:
            os.kill(recorder, signal.SIGCONT)
        until(lambda: len(_stored_ids(db_path)) == 1, what="the call, from the spool")
    finally:
        assert proxy.stop() == 0
    assert upstream.received[-1].body.count(SECRET_KEY.encode()) == 1  # the upstream got it as sent
    for secret in (SECRET_KEY, SECRET_PASSWORD):
        assert secret.encode() not in raw
        assert secret.encode() not in spooled.request_body + bytes(spooled.response_body)
    assert b"[redacted]" in spooled.request_body and b"[redacted]" in spooled.response_body
    assert json.loads(spooled.request_body)["messages"][0]["content"].startswith("question 1")  # still a request


def test_a_secret_in_a_body_never_reaches_the_quarantine(tmp_path):
    quarantine = callfile.quarantine_path(tmp_path / "meter.db")
    call = _call(1, request_body=json.dumps({**_ask(1), "api_key": SECRET_PASSWORD}).encode(), error=f"bad key {SECRET_KEY}")
    call.response_body[:] = f'{{"error": "{SECRET_KEY} is not valid", "bytes": "\udcff"}}'.encode("utf-8", "surrogateescape")
    assert callfile.quarantine(quarantine, [call], "a test") == 0
    (kept,) = callfile.read(quarantine)
    for secret in (SECRET_KEY, SECRET_PASSWORD):
        assert secret not in quarantine.read_text()
        assert secret.encode() not in kept.request_body + bytes(kept.response_body) and secret not in kept.error
    assert kept.response_body.endswith(b'"bytes": "\xff"}')  # every other byte as it was
