"""The budget and loop holes of the second round of hostile drills (issue 20),
through a real `meter proxy` and the official SDKs, against a loopback fake:
block mode overshot its budgets 2-4x, a spent phase let new task IDs through,
and a loop block refused every task and client sharing the conversation root.

Every test counts the calls that reached the upstream exactly, and checks that
every call made, let through or refused, is stored once."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.guard_probe import EMBEDDINGS, Probe
from tests.proxy_harness import RunningProxy, write_config

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
CALL_TOKENS = 1502  # the fake's answer: 1,502 tokens a call
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        body = next(f for f in ALL if f.name == "openai/chat_nonstream_cached_tokens").body
        fake.routes[CHAT] = Scenario(body=body)
        fake.routes["/slow" + CHAT] = Scenario(body=body, chunk_size=len(body) // 2 + 1, delay=0.3)  # in flight together
        fake.routes[EMBEDDINGS] = Scenario(body=b"{}")  # no usage: the probe spends nothing
        yield fake


def start_proxy(tmp_path, upstream, extra: str = "") -> RunningProxy:
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "slow": f"{origin}/slow"})
    config.write_text(config.read_text() + extra)
    return RunningProxy(config, tmp_path / "meter.db")


def _meter(meter, *args):
    result = meter(*args)
    assert result.code == 0, result.err
    return result


def _chat(proxy, prefix: str = "", upstream: str = "openai", **headers) -> "openai.OpenAI":
    # Default retries (2): x-should-retry must be what stops them.
    return openai.OpenAI(base_url=f"{proxy.origin}{prefix}/{upstream}/v1", api_key="sk-test", default_headers=headers)


def _outcome(client: "openai.OpenAI", **args) -> str:
    try:
        client.chat.completions.create(**{**CHAT_ARGS, **args})
        return "answered"
    except openai.RateLimitError as exc:
        return exc.body["code"]


def _reached(upstream, path: str = CHAT) -> int:
    return sum(1 for received in upstream.received if received.path == path)


def _poll(found, timeout: float = 10.0):
    """found() once it is truthy, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def _stored_calls(proxy, count: int) -> list[dict]:
    """The chat calls stored (not the probe's), once `count` are; each exactly once."""

    def chat_rows():
        return [row for row in proxy.rows(wait_for=0) if row["endpoint"].endswith(CHAT)]

    _poll(lambda: len(chat_rows()) >= count)
    rows = chat_rows()
    assert len(rows) == count and len({row["id"] for row in rows}) == count
    return rows


def _budget(meter, scope: str, target: str) -> dict:
    listed = json.loads(_meter(meter, "budget", "--json").out)
    return next(b for b in listed if (b["scope"], b["target"]) == (scope, target))


def test_sequential_calls_stop_at_the_first_call_after_the_crossing_one(tmp_path, upstream, meter):
    """A budget of 2.5 calls: the third call crosses it and is the last to reach
    the upstream, however soon after the second it starts (the drill: 231%)."""
    proxy = start_proxy(tmp_path, upstream)
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "D1-001", "--create")
        _meter(meter, "task", "D1-001", "--budget", str(CALL_TOKENS * 5 // 2), "--on-exceeded", "block")
        probe.proxy_knows()
        client = _chat(proxy)
        outcomes = [_outcome(client) for _ in range(6)]
        assert outcomes == ["answered"] * 3 + ["budget_exceeded"] * 3
        assert _reached(upstream) == 3
        rows = _stored_calls(proxy, 6)
        assert [row["blocked"] for row in rows] == [None] * 3 + ["budget"] * 3
        budget = _budget(meter, "task", "D1-001")
        assert (budget["tokens_used"], budget["tokens_over"]) == (3 * CALL_TOKENS, CALL_TOKENS // 2)  # under one call over
        assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()  # no hook failed
    finally:
        proxy.stop()


def test_a_burst_of_20_concurrent_calls_past_the_limit_is_refused(tmp_path, upstream, meter):
    """A budget of 3.5 calls, one spent, then 20 calls at once (the drill: 314-400%):
    three go, as many as the room left; the others wait for their spend, then are refused."""
    proxy = start_proxy(tmp_path, upstream)
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "D2-001", "--create")
        _meter(meter, "task", "D2-001", "--budget", str(CALL_TOKENS * 7 // 2), "--on-exceeded", "block")
        probe.proxy_knows()
        assert _outcome(_chat(proxy)) == "answered"
        client = _chat(proxy, upstream="slow")
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda _: _outcome(client), range(20)))
        assert sorted(outcomes) == ["answered"] * 3 + ["budget_exceeded"] * 17
        assert _reached(upstream) + _reached(upstream, "/slow" + CHAT) == 4
        rows = _stored_calls(proxy, 21)
        assert sum(row["blocked"] == "budget" for row in rows) == 17
        budget = _budget(meter, "task", "D2-001")
        assert (budget["tokens_used"], budget["tokens_over"]) == (4 * CALL_TOKENS, CALL_TOKENS // 2)
        assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()  # no hook failed
    finally:
        proxy.stop()


def test_a_spent_phase_refuses_its_tasks_the_proxy_never_saw(tmp_path, upstream, meter):
    """A phase budget of 2.5 calls spent by two tasks' calls one after another
    (the drill: 605%), then a task ID of the phase named for the first time by
    /t/, by x-meter-task, or made current by `meter set-task` is refused too."""
    proxy = start_proxy(tmp_path, upstream)
    try:
        probe = Probe(proxy, meter)
        # current; no call of it ever reaches the proxy before the budget is spent
        _meter(meter, "set-task", "D3-NEW-CURRENT", "--create")
        _meter(meter, "phase", "D3", "--budget", str(CALL_TOKENS * 5 // 2), "--on-exceeded", "block")
        probe.proxy_knows()
        by_path, by_header = _chat(proxy, "/t/D3-001"), _chat(proxy, **{"x-meter-task": "D3-002"})
        outcomes = [_outcome(client) for client in (by_path, by_header) * 3]
        assert outcomes == ["answered"] * 3 + ["budget_exceeded"] * 3
        assert _reached(upstream) == 3
        with pytest.raises(openai.RateLimitError) as refused:
            _chat(proxy, "/t/D3-NEW-PATH").chat.completions.create(**CHAT_ARGS)
        assert "phase D3" in refused.value.body["message"]
        assert _outcome(_chat(proxy, **{"x-meter-task": "d3-new-header"})) == "budget_exceeded"
        assert _outcome(_chat(proxy)) == "budget_exceeded"  # the current task, set with set-task
        assert _outcome(_chat(proxy, "/t/D4-001")) == "answered"  # another phase goes on
        assert _reached(upstream) == 4
        rows = _stored_calls(proxy, 10)
        refused_tasks = sorted(row["task_id"] for row in rows if row["blocked"] == "budget")
        assert refused_tasks == ["D3-001", "D3-002", "D3-002", "D3-NEW-CURRENT", "D3-NEW-HEADER", "D3-NEW-PATH"]
        assert _budget(meter, "phase", "D3")["tokens_used"] == 3 * CALL_TOKENS
        assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()  # no hook failed
    finally:
        proxy.stop()


def test_a_loop_block_refuses_only_the_task_and_client_that_looped(tmp_path, upstream, meter):
    """Three identical calls of one client in one task are a loop, in block mode:
    that client in that task is refused; the same first messages from another
    client, or from the same client in another task, go on (the drill: all were refused)."""
    proxy = start_proxy(tmp_path, upstream, '\n[alerts]\nloop_calls = 3\nloop_minutes = 5\non_loop = "block"\n')
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "D5-001", "--create")
        looping = _chat(proxy, **{"user-agent": "agent-a/1.0"})
        assert [_outcome(looping) for _ in range(3)] == ["answered"] * 3
        _stored_calls(proxy, 3)
        listed = _poll(lambda: json.loads(_meter(meter, "alerts", "--json").out))
        assert [(alert["kind"], alert["task_id"], alert["blocks"]) for alert in listed] == [("loop", "D5-001", True)]
        assert "client agent-a/1.0" in listed[0]["message"]
        probe.proxy_knows()
        assert _outcome(looping) == "loop_detected"
        assert _outcome(_chat(proxy, **{"user-agent": "agent-b/2.0"})) == "answered"  # another client
        assert _outcome(_chat(proxy, "/t/D5-002", **{"user-agent": "agent-a/1.0"})) == "answered"  # another task
        assert _outcome(looping) == "loop_detected"  # the looping one stays blocked
        assert _reached(upstream) == 5
        rows = _stored_calls(proxy, 7)
        assert [(row["task_id"], row["client"], row["blocked"]) for row in rows[3:]] == [
            ("D5-001", "agent-a/1.0", "loop"),
            ("D5-001", "agent-b/2.0", None),
            ("D5-002", "agent-a/1.0", None),
            ("D5-001", "agent-a/1.0", "loop"),
        ]
        assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()  # no hook failed
    finally:
        proxy.stop()
