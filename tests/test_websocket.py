"""The Responses API over WebSocket, end to end: a `websockets` client -> a real
`meter proxy` process -> a loopback fake that answers each `response.create` with
scripted frames -> one row per response in a real SQLite file."""

import json
import os
import shutil
import ssl
import subprocess
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from taskmeter.store import connection
from tests.conftest import run_concurrently
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fake_ws_upstream import FakeResponsesSocket, response_frames, sse_frames, usage
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, meter, meter_json, write_config
from tests.tls import make_server_tls

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def script(create: dict, socket) -> list:
    """Each create says what to answer in its `metadata` (a test's own field):
    `reply` is "fixture:<name>" or "frames"; the rest are response_frames' arguments."""
    plan = create.get("metadata") or {}
    if plan.get("reply", "").startswith("fixture:"):
        return sse_frames(FIXTURE[plan["reply"][8:]].body)
    if plan.get("refuse"):
        error = {"type": "error", "status": plan["refuse"], "error": {"code": "rate_limit_exceeded", "message": "Slow down."}}
        return [json.dumps(error), json.dumps({"type": "codex.rate_limits", "primary": {"used_percent": 99}})]
    if plan.get("defer"):
        return []  # answered with the next create's frames
    if plan.get("interleave"):
        # This create's response and the deferred one before it, frame by frame.
        deferred = json.loads(socket.frames[-2])
        mine, theirs = (
            response_frames(p["metadata"]["id"], usage(*p["metadata"]["usage"]), stream_id=p["stream_id"])
            for p in (create, deferred)
        )
        return [frame for pair in zip(mine, theirs, strict=True) for frame in pair]
    frames = []
    if plan.get("binary"):
        frames.append(b"\x00\x01binary")
    if plan.get("junk"):
        frames.append("this is not json")
    return frames + response_frames(
        plan["id"],
        usage(*plan["usage"]) if plan.get("usage") else None,
        text=plan.get("text", "Hello there."),
        terminal=plan.get("terminal", "response.completed"),
        stream_id=create.get("stream_id"),
    )


def create(response_id: str, input_tokens: int, output_tokens: int, **extra) -> str:
    plan = {"id": response_id, "usage": [input_tokens, output_tokens], **extra.pop("plan", {})}
    body = {"type": "response.create", "model": "gpt-5.4-mini", "input": f"question for {response_id}", "metadata": plan}
    return json.dumps({**body, **extra})


def receive_frames(ws) -> list[str | bytes]:
    """The frames of one response as they came, up to its terminal event."""
    frames = []
    while True:
        frames.append(ws.recv(timeout=10))
        if isinstance(frames[-1], str) and frames[-1].startswith("{") and json.loads(frames[-1])["type"] in TERMINAL:
            return frames


def receive_response(ws) -> list[dict]:
    """The events of one response, up to its terminal event."""
    return [json.loads(frame) for frame in receive_frames(ws) if isinstance(frame, str) and frame.startswith("{")]


@pytest.fixture(scope="module")
def upstream():
    with FakeResponsesSocket(script) as fake:
        yield fake


def start_proxy(tmp_path, upstream, **proxy_settings) -> RunningProxy:
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"openai": f"http://127.0.0.1:{upstream.port}"},
        store_bodies="full",
        **proxy_settings,
    )
    return RunningProxy(config, tmp_path / "meter.db")


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    running = start_proxy(tmp_path_factory.mktemp("ws"), upstream)
    yield running
    assert running.stop() == 0


def socket_url(proxy: RunningProxy, prefix: str = "") -> str:
    return f"ws://{proxy.address}{prefix}/openai/v1/responses"


def stored_body(proxy: RunningProxy, interaction_id: str) -> str | None:
    db = connection.connect(proxy.db_path)
    try:
        row = db.execute("SELECT response_body FROM bodies WHERE interaction_id = ?", (interaction_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_two_responses_on_one_socket_are_two_calls_with_their_usage(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        socket_id = ws.response.headers["x-meter-interaction-id"]
        ws.send(create("resp_two_1", 1200, 34))
        first = receive_frames(ws)
        ws.send(create("resp_two_2", 1500, 56, previous_response_id="resp_two_1"))
        second = receive_response(ws)
    # Frames arrive as the upstream sent them, byte for byte.
    assert first == response_frames("resp_two_1", usage(1200, 34), text="Hello there.")
    assert second[-1]["response"]["usage"]["input_tokens"] == 1500
    rows = proxy.rows(wait_for=before + 2)
    new = rows[before:]
    assert len(new) == 2
    one, two = sorted(new, key=lambda row: row["started_at"])
    assert (one["input_total"], one["output_total"], two["input_total"], two["output_total"]) == (1200, 34, 1500, 56)
    assert one["usage_source"] == two["usage_source"] == "reported"
    assert one["protocol"] == "openai_responses" and one["outcome"] == "complete" and one["streamed"] == 1
    assert one["model"] == "gpt-5.4-mini-2026-03-17" and one["cost_usd"] is not None
    # Each response has its own interaction ID, in the live view and `meter log`; the socket has another.
    assert len({one["id"], two["id"], socket_id}) == 3
    deadline = time.monotonic() + 10
    while not all(any(row["id"] in line for _, line in proxy.live_view) for row in (one, two)):
        assert time.monotonic() < deadline, proxy.live_view[-5:]
        time.sleep(0.05)
    log = meter(proxy, "log", "--json", "--limit", "1000", check=True).stdout
    assert one["id"] in log and two["id"] in log
    # A `previous_response_id` chain is one conversation, as over HTTP.
    assert one["conversation_id"] and one["conversation_id"] == two["conversation_id"]


def new_rows(proxy: RunningProxy, before: int, count: int) -> list[dict]:
    """The rows stored after the first `before`, once `count` of them are; in order of start."""
    rows = proxy.rows(wait_for=before + count)[before:]
    assert len(rows) == count, rows
    return rows


def test_a_prewarm_with_generate_false_is_a_call_billed_for_its_input(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_warm", 4321, 0, generate=False, plan={"text": ""}))
        events = receive_response(ws)
        ws.send(create("resp_after_warm", 4400, 12, previous_response_id="resp_warm"))
        receive_response(ws)
    assert [e["type"] for e in events] == ["response.created", "response.completed"]
    warm, answer = new_rows(proxy, before, 2)
    assert (warm["input_total"], warm["output_total"], warm["usage_source"]) == (4321, 0, "reported")
    assert warm["cost_usd"] > 0
    assert (answer["input_total"], answer["output_total"]) == (4400, 12)
    db = connection.connect(proxy.db_path)
    try:
        request = json.loads(db.execute("SELECT request_body FROM bodies WHERE interaction_id = ?", (warm["id"],)).fetchone()[0])
    finally:
        db.close()
    # The create frame as an HTTP streaming request: no `type`, `"stream": true`.
    assert request["generate"] is False and request["stream"] is True and "type" not in request
    assert request["model"] == "gpt-5.4-mini"


def test_a_failed_response_is_a_call_with_its_error_and_usage(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_failed", 800, 3, plan={"terminal": "response.failed"}))
        events = receive_response(ws)
        # The recorded HTTP stream of a failure: an `error` event, then `response.failed`.
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": "gpt-5.4-mini",
                    "input": "x",
                    "metadata": {"reply": "fixture:openai_responses/responses_stream_error_then_failed"},
                }
            )
        )
        recorded = receive_response(ws)
        if recorded[-1]["type"] == "error":
            recorded += receive_response(ws)
        ws.send(create("resp_after_failure", 900, 4))
        receive_response(ws)
    assert events[-1]["type"] == "response.failed" and recorded[-1]["type"] == "response.failed"
    failed, quota, after = new_rows(proxy, before, 3)
    assert (failed["input_total"], failed["output_total"], failed["outcome"]) == (800, 3, "complete")
    assert "The model failed" in failed["error"]
    assert "insufficient_quota" in quota["error"] or "exceeded your current quota" in quota["error"]
    assert (after["input_total"], after["output_total"]) == (900, 4)


def test_a_create_the_server_refuses_is_a_failed_call_without_usage(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_refused", 500, 5, plan={"refuse": 429}))
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        assert json.loads(ws.recv(timeout=10))["type"] == "codex.rate_limits"  # a notice: passed on, no call
        ws.send(create("resp_after_refusal", 510, 6))
        receive_response(ws)
    refused, after = new_rows(proxy, before, 2)
    assert (refused["outcome"], refused["http_status"], refused["input_total"], refused["usage_source"]) == (
        "failed",
        429,
        None,
        None,
    )
    assert "Slow down." in refused["error"]
    assert (after["input_total"], after["output_total"], after["outcome"]) == (510, 6, "complete")


def test_a_client_that_closes_mid_response_leaves_a_partial_call_with_its_bytes(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_cut", 700, 9, plan={"terminal": None, "text": "one two three four"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "response.created"
        assert json.loads(ws.recv(timeout=10))["type"] == "response.output_text.delta"
        # A second create the server never answers (deferred: not even its response.created,
        # which would end the first response before the close does).
        ws.send(create("resp_never", 100, 1, plan={"defer": True}))
    cut, never = new_rows(proxy, before, 2)
    assert cut["outcome"] == "partial" and "closed by the client" in cut["error"]
    assert cut["usage_source"] == "partial" and cut["output_total"] > 0  # counted from what arrived
    assert "resp_cut" in stored_body(proxy, cut["id"])
    assert never["outcome"] in ("partial", "aborted") and "closed by the client" in never["error"]


def test_frames_the_meter_cannot_read_are_stored_with_their_bytes_and_reason(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_noisy", 321, 7, plan={"binary": True, "junk": True}))
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        assert ws.recv(timeout=10) == "this is not json"
        receive_response(ws)
        ws.send(b"\xffclient binary")
    rows = new_rows(proxy, before, 2)
    answer = next(row for row in rows if row["operation"] == "generate")
    unread = next(row for row in rows if row["operation"] == "other")
    assert (answer["input_total"], answer["output_total"]) == (321, 7)
    assert "server binary frame" in unread["notes"] and "server text frame that is not JSON" in unread["notes"]
    assert "client binary frame" in unread["notes"]
    assert f"({8 + 16 + 14} bytes)" in unread["notes"]


def test_responses_multiplexed_by_stream_id_are_paired_with_their_creates(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_s1", 111, 1, stream_id="s1", plan={"defer": True}))
        ws.send(create("resp_s2", 222, 2, stream_id="s2", plan={"interleave": True}))
        ends = set()
        while len(ends) < 2:
            event = json.loads(ws.recv(timeout=10))
            if event["type"] in TERMINAL:
                ends.add(event["response"]["id"])
    rows = new_rows(proxy, before, 2)
    by_input = {row["input_total"]: row for row in rows}
    assert set(by_input) == {111, 222}
    for row in rows:
        request = json.loads(stored_request(proxy, row["id"]))
        assert request["stream_id"] == {111: "s1", 222: "s2"}[row["input_total"]]


def stored_request(proxy: RunningProxy, interaction_id: str) -> str:
    db = connection.connect(proxy.db_path)
    try:
        return db.execute("SELECT request_body FROM bodies WHERE interaction_id = ?", (interaction_id,)).fetchone()[0]
    finally:
        db.close()


def test_only_upgrades_to_a_responses_path_are_metered(proxy, upstream):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(f"ws://{proxy.address}/openai/v1/realtime") as ws:
        ws.send(create("resp_realtime", 11, 1))
        receive_response(ws)
    assert upstream.sockets[-1].path == "/v1/realtime"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{proxy.address}/openai/refused/v1/responses")
    assert refused.value.response.status_code == 403  # the upstream's answer, passed on; no socket, no call
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_metered", 12, 2))
        receive_response(ws)
    # Only the last socket's response is stored: stored in order, nothing came before it.
    (row,) = new_rows(proxy, before, 1)
    assert (row["input_total"], row["endpoint"]) == (12, "/v1/responses")


def test_64_concurrent_sockets_lose_no_response(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    counter = iter(range(64))
    lock = threading.Lock()

    def one_socket():
        with lock:
            n = next(counter)
        with connect(socket_url(proxy)) as ws:
            ws.send(create(f"resp_c{n}_a", 10_000 + n, 100 + n))
            receive_response(ws)
            ws.send(create(f"resp_c{n}_b", 20_000 + n, 200 + n, previous_response_id=f"resp_c{n}_a"))
            receive_response(ws)

    assert run_concurrently(one_socket, 64) == []
    rows = new_rows(proxy, before, 128)
    got = sorted((row["input_total"], row["output_total"]) for row in rows)
    assert got == sorted([(10_000 + n, 100 + n) for n in range(64)] + [(20_000 + n, 200 + n) for n in range(64)])
    assert len({row["id"] for row in rows}) == 128
    assert all(row["outcome"] == "complete" and row["usage_source"] == "reported" for row in rows)


def test_attribution_follows_the_path_prefix_and_the_header(proxy, upstream):
    before = len(proxy.rows(wait_for=0, timeout=0))
    with connect(socket_url(proxy, "/t/WS-PATH")) as ws:
        ws.send(create("resp_path", 10, 1))
        receive_response(ws)
    with connect(socket_url(proxy), additional_headers={"x-meter-task": "WS-HEADER"}) as ws:
        ws.send(create("resp_header", 20, 2))
        receive_response(ws)
    path, header = new_rows(proxy, before, 2)
    assert (path["task_id"], path["attribution"]) == ("WS-PATH", "path")
    assert (header["task_id"], header["attribution"]) == ("WS-HEADER", "header")
    # The task header is the meter's: it does not go upstream.
    assert "x-meter-task" not in {name.lower() for name in upstream.sockets[-1].headers}


def test_each_create_goes_to_the_task_current_when_it_was_sent(proxy):
    before = len(proxy.rows(wait_for=0, timeout=0))
    meter(proxy, "set-task", "WS-FIRST", check=True)
    try:
        with connect(socket_url(proxy)) as ws:
            ws.send(create("resp_task_1", 30, 3))
            receive_response(ws)
            meter(proxy, "set-task", "WS-SECOND", check=True)
            ws.send(create("resp_task_2", 40, 4))
            receive_response(ws)
    finally:
        meter(proxy, "set-task", "--none", check=True)
    first, second = new_rows(proxy, before, 2)
    assert (first["task_id"], first["input_total"]) == ("WS-FIRST", 30)
    assert (second["task_id"], second["input_total"]) == ("WS-SECOND", 40)


def test_refuse_answers_the_upgrade_with_426(upstream, tmp_path):
    proxy = start_proxy(tmp_path, upstream, websocket="refuse")
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(socket_url(proxy))
        assert refused.value.response.status_code == 426
        assert b"HTTP streaming" in refused.value.response.body
    finally:
        assert proxy.stop() == 0
    assert proxy.rows(wait_for=0, timeout=0) == []


def codex_script(create: dict, socket) -> list[str]:
    """What Codex needs to finish a turn: a message item, then `response.completed`.
    A prewarm (`generate: false`) gets no output; usage is billed for its input."""
    generate = create.get("generate", True) is not False
    number = len(socket.frames)
    message = {
        "type": "message",
        "id": f"msg_{number}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello from the fake.", "annotations": []}],
    }
    response = {
        "id": f"resp_codex_{number}",
        "object": "response",
        "model": "gpt-5.4-mini-2026-03-17",
        "status": "in_progress",
        "output": [],
    }
    frames = [{"type": "response.created", "response": response}]
    if generate:
        frames += [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**message, "status": "in_progress", "content": []},
            },
            {
                "type": "response.output_text.delta",
                "item_id": message["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": "Hello from the fake.",
            },
            {"type": "response.output_item.done", "output_index": 0, "item": message},
        ]
    completed = {**response, "status": "completed", "output": [message] if generate else []}
    completed["usage"] = usage(3000 + number, 9 if generate else 0, cached=1024)
    frames.append({"type": "response.completed", "response": completed})
    return [json.dumps(frame) for frame in frames]


def run_codex(proxy: RunningProxy, home, base_path: str = "/openai/v1") -> subprocess.CompletedProcess:
    codex = shutil.which("codex")
    assert codex, "the Codex CLI is needed: npm install -g @openai/codex@0.171.0"
    (home / ".codex").mkdir(parents=True)
    done = subprocess.run(
        [codex, "exec", "--skip-git-repo-check", "-c", f"openai_base_url=http://{proxy.address}{base_path}", "say hi"],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home / ".codex"), "OPENAI_API_KEY": "sk-test"},
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_the_codex_cli_over_websocket_is_metered_response_by_response(tmp_path):
    """The real Codex CLI (npm @openai/codex 0.171), pointed at the gateway as its
    docs say, speaks the Responses API over WebSocket: a prewarm and the answer."""
    codex = shutil.which("codex")
    assert codex, "the Codex CLI is needed: npm install -g @openai/codex@0.171.0"
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    with FakeResponsesSocket(codex_script) as fake:
        proxy = start_proxy(tmp_path, fake)
        try:
            done = subprocess.run(
                [
                    codex,
                    "exec",
                    "--skip-git-repo-check",
                    "-c",
                    f"openai_base_url=http://{proxy.address}/t/WS-CODEX/openai/v1",
                    "say hi",
                ],
                env={
                    "PATH": os.environ["PATH"],
                    "HOME": str(home),
                    "CODEX_HOME": str(home / ".codex"),
                    "OPENAI_API_KEY": "sk-test",
                },
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert "Hello from the fake." in done.stdout
            rows = new_rows(proxy, 0, 2)
        finally:
            assert proxy.stop() == 0
        # Codex took the WebSocket: one upgrade, two creates, no HTTP fallback.
        assert [socket.path for socket in fake.sockets] == ["/v1/responses"]
        creates = [json.loads(frame) for frame in fake.sockets[0].frames]
    assert [create.get("generate", True) for create in creates] == [False, True]
    # Served usage: input 3000 + the number of frames the socket had received.
    assert [(row["input_total"], row["cache_read"], row["output_total"]) for row in rows] == [(3001, 1024, 0), (3002, 1024, 9)]
    assert all(row["task_id"] == "WS-CODEX" and row["outcome"] == "complete" for row in rows)


def test_the_codex_cli_refused_a_websocket_falls_back_to_http_and_is_metered(tmp_path):
    with FakeUpstream() as fake:
        fake.routes["/v1/responses"] = Scenario(
            body=FIXTURE["openai_responses/responses_stream_basic"].body, content_type="text/event-stream", chunk_size=200
        )
        config = write_config(
            tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{fake.port}"}, websocket="refuse"
        )
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            run_codex(proxy, tmp_path / "home")
            rows = new_rows(proxy, 0, 1)
        finally:
            assert proxy.stop() == 0
        assert [(received.method, received.path) for received in fake.received] == [("POST", "/v1/responses")]
    assert (rows[0]["method"], rows[0]["input_total"], rows[0]["output_total"]) == ("POST", 11, 5)


def test_a_long_socket_keeps_no_frame_and_a_bounded_copy_of_each_response(tmp_path):
    """mitmproxy keeps every frame of a socket on its flow; the meter drops each
    once read, and keeps of a response what the HTTP tee keeps: the first
    max_parsed_body_mb, then the last 256 KB."""
    from mitmproxy.test import tflow
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    from taskmeter.config import load_settings
    from taskmeter.proxy.addons import _SOCKET, _TASK, Route
    from taskmeter.proxy.refusals import Guard
    from taskmeter.proxy.routing import Endpoint
    from taskmeter.proxy.tee import TAIL_BYTES
    from taskmeter.proxy.websocket import ResponsesWebSocket

    config = tmp_path / "config.toml"
    config.write_text(f'[proxy]\nconfdir = "{tmp_path}"\nmax_parsed_body_mb = 1\n')
    submitted = []
    addon = ResponsesWebSocket(load_settings(config), submitted.append, Guard())
    flow = tflow.twebsocketflow(messages=False)
    flow.request.path = "/v1/responses"
    flow.metadata[_SOCKET] = Route("openai", Endpoint("openai_responses", "generate"), None)
    flow.metadata[_TASK] = (None, None)
    upgraded, flow.response = flow.response, None  # the upgrade as it is asked for, then answered
    addon.requestheaders(flow)
    flow.response = upgraded
    addon.responseheaders(flow)

    def frame(from_client: bool, event: dict) -> None:
        flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, from_client, json.dumps(event).encode()))
        addon.websocket_message(flow)
        assert flow.websocket.messages == []

    delta = {"type": "response.output_text.delta", "delta": "x" * 1000}
    for turn in range(2):
        frame(True, {"type": "response.create", "model": "gpt-5.4-mini", "input": "go"})
        frame(False, {"type": "response.created", "response": {"id": f"resp_long_{turn}"}})
        for _ in range(5000):  # 5 MB of events
            frame(False, delta)
        frame(False, {"type": "response.completed", "response": {"id": f"resp_long_{turn}", "usage": usage(10, 5000)}})
    assert len(submitted) == 2
    for call in submitted:
        assert len(call.response_body) <= 1024 * 1024 and len(call.response_tail) <= 2 * TAIL_BYTES
        assert call.response_skipped > 3 * 1024 * 1024
        assert b'"response.completed"' in bytes(call.response_tail)  # where usage is, as for HTTP
    assert addon.sockets[flow.id].open() == []


def test_a_response_in_flight_when_the_meter_stops_is_stored(upstream, tmp_path):
    proxy = start_proxy(tmp_path, upstream, shutdown_grace_seconds=0)
    with connect(socket_url(proxy)) as ws:
        ws.send(create("resp_stopped", 50, 5, plan={"terminal": None}))
        assert json.loads(ws.recv(timeout=10))["type"] == "response.created"
        assert proxy.stop() == 0
    rows = proxy.rows(wait_for=1, timeout=0)
    assert len(rows) == 1
    assert (rows[0]["outcome"], rows[0]["error"]) == ("aborted", "proxy shut down during the call")
    assert "resp_stopped" in stored_body(proxy, rows[0]["id"])


TLS_HOST = "127.0.0.2"


@pytest.fixture
def tls_upstream(tmp_path):
    context, ca_path = make_server_tls(tmp_path, TLS_HOST)
    with FakeResponsesSocket(script, tls_context=context, host=TLS_HOST) as fake:
        fake.ca_path = ca_path
        yield fake


def test_the_gateway_takes_a_socket_to_a_wss_upstream(tls_upstream, tmp_path):
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"openai": f"https://{TLS_HOST}:{tls_upstream.port}"},
        upstream_ca=str(tls_upstream.ca_path),
    )
    proxy = RunningProxy(config, tmp_path / "meter.db")
    try:
        with connect(socket_url(proxy)) as ws:
            ws.send(create("resp_wss", 600, 6))
            receive_response(ws)
        row = new_rows(proxy, 0, 1)[0]
    finally:
        assert proxy.stop() == 0
    assert (row["input_total"], row["output_total"], row["endpoint"]) == (600, 6, "/v1/responses")


def test_https_proxy_mode_meters_a_socket_to_a_known_ai_host(tls_upstream, tmp_path):
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"corp": f"https://{TLS_HOST}:{tls_upstream.port}"},
        upstream_ca=str(tls_upstream.ca_path),
    )
    proxy = RunningProxy(config, tmp_path / "meter.db")
    try:
        meter_ca = ssl.create_default_context(cafile=tmp_path / "ca" / "ca-bundle.pem")
        url = f"wss://{TLS_HOST}:{tls_upstream.port}/v1/responses"
        with connect(url, proxy=proxy.origin, ssl=meter_ca, additional_headers={"x-meter-task": "WS-TLS"}) as ws:
            assert ws.response.headers["x-meter-interaction-id"]
            ws.send(create("resp_tls_1", 700, 7))
            receive_response(ws)
            ws.send(create("resp_tls_2", 800, 8, previous_response_id="resp_tls_1"))
            receive_response(ws)
        rows = new_rows(proxy, 0, 2)
    finally:
        assert proxy.stop() == 0
    assert [(row["provider"], row["task_id"], row["input_total"], row["output_total"]) for row in rows] == [
        ("corp", "WS-TLS", 700, 7),
        ("corp", "WS-TLS", 800, 8),
    ]


def test_a_socket_of_codex_on_a_chatgpt_login_is_metered_at_the_api_equivalent_price(tmp_path):
    """Codex on a ChatGPT login opens its socket to chatgpt.com (HTTPS-proxy mode,
    sent by [intercept.redirect] to a loopback fake): each response is a call of the
    chatgpt provider, priced as the API would, and marked as paid by the subscription."""
    context, ca_path = make_server_tls(tmp_path, None, dns_names=("chatgpt.com",))
    with FakeResponsesSocket(script, tls_context=context) as fake:
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {}, upstream_ca=str(ca_path))
        config.write_text(config.read_text() + f'[intercept.redirect]\n"chatgpt.com" = "https://127.0.0.1:{fake.port}"\n')
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            meter_ca = ssl.create_default_context(cafile=tmp_path / "ca" / "ca-bundle.pem")
            url = "wss://chatgpt.com/backend-api/codex/responses"
            headers = {"authorization": "Bearer chatgpt-session-token", "x-meter-task": "WS-SUB"}
            with connect(url, proxy=proxy.origin, ssl=meter_ca, additional_headers=headers) as ws:
                ws.send(create("resp_sub_1", 900, 9))
                receive_response(ws)
            (row,) = new_rows(proxy, 0, 1)
            (shown,) = meter_json(proxy, "log")
        finally:
            assert proxy.stop() == 0
    assert (row["provider"], row["task_id"], row["input_total"], row["output_total"]) == ("chatgpt", "WS-SUB", 900, 9)
    assert shown["price_basis"] == "api-equivalent" and shown["cost_usd"] > 0
    assert b"chatgpt-session-token" not in (tmp_path / "meter.db").read_bytes()
