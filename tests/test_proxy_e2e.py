"""End to end: the official SDKs -> a real `meter proxy` process -> a loopback fake
of the provider serving recorded bytes -> rows in a real SQLite file."""

import json
import socket
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

from taskmeter.store import connection, tasks
from tests.conftest import run_concurrently
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.gitrepo import eventually
from tests.proxy_harness import VENV_BIN, RunningProxy, meter, meter_json, write_config

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
API_KEY = "sk-test-secret-4242"


def sse(name: str, **kwargs) -> Scenario:
    return Scenario(body=FIXTURE[name].body, content_type="text/event-stream", chunk_size=97, delay=0.002, **kwargs)


def json_reply(name: str, **kwargs) -> Scenario:
    return Scenario(body=FIXTURE[name].body, content_type="application/json", **kwargs)


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy")
    origin = f"http://127.0.0.1:{upstream.port}"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    config = write_config(
        tmp / "config.toml",
        tmp / "ca",
        {
            "openai": origin,
            "anthropic": origin,
            "gemini": origin,
            "fake": origin,
            "down": down,
            # TLS to a server that speaks plain HTTP: the handshake fails.
            "tlsdown": f"https://127.0.0.1:{upstream.port}",
        },
    )
    running = RunningProxy(config, tmp / "meter.db")
    yield running
    running.stop()


def row(proxy: RunningProxy, interaction_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for candidate in proxy.rows(wait_for=0):
            if candidate["id"] == interaction_id:
                return candidate
        time.sleep(0.05)
    raise AssertionError(f"interaction {interaction_id} was not recorded")


def openai_client(proxy, prefix="") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{proxy.origin}{prefix}/openai/v1", api_key=API_KEY, max_retries=0)


def anthropic_client(proxy, prefix="") -> "anthropic.Anthropic":
    return anthropic.Anthropic(base_url=f"{proxy.origin}{prefix}/anthropic", api_key=API_KEY, max_retries=0)


MESSAGES_ARGS = dict(model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])


def test_openai_stream_through_gateway_is_metered_exactly_and_not_buffered(proxy, upstream):
    upstream.routes[CHAT] = sse("openai/chat_stream_include_usage_toolcall", headers={})
    upstream.routes[CHAT].delay = 0.02
    raw = openai_client(proxy).chat.completions.with_raw_response.create(
        **CHAT_ARGS, stream=True, stream_options={"include_usage": True}
    )
    interaction_id = raw.headers["x-meter-interaction-id"]
    first_chunk_at = None
    chunks = []
    for chunk in raw.parse():
        first_chunk_at = first_chunk_at or time.time()
        chunks.append(chunk)
    assert first_chunk_at < upstream.last_chunk_sent_at[CHAT]  # streamed, not buffered
    assert chunks[-1].usage.prompt_tokens == 54  # the client asked for usage: it keeps it
    stored = row(proxy, interaction_id)
    assert (stored["input_total"], stored["cache_read"], stored["output_total"], stored["reasoning"]) == (54, 0, 20, 0)
    assert stored["usage_source"] == "reported" and stored["outcome"] == "complete" and stored["streamed"] == 1
    assert stored["provider"] == "openai" and stored["protocol"] == "openai_chat"
    assert stored["model"] == "gpt-4o-mini-2024-07-18"
    assert stored["cost_usd"] > 0 and "genai-prices" in stored["price_source"]
    assert stored["first_byte_at"] <= stored["ended_at"]
    assert upstream.received[-1].headers["Accept-Encoding"] == "identity"
    assert stored["proxy_id"] and stored["client"].startswith("OpenAI/Python")


def test_status_shows_the_running_proxy(proxy):
    running = meter_json(proxy, "status")["proxies"]
    assert [p["listen"] for p in running] == [proxy.address]
    assert running[0]["pid"] == proxy.process.pid


def test_usage_chunk_the_meter_asked_for_is_removed_from_the_client_stream(proxy, upstream):
    upstream.routes[CHAT] = sse("openai/chat_stream_include_usage_httprr")
    response = httpx.post(
        f"{proxy.origin}/openai/v1/chat/completions",
        json={**CHAT_ARGS, "stream": True},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert upstream.request_json()["stream_options"] == {"include_usage": True}
    original = FIXTURE["openai/chat_stream_include_usage_httprr"].body
    events = [e for e in original.split(b"\n\n") if e]
    usage_only = [e for e in events if b'"choices":[]' in e and b'"usage":{' in e]
    assert len(usage_only) == 1
    assert response.content == original.replace(usage_only[0] + b"\n\n", b"")
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert (stored["input_total"], stored["output_total"], stored["usage_source"]) == (14, 13, "reported")


def test_openai_non_streamed_cached_tokens(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_cached_tokens")
    raw = openai_client(proxy).chat.completions.with_raw_response.create(**CHAT_ARGS)
    assert raw.parse().usage.prompt_tokens_details.cached_tokens == 1024
    stored = row(proxy, raw.headers["x-meter-interaction-id"])
    assert (stored["input_total"], stored["cache_read"], stored["output_total"]) == (1149, 1024, 353)
    assert stored["streamed"] == 0 and stored["usage_source"] == "reported"


def test_anthropic_sdk_stream_and_message(proxy, upstream):
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_cache_creation")
    client = anthropic_client(proxy)
    with client.messages.stream(**MESSAGES_ARGS) as stream:
        final = stream.get_final_message()
        interaction_id = stream.response.headers["x-meter-interaction-id"]
    assert final.usage.output_tokens == 201
    stored = row(proxy, interaction_id)
    assert (stored["input_total"], stored["cache_read"], stored["cache_write"], stored["output_total"]) == (1169, 0, 1165, 201)
    assert stored["model"] and stored["cost_usd"] > 0

    # Server tools: message_delta's cumulative counts replace message_start's.
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_server_tools_cumulative")
    response = httpx.post(f"{proxy.origin}/anthropic/v1/messages", json={**MESSAGES_ARGS, "stream": True})
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert (stored["input_total"], stored["cache_read"], stored["cache_write"], stored["output_total"]) == (9632, 6289, 3337, 198)

    upstream.routes[MESSAGES] = json_reply("anthropic/messages_nonstream_cache")
    raw = client.messages.with_raw_response.create(**MESSAGES_ARGS)
    stored = row(proxy, raw.headers["x-meter-interaction-id"])
    assert (stored["input_total"], stored["cache_read"], stored["cache_write"], stored["output_total"]) == (1696, 1650, 44, 7)


def test_gzip_stream_from_a_server_that_ignores_identity(proxy, upstream):
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_parallel_tool_use_gzip", gzip=True)
    with anthropic_client(proxy).messages.stream(**MESSAGES_ARGS) as stream:
        final = stream.get_final_message()
        interaction_id = stream.response.headers["x-meter-interaction-id"]
    assert final.usage.input_tokens == 542
    stored = row(proxy, interaction_id)
    assert (stored["input_total"], stored["output_total"], stored["usage_source"]) == (542, 62, "reported")


def test_count_tokens_is_recorded_but_not_an_ai_interaction(proxy, upstream):
    upstream.routes["/v1/messages/count_tokens"] = json_reply("anthropic/count_tokens")
    raw = anthropic_client(proxy).messages.with_raw_response.count_tokens(model="claude-test", messages=MESSAGES_ARGS["messages"])
    stored = row(proxy, raw.headers["x-meter-interaction-id"])
    assert stored["operation"] == "count_tokens"
    assert stored["input_total"] is None and json.loads(stored["raw_usage"]) == {"counted_input_tokens": 20}


def test_upstream_error_is_passed_through_unchanged_and_recorded(proxy, upstream):
    error_body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    upstream.routes[MESSAGES] = Scenario(body=error_body, status=529)
    response = httpx.post(f"{proxy.origin}/anthropic/v1/messages", json=MESSAGES_ARGS)
    assert response.status_code == 529 and response.content == error_body
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert stored["http_status"] == 529 and stored["error"] == "Overloaded"
    assert stored["input_total"] is None and stored["usage_source"] is None


def test_malformed_upstream_body_is_passed_through_and_recorded_with_a_parse_error(proxy, upstream):
    upstream.routes[CHAT] = Scenario(body=b"<html>oops</html>", content_type="application/json")
    response = httpx.post(f"{proxy.origin}/openai/v1/chat/completions", json=CHAT_ARGS)
    assert response.content == b"<html>oops</html>"
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert "unparsed response body" in stored["error"]


def test_stream_without_usage_is_estimated_with_tiktoken(proxy, upstream):
    # A server that ignores include_usage: nothing states usage.
    upstream.routes[CHAT] = sse("openai/chat_stream_no_usage")
    with openai_client(proxy).chat.completions.with_streaming_response.create(**CHAT_ARGS, stream=True) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        interaction_id = response.headers["x-meter-interaction-id"]
    stored = row(proxy, interaction_id)
    assert stored["usage_source"] == "estimated"
    assert stored["output_total"] > 0 and stored["input_total"] > 0
    assert abs(stored["output_total"] - len(text) / 4) < len(text) / 4  # the right order of size
    assert json.loads(stored["raw_usage"])["estimated_with"] in ("cl100k_base", "o200k_base")


def test_client_abort_mid_stream_is_recorded_as_partial(proxy, upstream):
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_tool_use")
    upstream.routes[MESSAGES].delay = 0.05
    received = b""
    with httpx.stream("POST", f"{proxy.origin}/anthropic/v1/messages", json={**MESSAGES_ARGS, "stream": True}) as response:
        interaction_id = response.headers["x-meter-interaction-id"]
        for chunk in response.iter_raw():
            received += chunk
            if b"content_block_start" in received:
                break  # the client gives up after message_start
    stored = row(proxy, interaction_id)
    assert stored["outcome"] == "partial"
    assert stored["usage_source"] == "partial"
    assert stored["input_total"] == 633  # message_start arrived before the client left
    assert stored["error"]


def test_an_unreachable_upstream_answers_in_the_openai_shape_through_the_sdk(proxy):
    client = openai.OpenAI(base_url=f"{proxy.origin}/down/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**CHAT_ARGS)
    response = raised.value.response
    assert response.status_code == 502 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable" and error["type"] == "upstream_error"
    assert "127.0.0.1:" in error["message"] and "connect call failed" in error["message"].lower()
    assert "could not be reached" in str(raised.value)  # what the SDK shows the user
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert stored["outcome"] == "failed" and stored["http_status"] == 502 and "connect call failed" in stored["error"].lower()
    assert stored["input_total"] is None and stored["first_byte_at"] is None


def test_unreachable_upstream_errors_in_the_anthropic_and_gemini_shapes(proxy):
    client = anthropic.Anthropic(base_url=f"{proxy.origin}/down", api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**MESSAGES_ARGS)
    document = raised.value.response.json()
    assert document["type"] == "error" and document["error"]["type"] == "api_error"
    assert raised.value.response.headers["x-meter-interaction-id"]
    # The gateway keeps the protocol of the path: a Gemini path on the same dead upstream.
    gemini = httpx.post(f"{proxy.origin}/down/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": []})
    assert gemini.status_code == 502
    assert gemini.json()["error"]["code"] == 502 and gemini.json()["error"]["status"] == "UNAVAILABLE"


def test_a_failed_tls_handshake_with_the_upstream_is_a_json_502(proxy):
    response = httpx.post(f"{proxy.origin}/tlsdown/v1/chat/completions", json=CHAT_ARGS)
    assert response.status_code == 502 and response.headers["content-type"] == "application/json"
    assert "tls" in response.json()["error"]["message"].lower()
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert stored["outcome"] == "failed" and stored["http_status"] == 502


def test_unknown_gateway_prefix_is_a_readable_404(proxy):
    response = httpx.post(f"{proxy.origin}/nope/v1/chat/completions", json=CHAT_ARGS)
    assert response.status_code == 404
    assert "no upstream named 'nope'" in response.json()["error"]["message"]


def test_path_prefix_and_header_attribute_to_a_task(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_toolcall")
    raw = openai_client(proxy, "/t/P7-001").chat.completions.with_raw_response.create(**CHAT_ARGS)
    stored = row(proxy, raw.headers["x-meter-interaction-id"])
    assert (stored["task_id"], stored["attribution"]) == ("P7-001", "path")
    response = httpx.post(f"{proxy.origin}/openai/v1/chat/completions", json=CHAT_ARGS, headers={"x-meter-task": "P7-002"})
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert (stored["task_id"], stored["attribution"]) == ("P7-002", "header")
    assert "x-meter-task" not in {k.lower() for k in upstream.received[-1].headers}
    bad = httpx.post(f"{proxy.origin}/t/bad%20id/openai/v1/chat/completions", json=CHAT_ARGS)
    assert bad.status_code == 400 and "malformed task ID" in bad.text


def test_set_task_applies_to_the_very_next_call(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_toolcall")
    client = openai_client(proxy)
    db = connection.connect(proxy.db_path)
    try:
        seen = []
        for task_id in ("P8-001", "P8-002", "P8-001"):
            tasks.set_task(db, task_id)
            raw = client.chat.completions.with_raw_response.create(**CHAT_ARGS)
            seen.append(row(proxy, raw.headers["x-meter-interaction-id"]))
        tasks.clear_task(db)
        raw = client.chat.completions.with_raw_response.create(**CHAT_ARGS)
        unassigned = row(proxy, raw.headers["x-meter-interaction-id"])
    finally:
        db.close()
    assert [(r["task_id"], r["attribution"]) for r in seen] == [
        ("P8-001", "current"),
        ("P8-002", "current"),
        ("P8-001", "current"),
    ]
    # Returning to P8-001 after P8-002 was current is a context switch, even in the same conversation.
    assert seen[2]["context_switch"] == 1
    assert (unassigned["task_id"], unassigned["attribution"]) == (None, "none")


def test_32_concurrent_streams_are_all_recorded(proxy, upstream):
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_cache_read")
    upstream.routes[MESSAGES].delay = 0.005
    client = anthropic_client(proxy)
    ids = []

    def one():
        with client.messages.stream(**MESSAGES_ARGS) as stream:
            stream.get_final_message()
            ids.append(stream.response.headers["x-meter-interaction-id"])

    assert run_concurrently(one, 32) == []
    assert len(set(ids)) == 32
    stored = [row(proxy, i) for i in ids]
    assert all((r["input_total"], r["cache_read"], r["output_total"]) == (1169, 1165, 221) for r in stored)


def test_api_keys_are_never_stored(proxy, upstream):
    upstream.routes["/v1beta/models/gemini-2.5-flash:generateContent"] = json_reply("gemini/nonstream_basic")
    response = httpx.post(
        f"{proxy.origin}/fake/v1beta/models/gemini-2.5-flash:generateContent?key={API_KEY}",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": API_KEY, "authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY},
    )
    stored = row(proxy, response.headers["x-meter-interaction-id"])
    assert stored["endpoint"] == "/v1beta/models/gemini-2.5-flash:generateContent?key=redacted"
    assert (stored["input_total"], stored["output_total"], stored["model"]) == (5, 5, "gemini-1.5-flash-002")
    with open(proxy.db_path, "rb") as handle:
        assert API_KEY.encode() not in handle.read()


def test_phase_report_over_calls_metered_by_the_proxy(proxy, upstream):
    from taskmeter.analytics.formats import phase_markdown
    from taskmeter.analytics.reports import phase_report
    from taskmeter.store import interactions

    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_cached_tokens")
    client = openai_client(proxy, "/t/P9-001")
    ids = [client.chat.completions.with_raw_response.create(**CHAT_ARGS).headers["x-meter-interaction-id"] for _ in range(3)]
    for interaction_id in ids:
        row(proxy, interaction_id)
    db = connection.connect(proxy.db_path)
    try:
        interactions.flag(db, ids[0], "invented API")
        report = phase_report(db, "P9")
    finally:
        db.close()
    assert report["ai_interactions_total"] == 3 and report["hallucination_count_total"] == 1
    assert report["total_tokens_used"] == 3 * 1502
    assert report["tokens"]["cache_read"] == 3 * 1024
    assert report["rework_tokens"] == 2 * 1502  # the two calls after the flagged one, same conversation
    assert report["cost_usd"] > 0
    assert "TOTAL_TOKENS_USED:            4,506 tokens" in phase_markdown(report)


def test_google_genai_sdk_through_the_gemini_base_url(proxy, upstream, monkeypatch):
    from google import genai

    upstream.routes["/v1beta/models/gemini-2.5-flash:streamGenerateContent"] = Scenario(
        body=FIXTURE["gemini/stream_sse_thoughts"].body, content_type="text/event-stream", chunk_size=120, delay=0.002
    )
    upstream.routes["/v1beta/models/gemini-3.5-flash:generateContent"] = json_reply("gemini/nonstream_cached_thoughts")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"{proxy.origin}/gemini")  # what `meter env` exports
    client = genai.Client(api_key=API_KEY)
    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert text
    answer = client.models.generate_content(model="gemini-3.5-flash", contents="hi")
    assert answer.usage_metadata.cached_content_token_count == 92
    deadline = time.monotonic() + 10
    while len(stored := [r for r in proxy.rows(wait_for=0) if r["protocol"] == "gemini" and r["provider"] == "gemini"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    streamed, plain = sorted(stored[-2:], key=lambda r: r["streamed"], reverse=True)
    assert (streamed["input_total"], streamed["output_total"], streamed["reasoning"], streamed["streamed"]) == (18, 115, 35, 1)
    assert (plain["input_total"], plain["cache_read"], plain["output_total"], plain["reasoning"]) == (341, 92, 509, 499)
    assert API_KEY not in (streamed["endpoint"] + plain["endpoint"])


def test_the_live_view_prints_a_line_per_call_within_a_second(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_cached_tokens")
    raw = openai_client(proxy, "/t/P9-050").chat.completions.with_raw_response.create(**CHAT_ARGS)
    answered = time.monotonic()
    interaction_id = raw.headers["x-meter-interaction-id"]
    deadline = answered + 5
    while not (lines := [(at, line) for at, line in proxy.live_view if interaction_id in line]) and time.monotonic() < deadline:
        time.sleep(0.01)
    ((printed_at, line),) = lines
    assert printed_at - answered < 1.0
    assert "P9-050" in line and "gpt-4o-mini" in line and "200" in line
    assert "in 1,149 (cached 1,024, written 0)  out 353" in line and "$0.0" in line
    failed = httpx.post(f"{proxy.origin}/down/v1/chat/completions", json=CHAT_ARGS).headers["x-meter-interaction-id"]
    deadline = time.monotonic() + 5
    while not (lines := [line for _, line in proxy.live_view if failed in line]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "502 failed" in lines[0] and "connect call failed" in lines[0].lower()  # upstream errors show too


def test_log_follow_shows_each_new_call_from_another_terminal(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_toolcall")
    earlier = openai_client(proxy, "/t/P9-050").chat.completions.with_raw_response.create(**CHAT_ARGS)
    earlier_id = earlier.headers["x-meter-interaction-id"]
    eventually(lambda: any(row["id"] == earlier_id for row in proxy.rows(wait_for=0)))  # stored, whatever ran before
    follower = subprocess.Popen(
        [str(VENV_BIN / "meter"), "log", "--follow", "-n", "1", "--db", str(proxy.db_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert earlier_id in follower.stdout.readline()  # the latest call so far
        raw = openai_client(proxy, "/t/P9-051").chat.completions.with_raw_response.create(**CHAT_ARGS)
        line = follower.stdout.readline()
        assert raw.headers["x-meter-interaction-id"] in line and "P9-051" in line and "in 92  out 17" in line
    finally:
        follower.terminate()
        follower.wait(10)


WEATHER_TOOL = {"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}


def test_show_tells_what_an_anthropic_tool_use_turn_said(proxy, upstream):
    upstream.routes[MESSAGES] = sse("anthropic/messages_stream_tool_use")
    messages = [
        {"role": "user", "content": f"Is it raining in Paris? My key is {API_KEY}-and-more-of-it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C,\ndry"},
                {"type": "text", "text": "<system-reminder>the todo list is empty</system-reminder>"},
            ],
        },
    ]
    with anthropic_client(proxy).messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        stream.get_final_message()
        interaction_id = stream.response.headers["x-meter-interaction-id"]
    row(proxy, interaction_id)
    shown = json.loads(meter(proxy, "show", interaction_id, "--json").stdout)
    # The tool result travelled as a user turn, but the typed message is the first one.
    assert shown["text"]["prompt"] == "Is it raining in Paris? My key is [redacted]"
    assert shown["text"]["steps"] == ['tool call weather {"city": "Paris"}', "tool result 18°C, dry"]
    assert shown["text"]["response"] == 'tool call weather {"latitude": "52.5200", "longitude": "13.4050"}'
    assert shown["interaction_id"] == interaction_id and shown["tokens"]["input_total"] == 633
    text = meter(proxy, "show", interaction_id[:8]).stdout
    assert "Usage source: reported: stated by the provider" in text
    assert text.index("--- last message typed ---") < text.index("--- since then ---") < text.index("--- response ---")
    assert "tool result 18°C, dry" in text


def test_show_and_flag_an_openai_call_with_a_tool_result(proxy, upstream):
    upstream.routes[CHAT] = json_reply("openai/chat_nonstream_toolcall")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "How many people live in Crumpet?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_city", "arguments": '{"city":"Crumpet"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Crumpet is a country, not a city"},
    ]  # fmt: skip
    meter(proxy, "set-task", "P9-070")
    raw = openai_client(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    interaction_id = raw.headers["x-meter-interaction-id"]
    row(proxy, interaction_id)
    shown = json.loads(meter(proxy, "show", "last", "--json").stdout)
    assert shown["interaction_id"] == interaction_id and shown["task_id"] == "P9-070"
    assert shown["text"] == {
        "prompt": "How many people live in Crumpet?",
        "steps": ['tool call lookup_city {"city":"Crumpet"}', "tool result Crumpet is a country, not a city"],
        "response": 'tool call lookup_population {"country":"Crumpet"}',
    }
    flagged = meter(proxy, "flag", "last", "--note", "invented a country")
    assert flagged.returncode == 0, flagged.stderr
    first, details, response = flagged.stdout.splitlines()
    assert first == f"Flagged {interaction_id} as a hallucination:"
    assert "P9-070" in details and "gpt-4o-mini-2024-07-18" in details and "109 tokens" in details
    assert response.strip() == 'tool call lookup_population {"country":"Crumpet"}'
    purged = meter(proxy, "purge")
    assert purged.returncode == 0 and "usage is kept" in purged.stdout
    after = json.loads(meter(proxy, "show", interaction_id, "--json").stdout)
    assert after["text"] is None and after["tokens"]["total"] == 109 and after["flagged"]
    meter(proxy, "set-task", "--none")


def test_statusline_knows_whether_a_claude_code_session_is_metered(proxy, upstream, tmp_path):
    upstream.routes[MESSAGES] = json_reply("anthropic/messages_nonstream_cache")
    meter(proxy, "set-task", "P9-080", "--estimate", "2h")
    client = anthropic_client(proxy)
    with_header = client.messages.with_raw_response.create(**MESSAGES_ARGS, extra_headers={"x-claude-code-session-id": "cc-1"})
    in_metadata = client.messages.with_raw_response.create(
        **MESSAGES_ARGS, metadata={"user_id": json.dumps({"session_id": "cc-2"})}
    )
    for raw in (with_header, in_metadata):
        row(proxy, raw.headers["x-meter-interaction-id"])

    def statusline(db_args: list[str], claude: dict | None) -> str:
        command = [str(VENV_BIN / "meter"), "statusline", *db_args]
        stdin = json.dumps(claude) if claude is not None else ""
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stderr == ""
        return result.stdout.strip()

    up = ["--db", str(proxy.db_path)]
    for session in ("cc-1", "cc-2"):
        line = statusline(up, {"session_id": session, "model": {"display_name": "Sonnet"}, "workspace": {"current_dir": "/w"}})
        assert line.startswith("P9-080 0m/2h00m · 3.4k tok · $")  # two calls of 1,703 and "NOT METERED" not in line
    assert statusline(up, {"session_id": "cc-unseen"}).startswith("NOT METERED · P9-080")
    assert "NOT METERED" not in statusline(up, None)  # no Claude Code: a recording proxy is enough
    down = tmp_path / "no-proxy.db"
    subprocess.run([str(VENV_BIN / "meter"), "set-task", "P9-081", "--db", str(down)], check=True, capture_output=True)
    assert statusline(["--db", str(down)], None).startswith("NOT METERED · P9-081 0m")
    meter(proxy, "set-task", "--none")
