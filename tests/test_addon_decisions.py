"""The addons' decisions on flows made in memory with mitmproxy's own test helpers
(tflow, taddons), each hook run through every addon in the order the proxy adds
them: no process, no socket. The e2e tests (test_drill_gate.py, test_budgets.py)
prove the same addons wired into a real `meter proxy`."""

import asyncio
import json

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook
from mitmproxy.test import taddons, tflow, tutils

from taskmeter.config import load_settings
from taskmeter.proxy.addons import ID_HEADER, Capture, Gateway, TaskAttribution
from taskmeter.proxy.refusals import Guard
from tests.proxy_harness import write_config

METER = ("127.0.0.1", 8877)  # where the proxy listens, for these flows
UPSTREAM = ("127.0.0.1", 9)  # the `openai` upstream (never connected to)
UPSTREAM_ORIGIN = f"http://{UPSTREAM[0]}:{UPSTREAM[1]}"
CHAT = "/v1/chat/completions"
CHAT_REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Chain:
    """The proxy's addons in its order (proxy/runner.py), and what they handed over."""

    def __init__(self, tmp_path) -> None:
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": UPSTREAM_ORIGIN})
        settings = load_settings(config)
        self.submitted = []
        self.gateway, self.capture, self.guard = Gateway(settings), Capture(settings, self.submitted.append), Guard()
        self.context = taddons.context(self.gateway, TaskAttribution(), self.capture, self.guard)

    async def request(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """The request's hooks, as mitmproxy runs them: a flow answered at its headers is not sent on."""
        await self.context.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
        if flow.response is None:
            await self.context.master.addons.handle_lifecycle(HttpRequestHook(flow))
        return flow

    async def answer(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """The upstream's answer to a flow sent on."""
        flow.response = tutils.tresp(content=b'{"choices":[]}')
        await self.context.master.addons.handle_lifecycle(HttpResponseHeadersHook(flow))
        return flow


@pytest.fixture
async def chain(tmp_path):
    made = Chain(tmp_path)
    with made.context:
        yield made


def _flow(target: str, **headers: str) -> http.HTTPFlow:
    """A POST as a client on loopback sends it to the meter: `target` a gateway path,
    or an absolute URL (proxy mode)."""
    host, port = METER
    if target.startswith("http://"):
        host, port = target[7:].split("/", 1)[0].rsplit(":", 1)
        target = "/" + target[7:].split("/", 1)[1]
    request = tutils.treq(
        host=host,
        port=int(port),
        method=b"POST",
        path=target.encode(),
        headers=http.Headers([(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]),
        content=CHAT_REQUEST,
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.sockname = METER
    return flow


def _error(flow: http.HTTPFlow) -> str:
    return json.loads(flow.response.content)["error"]["message"]


PAGES = [
    {"Origin": "http://127.0.0.1:5999", "Sec_Fetch_Site": "same-site", "Sec_Fetch_Mode": "no-cors"},
    {"Origin": "null"},  # a sandboxed frame, a file:// page
    {"Sec_Fetch_Site": "cross-site"},  # no Origin, still a page
    {"Sec_Fetch_Site": "same-site"},
]


@pytest.mark.parametrize("headers", PAGES)
@pytest.mark.parametrize("target", ["/openai" + CHAT, UPSTREAM_ORIGIN + CHAT], ids=["gateway", "proxy-mode"])
async def test_a_call_carrying_a_page_origin_is_answered_by_the_meter_and_not_metered(chain, headers, target):
    flow = await chain.request(_flow(target, **headers))
    assert flow.response.status_code == 403 and ID_HEADER not in flow.response.headers
    assert _error(flow).startswith("taskmeter: refused a call from a web page") and "allowed_origins" in _error(flow)
    assert chain.capture.live == {} and chain.submitted == []  # answered at its headers: never sent on, never metered


async def test_a_browser_navigation_is_no_page_and_goes_to_its_upstream_metered(chain):
    flow = await chain.request(_flow("/openai" + CHAT, Sec_Fetch_Site="none"))
    assert flow.response is None and (flow.request.host, flow.request.port, flow.request.path) == (*UPSTREAM, CHAT)
    (call,) = chain.capture.live.values()
    assert (call.provider, call.protocol, call.operation) == ("openai", "openai_chat", "generate")
    await chain.answer(flow)
    assert flow.response.headers[ID_HEADER] == call.id


def _budget_state(**budget) -> dict:
    """What the recorder pushes: one budget in block mode on task P1-010."""
    scope = {"header": "task=P1-010; tokens-remaining=0; used=100.0%", "used_share": 1.0, "blocks": True, "refusal": None}
    return {
        "current_task": None,
        "budgets": {"task:p1-010": {**scope, **budget}},
        "phases": {},
        "sessions": {},
        "blocked": {"sessions": {}, "conversations": {}},
        "settled": [],
    }


async def test_a_spent_budget_in_block_mode_refuses_its_task_s_calls_with_a_429_the_sdks_do_not_retry(chain):
    chain.guard.take_state(_budget_state(refusal="taskmeter: budget of P1-010 spent", room=0))
    refused = await chain.request(_flow("/t/P1-010/openai" + CHAT))
    assert refused.response.status_code == 429 and refused.response.headers["x-should-retry"] == "false"
    assert _error(refused) == "taskmeter: budget of P1-010 spent"
    (call,) = chain.capture.live.values()
    assert call.blocked == "budget" and call.task_id == "P1-010"
    other = await chain.request(_flow("/t/P1-011/openai" + CHAT))  # another task's budget is not this one
    assert other.response is None


async def test_a_call_waits_while_the_calls_in_flight_could_spend_the_room_left_and_goes_on_once_they_are_stored(chain):
    chain.guard.take_state(_budget_state(room=1))
    first = await chain.request(_flow("/t/P1-010/openai" + CHAT))
    assert first.response is None  # let through, counted as in flight
    (first_call,) = chain.capture.live.values()
    second = asyncio.ensure_future(chain.request(_flow("/t/P1-010/openai" + CHAT)))
    await asyncio.sleep(0)  # the second call's hooks run up to their wait
    assert not second.done()  # held: the first could spend the room left
    chain.guard.take_state({**_budget_state(room=1), "settled": [first_call.id]})  # the recorder stored it
    assert (await asyncio.wait_for(second, 5)).response is None  # the room is there again: it goes on
