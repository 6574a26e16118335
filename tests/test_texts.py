"""What the meter keeps of what a call said: the last typed message, tool steps a
line each, the response's text; per protocol, over the recorded responses, in
each store_bodies mode, capped, redacted, and pruned after retention_days."""

import json
import time

import pytest

from taskmeter.config.settings import load_settings
from taskmeter.errors import MeterError
from taskmeter.protocols.texts import request_turns
from taskmeter.recorder.finalize import Finalizer
from taskmeter.recorder.loop import RecorderLoop
from taskmeter.recorder.parse import BodyParser
from taskmeter.recorder.texts import TEXT_LIMIT, call_text
from taskmeter.store import connection, texts
from tests.fixtures import ALL
from tests.test_writer import _call

FIXTURE = {f.name: f for f in ALL}


def test_anthropic_tool_results_and_reminders_are_not_the_typed_prompt():
    request = {
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "fix the bug"}, {"type": "text", "text": "<system-reminder>x</system-reminder>"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Reading it."}, {"type": "tool_use", "name": "Read", "input": {"path": "a.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "def f():\n    pass"}]}]},
        ]
    }  # fmt: skip
    prompt, steps = request_turns("anthropic", request)
    assert prompt == "fix the bug"
    assert steps == ["assistant Reading it.", 'tool call Read {"path": "a.py"}', "tool result def f(): pass"]


def test_openai_chat_responses_gemini_bedrock_and_ollama_requests():
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "sum 2 and 3"}]},
                         {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": '{"a":2,"b":3}'}}]},
                         {"role": "tool", "content": "5"}]}  # fmt: skip
    assert request_turns("openai_chat", chat) == ("sum 2 and 3", ['tool call add {"a":2,"b":3}', "tool result 5"])
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                           {"type": "function_call", "name": "weather", "arguments": "{}"},
                           {"type": "function_call_output", "output": "sunny"}]}  # fmt: skip
    assert request_turns("openai_responses", responses) == ("weather?", ["tool call weather {}", "tool result sunny"])
    assert request_turns("openai_responses", {"input": "just text"}) == ("just text", [])
    gemini = {"contents": [{"role": "user", "parts": [{"text": "find it"}]},
                           {"role": "model", "parts": [{"functionCall": {"name": "search", "args": {"q": "it"}}}]},
                           {"role": "user", "parts": [{"functionResponse": {"name": "search", "response": {"hits": 1}}}]}]}  # fmt: skip
    assert request_turns("gemini", gemini) == ("find it", ['tool call search {"q": "it"}', 'tool result {"hits": 1}'])
    bedrock = {"messages": [{"role": "user", "content": [{"text": "list files"}]},
                            {"role": "assistant", "content": [{"toolUse": {"name": "ls", "input": {}}}]},
                            {"role": "user", "content": [{"toolResult": {"content": [{"text": "a.py"}]}}]}]}  # fmt: skip
    assert request_turns("bedrock", bedrock) == ("list files", ["tool call ls", "tool result a.py"])
    assert request_turns("ollama", {"prompt": "why is the sky blue"}) == ("why is the sky blue", [])
    assert request_turns("openai_chat", "not a request") == (None, [])


TOOL_CALLS = {
    "anthropic/messages_stream_tool_use": 'tool call weather {"latitude": "52.5200", "longitude": "13.4050"}',
    "openai/chat_nonstream_toolcall": 'tool call lookup_population {"country":"Crumpet"}',
    "openai/chat_stream_include_usage_toolcall": 'tool call multiply {"a":1231,"b":2331}',
}


@pytest.mark.parametrize("name, line", TOOL_CALLS.items())
def test_a_response_s_tool_calls_are_summarised_a_line_each(name, line):
    fixture = FIXTURE[name]
    parser = BodyParser(fixture.protocol, fixture.content_type)
    parser.feed(fixture.body)
    result = parser.close()
    said = call_text(fixture.protocol, fixture.request, result.answer, result.tool_calls)
    assert line in said.response.splitlines()


# Answered with no text at all: an error in the stream, or thinking cut by max_tokens.
SAYS_NOTHING = {
    "openai_responses/responses_stream_error_then_failed",
    "gemini/nonstream_max_tokens_thoughts_only",
    "openrouter/chat_stream_midstream_error_with_usage",
    "groq/chat_stream_error_event",
}


@pytest.mark.parametrize("fixture", [f for f in ALL if f.meta["status"] == 200 and f.protocol != "raw"], ids=lambda f: f.name)
def test_every_recorded_answer_yields_its_text(fixture):
    parser = BodyParser(fixture.protocol, fixture.content_type)
    parser.feed(fixture.body)
    result = parser.close()
    said = call_text(fixture.protocol, fixture.request, result.answer, result.tool_calls)
    if result.counted_tokens is None:
        assert bool(said.response) == (fixture.name not in SAYS_NOTHING)
    _, steps, _ = said.stored()
    assert steps is None or isinstance(json.loads(steps), list)


def test_texts_are_capped_and_redacted():
    secret = "sk-proj-Abc123Def456Ghi789Jkl0"
    prompt, _, response = call_text(
        "openai_chat", {"messages": [{"role": "user", "content": "x" * 100_000}]}, f"key {secret}", []
    ).stored()
    assert len(prompt) < TEXT_LIMIT + 100 and prompt.endswith("[… cut at 65,536 of 100,000 characters]")
    assert response == "key [redacted]"


def _stored(db_path) -> tuple[int, int, int]:
    db = connection.connect(db_path)
    try:
        return tuple(
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("interactions", "call_texts", "bodies")
        )
    finally:
        db.close()


@pytest.mark.parametrize("mode, expected", [("none", (1, 0, 0)), ("text", (1, 1, 0)), ("full", (1, 1, 1))])
def test_store_bodies_modes(db_path, mode, expected):
    loop = RecorderLoop(db_path, Finalizer(mode), proxy_id=None)
    loop.record([_call(1)])
    loop.finish()
    assert _stored(db_path) == expected


def test_the_recorder_prunes_text_past_retention_and_keeps_usage(db_path):
    loop = RecorderLoop(db_path, Finalizer("text"), proxy_id=None, retention_days=2)
    old = _call(1, started=time.time() - 3 * 86400)
    loop.record([old, _call(2)])
    assert _stored(db_path) == (2, 2, 0)
    loop.housekeeping()
    assert _stored(db_path) == (2, 1, 0)
    db = connection.connect(db_path)
    assert texts.of_call(db, old.id) is None and texts.of_call(db, "000000000002")["prompt"] == "hi"
    assert db.execute("SELECT input_total FROM interactions WHERE id = ?", (old.id,)).fetchone()[0] == 10
    db.close()
    loop.finish()


def test_store_bodies_takes_the_old_true_and_false(tmp_path):
    config = tmp_path / "config.toml"
    for written, mode in (("true", "full"), ("false", "none"), ('"text"', "text")):
        config.write_text(f"[proxy]\nstore_bodies = {written}\n")
        assert load_settings(config).proxy.store_bodies == mode
    config.write_text('[proxy]\nstore_bodies = "some"\n')
    with pytest.raises(MeterError, match="store_bodies"):
        load_settings(config)
