"""Bad numbers: usage values that cannot be real, from any protocol, are stored as
not reported (NULL) with a note saying what came, and are never priced; a
provider's own cost that cannot be real is not trusted. Unit level through the
recorder's Finalizer, and end to end through a real `meter proxy` with a `$5`
block budget."""

import json
import math
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmeter.handover.call import CapturedCall
from taskmeter.protocols import stream_usage
from taskmeter.protocols.stream_usage import UsageChunkStripper, include_usage_splice
from taskmeter.recorder.finalize import Finalizer
from taskmeter.store.interactions import (
    MAX_COST_PER_CALL_USD,
    MAX_TOKENS_PER_CALL,
    TOKEN_COLUMNS,
    Interaction,
    shown,
    storable,
)
from tests.fake_upstream import FakeUpstream, Scenario
from tests.proxy_harness import RunningProxy, write_config


def _sse(*events: dict) -> str:
    return "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)


# Per protocol: how a response states usage, as a function of its usage fields
# (each field's value goes into the body as it is, whatever JSON it is), the
# plausible values of those fields, what our columns are for them, and where the
# call goes. `key` is the field a test spoils; `spoils` the columns it leaves unknown.
PROTOCOLS = {
    "openai_chat": dict(
        provider="openai",
        endpoint="/v1/chat/completions",
        request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        body=lambda u: json.dumps(
            {
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [],
                "usage": {
                    "prompt_tokens": u["prompt_tokens"],
                    "completion_tokens": u["completion_tokens"],
                    "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                    "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
                },
            }
        ),
        fields={"prompt_tokens": 120, "completion_tokens": 30, "cached_tokens": 20, "reasoning_tokens": 10},
        columns=dict(input_total=120, cache_read=20, cache_write=0, output_total=30, reasoning=10),
        key="prompt_tokens",
        spoils={"input_total"},
        priced=True,
    ),
    "openai_responses": dict(
        provider="openai",
        endpoint="/v1/responses",
        request={"model": "gpt-4o-mini", "input": "hi"},
        body=lambda u: json.dumps(
            {
                "object": "response",
                "status": "completed",
                "model": "gpt-4o-mini",
                "output": [],
                "usage": {
                    "input_tokens": u["input_tokens"],
                    "output_tokens": u["output_tokens"],
                    "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                    "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
                },
            }
        ),
        fields={"input_tokens": 120, "output_tokens": 30, "cached_tokens": 20, "reasoning_tokens": 10},
        columns=dict(input_total=120, cache_read=20, cache_write=0, output_total=30, reasoning=10),
        key="output_tokens",
        spoils={"output_total"},
        priced=True,
    ),
    "anthropic": dict(
        provider="anthropic",
        endpoint="/v1/messages",
        request={"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
        body=lambda u: json.dumps(
            {
                "type": "message",
                "model": "claude-sonnet-4-5",
                "content": [],
                "usage": {
                    "input_tokens": u["input_tokens"],
                    "cache_read_input_tokens": u["cache_read_input_tokens"],
                    "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                    "output_tokens": u["output_tokens"],
                },
            }
        ),
        fields={"input_tokens": 100, "cache_read_input_tokens": 15, "cache_creation_input_tokens": 5, "output_tokens": 30},
        columns=dict(input_total=120, cache_read=15, cache_write=5, output_total=30, reasoning=None),
        # A cache read that cannot be real leaves the inclusive input unknown too.
        key="cache_read_input_tokens",
        spoils={"cache_read", "input_total"},
        priced=True,
    ),
    "anthropic_stream": dict(
        provider="anthropic",
        endpoint="/v1/messages",
        content_type="text/event-stream",
        request={"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": []},
        # message_start's usage, overwritten field by field by the cumulative message_delta.
        body=lambda u: _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "claude-sonnet-4-5",
                    "usage": {"input_tokens": 3, "cache_read_input_tokens": 0, "output_tokens": 1},
                },
            },
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {
                    "input_tokens": u["input_tokens"],
                    "cache_read_input_tokens": u["cache_read_input_tokens"],
                    "output_tokens": u["output_tokens"],
                },
            },
            {"type": "message_stop"},
        ),
        fields={"input_tokens": 100, "cache_read_input_tokens": 20, "output_tokens": 30},
        columns=dict(input_total=120, cache_read=20, cache_write=0, output_total=30, reasoning=None),
        key="output_tokens",
        spoils={"output_total"},
        priced=True,
    ),
    "gemini": dict(
        provider="gemini",
        endpoint="/v1beta/models/gemini-2.0-flash:generateContent",
        request={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        body=lambda u: json.dumps(
            {
                "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
                "modelVersion": "gemini-2.0-flash",
                "usageMetadata": {
                    "promptTokenCount": u["promptTokenCount"],
                    "cachedContentTokenCount": u["cachedContentTokenCount"],
                    "candidatesTokenCount": u["candidatesTokenCount"],
                    "thoughtsTokenCount": u["thoughtsTokenCount"],
                },
            }
        ),
        fields={"promptTokenCount": 120, "cachedContentTokenCount": 20, "candidatesTokenCount": 20, "thoughtsTokenCount": 10},
        columns=dict(input_total=120, cache_read=20, cache_write=0, output_total=30, reasoning=10),
        # Thoughts are billed outside the candidates: output is unknown without them.
        key="thoughtsTokenCount",
        spoils={"reasoning", "output_total"},
        priced=True,
    ),
    "ollama": dict(
        provider="ollama",
        endpoint="/api/chat",
        content_type="application/x-ndjson",
        request={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        body=lambda u: (
            json.dumps(
                {
                    "model": "llama3.2",
                    "message": {"role": "assistant", "content": "hi"},
                    "done": True,
                    "prompt_eval_count": u["prompt_eval_count"],
                    "eval_count": u["eval_count"],
                }
            )
            + "\n"
        ),
        fields={"prompt_eval_count": 120, "eval_count": 30},
        columns=dict(input_total=120, cache_read=None, cache_write=0, output_total=30, reasoning=None),
        key="eval_count",
        spoils={"output_total"},
        priced=False,
    ),
    "bedrock": dict(
        provider="bedrock",
        endpoint="/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
        request={"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        body=lambda u: json.dumps(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                "stopReason": "end_turn",
                "usage": {
                    "inputTokens": u["inputTokens"],
                    "cacheReadInputTokens": u["cacheReadInputTokens"],
                    "outputTokens": u["outputTokens"],
                },
            }
        ),
        fields={"inputTokens": 100, "cacheReadInputTokens": 20, "outputTokens": 30},
        columns=dict(input_total=120, cache_read=20, cache_write=0, output_total=30, reasoning=None),
        key="inputTokens",
        spoils={"input_total"},
        priced=False,  # the model is in the path, not the body
    ),
}

# Values a usage field can carry that no call can really have used.
IMPLAUSIBLE = {
    "2^63": 2**63,
    "2^64": 2**64,
    "past 10^9": MAX_TOKENS_PER_CALL + 1,
    "negative": -5,
    "numeric string": "12",
    "string": "abc",
    "fraction": 12.5,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "1e300": 1e300,
    "true": True,
    "false": False,
    "object": {"tokens": 12},
    "array": [12],
}


def _protocol(name: str) -> str:
    return name.removesuffix("_stream")


def _call(name: str, fields: dict) -> CapturedCall:
    spec = PROTOCOLS[name]
    call = CapturedCall(
        id="000000000001",
        started=time.time(),
        provider=spec["provider"],
        protocol=_protocol(name),
        operation="generate",
        method="POST",
        endpoint=spec["endpoint"],
        status=200,
        content_type=spec.get("content_type", "application/json"),
        outcome="complete",
        request_body=json.dumps(spec["request"]).encode(),
    )
    call.response_body += spec["body"](fields).encode()
    return call


def _finish(name: str, **spoiled) -> Interaction:
    return Finalizer().finish(_call(name, {**PROTOCOLS[name]["fields"], **spoiled})).interaction


@pytest.mark.parametrize("name", PROTOCOLS)
def test_plausible_usage_is_stored_as_stated_and_priced(name):
    row = _finish(name)
    assert {column: getattr(row, column) for column in TOKEN_COLUMNS} == PROTOCOLS[name]["columns"]
    assert row.usage_source == "reported" and row.notes is None
    if PROTOCOLS[name]["priced"]:
        assert 0 < row.cost_usd < 0.01 and row.price_source.startswith("genai-prices")


@pytest.mark.parametrize("value", IMPLAUSIBLE.values(), ids=IMPLAUSIBLE.keys())
@pytest.mark.parametrize("name", PROTOCOLS)
def test_a_usage_field_that_cannot_be_real_is_not_reported_noted_and_not_priced(name, value):
    spec = PROTOCOLS[name]
    row = _finish(name, **{spec["key"]: value})
    expected = {column: None if column in spec["spoils"] else count for column, count in spec["columns"].items()}
    assert {column: getattr(row, column) for column in TOKEN_COLUMNS} == expected
    assert f"{spec['key']}: {shown(value)} is not a plausible count" in row.notes
    assert row.cost_usd is None and row.price_source == "not priced: a token count cannot be real (see notes)"
    assert storable(row).notes == row.notes  # the store found nothing more to change


def test_the_2_63_usage_of_the_drill_is_not_priced_at_55_trillion_dollars():
    row = _finish("openai_chat", prompt_tokens=9223372036854775808, completion_tokens=1)
    assert row.input_total is None and row.output_total == 1 and row.cost_usd is None
    assert row.notes == "prompt_tokens: 9223372036854775808 is not a plausible count"


def test_a_sum_of_plausible_parts_past_the_limit_is_not_real_either():
    row = _finish("anthropic", input_tokens=MAX_TOKENS_PER_CALL, cache_read_input_tokens=MAX_TOKENS_PER_CALL)
    assert row.input_total is None and row.cache_read == MAX_TOKENS_PER_CALL and row.cost_usd is None
    assert f"input_total: the sum {2 * MAX_TOKENS_PER_CALL + 5} is not a plausible count" in row.notes


def test_a_whole_float_is_a_count():
    row = _finish("openai_chat", prompt_tokens=120.0)
    assert row.input_total == 120 and row.notes is None and row.cost_usd > 0


def _openrouter(cost) -> Interaction:
    call = _call("openai_chat", PROTOCOLS["openai_chat"]["fields"])
    call.provider = "openrouter"
    body = json.loads(call.response_body)
    body["model"], body["usage"]["cost"] = "openai/gpt-4o-mini", cost
    call.response_body = bytearray(json.dumps(body).encode())
    return Finalizer().finish(call).interaction


def test_a_plausible_reported_cost_wins():
    row = _openrouter(0.0021)
    assert (row.cost_usd, row.price_source, row.notes) == (0.0021, "reported by openrouter", None)


@pytest.mark.parametrize("cost", [-0.5, math.nan, math.inf, MAX_COST_PER_CALL_USD * 10, "0.5", True, {"usd": 1}])
def test_a_reported_cost_that_cannot_be_real_is_not_trusted(cost):
    row = _openrouter(cost)
    assert row.price_source.startswith("genai-prices") and 0 < row.cost_usd < 0.01  # priced from the tokens
    assert row.input_total == 120
    assert f"cost: {shown(cost)} is not a plausible cost of one call: not trusted" in row.notes


def test_the_store_applies_the_same_rule_and_nulls_the_price_of_a_count_it_nulls():
    row = Interaction(id="000000000001", started_at="2026-01-01T00:00:00.000000Z", input_total=2 * MAX_TOKENS_PER_CALL)
    row.output_total, row.cost_usd = 10, 3.0
    storable(row)
    assert (row.input_total, row.output_total, row.cost_usd) == (None, 10, None)
    assert f"input_total {2 * MAX_TOKENS_PER_CALL} is not a plausible count" in row.notes
    assert "cost_usd 3.0 was computed from them" in row.notes
    row = Interaction(id="000000000002", started_at="2026-01-01T00:00:00.000000Z", cost_usd=-1.0)
    assert storable(row).cost_usd is None and "not a plausible cost" in row.notes


# Any JSON value, nested or not, in every usage field of every protocol.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_json_value_in_a_usage_field_gives_a_count_or_a_cost_out_of_range(data):
    name = data.draw(st.sampled_from(sorted(PROTOCOLS)))
    fields = {key: data.draw(st.one_of(st.just(plausible), JSON_VALUES)) for key, plausible in PROTOCOLS[name]["fields"].items()}
    row = Finalizer().finish(_call(name, fields)).interaction
    for column in TOKEN_COLUMNS:
        value = getattr(row, column)
        assert value is None or (type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL), (column, value)
    assert row.cost_usd is None or (type(row.cost_usd) is float and 0 <= row.cost_usd <= MAX_COST_PER_CALL_USD)
    stored = storable(Interaction(**{c: getattr(row, c) for c in ("id", "started_at", *TOKEN_COLUMNS, "cost_usd")}))
    assert stored.notes is None  # nothing for the store to clamp: the rule was applied before pricing


@settings(max_examples=200, deadline=None)
@given(cost=JSON_VALUES)
def test_no_reported_cost_is_stored_out_of_range(cost):
    row = _openrouter(cost)
    assert row.cost_usd is None or (type(row.cost_usd) is float and 0 <= row.cost_usd <= MAX_COST_PER_CALL_USD)


# ---------------------------------------------------------------- end to end

CHAT = "/v1/chat/completions"
TASK = "BAD-001"


def _usage_body(prompt_tokens: str) -> bytes:
    # gpt-4o: 100,000 tokens in and 10,000 out are $0.35, so a $5 budget takes 14 such calls.
    usage = f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":10000}}'
    return f'{{"object":"chat.completion","model":"gpt-4o","choices":[],"usage":{usage}}}'.encode()


def _usd_remaining(response: httpx.Response) -> float:
    header = response.headers["x-meter-budget"]
    return float(header.split("usd-remaining=")[1].split(";")[0])


@pytest.mark.e2e
def test_an_absurd_usage_through_the_proxy_neither_spends_a_5_dollar_block_budget_nor_poisons_the_report(
    tmp_path, meter, monkeypatch
):
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(body=_usage_body("100000"))
        upstream.routes["/absurd" + CHAT] = Scenario(body=_usage_body("9223372036854775808"))
        origin = f"http://127.0.0.1:{upstream.port}"
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "absurd": f"{origin}/absurd"})
        proxy = RunningProxy(config, tmp_path / "meter.db")
        monkeypatch.setenv("METER_DB", str(proxy.db_path))
        try:
            assert meter("set-task", TASK).code == 0
            assert meter("task", TASK, "--budget", "$5", "--on-exceeded", "block").code == 0
            with httpx.Client(timeout=30) as client:

                def post(upstream_name: str) -> httpx.Response:
                    return client.post(f"{proxy.origin}/t/{TASK}/{upstream_name}{CHAT}", json={"model": "gpt-4o", "messages": []})

                first, absurd = post("openai"), post("absurd")
                assert (first.status_code, absurd.status_code) == (200, 200)
                assert len(proxy.rows(wait_for=2)) == 2
                # Calls after the absurd one go on, until the proxy's budget state has
                # counted a call stored after it: had it been priced, they would be refused.
                later = []
                deadline = time.monotonic() + 20
                while not later or _usd_remaining(later[-1]) > 5 - 2 * 0.35 + 1e-6:
                    assert time.monotonic() < deadline, [r.headers.get("x-meter-budget") for r in later]
                    later.append(post("openai"))
                    assert later[-1].status_code == 200, later[-1].text
                    proxy.rows(wait_for=2 + len(later))
            ids = [r.headers["x-meter-interaction-id"] for r in (first, absurd, *later)]
            rows = {row["id"]: row for row in proxy.rows(wait_for=len(ids))}
            report = json.loads(meter("report", "--json").out)
            budget = json.loads(meter("budget", "--json").out)
        finally:
            assert proxy.stop() == 0
    assert sorted(rows) == sorted(ids)  # every call stored exactly once
    bad = rows[absurd.headers["x-meter-interaction-id"]]
    assert (bad["input_total"], bad["output_total"], bad["cost_usd"]) == (None, 10000, None)
    assert bad["notes"] == "prompt_tokens: 9223372036854775808 is not a plausible count"
    assert bad["price_source"] == "not priced: a token count cannot be real (see notes)"
    normal = [rows[i] for i in ids if i != bad["id"]]
    assert all(row["cost_usd"] == pytest.approx(0.35) and row["input_total"] == 100000 for row in normal)
    (phase,) = report["phases"]
    assert phase["cost_usd"] == pytest.approx(0.35 * len(normal))
    assert phase["total_tokens_used"] == 100000 * len(normal) + 10000 * len(ids)  # the absurd call's output counts
    (task_budget,) = budget
    assert task_budget["usd_used"] == pytest.approx(0.35 * len(normal)) and task_budget["on_exceeded"] == "block"
    assert not task_budget["exceeded"]


# ---------------------------------------------------------------- big bodies: the request scan


def _decided_by_parsing(body: bytes) -> dict | None:
    """What the meter must send, by the rule read off the parsed request: the
    request with include_usage added, or None when it goes as it came. A request
    that never spells `"stream"` plainly (only with escapes) is not looked into."""
    if b'"stream"' not in body:
        return None
    try:
        data = json.loads(body.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("stream") is not True:
        return None
    options = data.get("stream_options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict) or "include_usage" in options:
        return None
    return {**data, "stream_options": {**options, "include_usage": True}}


def _scan(body: bytes) -> tuple[bytes | None, int]:
    """The scan's result and how many times it paused."""
    scan, pauses = include_usage_splice(body), 0
    try:
        while True:
            next(scan)
            pauses += 1
    except StopIteration as finished:
        return finished.value, pauses


KEYS = st.sampled_from(["stream", "stream_options", "model", "messages", "str\\u0065am", "include_usage", "n"])
REQUEST_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\{}[]:, \n\u00e9', max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)


@st.composite
def requests(draw) -> bytes:
    """A JSON object as clients write it: any members, `stream` and
    `stream_options` among them or not, in any order, with any spacing."""
    members = draw(st.lists(st.tuples(KEYS, REQUEST_VALUES), max_size=6))
    if draw(st.booleans()):
        members.append(("stream", True))
    if draw(st.booleans()):
        members.append(("stream_options", draw(st.sampled_from([None, {}, {"include_usage": False}, {"x": 1}, 7]))))
    members = draw(st.permutations(members))
    space = draw(st.sampled_from(["", " ", "\n  "]))
    parts = [f"{space}{json.dumps(key).replace('\\\\u', '\\u')}{space}:{space}{json.dumps(value)}" for key, value in members]
    return ("{" + ",".join(parts) + space + "}").encode()


@settings(max_examples=400, deadline=None)
@given(body=requests(), slice_bytes=st.sampled_from([1, 7, 64, 256 * 1024]))
def test_the_scan_decides_as_parsing_would_and_splices_nothing_else(body, slice_bytes):
    with pytest.MonkeyPatch.context() as patch:  # pauses everywhere a large body could pause
        patch.setattr(stream_usage, "SLICE_BYTES", slice_bytes)
        patch.setattr(stream_usage, "SLICE_STEPS", 3)
        spliced, _ = _scan(body)
    expected = _decided_by_parsing(body)
    if expected is None:
        assert spliced is None
    else:
        assert json.loads(spliced) == expected
        assert len(spliced) > len(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'"stream"', b'{"stream": true', b'{"stream": true}}', b'{"a": "unterminated, "stream": true}', b"{,}"],
)
def test_what_is_not_one_json_object_goes_as_it_came(body):
    assert _scan(body)[0] is None


def test_a_48_mb_request_is_scanned_in_many_short_slices():
    text = 'print("hello, world")  # a line of code\n' * (48 * 1024 * 1024 // 48)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": True}).encode()
    spliced, pauses = _scan(body)
    assert pauses >= len(body) // stream_usage.SLICE_BYTES
    assert spliced.startswith(b'{"stream_options":{"include_usage":true},"model"') and spliced.endswith(body[1:])


# ---------------------------------------------------------------- big bodies, end to end


def _sse_chat(*events: bytes) -> bytes:
    return b"".join(b"data: " + event + b"\n\n" for event in events) + b"data: [DONE]\n\n"


@pytest.mark.e2e
def test_a_48_mb_request_and_a_100_mb_stream_are_metered_exactly_beside_small_calls(tmp_path):
    line = 'print("hello, world")  # a line of code\n'
    text = line * (48 * 1024 * 1024 // 48)
    big_request = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": True}).encode()
    content = b'{"choices":[{"index":0,"delta":{"content":"' + b"x" * 900 + b'"}}]}'
    huge_body = _sse_chat(
        *[content] * (100 * 1024 * 1024 // (len(content) + 8)),
        b'{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":99999}}',
    )
    with FakeUpstream() as upstream:
        upstream.routes[CHAT] = Scenario(
            body=b'{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
        )
        upstream.routes["/big" + CHAT] = Scenario(
            body=_sse_chat(
                b'{"choices":[{"index":0,"delta":{"content":"ok"}}]}',
                b'{"choices":[],"usage":{"prompt_tokens":12582912,"completion_tokens":2}}',
            ),
            content_type="text/event-stream",
            chunk_size=64,
        )
        upstream.routes["/huge" + CHAT] = Scenario(body=huge_body, content_type="text/event-stream", chunk_size=65536)
        origin = f"http://127.0.0.1:{upstream.port}"
        config = write_config(
            tmp_path / "config.toml",
            tmp_path / "ca",
            {"openai": origin, "big": f"{origin}/big", "huge": f"{origin}/huge"},
            max_parsed_body_mb=8,
        )
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            large: dict[str, httpx.Response | int] = {}

            def send_big_request():
                large["request"] = httpx.post(f"{proxy.origin}/big{CHAT}", content=big_request, timeout=120)

            def read_huge_stream():
                with httpx.stream(
                    "POST",
                    f"{proxy.origin}/huge{CHAT}",
                    json={"model": "gpt-4o-mini", "stream": True, "messages": []},
                    timeout=120,
                ) as response:
                    large["stream"] = response
                    large["stream_bytes"] = sum(len(chunk) for chunk in response.iter_raw())

            workers = [threading.Thread(target=send_big_request), threading.Thread(target=read_huge_stream)]
            for worker in workers:
                worker.start()
            small = []
            with httpx.Client(timeout=30) as client:
                while any(worker.is_alive() for worker in workers) or len(small) < 3:
                    reply = client.post(f"{proxy.origin}/openai{CHAT}", json={"model": "gpt-4o-mini", "messages": []})
                    small.append(reply.headers["x-meter-interaction-id"])
            for worker in workers:
                worker.join()
            big_id = large["request"].headers["x-meter-interaction-id"]
            huge_id = large["stream"].headers["x-meter-interaction-id"]
            rows = {row["id"]: row for row in proxy.rows(wait_for=len(small) + 2, timeout=120)}
        finally:
            assert proxy.stop() == 0
        sent_upstream = next(r.body for r in upstream.received if r.path.startswith("/big"))
    # The request went upstream as the client sent it, asking for usage; the client got no usage event.
    assert sent_upstream == b'{"stream_options":{"include_usage":true},' + big_request[1:]
    assert b'"usage"' not in large["request"].content and large["request"].content.endswith(b"data: [DONE]\n\n")
    assert large["stream_bytes"] == len(huge_body) - len(
        b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":99999}}\n\n'
    )
    assert sorted(rows) == sorted([*small, big_id, huge_id])  # every call stored exactly once
    assert (rows[big_id]["input_total"], rows[big_id]["output_total"], rows[big_id]["usage_source"]) == (12582912, 2, "reported")
    assert rows[big_id]["model"] == "gpt-4o-mini"
    assert (rows[huge_id]["input_total"], rows[huge_id]["output_total"], rows[huge_id]["usage_source"]) == (11, 99999, "reported")
    assert all((rows[i]["input_total"], rows[i]["output_total"]) == (3, 4) for i in small)


# ---------------------------------------------------------------- big bodies: the response tee


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    line_end=st.sampled_from([b"\n", b"\r\n"]),
    texts=st.lists(st.text(alphabet='ab "[]\n{}', max_size=30), min_size=1, max_size=8),
)
def test_the_usage_event_is_removed_under_any_chunking_and_every_other_byte_passes(data, line_end, texts):
    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + line_end * 2

    events = [event({"choices": [{"delta": {"content": text}}]}) for text in texts]
    usage = event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    done = b"data: [DONE]" + line_end * 2
    body = b"".join(events) + usage + done
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(body) - 1), max_size=12)))
    stripper = UsageChunkStripper()
    out = b"".join(stripper.feed(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)) + stripper.flush()
    assert out == b"".join(events) + done
