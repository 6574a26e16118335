"""Big bodies through a real `meter proxy`: what of them is kept, and what the
Guard reads of them (docs/proxy.md, docs/budgets.md). How long other calls wait
beside them is measured by `make bench`, not here."""

import json
import re
import time

import httpx
import openai
import pytest

from taskmeter.proxy.tee import TAIL_BYTES
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.guard_probe import EMBEDDINGS, Probe
from tests.proxy_harness import RunningProxy, write_config

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
MB = 1024 * 1024
LINE = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 900 + b'"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":99999}}\n\ndata: [DONE]\n\n'
STREAM = LINE * (10 * MB // len(LINE)) + USAGE


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        fake.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)  # 1,502 tokens
        fake.routes[EMBEDDINGS] = Scenario(body=b"{}")  # the probe's
        fake.routes["/long" + CHAT] = Scenario(body=STREAM, content_type="text/event-stream", chunk_size=65536)
        yield fake


def _proxy(tmp_path, upstream, extra: str = "", **proxy_settings) -> RunningProxy:
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(
        tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "long": f"{origin}/long"}, **proxy_settings
    )
    config.write_text(config.read_text() + extra)
    return RunningProxy(config, tmp_path / "meter.db")


def test_a_response_keeps_at_most_a_quarter_of_max_pending_mb_and_its_usage(tmp_path, upstream):
    # max_parsed_body_mb stays at its default (16): the hand-over's 8 MB bound the
    # part kept to 2 MB, so that the call is handed over, not spooled.
    proxy = _proxy(tmp_path, upstream, max_pending_mb=8)
    try:
        with httpx.Client() as client:
            response = client.post(f"{proxy.origin}/long{CHAT}", json={**CHAT_ARGS, "stream": True}, timeout=60)
        (row,) = proxy.rows(wait_for=1)
    finally:
        proxy.stop()
    assert response.status_code == 200 and len(response.content) == len(STREAM) - len(USAGE) + len(b"data: [DONE]\n\n")
    assert (row["input_total"], row["output_total"], row["usage_source"]) == (11, 99999, "reported")
    said = re.search(r"([\d,]+) bytes past the parse limit were not read", row["notes"] or "")
    assert said, row["notes"]
    skipped = int(said[1].replace(",", ""))
    # Kept: the first 2 MB, and a tail of 256 to 512 KB (trimmed in steps).
    assert len(STREAM) - 2 * MB - 2 * TAIL_BYTES <= skipped <= len(STREAM) - 2 * MB - TAIL_BYTES


def test_a_loop_block_reads_requests_of_up_to_2_mb(tmp_path, upstream, meter, monkeypatch):
    proxy = _proxy(tmp_path, upstream, '\n[alerts]\nloop_calls = 3\nloop_minutes = 5\non_loop = "block"\n')
    try:
        monkeypatch.setenv("METER_DB", str(proxy.db_path))
        probe = Probe(proxy, meter)
        client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test")
        for _ in range(3):
            client.chat.completions.create(**CHAT_ARGS)
        deadline = time.monotonic() + 10
        while not json.loads(meter("alerts", "--json").out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [alert["kind"] for alert in json.loads(meter("alerts", "--json").out)] == ["loop"]
        probe.proxy_knows()
        # The same conversation (its first messages), with a field that makes the request large.
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**CHAT_ARGS, extra_body={"padding": "x" * (2 * MB - 1000)})
        assert refused.value.body["code"] == "loop_detected"
        # Past 2 MB the proxy does not parse it on its event loop: it goes on.
        answer = client.chat.completions.create(**CHAT_ARGS, extra_body={"padding": "x" * (2 * MB + 1000)})
        assert answer.usage.total_tokens == 1502
    finally:
        proxy.stop()
