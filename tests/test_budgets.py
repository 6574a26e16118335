"""Budgets and runaway-agent alerts, end to end: the official SDKs -> a real
`meter proxy` -> a loopback fake of each provider; budgets set with the real
`meter` commands; what the SDKs raise, what the fake received, what was stored."""

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import openai
import pytest

from taskmeter.analytics.alerts import burn_rate_threshold, tokens_per_working_hour
from taskmeter.analytics.budgets import Defaults
from taskmeter.recorder.planner import LoopWatch
from taskmeter.store import connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.guard_probe import EMBEDDINGS, Probe
from tests.proxy_harness import RunningProxy, write_config

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
NO_DEFAULT_BUDGET = Defaults(on_exceeded="warn", task_tokens=None, task_usd=None, count_subscription_usd=False)
CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
GEMINI = "/v1beta/models/gemini-test:generateContent"
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
MESSAGES_ARGS = dict(model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)  # 1,502 tokens
        fake.routes[MESSAGES] = Scenario(body=FIXTURE["anthropic/messages_nonstream_cache"].body)  # 1,703 tokens
        fake.routes[GEMINI] = Scenario(body=FIXTURE["gemini/nonstream_basic"].body)  # 10 tokens
        fake.routes[EMBEDDINGS] = Scenario(body=b"{}")  # the probe's: no usage
        fake.routes["/s" + CHAT] = Scenario(  # 74 tokens, streamed
            body=FIXTURE["openai/chat_stream_include_usage_toolcall"].body, content_type="text/event-stream", chunk_size=97
        )
        yield fake


def start_proxy(tmp_path: Path, upstream, extra: str = "") -> RunningProxy:
    origin = f"http://127.0.0.1:{upstream.port}"
    upstreams = {"openai": origin, "stream": f"{origin}/s", "anthropic": origin, "gemini": origin}
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", upstreams)
    config.write_text(config.read_text() + extra)
    return RunningProxy(config, tmp_path / "meter.db")


@pytest.fixture
def proxy(tmp_path, upstream, db_path):
    running = start_proxy(tmp_path, upstream)
    yield running
    running.stop()


def _openai(proxy, prefix="", upstream="openai") -> "openai.OpenAI":
    # Default retries (2): x-should-retry must be what stops them.
    return openai.OpenAI(base_url=f"{proxy.origin}{prefix}/{upstream}/v1", api_key="sk-test")


def _anthropic(proxy, **kwargs) -> "anthropic.Anthropic":
    return anthropic.Anthropic(base_url=f"{proxy.origin}/anthropic", api_key="sk-test", **kwargs)


def _poll(found, timeout: float = 10.0):
    """found() once it is truthy, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def _wait_rows(proxy, count: int) -> list[dict]:
    """The calls stored (not the probe's), once at least `count` are."""

    def rows():
        return [row for row in proxy.rows(wait_for=0) if not Probe.is_probe(row)]

    _poll(lambda: len(rows()) >= count)
    found = rows()
    assert len(found) >= count
    return found


def _model_calls(upstream) -> int:
    """The calls that reached the fake upstream, the probe's left out."""
    return sum(1 for received in upstream.received if received.path != EMBEDDINGS)


def _alerts(meter) -> list[dict]:
    """The open alerts, once there is one."""
    return _poll(lambda: json.loads(_meter(meter, "alerts", "--json").out))


def _meter(meter, *args):
    result = meter(*args)
    assert result.code == 0, result.err
    return result


def test_the_budget_header_names_the_budget_that_binds(proxy, upstream, meter, monkeypatch):
    """A task at 1.5% of its own budget in a phase at 75% of its own: the header is the phase's."""
    monkeypatch.setenv("METER_DB", str(proxy.db_path))
    probe = Probe(proxy, meter)
    _meter(meter, "set-task", "P1-010")
    _meter(meter, "task", "P1-010", "--budget", "100000")
    _meter(meter, "phase", "P1", "--budget", "2000")
    probe.proxy_knows()
    client = _openai(proxy)
    first = client.chat.completions.with_raw_response.create(**CHAT_ARGS)
    assert first.headers["x-meter-budget"] == "task=P1-010; tokens-remaining=100000; used=0.0%"  # a tie: its own
    _wait_rows(proxy, 1)
    probe.proxy_knows()
    second = client.chat.completions.with_raw_response.create(**CHAT_ARGS)
    assert second.headers["x-meter-budget"] == "phase=P1; tokens-remaining=498; used=75.1%"


def test_a_tiny_budget_warns_then_blocks_in_each_provider_s_shape(proxy, upstream, meter, monkeypatch):
    monkeypatch.setenv("METER_DB", str(proxy.db_path))
    probe = Probe(proxy, meter)
    _meter(meter, "set-task", "P1-010")
    _meter(meter, "task", "P1-010", "--budget", "1550")  # warn (the config's default)
    probe.proxy_knows()
    client, streaming = _openai(proxy), _openai(proxy, upstream="stream")
    first = client.chat.completions.with_raw_response.create(**CHAT_ARGS)
    assert first.headers["x-meter-budget"] == "task=P1-010; tokens-remaining=1550; used=0.0%"
    _wait_rows(proxy, 1)
    probe.proxy_knows()
    # Past 80%, then past 100%: warned, not blocked; the header says what remained.
    second = streaming.chat.completions.with_raw_response.create(**{**CHAT_ARGS, "stream": True})
    assert list(second.parse())  # the usage the meter asked for is not in the client's stream
    assert second.headers["x-meter-budget"] == "task=P1-010; tokens-remaining=48; used=96.9%"
    _wait_rows(proxy, 2)
    probe.proxy_knows()  # the crossings are raised before the state is pushed
    listed = json.loads(_meter(meter, "alerts", "--json").out)
    assert sorted(alert["message"].split(":")[0] for alert in listed) == ["budget 100% used", "budget 80% used"]
    assert _poll(lambda: any("ALERT budget 80% used: P1-010" in line for _, line in proxy.live_view))
    status = json.loads(_meter(meter, "status", "--json").out)
    assert status["budget"]["exceeded"] is True and status["budget"]["blocks"] is False
    received = _model_calls(upstream)

    # Block: each provider's SDK gets a 429 in its own shape, with no retry.
    _meter(meter, "task", "P1-010", "--on-exceeded", "block")
    probe.proxy_knows()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**CHAT_ARGS)
    body = refused.value.body
    assert body["code"] == "budget_exceeded" and body["type"] == "budget_exceeded"
    assert "P1-010" in body["message"] and "meter task P1-010 --budget" in body["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.RateLimitError):
        list(streaming.chat.completions.create(**{**CHAT_ARGS, "stream": True}))
    with pytest.raises(anthropic.RateLimitError) as refused:
        _anthropic(proxy).messages.create(**MESSAGES_ARGS)
    assert refused.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": body["message"]}}
    from google import genai
    from google.genai import errors as genai_errors

    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"{proxy.origin}/gemini")
    gemini = genai.Client(api_key="sk-test")
    with pytest.raises(genai_errors.ClientError) as refused:
        gemini.models.generate_content(model="gemini-test", contents="hi")
    assert refused.value.code == 429 and refused.value.status == "RESOURCE_EXHAUSTED"
    # Exactly one request per refused call, none of them upstream, each recorded as blocked.
    assert _model_calls(upstream) == received
    rows = _wait_rows(proxy, 6)
    blocked = [r for r in rows if r["blocked"]]
    assert [(r["blocked"], r["http_status"], r["outcome"]) for r in blocked] == [("budget", 429, "failed")] * 4
    assert {r["protocol"] for r in blocked} == {"openai_chat", "anthropic", "gemini"}
    budget = json.loads(_meter(meter, "budget", "--json").out)[0]
    assert (budget["tokens_used"], budget["tokens_over"], budget["blocks"]) == (1576, 26, True)  # the overshoot is shown
    report = json.loads(_meter(meter, "report", "task", "P1-010", "--json").out)
    assert (report["ai_interactions"], report["failed_calls"]) == (2, 4)  # refused calls never reached a model

    # Raising the budget lets calls through again.
    _meter(meter, "task", "P1-010", "--budget", "1M")
    probe.proxy_knows()
    assert client.chat.completions.create(**CHAT_ARGS).usage.total_tokens == 1502
    assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()  # no hook failed on the way


def test_a_budget_is_judged_on_the_task_the_call_names(proxy, upstream, meter, monkeypatch):
    monkeypatch.setenv("METER_DB", str(proxy.db_path))
    probe = Probe(proxy, meter)
    _meter(meter, "set-task", "P2-001")  # current, without a budget
    _meter(meter, "set-task", "P2-002")
    _meter(meter, "set-task", "P2-001")
    _meter(meter, "task", "P2-002", "--budget", "100", "--on-exceeded", "block")
    probe.proxy_knows()
    named = _openai(proxy, "/t/P2-002")
    named.chat.completions.create(**CHAT_ARGS)  # within budget when it started: never cut
    # The next waits until the proxy knows what the first spent, however soon it comes.
    with pytest.raises(openai.RateLimitError):
        named.chat.completions.create(**CHAT_ARGS)
    # The current task has no budget: its calls go on.
    assert _openai(proxy).chat.completions.create(**CHAT_ARGS).usage.total_tokens == 1502
    # And a phase budget covers its tasks.
    _meter(meter, "phase", "P2", "--budget", "$0.0001", "--on-exceeded", "block")
    probe.proxy_knows()
    with pytest.raises(openai.RateLimitError) as refused:
        _openai(proxy).chat.completions.create(**CHAT_ARGS)
    assert "phase P2" in refused.value.body["message"]


def test_a_loop_of_identical_agent_requests_raises_one_alert_then_is_blocked(tmp_path, upstream, meter, monkeypatch):
    proxy = start_proxy(tmp_path, upstream, '\n[alerts]\nloop_calls = 10\nloop_minutes = 5\non_loop = "block"\n')
    try:
        monkeypatch.setenv("METER_DB", str(proxy.db_path))
        probe = Probe(proxy, meter)
        session = {"x-claude-code-session-id": "5f0c2a43-loop"}
        agent = _anthropic(proxy, default_headers=session)
        outcomes = []
        for _ in range(12):
            try:
                agent.messages.create(**MESSAGES_ARGS)
                outcomes.append("answered")
            except anthropic.RateLimitError:
                outcomes.append("refused")
        # The loop is seen at its 10th call; from the moment the proxy knows, every call is refused.
        assert outcomes[:10] == ["answered"] * 10
        first_refused = outcomes.index("refused") if "refused" in outcomes else len(outcomes)
        assert set(outcomes[first_refused:]) <= {"refused"}
        _wait_rows(proxy, 12)
        listed = _alerts(meter)
        probe.proxy_knows()
        assert len(listed) == 1
        assert listed[0]["kind"] == "loop" and listed[0]["session_id"] == "5f0c2a43-loop" and listed[0]["blocks"] is True
        assert "10 calls of near-identical requests" in listed[0]["message"]
        with pytest.raises(anthropic.RateLimitError) as refused:
            agent.messages.create(**MESSAGES_ARGS)
        assert "loop" in refused.value.body["error"]["message"]
        # Another session of the same client is not blocked.
        assert _anthropic(proxy, default_headers={"x-claude-code-session-id": "other"}).messages.create(**MESSAGES_ARGS)
        assert "⚠ 1 alert" in _meter(meter, "statusline").out
        _meter(meter, "alerts", "clear")
        probe.proxy_knows()
        assert agent.messages.create(**MESSAGES_ARGS).usage.output_tokens == 7
        rows = _wait_rows(proxy, 15)
        assert [r["blocked"] for r in rows].count("loop") == outcomes.count("refused") + 1
    finally:
        proxy.stop()


def test_a_loop_without_a_session_header_is_blocked_by_its_conversation(tmp_path, upstream, meter, monkeypatch):
    proxy = start_proxy(tmp_path, upstream, '\n[alerts]\nloop_calls = 3\nloop_minutes = 5\non_loop = "block"\n')
    try:
        monkeypatch.setenv("METER_DB", str(proxy.db_path))
        probe = Probe(proxy, meter)
        client = _openai(proxy)
        for _ in range(3):
            client.chat.completions.create(**CHAT_ARGS)
        _wait_rows(proxy, 3)
        assert [alert["kind"] for alert in _alerts(meter)] == ["loop"]
        probe.proxy_knows()
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**CHAT_ARGS)
        assert refused.value.body["code"] == "loop_detected"
        # A conversation with another root goes on.
        other = {**CHAT_ARGS, "messages": [{"role": "user", "content": "something else"}]}
        assert client.chat.completions.create(**other).usage.total_tokens == 1502
    finally:
        proxy.stop()


def test_alert_command_hears_of_each_alert(tmp_path, upstream, meter, monkeypatch):
    heard = tmp_path / "heard.txt"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {heard}\n')
    script.chmod(0o755)
    proxy = start_proxy(
        tmp_path,
        upstream,
        f'\n[alerts]\nalert_command = ["{script}"]\nloop_calls = 10\nloop_minutes = 5\non_loop = "warn"\nburn_rate_k = 3\n',
    )
    try:
        monkeypatch.setenv("METER_DB", str(proxy.db_path))
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "P3-001")
        _meter(meter, "task", "P3-001", "--budget", "1000")
        probe.proxy_knows()
        _openai(proxy).chat.completions.create(**CHAT_ARGS)
        deadline = time.monotonic() + 5
        while (not heard.exists() or len(heard.read_text().splitlines()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Each alert starts its own command: they may finish in either order.
        assert sorted(heard.read_text().splitlines()) == [
            "budget 100% used: P3-001: 1,502 of 1,000 tokens (150% used); calls go on (on_exceeded = warn)",
            "budget 80% used: P3-001: 1,502 of 1,000 tokens (150% used)",
        ]
    finally:
        proxy.stop()


def test_burn_rate_threshold_over_a_known_history():
    """median + k * MAD: rates 100, 110, 120, 130, 1000 tokens/h have median 120 and
    MAD 10, so k = 3 puts the line at 150; the runaway 1000 barely moves it."""
    assert burn_rate_threshold([100, 110, 120, 130, 1000], 3) == 150
    assert burn_rate_threshold([100, 110], 3) is None  # too little history to judge
    assert tokens_per_working_hour({"actual_duration": 1800, "token_count_used": 100}) == 200
    assert tokens_per_working_hour({"actual_duration": 300, "token_count_used": 100}) is None  # under 10 minutes


def test_burn_rate_alert_over_a_synthetic_history(db_path, meter):
    """Five approved tasks that burned 600, 660, 720, 780 and 6,000 tokens per
    working hour (median 720, MAD 60: with k = 3 the line is 900), then a current
    task burning about 3,000: one burn-rate alert from the recorder's rule, once."""
    from taskmeter.recorder.planner import Guard
    from taskmeter.store import tasks
    from taskmeter.store.writer import Writer
    from taskmeter.timefmt import from_stored, now, to_stored
    from tests.test_analytics import call, switch

    db = connection.connect(db_path)
    for n, per_call in enumerate([100, 110, 120, 130, 1000]):
        task_id, day = f"P1-{n:03d}", f"2025-10-0{n + 1}"
        with connection.write_transaction(db):
            tasks.ensure_task(db, task_id, f"{day}T09:00:00.000000Z")
        switch(db, task_id, f"{day}T09:00:00.000000Z")
        for k in range(6):  # a call every 10 minutes: an hour of work with no idle gap
            call(db, 10 * n + k, task_id, f"{day}T09:{5 + 10 * k:02d}:00.000000Z", input_total=per_call, output_total=0)
        tasks.mark(db, task_id, "approved", at=from_stored(f"{day}T10:00:00.000000Z"), force=True)
        switch(db, None, f"{day}T10:00:00.000000Z")
    rates = [tokens_per_working_hour(t) for t in json.loads(_meter(meter, "tasks", "--json").out)]
    assert sorted(round(rate) for rate in rates) == [600, 660, 720, 780, 6000]
    # The current task: begun 20 minutes ago, 1,000 tokens so far.
    begun = now().timestamp() - 1200
    with connection.write_transaction(db):
        tasks.ensure_task(db, "P2-001", to_stored(datetime.fromtimestamp(begun, UTC)))
    tasks.set_task(db, "P2-001")
    with connection.write_transaction(db):
        db.execute("UPDATE task_events SET at = ? WHERE task_id = 'P2-001'", (to_stored(datetime.fromtimestamp(begun, UTC)),))
    for k in range(5):
        call(db, 90 + k, "P2-001", to_stored(datetime.fromtimestamp(begun + 240 * k, UTC)), input_total=200, output_total=0)
    db.close()

    def guard(announced: list) -> Guard:
        return Guard(Writer(db_path), lambda state: None, announced.append, NO_DEFAULT_BUDGET, 10, 5, "warn", 3.0, [], 900)

    announced: list[str] = []
    guard(announced).refresh(force=True)
    assert len(announced) == 1
    found = re.fullmatch(
        r"meter: ALERT burn rate: P2-001 uses ([\d,]+) tokens per working hour, above 900 \(median \+ 3 MAD of the approved tasks\)",
        announced[0],
    )
    assert found and 2_900 <= int(found.group(1).replace(",", "")) <= 3_000  # 1,000 tokens in 20 minutes of work
    again: list[str] = []
    guard(again).refresh(force=True)
    assert again == []  # raised once while open
    assert [a["kind"] for a in json.loads(_meter(meter, "alerts", "--json").out)] == ["burn_rate"]


def test_loop_watch_counts_within_its_window():
    watch = LoopWatch(calls=3, minutes=1)
    assert watch.observe("s", 0, ("a",)) == []
    assert watch.observe("s", 10, ("a", "b")) == []
    assert watch.observe("s", 20, ("a",)) == ["a"]
    assert watch.observe("s", 21, ("a",)) == []  # a loop found counts afresh
    assert watch.observe("s", 100, ("a",)) == []  # the call at 21 fell out of the minute
    assert watch.observe("t", 100, ("b",)) == []  # sessions apart
    assert watch.observe("s", 101, ("a",)) == []
    assert watch.observe("s", 102, ("a",)) == ["a"]  # the loop goes on: found again


def test_budget_amounts_and_modes_fail_in_one_line(meter):
    _meter(meter, "set-task", "P4-001")
    for bad in ("0", "2 EUR", "-5", "$"):
        result = meter("task", "P4-001", "--budget", bad)
        assert result.code == 1 and "cannot read" in result.err and "Traceback" not in result.err
    result = meter("task", "P4-001", "--on-exceeded", "block")
    assert result.code == 1 and "has no budget of its own" in result.err
    result = meter("task", "P4-001", "--budget", "1M", "--unset", "budget")
    assert result.code == 1 and "contradict" in result.err


def test_a_budget_warns_once_per_budget_as_set(db_path, meter):
    """A crossing is raised once: a recorder started again does not repeat it, a
    cleared one stays cleared, and a new budget warns afresh."""
    from taskmeter.recorder.planner import Guard
    from taskmeter.store.writer import Writer
    from tests.test_analytics import call

    _meter(meter, "set-task", "P5-001")
    _meter(meter, "task", "P5-001", "--budget", "1000")
    db = connection.connect(db_path)
    call(db, 1, "P5-001", "2026-11-24T10:00:00.000000Z", input_total=850, output_total=0)
    db.close()

    def refreshed() -> list[str]:
        announced: list[str] = []
        Guard(Writer(db_path), lambda state: None, announced.append, NO_DEFAULT_BUDGET, 10, 5, "warn", 3.0, [], 900).refresh(
            force=True
        )
        return announced

    assert refreshed() == ["meter: ALERT budget 80% used: P5-001: 850 of 1,000 tokens (85% used)"]
    assert refreshed() == []  # a recorder started again
    _meter(meter, "alerts", "clear")
    assert refreshed() == []
    _meter(meter, "task", "P5-001", "--budget", "900")
    assert refreshed() == ["meter: ALERT budget 80% used: P5-001: 850 of 900 tokens (94% used)"]
