"""The call verbs mean what the developer means (issue 22): `last` is the newest
call of the main conversation of the session of the current task's newest
answered call, and names the newer calls it skipped; a call that got no model
answer (any HTTP 4xx or 5xx, a refusal by the meter, no response) is a failed
call, not an AI interaction, and cannot be flagged (the dashboard offers no button); flags such calls got before
are set aside by migration m017 and counted nowhere. Through a real `meter
proxy`, the official SDKs and the real CLI, against the loopback fake upstream."""

import json
import sqlite3
import time
import uuid
from types import SimpleNamespace

import anthropic
import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmeter.errors import MeterError
from taskmeter.store import connection, interactions, migrations, tasks
from taskmeter.store.interactions import Interaction
from tests.conftest import dump
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.guard_probe import EMBEDDINGS, Probe
from tests.proxy_harness import RunningProxy, meter, meter_json, proxy_in_front_of
from tests.test_dashboard import RunningDashboard

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5"
CLAUDE_CODE_SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude."
# What Claude Code asks its small model beside a turn: a title for the session.
TITLE_SYSTEM = "Summarize this coding conversation in under 50 characters. Return only the title."


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def proxy(tmp_path, upstream):
    running = proxy_in_front_of(tmp_path, upstream.port)
    yield running
    running.stop()


def _message(model: str, text: str, input_tokens: int, output_tokens: int) -> Scenario:
    body = {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return Scenario(body=json.dumps(body).encode())


def _error(status: int, message: str) -> Scenario:
    return Scenario(body=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode(), status=status)


def _stored(proxy: RunningProxy, count: int) -> list[dict]:
    rows = proxy.rows(wait_for=count)
    assert len(rows) == count, f"{len(rows)} calls stored, {count} expected"
    return rows


class _ProbeMeter:
    """`meter` as tests/guard_probe.py's Probe calls it."""

    def __init__(self, proxy: RunningProxy) -> None:
        self._proxy = proxy

    def __call__(self, *args: str) -> SimpleNamespace:
        done = meter(self._proxy, *args)
        return SimpleNamespace(code=done.returncode, err=done.stderr)


def _calls_of(proxy: RunningProxy, task_id: str, count: int) -> list[dict]:
    """The stored calls of `task_id` (not the probe's), once there are `count`."""
    deadline = time.monotonic() + 10
    while len(rows := [row for row in proxy.rows(wait_for=0) if row["task_id"] == task_id]) < count:
        assert time.monotonic() < deadline, f"{len(rows)} calls of {task_id} stored, {count} expected"
        time.sleep(0.05)
    assert len(rows) == count
    return rows


# ---------------------------------------------------------------- `last`


def test_last_is_the_claude_code_session_s_last_main_turn_and_names_what_it_skipped(proxy, upstream):
    """An SDK chat, then a Claude Code session whose title request to Haiku came
    after its last main turn, then a call that failed: `flag last` flags the main
    turn, not the SDK call, and names the two newer calls it passed over."""
    assert meter(proxy, "set-task", "P7-001").returncode == 0
    chat = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
    history = [{"role": "user", "content": "What does HTTP 418 mean?"}]
    for _ in range(2):  # one SDK chat: the second turn repeats the first
        answer = chat.chat.completions.create(model="gpt-4o", messages=history)
        history += [{"role": "assistant", "content": answer.choices[0].message.content}, {"role": "user", "content": "more"}]

    claude = anthropic.Anthropic(base_url=f"{proxy.origin}/anthropic", api_key="sk-test", max_retries=0)
    session = {"x-claude-code-session-id": str(uuid.uuid4())}
    turns = [{"role": "user", "content": "Fix the failing test in tests/test_math.py"}]
    main_ids = []
    for n in range(2):
        # Fewer tokens than the SDK chat's 2 x 1,502: "the most tokens" alone would pick the chat.
        upstream.routes[MESSAGES] = _message(SONNET, f"step {n}", 900 + n * 200, 60)
        raw = claude.messages.with_raw_response.create(
            model=SONNET, max_tokens=8192, system=CLAUDE_CODE_SYSTEM, messages=turns, extra_headers=session
        )
        main_ids.append(raw.headers["x-meter-interaction-id"])
        turns += [{"role": "assistant", "content": f"step {n}"}, {"role": "user", "content": "go on"}]
    upstream.routes[MESSAGES] = _message(HAIKU, "Fix failing math test", 120, 8)
    title = claude.messages.with_raw_response.create(
        model=HAIKU, max_tokens=50, system=TITLE_SYSTEM, messages=turns[:1], extra_headers=session
    ).headers["x-meter-interaction-id"]
    upstream.routes[MESSAGES] = _error(500, "internal error")
    with pytest.raises(anthropic.InternalServerError) as failed:
        claude.messages.create(model=SONNET, max_tokens=8192, system=CLAUDE_CODE_SYSTEM, messages=turns, extra_headers=session)
    failed_id = failed.value.response.headers["x-meter-interaction-id"]

    rows = _stored(proxy, 6)
    assert len(upstream.received) == 6 and len({row["id"] for row in rows}) == 6  # each call stored exactly once
    by_id = {row["id"]: row for row in rows}
    assert by_id[title]["session_id"] == by_id[main_ids[1]]["session_id"] == session["x-claude-code-session-id"]
    assert by_id[title]["conversation_id"] != by_id[main_ids[1]]["conversation_id"]

    shown = meter_json(proxy, "show", "last")
    assert shown["interaction_id"] == main_ids[1]
    assert shown["skipped"] == [
        {"interaction_id": failed_id, "why": "a failed call: HTTP 500"},
        {"interaction_id": title, "why": f"a side call: {HAIKU}, another conversation of its session"},
    ]
    flagged = meter(proxy, "flag", "last", "--note", "invented a fixture")
    assert flagged.returncode == 0, flagged.stderr
    lines = flagged.stdout.splitlines()
    assert lines[0] == f"Flagged {main_ids[1]} as a hallucination:"
    assert lines[-2:] == [
        f"  skipped newer {failed_id}, a failed call: HTTP 500",
        f"  skipped newer {title}, a side call: {HAIKU}, another conversation of its session",
    ]
    assert [call["interaction_id"] for call in meter_json(proxy, "log", "--flagged")] == [main_ids[1]]

    # No current task: the newest answered call of every task gives the session.
    assert meter(proxy, "set-task", "--none").returncode == 0
    assert meter_json(proxy, "show", "last")["interaction_id"] == main_ids[1]
    assert meter_json(proxy, "show", "last", "--any")["interaction_id"] == main_ids[1]
    # An ID names its call and skips nothing.
    assert meter_json(proxy, "show", title)["skipped"] == []


def test_last_of_an_sdk_chat_is_its_newest_turn(proxy, upstream):
    """Without an agent session, the session is the chat's: `last` is its newest turn."""
    assert meter(proxy, "set-task", "P7-003").returncode == 0
    chat = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
    history = [{"role": "user", "content": "Name a prime."}]
    ids = []
    for _ in range(3):
        raw = chat.chat.completions.with_raw_response.create(model="gpt-4o", messages=history)
        ids.append(raw.headers["x-meter-interaction-id"])
        history += [{"role": "assistant", "content": "7"}, {"role": "user", "content": "another"}]
    _stored(proxy, 3)
    flagged = meter(proxy, "flag", "last")
    assert flagged.returncode == 0 and flagged.stdout.splitlines()[0] == f"Flagged {ids[-1]} as a hallucination:"
    assert "skipped" not in flagged.stdout


# ---------------------------------------------------------------- failed calls

STATUSES = [400, 401, 403, 404, 413, 422, 429, 500]


def test_4xx_answers_are_failed_calls_everywhere_and_cannot_be_flagged(proxy, upstream):
    """One answered call and a call for each error status: one AI interaction,
    the rest failed calls, in the task report, the usage report, the log, the
    budget and the dashboard's task page; a flag on an error is refused."""
    assert meter(proxy, "set-task", "P7-002").returncode == 0
    assert meter(proxy, "task", "P7-002", "--budget", "$10").returncode == 0
    chat = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
    answered = chat.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    ).headers["x-meter-interaction-id"]
    failed = {}
    for status in STATUSES:
        upstream.routes[CHAT] = _error(status, f"status {status}")
        with pytest.raises(openai.APIStatusError) as error:
            chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"try {status}"}])
        assert error.value.status_code == status
        failed[status] = error.value.response.headers["x-meter-interaction-id"]
    rows = _stored(proxy, 1 + len(STATUSES))
    assert len(upstream.received) == len(rows) and len({row["id"] for row in rows}) == len(rows)
    cost = next(row["cost_usd"] for row in rows if row["id"] == answered)
    assert cost > 0

    report = meter_json(proxy, "report", "task", "P7-002")
    assert (report["ai_interactions"], report["failed_calls"]) == (1, len(STATUSES))
    assert report["cost_usd"] == pytest.approx(cost) and report["unpriced_interactions"] == 0
    daily = meter_json(proxy, "report", "daily", "--task", "P7-002")["totals"]
    assert (daily["ai_interactions"], daily["failed_calls"], daily["unpriced_interactions"]) == (1, len(STATUSES), 0)
    assert {call["interaction_id"] for call in meter_json(proxy, "log", "--failed")} == set(failed.values())
    budget = meter_json(proxy, "status")["budget"]
    assert budget["calls"] == 1 and budget["usd_used"] == pytest.approx(cost)
    # The dashboard's task page: its record, and a flag button on the answered call only.
    dashboard = RunningDashboard(proxy.db_path)
    try:
        page = httpx.get(f"{dashboard.origin}/tasks/P7-002", headers=dashboard.cookie, timeout=30)
        form_token = page.text.split('name="token" value="')[1].split('"')[0]  # the form of the answered call
        refused = httpx.post(
            f"{dashboard.origin}/calls/{failed[400]}/flag",
            data={"token": form_token, "back": "/"},
            headers={**dashboard.cookie, "Origin": dashboard.origin},
            timeout=30,
        )
    finally:
        dashboard.stop()
    record = json.loads(page.text.split('<script type="application/json" id="report">')[1].split("</script>")[0])
    assert (record["ai_interactions"], record["failed_calls"]) == (1, len(STATUSES))
    assert f'action="/calls/{answered}/flag"' in page.text
    assert not any(f'action="/calls/{interaction_id}/flag"' in page.text for interaction_id in failed.values())
    assert refused.status_code == 400 and "got no model answer (HTTP 400)" in refused.text

    shown = meter(proxy, "show", "last").stdout.splitlines()
    newest_failed = [failed[status] for status in reversed(STATUSES)]
    assert [line for line in shown if "skipped" in line] == [
        *(f"  skipped newer {interaction_id}, a failed call: HTTP {status}" for status, interaction_id in
          zip(reversed(STATUSES[-3:]), newest_failed[:3], strict=True)),
        f"  and {len(STATUSES) - 3} more newer calls skipped (`meter log` lists them)",
    ]  # fmt: skip

    proxy.stop()  # its heartbeat would change the dump
    before = dump(proxy.db_path)
    for status, interaction_id in failed.items():
        refused = meter(proxy, "flag", interaction_id, "--note", "made up")
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.strip().splitlines() == [
            f"meter: error: {interaction_id} got no model answer (HTTP {status}): only an answer can be a hallucination"
        ]
    assert dump(proxy.db_path) == before
    assert meter(proxy, "flag", answered).returncode == 0
    report = meter_json(proxy, "report", "task", "P7-002")
    assert (report["hallucination_count"], report["hallucination_rate"]) == (1, 1.0)


def test_a_call_the_meter_refused_cannot_be_flagged(proxy, upstream):
    """A call refused for a spent budget (the meter's own 429) got no model answer."""
    assert meter(proxy, "set-task", "P7-004").returncode == 0
    assert meter(proxy, "task", "P7-004", "--budget", "10", "--on-exceeded", "block").returncode == 0
    chat = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
    upstream.routes[EMBEDDINGS] = Scenario(body=b"{}")
    probe = Probe(proxy, _ProbeMeter(proxy))
    chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])  # spends the budget
    _calls_of(proxy, "P7-004", 1)
    probe.proxy_knows()  # the proxy has the state worked out after that call was stored
    with pytest.raises(openai.RateLimitError) as refused:
        chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "again"}])
    refused_id = refused.value.response.headers["x-meter-interaction-id"]
    assert _calls_of(proxy, "P7-004", 2)[-1]["blocked"] == "budget"
    assert sum(1 for received in upstream.received if received.path == CHAT) == 1
    proxy.stop()  # its heartbeat would change the dump
    before = dump(proxy.db_path)
    flagged = meter(proxy, "flag", refused_id)
    assert flagged.returncode == 1 and "got no model answer (refused by the meter: budget)" in flagged.stderr
    assert dump(proxy.db_path) == before
    skipped = meter_json(proxy, "show", "last")["skipped"]
    assert skipped == [{"interaction_id": refused_id, "why": "a failed call: refused by the meter: budget"}]


# ---------------------------------------------------------------- migration m017


def _call(db: sqlite3.Connection, n: int, status: int | None, outcome: str, tokens: int | None) -> str:
    interaction_id = f"0000000ab{n:03d}"
    db.execute(
        "INSERT INTO interactions (id, started_at, task_id, operation, model, http_status, outcome, input_total,"
        " output_total, cost_usd, session_id) VALUES (?, ?, 'P1-001', 'generate', 'gpt-4o', ?, ?, ?, ?, ?, 's1')",
        (interaction_id, f"2026-01-01T00:00:{n:02d}.000000Z", status, outcome, tokens, tokens and 10, tokens and 0.01),
    )
    return interaction_id


def test_m017_sets_flags_on_failed_calls_aside_and_rebuilds_the_rollups(db_path, monkeypatch):
    """A database from before m017: an answered call and five failed ones (400,
    401, 413, 500, no response), four of them flagged. After the upgrade the
    4xx are failed calls, the failed calls' flags are kept apart and counted
    nowhere, and every rollup equals the calls."""
    every = migrations.MIGRATIONS
    monkeypatch.setattr(migrations, "MIGRATIONS", every[: every.index(migrations.m017_failed_calls_one_rule)])
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    with connection.write_transaction(old):
        ids = [
            _call(old, 1, 200, "complete", 1000),
            _call(old, 2, 400, "complete", None),
            _call(old, 3, 401, "complete", None),
            _call(old, 4, 413, "complete", None),
            _call(old, 5, 500, "complete", None),
            _call(old, 6, None, "failed", None),
            _call(old, 7, 200, "complete", 500),
        ]
    for interaction_id in (ids[1], ids[2], ids[4]):
        with connection.write_transaction(old):  # as the release before m017 let them be flagged
            old.execute(
                "INSERT INTO flags (interaction_id, note, flagged_at) VALUES (?, 'made up', '2026-01-01T01:00:00.000000Z')",
                (interaction_id,),
            )
    interactions.flag(old, ids[0], "invented API")
    old_usage = dict(
        old.execute("SELECT interactions, failed_calls, flagged FROM task_usage WHERE task_key = 'P1-001'").fetchone()
    )
    assert old_usage == {"interactions": 5, "failed_calls": 2, "flagged": 4}  # 400s and 401s counted, four flags
    old.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", every)

    upgraded = connection.connect(db_path)
    usage = dict(
        upgraded.execute("SELECT interactions, failed_calls, flagged FROM task_usage WHERE task_key = 'P1-001'").fetchone()
    )
    assert usage == {"interactions": 2, "failed_calls": 5, "flagged": 1}
    quarters = dict(
        upgraded.execute(
            "SELECT sum(ai_interactions) a, sum(failed_calls) f, sum(flagged) h, sum(priced) p FROM usage_quarters"
        ).fetchone()
    )
    assert quarters == {"a": 2, "f": 5, "h": 1, "p": 2}
    assert [row[0] for row in upgraded.execute("SELECT interaction_id FROM flags")] == [ids[0]]
    set_aside = [row[0] for row in upgraded.execute("SELECT interaction_id FROM failed_call_flags ORDER BY 1")]
    assert set_aside == [ids[1], ids[2], ids[4]]
    # Rework follows the first counted flag only, and counts the answered calls after it (m022): one.
    assert [tuple(row) for row in upgraded.execute("SELECT flagged_id, calls FROM session_rework")] == [(ids[0], 1)]
    # New calls follow the same rule through the rebuilt triggers.
    interactions.insert(
        upgraded,
        Interaction(
            id="0000000ab008", started_at="2026-01-01T00:00:08.000000Z", task_id="P1-001", http_status=422, outcome="complete"
        ),
    )
    assert upgraded.execute("SELECT failed_calls FROM task_usage WHERE task_key = 'P1-001'").fetchone()[0] == 6
    assert upgraded.execute("SELECT calls FROM session_rework").fetchone()[0] == 1  # nor is the new failed call rework
    upgraded.close()


def test_a_set_aside_flag_is_shown_and_can_be_removed(db_path, monkeypatch, meter):
    every = migrations.MIGRATIONS
    monkeypatch.setattr(migrations, "MIGRATIONS", every[: every.index(migrations.m017_failed_calls_one_rule)])
    old = connection.connect(db_path)
    tasks.set_task(old, "P1-001")
    with connection.write_transaction(old):
        answered, refused = _call(old, 1, 200, "complete", 100), _call(old, 2, 404, "complete", None)
        old.execute(
            "INSERT INTO flags (interaction_id, note, flagged_at) VALUES (?, 'odd', '2026-01-01T01:00:00.000000Z')", (refused,)
        )
    old.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", every)

    shown = json.loads(meter("show", refused, "--json").out)
    assert not shown["flagged"] and shown["flag_set_aside"]["note"] == "odd"
    assert "set aside, counted nowhere" in meter("show", refused).out
    report = json.loads(meter("report", "task", "P1-001", "--json").out)
    assert (report["ai_interactions"], report["failed_calls"], report["hallucination_count"]) == (1, 1, 0)
    assert meter("unflag", refused).out.strip() == f"Unflagged {refused}."
    assert json.loads(meter("show", refused, "--json").out)["flag_set_aside"] is None
    assert json.loads(meter("show", answered, "--json").out)["flag_set_aside"] is None


def test_a_token_count_cannot_be_flagged_and_last_passes_over_it(proxy, upstream):
    assert meter(proxy, "set-task", "P7-005").returncode == 0
    claude = anthropic.Anthropic(base_url=f"{proxy.origin}/anthropic", api_key="sk-test", max_retries=0)
    upstream.routes[MESSAGES] = _message(SONNET, "done", 900, 40)
    upstream.routes["/v1/messages/count_tokens"] = Scenario(body=FIXTURE["anthropic/count_tokens"].body)
    messages = [{"role": "user", "content": "hi"}]
    answered = claude.messages.with_raw_response.create(model=SONNET, max_tokens=100, messages=messages)
    counted = claude.messages.with_raw_response.count_tokens(model=SONNET, messages=messages)
    answered_id, counted_id = (raw.headers["x-meter-interaction-id"] for raw in (answered, counted))
    _stored(proxy, 2)
    refused = meter(proxy, "flag", counted_id)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"meter: error: {counted_id} is not a generation (count_tokens): only an answer can be a hallucination"
    ]
    flagged = meter(proxy, "flag", "last")
    assert flagged.stdout.splitlines()[0] == f"Flagged {answered_id} as a hallucination:"
    assert flagged.stdout.splitlines()[-1] == f"  skipped newer {counted_id}, not a generation: count_tokens"


# ---------------------------------------------------------------- the rule of `last`, over random histories

HISTORY_CALL = st.fixed_dictionaries(
    {
        "second": st.integers(0, 30),  # few seconds: calls that start together, ordered by ID
        "task_id": st.sampled_from(["P1-001", "P1-001", "P1-002", None]),
        "session_id": st.sampled_from([None, "s1", "s1", "s2"]),
        "conversation_id": st.sampled_from([None, "main", "main", "title", "other"]),
        "operation": st.sampled_from(["generate", "generate", "generate", "count_tokens"]),
        "http_status": st.sampled_from([None, 200, 200, 200, 400, 429, 500]),
        "outcome": st.sampled_from(["complete", "complete", "failed"]),
        "input_total": st.one_of(st.none(), st.integers(0, 5000)),
        "output_total": st.one_of(st.none(), st.integers(0, 500)),
    }
)


def _last_by_hand(calls: list[dict], task_id: str | None) -> tuple[str, list[str]] | None:
    """The documented rule, over plain dictionaries."""

    def answered(call):
        return call["operation"] == "generate" and call["http_status"] is not None and 200 <= call["http_status"] < 300

    order = sorted(calls, key=lambda c: (c["started_at"], c["id"]), reverse=True)  # newest first
    scope = [c for c in order if task_id is None or c["task_id"] == task_id]
    newest = next((c for c in scope if answered(c)), None)
    if newest is None:
        return None
    if newest["session_id"] is None:
        session = [newest]
    else:
        session = [c for c in order if c["session_id"] == newest["session_id"] and c["task_id"] == newest["task_id"]]
    session = [c for c in session if answered(c)][: interactions.MAIN_CONVERSATION_WINDOW]
    tokens: dict[str, int] = {}
    for call in session:
        key = call["conversation_id"] or call["id"]
        tokens[key] = tokens.get(key, 0) + (call["input_total"] or 0) + (call["output_total"] or 0)
    main = max(tokens, key=tokens.get)
    chosen = next(c for c in session if (c["conversation_id"] or c["id"]) == main)
    newer = [c["id"] for c in scope if (c["started_at"], c["id"]) > (chosen["started_at"], chosen["id"])]
    return chosen["id"], newer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(HISTORY_CALL, max_size=25), any_task=st.booleans())
def test_last_follows_its_rule_over_any_history(db, history, any_task):
    with connection.write_transaction(db):
        db.execute("DELETE FROM interactions")
    for task_id in ("P1-002", "P1-001"):
        tasks.set_task(db, task_id, create=True)  # P1-001 after P1-002 looks like a typo
    calls = []
    for n, call in enumerate(history):
        second = call.pop("second")
        call = {**call, "id": f"0000000cd{n:03d}", "started_at": f"2026-01-01T00:00:{second:02d}.000000Z"}
        interactions.insert(db, Interaction(**call))
        calls.append(call)
    task_id = None if any_task else "P1-001"
    expected = _last_by_hand(calls, task_id)
    if expected is None:
        with pytest.raises(MeterError):
            interactions.last_call(db, task_id)
        return
    chosen = interactions.last_call(db, task_id)
    assert (chosen.interaction_id, [interaction_id for interaction_id, _ in chosen.skipped]) == expected
    by_id = {call["id"]: call for call in calls}
    for interaction_id, why in chosen.skipped:
        call = by_id[interaction_id]
        if call["operation"] == "generate" and call["http_status"] in (400, 429, 500) and call["input_total"] is None:
            assert why == f"a failed call: HTTP {call['http_status']}"
