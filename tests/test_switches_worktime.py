"""Issue 22: context switches as a developer means them, and the working time of
a task worked from a second terminal. Through a real `meter proxy`, the CLI and
the official SDKs against the loopback fake upstream; histories that need hours
go through the store's own functions (set-task, the recorder's writer, retag,
the pytest plugin's record, the git hook's commit on a real repository) with
the clock set."""

import os
import subprocess
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest import mock

import anthropic
import openai
import pytest

from taskmeter.analytics.reports import phase_report, task_report
from taskmeter.automation import git as git_hooks
from taskmeter.automation import testruns
from taskmeter.config.settings import load_settings
from taskmeter.store import calls, connection, migrations, tasks
from taskmeter.store.calls import CallRow
from taskmeter.store.connection import write_transaction
from taskmeter.store.interactions import Interaction
from taskmeter.store.writer import Writer
from taskmeter.timefmt import to_stored
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import meter, meter_json, proxy_in_front_of

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
BRANCH_PATTERN = load_settings().automation.branch_pattern


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes["/v1/messages"] = Scenario(body=FIXTURE["anthropic/messages_nonstream_cache"].body)
        fake.routes["/v1/chat/completions"] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
        fake.routes["/v1/responses"] = Scenario(body=FIXTURE["openai_responses/responses_nonstream_basic"].body)
        yield fake


@pytest.fixture
def proxy(tmp_path, upstream):
    running = proxy_in_front_of(tmp_path, upstream.port)
    yield running
    running.stop()


def _report(proxy, task_id: str) -> dict:
    return meter_json(proxy, "report", "task", task_id)


def _anthropic(proxy, task: str | None = None) -> "anthropic.Anthropic":
    prefix = f"/t/{task}" if task else ""
    return anthropic.Anthropic(base_url=f"{proxy.origin}{prefix}/anthropic", api_key="sk-test", max_retries=0)


def _openai(proxy, task: str | None = None) -> "openai.OpenAI":
    prefix = f"/t/{task}" if task else ""
    return openai.OpenAI(base_url=f"{proxy.origin}{prefix}/openai/v1", api_key="sk-test", max_retries=0)


def _ask(client: "anthropic.Anthropic", text: str, session: str | None = None) -> None:
    headers = {"x-claude-code-session-id": session} if session else {}
    client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": text}], extra_headers=headers
    )


def test_twelve_sdk_calls_with_new_first_messages_make_no_context_switch(proxy, upstream):
    """The issue's 12 calls in 90 s on one task: one-shot calls of three SDKs,
    each with a new first message. Twelve sessions, no context switch."""
    meter(proxy, "set-task", "P1-001", check=True)
    claude, gpt = _anthropic(proxy), _openai(proxy)
    for n in range(4):
        _ask(claude, f"Summarise module {n}")
        gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"Name function {n}"}])
        gpt.responses.create(model="gpt-4.1", input=f"Explain test {n}")

    rows = proxy.rows(wait_for=12)
    assert len(rows) == len(upstream.received) == 12  # each call stored exactly once
    assert {row["task_id"] for row in rows} == {"P1-001"}
    assert len({row["session_id"] for row in rows}) == 12
    assert [row["context_switch"] for row in rows] == [0] * 12
    assert _report(proxy, "P1-001")["context_switches"] == 0


def test_claude_code_sessions_and_returns_count_by_the_rule(proxy, upstream):
    """P2-001: Claude Code session A, a second terminal's calls to P2-002 between
    its calls (no switch), session B (a switch), a script call (none), a detour
    to P2-003 and back (a switch on the first call after it), session A again
    (no switch: the task had it). P2-002 keeps one agent session: no switch."""
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    terminal_one, second_terminal = _anthropic(proxy), _anthropic(proxy, "P2-002")
    meter(proxy, "set-task", "P2-001", check=True)
    for n in range(3):
        _ask(terminal_one, f"Fix bug {n}", one)  # one session: the same header, new prompts
        _ask(second_terminal, f"Write docs {n}", "cc-docs")
    _ask(terminal_one, "Review the diff", two)
    _ask(terminal_one, "Review the diff again", two)
    _openai(proxy).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a script's question"}])
    meter(proxy, "set-task", "P2-003", check=True)
    _ask(terminal_one, "Look at the flaky test", str(uuid.uuid4()))
    meter(proxy, "set-task", "P2-001", check=True)
    _ask(terminal_one, "Back to bug 2", one)
    _ask(terminal_one, "And bug 3", one)

    rows = proxy.rows(wait_for=12)
    assert len(rows) == len(upstream.received) == 12
    by_task: dict[str, list[int]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["context_switch"])
    assert by_task == {"P2-001": [0, 0, 0, 1, 0, 0, 1, 0], "P2-002": [0, 0, 0], "P2-003": [0]}
    assert _report(proxy, "P2-001")["context_switches"] == 2
    assert _report(proxy, "P2-002")["context_switches"] == 0
    phase = meter_json(proxy, "report", "phase", "P2")
    assert phase["context_switches_total"] == 2
    text = meter(proxy, "report", "task", "P2-001", check=True).stdout
    assert "2 (returns to the task after another one, and agent sessions after its first)" in text


def test_a_responses_chain_is_an_agent_session_from_its_second_call(proxy, upstream):
    """One-shot Responses calls are one-shot SDK calls; a chain continued by
    previous_response_id is an agent session, and a second chain is a switch."""
    client = _openai(proxy, "P3-001")
    for n in range(3):
        client.responses.create(model="gpt-4.1", input=f"one-shot {n}")
    for chain in ("first", "second"):
        answer = client.responses.create(model="gpt-4.1", instructions=f"the {chain} chain", input="start")
        client.responses.create(model="gpt-4.1", previous_response_id=answer.id, input="go on")

    rows = proxy.rows(wait_for=7)
    assert len(rows) == len(upstream.received) == 7
    assert rows[3]["session_id"] == rows[4]["session_id"] != rows[5]["session_id"] == rows[6]["session_id"]
    assert [row["context_switch"] for row in rows] == [0, 0, 0, 0, 0, 0, 1]


def test_a_task_never_current_has_no_more_working_time_than_wall_time(proxy, upstream):
    """A task worked only through `/t/` while another is current: its call's minute
    reached 60 s past the call (65.6 s of work against 15.5 s of wall time)."""
    meter(proxy, "set-task", "P4-001", check=True)
    _ask(_anthropic(proxy, "P4-002"), "one call from the second terminal")
    assert len(proxy.rows(wait_for=1)) == len(upstream.received) == 1
    report = _report(proxy, "P4-002")
    assert 0 < report["actual_duration"] <= report["wall_duration"]
    # Its call began it; its work is that call's minute from then on, as far as now.
    begin = datetime.fromisoformat(report["begin_timestamp"])
    minute_left = 60 - begin.second - begin.microsecond / 1e6
    assert report["actual_duration"] == pytest.approx(min(report["wall_duration"], minute_left), abs=1e-5)


# ---------------------------------------------------------------- histories with a set clock

DAY = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _at(minutes: float) -> datetime:
    return DAY + timedelta(minutes=minutes)


@contextmanager
def _clock(moment: datetime):
    with mock.patch.object(tasks, "now", lambda: moment):
        yield


def _set_task(db, task_id: str, minutes: float) -> None:
    with _clock(_at(minutes)):
        tasks.set_task(db, task_id)


def _stored_call(db_path, n: int, minutes: float, task_id: str | None = None) -> None:
    """A call as the recorder stores it: `task_id` is a /t/ prefix (or `meter run --task`)."""
    row = Interaction(
        id=f"{n:012d}",
        started_at=to_stored(_at(minutes)),
        ended_at=to_stored(_at(minutes)),
        task_id=task_id,
        attribution="path" if task_id else None,
        protocol="anthropic",
        conversation_root=f"root-{n}",
        input_total=100,
        output_total=10,
        usage_source="reported",
    )
    writer = Writer(db_path)
    try:
        assert writer.store([CallRow(row)]) == []
    finally:
        writer.close()


def _report_at(db, task_id: str, minutes: float) -> dict:
    return task_report(db, task_id, now=to_stored(_at(minutes)), idle_seconds=15 * 60)


def test_a_task_worked_from_a_second_terminal_gets_the_time_of_that_work(db, db_path, repo):
    """P5-002 was current for 5 minutes once, then worked through `/t/` while
    P5-001 was current: a call every 3 minutes, a commit and a test run."""
    _set_task(db, "P5-001", 0)
    _set_task(db, "P5-002", 1)
    _set_task(db, "P5-001", 6)
    for n, minute in enumerate(range(10, 37, 3)):  # 09:10 ... 09:34
        _stored_call(db_path, n, minute, "P5-002")
    (repo / "module.py").write_text('"""A module."""\n')
    environment = {**os.environ, "GIT_COMMITTER_DATE": _at(35.5).isoformat(), "GIT_AUTHOR_DATE": _at(35.5).isoformat()}
    for command in (["checkout", "-q", "-b", "P5-002-module"], ["add", "module.py"], ["commit", "-q", "-m", "module"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True, env=environment)
    git_hooks.on_commit(db, repo, "HEAD", "P5-002-module", BRANCH_PATTERN)  # the branch names the task
    assert db.execute("SELECT task_id, committed_at FROM commits WHERE task_id IS NOT NULL").fetchone()[:] == (
        "P5-002",
        to_stored(_at(35.5)),
    )
    run = {"at": _at(37).timestamp(), "repo": str(repo), "exit_status": 0, "tests": 3, "failed": 0, "selected": False}
    testruns.record_run(db, {**run, "coverage": None, "coverage_target": None}, "P5-002")

    report = _report_at(db, "P5-002", 60)
    # 09:01-09:06 current, then its own activity from 09:10 to the test run at 09:37: every gap
    # 4 minutes or less, so one stretch (it had only the 5 minutes it was current).
    assert report["actual_duration"] == 36 * 60
    assert report["working_intervals"] == [[to_stored(_at(1)), to_stored(_at(37))]]
    # P5-001, current from 09:06 with no activity of its own: 09:00-09:01 only.
    assert _report_at(db, "P5-001", 60)["actual_duration"] == 60
    assert phase_report(db, "P5", now=to_stored(_at(60)), idle_seconds=15 * 60)["actual_total"] == 37 * 60


def test_the_open_interval_counts_up_to_now_while_the_developer_thinks(db, db_path):
    """Worked through `meter run --task` 09:00-09:10, then made current at 09:10:
    it had 600 s, then 0 s at the set-task. Now it counts up to now until the
    pause is longer than idle_minutes."""
    for n, minute in enumerate(range(0, 10, 2)):
        _stored_call(db_path, n, minute, "P6-001")
    assert _report_at(db, "P6-001", 9)["actual_duration"] == 9 * 60
    _set_task(db, "P6-001", 10)
    assert _report_at(db, "P6-001", 10)["actual_duration"] == 10 * 60
    assert _report_at(db, "P6-001", 20)["actual_duration"] == 20 * 60  # 10 minutes of thinking count
    assert _report_at(db, "P6-001", 26)["actual_duration"] == 10 * 60  # a 16-minute pause is idle
    _stored_call(db_path, 99, 26)  # a call while current: attributed to it
    assert _report_at(db, "P6-001", 30)["actual_duration"] == 10 * 60 + 4 * 60


def test_a_stream_stored_after_shorter_calls_that_began_later_moves_the_switch_to_it(db, db_path):
    """A new Claude Code session's main call streams while its side call, begun a
    second later, finishes and is stored first; after a return, likewise. One
    switch each time, on the call that began first, as if stored in order."""

    def call(n: int, minutes: float, session: str) -> CallRow:
        at = to_stored(_at(minutes))
        return CallRow(
            Interaction(
                id=f"{n:012d}", started_at=at, protocol="anthropic", conversation_root=f"root-{n}", client_session=session
            )
        )

    _set_task(db, "P8-001", 0)
    writer = Writer(db_path)
    try:
        assert writer.store([call(1, 1, "cc-one")]) == []
        main, side = call(2, 2, "cc-two"), call(3, 2.02, "cc-two")
        assert writer.store([side]) == [] and writer.store([main]) == []
        _set_task(db, "P8-002", 3)
        _set_task(db, "P8-001", 4)
        main, side = call(4, 5, "cc-two"), call(5, 5.02, "cc-two")
        assert writer.store([side]) == [] and writer.store([main]) == []
    finally:
        writer.close()
    switches = [row[0] for row in db.execute("SELECT context_switch FROM interactions ORDER BY started_at")]
    assert switches == [0, 1, 0, 1, 0]
    with write_transaction(db):
        assert calls.recompute_context_switches(db, "P8-001") == 0


def test_m020_judges_every_stored_call_afresh_and_rebuilds_the_rollup(db_path, monkeypatch):
    """A database written by the earlier rule (each new SDK conversation a switch),
    upgraded: its calls and the task_usage rollup follow the rule, as a retag would."""
    before = [m for m in migrations.MIGRATIONS if m.__name__ < "m020"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    old = connection.connect(db_path)
    _set_task(old, "P7-001", 0)
    _set_task(old, "P7-002", 5)
    _set_task(old, "P7-001", 10)
    rows = [
        (1, 1, None),
        (2, 2, None),  # the earlier rule: a new conversation, a switch
        (3, 3, "cc-a"),
        (4, 4, "cc-b"),
        (5, 11, None),  # after the return
    ]
    with write_transaction(old):
        for n, minute, session in rows:
            old.execute(
                "INSERT INTO interactions (id, started_at, task_id, protocol, operation, client_session, session_id,"
                " conversation_root, context_switch, input_total, output_total) VALUES (?, ?, 'P7-001', 'anthropic',"
                " 'generate', ?, ?, ?, ?, 10, 1)",
                (f"{n:012d}", to_stored(_at(minute)), session, session or f"{n:012d}", f"root-{n}", int(n > 1)),
            )
    assert old.execute("SELECT context_switches FROM task_usage WHERE task_key = 'P7-001'").fetchone()[0] == 4
    old.close()
    monkeypatch.undo()

    db = connection.connect(db_path)
    try:
        switches = [row[0] for row in db.execute("SELECT context_switch FROM interactions ORDER BY started_at")]
        rollup = db.execute("SELECT context_switches FROM task_usage WHERE task_key = 'P7-001'").fetchone()[0]
        # The first agent session is no switch; the second is; the call after the return is.
        assert switches == [0, 0, 0, 1, 1] and rollup == 2
        with write_transaction(db):
            assert calls.recompute_context_switches(db, "P7-001") == 0  # the same rule as a retag's
    finally:
        db.close()
