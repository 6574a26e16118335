"""What a `meter proxy` start costs in CPU is mostly what its two processes import. The recorder
loads genai-prices (pydantic, httpx and importlib.metadata under it: two thirds of its start) when
it prices its first call, and tiktoken when it first estimates one, not when it starts; the proxy
loads no recorder module. Through a real `meter proxy`, whose calls are still priced and estimated."""

import genai_prices
import openai
import pytest

from taskmeter.store.interactions import call_cost
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, write_config
from tests.waiting import until

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
# Loaded by the recorder only for the work that needs them (genai-prices also needs pydantic,
# which the proxy's process loads itself to validate the config).
ON_FIRST_PRICE = {"genai_prices", "httpx2"}
ON_FIRST_ESTIMATE = {"tiktoken", "platformdirs"}


def imported_modules(stderr: str) -> list[str]:
    """The modules `python -X importtime` (PYTHONPROFILEIMPORTTIME) reported loading, in order,
    once per process that loaded each: the proxy's and its recorder's lines share stderr."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


def test_the_recorder_loads_prices_at_its_first_priced_call_and_tiktoken_at_its_first_estimate(tmp_path):
    with FakeUpstream() as upstream:
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, tmp_path / "meter.db", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
        client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        try:
            # The recorder imports its budget planner last at start: by then it loaded all it starts with.
            until(lambda: "taskmeter.recorder.planner" in imported_modules(proxy.stderr()), what="the recorder's start")
            at_start = imported_modules(proxy.stderr())
            assert "taskmeter.proxy.runner" in at_start, "the proxy's import times were not reported"
            assert not (ON_FIRST_PRICE | ON_FIRST_ESTIMATE) & set(at_start)
            assert at_start.count("pydantic") == 1  # the proxy's: the recorder is handed settings, validated

            upstream.routes["/v1/chat/completions"] = Scenario(body=FIXTURE["openai/chat_nonstream_cached_tokens"].body)
            client.chat.completions.create(**chat)
            priced = proxy.rows(wait_for=1)[0]
            # Its import times were written before the row: once read from the pipe, they are all there.
            after_price = until(
                lambda: "genai_prices" in (loaded := imported_modules(proxy.stderr())) and loaded, what="the price's imports"
            )
            # The recorder's imports: what it loaded for the price, once (the proxy loaded none of it).
            assert all(after_price.count(name) == 1 for name in ON_FIRST_PRICE)
            assert after_price.count("pydantic") == 2  # and the recorder's, for genai-prices
            assert not ON_FIRST_ESTIMATE & set(after_price)  # a stated usage is not estimated

            upstream.routes["/v1/chat/completions"] = Scenario(
                body=FIXTURE["openai/chat_stream_no_usage"].body, content_type="text/event-stream"
            )
            with client.chat.completions.with_streaming_response.create(**chat, stream=True) as response:
                list(response.parse())
            estimated = proxy.rows(wait_for=2)[1]
        finally:
            assert proxy.stop() == 0
    loaded = until(
        lambda: ON_FIRST_ESTIMATE <= set((found := imported_modules(proxy.stderr()))[len(after_price) :]) and found,
        what="the estimate's imports",
    )
    assert len(upstream.received) == 2  # each call stored exactly once
    # The first call is priced as genai-prices prices it, the second estimated with tiktoken and priced too.
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=priced["input_total"],
            cache_read_tokens=priced["cache_read"],
            cache_write_tokens=priced["cache_write"] or 0,
            output_tokens=priced["output_total"],
        ),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    )
    assert (priced["input_total"], priced["cache_read"], priced["output_total"]) == (1149, 1024, 353)
    assert priced["cost_usd"] == call_cost(float(expected.total_price)) > 0
    assert priced["price_source"] == f"genai-prices {genai_prices.__version__}: openai/{expected.model.id}"
    assert estimated["usage_source"] == "estimated" and estimated["output_total"] > 0 and estimated["cost_usd"] > 0
    # No module of the recorder's was loaded by the proxy's process: each appears once, the recorder's.
    recorder_modules = [name for name in loaded if name.startswith("taskmeter.recorder.")]
    assert "taskmeter.recorder.finalize" in recorder_modules
    assert len(recorder_modules) == len(set(recorder_modules))
    assert loaded.count("taskmeter.config.settings") == 1  # and the recorder validates no config of its own
