"""Budgets and the loop guard on a Responses API WebSocket, through a real `meter
proxy`: a `websockets` client -> the proxy -> a loopback fake that answers each
`response.create`. A refused create never reaches the upstream, the client gets
an `error` event with the text an HTTP 429 carries, the socket stays open, and
every create, let through or refused, is stored exactly once."""

import json
import threading

import openai
import pytest
from websockets.sync.client import connect

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fake_ws_upstream import FakeResponsesSocket, response_frames, usage
from tests.guard_probe import EMBEDDINGS, Probe
from tests.proxy_harness import RunningProxy, write_config
from tests.test_drill_budgets import _budget, _meter, _poll

pytestmark = pytest.mark.e2e

CALL_TOKENS = 1500  # each response: 1,000 in, 500 out


def script(create: dict, socket) -> list:
    """Each create names its response in `metadata.id`; `metadata.slow` spaces its frames out (in flight together)."""
    plan = create.get("metadata") or {}
    frames = response_frames(plan["id"], usage(1000, 500))
    return [frames[0], 0.3, *frames[1:]] if plan.get("slow") else frames


@pytest.fixture
def upstreams():
    with FakeUpstream() as http_fake, FakeResponsesSocket(script) as ws_fake:
        http_fake.routes[EMBEDDINGS] = Scenario(body=b"{}")  # the probe's: no usage, spends nothing
        yield http_fake, ws_fake


def start_proxy(tmp_path, upstreams, extra: str = "") -> RunningProxy:
    http_fake, ws_fake = upstreams
    upstream_urls = {"openai": f"http://127.0.0.1:{http_fake.port}", "ws": f"http://127.0.0.1:{ws_fake.port}"}
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", upstream_urls)
    config.write_text(config.read_text() + extra)
    return RunningProxy(config, tmp_path / "meter.db")


def create(response_id: str, **plan) -> str:
    body = {"type": "response.create", "model": "gpt-5.4-mini", "input": "the same question"}
    return json.dumps({**body, "metadata": {"id": response_id, **plan}})


def answer(ws) -> dict:
    """The terminal event of the answer to the create just sent (`error` when refused)."""
    while True:
        event = json.loads(ws.recv(timeout=40))
        if event["type"] in ("response.completed", "error"):
            return event


def creates_reached(ws_fake) -> int:
    return sum(1 for socket in ws_fake.sockets for frame in socket.frames if '"response.create"' in frame)


def stored_responses(proxy: RunningProxy, count: int) -> list[dict]:
    """The responses made on sockets that are stored, once `count` are; each exactly once."""

    def rows():
        return [row for row in proxy.rows(wait_for=0) if (row["method"], row["endpoint"]) == ("GET", "/v1/responses")]

    _poll(lambda: len(rows()) >= count)
    found = rows()
    assert len(found) == count and len({row["id"] for row in found}) == count
    return found


def no_hook_failed(proxy: RunningProxy) -> None:
    assert "Traceback" not in proxy.stderr() and "Addon error" not in proxy.stderr()


def test_a_spent_budget_refuses_the_next_create_on_an_open_socket(tmp_path, upstreams, meter):
    """A budget of 2.5 responses, creates one after another on one socket: the
    third crosses it, the fourth and fifth get an error event and never reach
    the upstream; the socket stays open, and HTTP is refused with the same text."""
    proxy = start_proxy(tmp_path, upstreams)
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "W1-001", "--create")
        _meter(meter, "task", "W1-001", "--budget", str(CALL_TOKENS * 5 // 2), "--on-exceeded", "block")
        probe.proxy_knows()
        with connect(f"ws://{proxy.address}/ws/v1/responses") as ws:
            events = []
            for n in range(5):
                ws.send(create(f"resp_w1_{n}"))
                events.append(answer(ws))
        assert [event["type"] for event in events] == ["response.completed"] * 3 + ["error"] * 2
        refusal = events[3]
        assert (refusal["status"], refusal["error"]["type"], refusal["error"]["code"]) == (
            429,
            "budget_exceeded",
            "budget_exceeded",
        )
        assert "W1-001" in refusal["error"]["message"]
        assert creates_reached(upstreams[1]) == 3
        with pytest.raises(openai.RateLimitError) as over_http:
            openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test").responses.create(
                model="gpt-5.4-mini", input="x"
            )
        assert over_http.value.body["message"] == refusal["error"]["message"]  # one rule, one text
        rows = stored_responses(proxy, 5)
        by_start = sorted(rows, key=lambda row: row["started_at"])
        assert [row["blocked"] for row in by_start] == [None] * 3 + ["budget"] * 2
        (http_row,) = _poll(lambda: [row for row in proxy.rows(wait_for=0) if row["method"] == "POST" and row["blocked"]])
        for row in [*by_start[3:], http_row]:
            assert (row["outcome"], row["http_status"], row["input_total"], row["usage_source"]) == ("failed", 429, None, None)
            assert row["error"] == http_row["error"] and refusal["error"]["message"] in row["error"]  # stored as over HTTP
        budget = _budget(meter, "task", "W1-001")
        assert (budget["tokens_used"], budget["tokens_over"]) == (3 * CALL_TOKENS, CALL_TOKENS // 2)
        no_hook_failed(proxy)
    finally:
        proxy.stop()


def test_a_burst_of_creates_on_several_sockets_overshoots_by_at_most_the_responses_in_flight(tmp_path, upstreams, meter):
    """A budget of 3.5 responses, one spent, then 8 sockets send a create at once:
    as many go as the room left (3), the others wait for their spend on their own
    socket, then are refused."""
    proxy = start_proxy(tmp_path, upstreams)
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "W2-001", "--create")
        _meter(meter, "task", "W2-001", "--budget", str(CALL_TOKENS * 7 // 2), "--on-exceeded", "block")
        probe.proxy_knows()
        with connect(f"ws://{proxy.address}/ws/v1/responses") as ws:
            ws.send(create("resp_w2_first"))
            assert answer(ws)["type"] == "response.completed"
        outcomes, lock = [], threading.Lock()

        def one_socket(n: int) -> None:
            with connect(f"ws://{proxy.address}/ws/v1/responses") as ws:
                ws.send(create(f"resp_w2_{n}", slow=True))
                event = answer(ws)
                with lock:
                    outcomes.append(event["type"])

        threads = [threading.Thread(target=one_socket, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["error"] * 5 + ["response.completed"] * 3
        assert creates_reached(upstreams[1]) == 4
        rows = stored_responses(proxy, 9)
        assert sum(row["blocked"] == "budget" for row in rows) == 5
        budget = _budget(meter, "task", "W2-001")
        assert (budget["tokens_used"], budget["tokens_over"]) == (4 * CALL_TOKENS, CALL_TOKENS // 2)
        no_hook_failed(proxy)
    finally:
        proxy.stop()


def test_a_loop_block_refuses_the_looping_clients_create(tmp_path, upstreams, meter):
    """Three identical creates of one client in one task are a loop, in block
    mode: that client's next create is refused on its open socket; another
    client's same create goes on."""
    proxy = start_proxy(tmp_path, upstreams, '\n[alerts]\nloop_calls = 3\nloop_minutes = 5\non_loop = "block"\n')
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "W3-001", "--create")
        url = f"ws://{proxy.address}/ws/v1/responses"
        with connect(url, user_agent_header="agent-a/1.0") as looping:
            for n in range(3):
                looping.send(create(f"resp_w3_{n}"))
                assert answer(looping)["type"] == "response.completed"
            stored_responses(proxy, 3)
            listed = _poll(lambda: json.loads(_meter(meter, "alerts", "--json").out))
            assert [(alert["kind"], alert["task_id"], alert["blocks"]) for alert in listed] == [("loop", "W3-001", True)]
            probe.proxy_knows()
            looping.send(create("resp_w3_looped"))
            refusal = answer(looping)
            assert (refusal["type"], refusal["status"], refusal["error"]["code"]) == ("error", 429, "loop_detected")
            with connect(url, user_agent_header="agent-b/2.0") as other:
                other.send(create("resp_w3_other"))
                assert answer(other)["type"] == "response.completed"
            looping.send(create("resp_w3_again"))
            assert answer(looping)["error"]["code"] == "loop_detected"  # the socket stays open, the block stays
        assert creates_reached(upstreams[1]) == 4
        rows = sorted(stored_responses(proxy, 6), key=lambda row: row["started_at"])
        assert [(row["client"], row["blocked"]) for row in rows[3:]] == [
            ("agent-a/1.0", "loop"),
            ("agent-b/2.0", None),
            ("agent-a/1.0", "loop"),
        ]
        no_hook_failed(proxy)
    finally:
        proxy.stop()


def test_a_create_beside_its_sockets_own_response_in_flight_is_not_held_behind_it(tmp_path, upstreams, meter):
    """A budget of 1.8 responses, one spent: room for 0.8 more. A create sent
    while the socket's own response is streaming would wait for that response
    over HTTP; on the socket, waiting would hold back that response's frames, so
    it is judged on the spend stored: let through, at once. Then the next is refused."""
    proxy = start_proxy(tmp_path, upstreams)
    try:
        probe = Probe(proxy, meter)
        _meter(meter, "set-task", "W4-001", "--create")
        _meter(meter, "task", "W4-001", "--budget", str(CALL_TOKENS * 9 // 5), "--on-exceeded", "block")
        probe.proxy_knows()
        with connect(f"ws://{proxy.address}/ws/v1/responses") as ws:
            ws.send(create("resp_w4_first"))
            assert answer(ws)["type"] == "response.completed"
            stored_responses(proxy, 1)
            probe.proxy_knows()  # the proxy knows the spend and room of the first
            ws.send(create("resp_w4_a", slow=True))
            assert json.loads(ws.recv(timeout=10))["type"] == "response.created"
            ws.send(create("resp_w4_b"))
            ends = []
            while len(ends) < 2:  # a create held behind its own response would stall both for 30 s
                event = json.loads(ws.recv(timeout=10))
                if event["type"] in ("response.completed", "error"):
                    ends.append(event["type"])
            assert ends == ["response.completed"] * 2
            stored_responses(proxy, 3)
            ws.send(create("resp_w4_over"))
            assert answer(ws)["type"] == "error"
        assert creates_reached(upstreams[1]) == 3
        assert _budget(meter, "task", "W4-001")["tokens_used"] == 3 * CALL_TOKENS  # over by the response in flight
        no_hook_failed(proxy)
    finally:
        proxy.stop()
