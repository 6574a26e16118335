"""Latency (issue 24): the time to the first token and the whole time of each call,
stored since the start (`first_byte_at`, `ended_at`), show in `meter log` and `meter
show`, and `meter report models` gives each model's p50 and p95 of both. Through a
real `meter proxy`, the official SDKs and a loopback upstream that paces its stream."""

import math
from datetime import datetime

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import meter, meter_json, proxy_in_front_of

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
STREAM = FIXTURE["anthropic/messages_stream_cache_read"]
CHAT = FIXTURE["openai/chat_nonstream_cached_tokens"]


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def proxy(tmp_path, upstream):
    running = proxy_in_front_of(tmp_path, upstream.port)
    yield running
    running.stop()


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(percent / 100 * len(ordered)) - 1]


def test_time_to_first_token_and_total_time_in_log_show_and_report_models(proxy, upstream):
    client = anthropic.Anthropic(base_url=f"{proxy.origin}/anthropic", api_key="sk-ant-test", max_retries=0)
    # The stream's first events come at once, the rest paced: its first token long before its end.
    for delay in (0.02, 0.03, 0.04):
        upstream.routes["/v1/messages"] = Scenario(
            body=STREAM.body, content_type=STREAM.content_type, chunk_size=len(STREAM.body) // 20, delay=delay
        )
        with client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, stream=True, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _ in stream:
                pass
    upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
    chat = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
    chat.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    rows = proxy.rows(wait_for=4)
    assert len(rows) == len(upstream.received) == 4  # every call stored once
    streamed = [row for row in rows if row["streamed"]]
    assert len(streamed) == 3
    for row in streamed:
        first, total = _seconds(row["started_at"], row["first_byte_at"]), _seconds(row["started_at"], row["ended_at"])
        assert first < total - 0.3, (first, total)  # 19 paced chunks after the first

    logged = {call["interaction_id"]: call for call in meter_json(proxy, "log")}
    for row in rows:
        call = logged[row["id"]]
        assert call["first_token_seconds"] == pytest.approx(_seconds(row["started_at"], row["first_byte_at"]), abs=1e-6)
        assert call["total_seconds"] == pytest.approx(_seconds(row["started_at"], row["ended_at"]), abs=1e-6)
    piped = meter(proxy, "log", "--no-preview", check=True).stdout.splitlines()
    header = piped[0].split("\t")
    newest = dict(zip(header, piped[1].split("\t"), strict=True))
    assert newest["1st tok"].endswith("s") and newest["Time"].endswith("s")

    one = streamed[-1]
    shown = meter(proxy, "show", one["id"], check=True).stdout
    first, total = logged[one["id"]]["first_token_seconds"], logged[one["id"]]["total_seconds"]
    assert f"Latency:      first token after {first:.2f}s, done after {total:.2f}s" in shown

    report = meter_json(proxy, "report", "models")
    latency = {model["model"]: model["latency"] for model in report["models"]}
    model = streamed[0]["model"]
    firsts = [_seconds(row["started_at"], row["first_byte_at"]) for row in streamed]
    totals = [_seconds(row["started_at"], row["ended_at"]) for row in streamed]
    assert latency[model]["timed_calls"] == 3
    assert latency[model]["first_token_p50_seconds"] == pytest.approx(_nearest_rank(firsts, 50), abs=1e-6)
    assert latency[model]["first_token_p95_seconds"] == pytest.approx(_nearest_rank(firsts, 95), abs=1e-6)
    assert latency[model]["total_p50_seconds"] == pytest.approx(_nearest_rank(totals, 50), abs=1e-6)
    assert latency[model]["total_p95_seconds"] == pytest.approx(max(totals), abs=1e-6)
    assert latency["gpt-4o-mini-2024-07-18"]["timed_calls"] == 1  # the model the answer names
    notes = meter(proxy, "report", "models", check=True).stderr  # piped: the latency lines go beside the table
    assert notes.startswith("Latency p50 / p95: first token; whole answer\n")
    assert f"  {model}" in notes and "(3 calls)" in notes and "(1 call)" in notes
    csv_lines = meter(proxy, "report", "models", "--format", "csv", check=True).stdout.splitlines()
    assert csv_lines[0].endswith(",first_token_p50_seconds,first_token_p95_seconds,total_p50_seconds,total_p95_seconds")
