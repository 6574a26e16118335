"""Nothing the meter receives stops it from recording: poison values, a read-only
database, requests with broken text, cut streams, mixed-case task IDs, an
unwritable spool with a stalled recorder, a 100 MB stream. Each through a real
`meter proxy` process, asserting that every other call is stored exactly once."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from taskmeter.handover import callfile
from taskmeter.recorder.estimate import count_tokens
from taskmeter.store import connection
from tests.conftest import run_concurrently
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, RunningProxy, meter, unread_input, write_config

pytestmark = pytest.mark.e2e

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
CHAT_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
PLAIN = FIXTURE["openai/chat_nonstream_toolcall"]  # states 92 prompt and 17 completion tokens


def _chat(model: str = '"gpt-4o-mini"', usage: str = '{"prompt_tokens":3,"completion_tokens":4}') -> bytes:
    return b'{"object":"chat.completion","model":%s,"choices":[],"usage":%s}' % (model.encode(), usage.encode())


# Each answer carries one value the store cannot hold as it is (JSON escapes are
# how a hostile or broken upstream sends lone surrogates and NUL characters).
POISON = {
    "integer-past-2-63": Scenario(body=_chat(usage='{"prompt_tokens":9223372036854775808,"completion_tokens":1}')),
    "float-1e300": Scenario(body=_chat(usage='{"prompt_tokens":5,"completion_tokens":1e300}')),
    "surrogate-model": Scenario(body=_chat(model='"gpt-\\ud800"')),
    "surrogate-error": Scenario(body=b'{"error":{"message":"bad \\udc80 input"}}', status=400),
    "nul-model": Scenario(body=_chat(model='"gpt\\u0000x"')),
    "oversized-model": Scenario(body=_chat(model='"' + "m" * 2_000_000 + '"')),
}


@pytest.fixture(scope="module")
def shared_upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream(shared_upstream):
    shared_upstream.forget()
    shared_upstream.routes[CHAT] = Scenario(body=PLAIN.body)
    for name, scenario in POISON.items():
        shared_upstream.routes[f"/poison/{name}{CHAT}"] = scenario
    return shared_upstream


def _start(tmp_path, upstream, **proxy_settings) -> RunningProxy:
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "ca",
        {"openai": origin, "anthropic": origin, "poison": f"{origin}/poison"},
        **proxy_settings,
    )
    return RunningProxy(config, tmp_path / "meter.db")


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory, shared_upstream):
    running = _start(tmp_path_factory.mktemp("faults"), shared_upstream)
    yield running
    assert running.stop() == 0


@pytest.fixture
def proxy(shared_proxy, upstream):
    """The module's proxy, for the tests that need no proxy of their own, holding only what this test makes."""
    shared_proxy.begin_test()
    return shared_proxy


def _stored_call(proxy: RunningProxy, interaction_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = {row["id"]: row for row in proxy.rows(wait_for=0)}
        if interaction_id in rows:
            return rows[interaction_id]
        assert time.monotonic() < deadline, f"call {interaction_id} was never stored"
        time.sleep(0.05)


def _post(client: httpx.Client, proxy: RunningProxy, path: str = f"/openai{CHAT}", **json_body) -> str:
    response = client.post(f"{proxy.origin}{path}", json=json_body or CHAT_ARGS, timeout=30)
    return response.headers["x-meter-interaction-id"]


def _stored(db_path: Path, expected: int, timeout: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        db = connection.connect(db_path)
        try:
            rows = {row["id"]: dict(row) for row in db.execute("SELECT * FROM interactions")}
        finally:
            db.close()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _immutable(paths, on: bool) -> None:
    """Read-only even for root (tests run as root, which ignores file modes)."""
    for path in paths:
        if path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_poison_values_between_normal_calls_are_stored_with_notes_and_stop_nothing(proxy, upstream):
    """On the module's proxy, which its later tests use and which must stop cleanly (shared_proxy)."""
    plain, poisoned = [], {}
    with httpx.Client() as client:
        for name in POISON:
            plain.append(_post(client, proxy))
            poisoned[name] = _post(client, proxy, f"/poison/{name}{CHAT}")
        plain.append(_post(client, proxy))
    rows = {row["id"]: row for row in proxy.rows(wait_for=len(plain) + len(poisoned), timeout=30)}
    assert set(rows) == set(plain) | set(poisoned.values())  # each call stored exactly once
    for interaction_id in plain:
        assert (rows[interaction_id]["input_total"], rows[interaction_id]["output_total"]) == (92, 17)
        assert rows[interaction_id]["notes"] is None
    assert rows[poisoned["integer-past-2-63"]]["input_total"] is None
    assert "9223372036854775808 is not a plausible count" in rows[poisoned["integer-past-2-63"]]["notes"]
    assert rows[poisoned["float-1e300"]]["output_total"] is None and rows[poisoned["float-1e300"]]["input_total"] == 5
    assert rows[poisoned["surrogate-model"]]["model"] == "gpt-\ufffd"
    assert rows[poisoned["surrogate-error"]]["error"] == "bad \ufffd input"
    assert rows[poisoned["nul-model"]]["model"] == "gptx"
    assert len(rows[poisoned["oversized-model"]]["model"]) == 256
    assert all(rows[i]["notes"] for i in poisoned.values())
    assert not callfile.quarantine_path(proxy.db_path).exists()


def test_a_poison_call_spooled_while_the_database_is_read_only_is_stored_after_a_restart(tmp_path, upstream):
    db_files = [tmp_path / "meter.db", tmp_path / "meter.db-wal"]
    proxy = _start(tmp_path, upstream)
    with httpx.Client() as client:
        first = _post(client, proxy)
        _stored(proxy.db_path, 1)
        _immutable(db_files, True)
        try:
            during = [_post(client, proxy), _post(client, proxy, f"/poison/integer-past-2-63{CHAT}"), _post(client, proxy)]
            spool = callfile.spool_path(proxy.db_path)
            deadline = time.monotonic() + 15
            while callfile.count_lines(spool) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert callfile.count_lines(spool) == 3
            assert proxy.stop() == 0  # the recorder cannot store them at exit either: they stay spooled
        finally:
            _immutable(db_files, False)
        restarted = _start(tmp_path, upstream)
        try:
            after = _post(client, restarted)
            rows = _stored(tmp_path / "meter.db", 5)
        finally:
            restarted.stop()
    assert set(rows) == {first, *during, after}
    assert rows[during[1]]["input_total"] is None and rows[during[1]]["notes"]
    assert not spool.exists() and not callfile.quarantine_path(tmp_path / "meter.db").exists()


class CutsAnEmojiInHalf(httpx.HTTPTransport):
    """What a JavaScript client sends when it cuts an emoji in half: a lone
    surrogate as a JSON escape, or (from other clients) the bytes of half a
    UTF-8 character. The official SDK cannot encode either, so the transport
    puts it in place of a marker."""

    def __init__(self, half: bytes) -> None:
        super().__init__()
        self._half = half

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read().replace(b"HALF", self._half)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        return super().handle_request(httpx.Request(request.method, request.url, headers=headers, content=body))


@pytest.mark.parametrize("half", [b"\\ud83d", b"\xf0\x9f"], ids=["lone-surrogate-escape", "invalid-utf8"])
def test_a_request_with_half_an_emoji_keeps_its_model_and_usage(proxy, upstream, half):
    stream = FIXTURE["openai/chat_stream_include_usage_toolcall"]
    upstream.routes[CHAT] = Scenario(body=stream.body, content_type="text/event-stream", chunk_size=101)
    client = openai.OpenAI(
        base_url=f"{proxy.origin}/openai/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx.Client(transport=CutsAnEmojiInHalf(half)),
    )
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a cut emoji: HALF"}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, stream=True)
    chunks = list(raw.parse())
    interaction_id = raw.headers["x-meter-interaction-id"]
    row = _stored_call(proxy, interaction_id)
    assert half in upstream.received[-1].body  # forwarded as the client sent it
    assert json.loads(upstream.received[-1].body.decode("utf-8", "replace"))["stream_options"] == {"include_usage": True}
    assert all(chunk.usage is None for chunk in chunks)  # the usage chunk the meter asked for was removed
    assert (row["model"], row["input_total"], row["output_total"], row["usage_source"]) == (
        "gpt-4o-mini-2024-07-18",
        54,
        20,
        "reported",
    )
    assert row["cost_usd"] > 0 and row["conversation_id"]


def test_stream_options_null_is_replaced_not_duplicated(proxy, upstream):
    stream = FIXTURE["openai/chat_stream_include_usage_toolcall"]
    upstream.routes[CHAT] = Scenario(body=stream.body, content_type="text/event-stream", chunk_size=101)
    response = httpx.post(
        f"{proxy.origin}/openai{CHAT}", content=json.dumps({**CHAT_ARGS, "stream": True, "stream_options": None})
    )
    row = _stored_call(proxy, response.headers["x-meter-interaction-id"])
    sent = upstream.received[-1].body
    assert sent.count(b'"stream_options"') == 1 and json.loads(sent)["stream_options"] == {"include_usage": True}
    assert b'"choices":[]' not in response.content
    assert (row["input_total"], row["output_total"], row["usage_source"]) == (54, 20, "reported")


def test_the_usage_event_is_removed_from_a_gzip_stream_and_sse_is_known_by_its_content(proxy, upstream):
    stream = FIXTURE["openai/chat_stream_include_usage_toolcall"]
    # A server that compresses although asked not to, and calls its stream text/plain.
    upstream.routes[CHAT] = Scenario(body=stream.body, content_type="text/plain", chunk_size=101, gzip=True)
    response = httpx.post(f"{proxy.origin}/openai{CHAT}", json={**CHAT_ARGS, "stream": True})
    row = _stored_call(proxy, response.headers["x-meter-interaction-id"])
    assert "content-encoding" not in response.headers
    events = [e for e in stream.body.split(b"\n\n") if e]
    usage_only = [e for e in events if b'"choices":[]' in e]
    assert len(usage_only) == 1 and response.content == stream.body.replace(usage_only[0] + b"\n\n", b"")
    assert (row["input_total"], row["output_total"], row["usage_source"]) == (54, 20, "reported")


def test_a_cut_anthropic_stream_counts_the_output_that_was_delivered(proxy, upstream):
    fixture = FIXTURE["anthropic/messages_stream_cache_creation"]  # message_start states output 1; the end, 201
    upstream.routes["/v1/messages"] = Scenario(body=fixture.body, content_type="text/event-stream", chunk_size=120, delay=0.03)
    client = anthropic.Anthropic(base_url=f"{proxy.origin}/anthropic", api_key="sk-ant-test", max_retries=0)
    delivered = ""
    with client.messages.stream(model="claude-test", max_tokens=500, messages=[{"role": "user", "content": "hi"}]) as stream:
        interaction_id = stream.response.headers["x-meter-interaction-id"]
        for index, text in enumerate(stream.text_stream):
            delivered += text
            if index == 15:
                break  # Esc in Claude Code
    row = _stored_call(proxy, interaction_id)
    assert row["outcome"] == "partial" and row["usage_source"] == "partial"
    assert (row["input_total"], row["cache_write"]) == (1169, 1165)  # from message_start
    assert count_tokens(delivered, "claude-test") <= row["output_total"] < 201
    assert "delivered" in row["notes"]


def test_a_task_id_in_any_case_is_one_task(tmp_path, upstream):
    proxy = _start(tmp_path, upstream)
    try:
        meter(proxy, "set-task", "P1-010", check=True)
        meter(proxy, "set-task", "p1-010", check=True)
        with httpx.Client() as client:
            ids = [
                _post(client, proxy),
                _post(client, proxy, f"/t/p1-010/openai{CHAT}"),
                client.post(f"{proxy.origin}/openai{CHAT}", json=CHAT_ARGS, headers={"x-meter-task": "p1-010"}).headers[
                    "x-meter-interaction-id"
                ],
            ]
        rows = _stored(proxy.db_path, 3)
        report = meter(proxy, "report", "phase", "p1", "--format", "json", check=True).stdout
        listing = meter(proxy, "tasks", "--json", check=True).stdout
    finally:
        proxy.stop()
    assert {rows[i]["task_id"] for i in ids} == {"P1-010"}
    phase = json.loads(report)
    assert phase["ai_interactions_total"] == 3 and phase["total_tokens_used"] == 3 * 109
    assert [(t["task_id"], t["phase_id"]) for t in json.loads(listing)] == [("P1-010", "P1")]


def _recorder_of(proxy: RunningProxy) -> int:
    (pid,) = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children").read_text().split()
    return int(pid)


def test_a_stalled_recorder_and_an_unwritable_spool_keep_memory_bounded_and_count_every_loss(tmp_path, upstream):
    big = _chat(usage='{"prompt_tokens":7,"completion_tokens":8}')[:-1] + b',"padding":"' + b"x" * 200_000 + b'"}'
    upstream.routes["/big" + CHAT] = Scenario(body=big)
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(
        tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "big": f"{origin}/big"}, max_pending_mb=0.25
    )
    proxy = RunningProxy(config, tmp_path / "meter.db")
    spool = callfile.spool_path(proxy.db_path)
    # A query of 1 KB: without their bodies, the calls are still more than the proxy
    # may hold (1.25 times the limit), however they are batched.
    path = f"/big{CHAT}?padding={'x' * 1000}"
    try:
        recorder = _recorder_of(proxy)
        os.kill(recorder, signal.SIGSTOP)  # it reads nothing and acknowledges nothing
        spool.touch()
        _immutable([spool], True)  # and the spool cannot be written
        with httpx.Client(limits=httpx.Limits(max_connections=32)) as client:
            ids = [_post(client, proxy, path)]  # alone, within the limit: handed over whole
            deadline = time.monotonic() + 30
            while not unread_input(recorder):
                assert time.monotonic() < deadline, "the first call was never handed over"
                time.sleep(0.02)

            def calls():
                for _ in range(30):
                    ids.append(_post(client, proxy, path))

            assert run_concurrently(calls, 20) == []
        rss_kb = int(
            next(
                line for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines() if line.startswith("VmRSS")
            ).split()[1]
        )
        _immutable([spool], False)
        os.kill(recorder, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:  # until every call is stored or counted as lost
            status = subprocess.run(
                [str(VENV_BIN / "meter"), "status", "--json", "--db", str(proxy.db_path)], capture_output=True, text=True
            )
            (running,) = json.loads(status.stdout)["proxies"]
            rows = _stored(proxy.db_path, 0)
            if len(rows) + running["dropped_calls"] >= len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        _immutable([spool], False)
        proxy.stop()
    assert len(ids) == 601
    # 601 calls of 200 KB were 120 MB: the proxy held at most about its 0.25 MB limit.
    assert rss_kb < 200_000
    assert set(rows) <= set(ids) and len(rows) + running["dropped_calls"] == 601 and running["dropped_calls"] > 0
    full = [r for r in rows.values() if r["notes"] is None]
    slim = [r for r in rows.values() if r["notes"] and "bodies dropped" in r["notes"]]
    assert len(full) + len(slim) == len(rows) and full and slim
    assert all((r["input_total"], r["output_total"]) == (7, 8) for r in full)


def test_a_100_mb_stream_keeps_its_usage_and_small_calls_pass_beside_it(tmp_path, upstream):
    line = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 900 + b'"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":99999}}\n\ndata: [DONE]\n\n'
    body = line * (100 * 1024 * 1024 // len(line)) + usage
    upstream.routes["/huge" + CHAT] = Scenario(body=body, content_type="text/event-stream", chunk_size=65536)
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(
        tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "huge": f"{origin}/huge"}, max_parsed_body_mb=8
    )
    proxy = RunningProxy(config, tmp_path / "meter.db")
    try:
        small_ids, received = [], 0
        with httpx.Client() as client, httpx.Client() as streaming:
            with streaming.stream(
                "POST", f"{proxy.origin}/huge{CHAT}", json={**CHAT_ARGS, "stream": True}, timeout=120
            ) as response:
                huge_id = response.headers["x-meter-interaction-id"]
                for chunk in response.iter_raw():
                    received += len(chunk)
                    if len(small_ids) < 5 and received > len(small_ids) * 10_000_000:
                        small_ids.append(_post(client, proxy))
        rows = _stored(proxy.db_path, 6, timeout=60)
    finally:
        proxy.stop()
    assert received == len(body) - len(usage) + len(b"data: [DONE]\n\n")  # the usage event the meter asked for was removed
    assert set(rows) == {huge_id, *small_ids}
    huge = rows[huge_id]
    assert (huge["input_total"], huge["output_total"], huge["usage_source"]) == (11, 99999, "reported")
    assert "past the parse limit" in huge["notes"]
    assert all(rows[i]["input_total"] == 92 for i in small_ids)


def _recorder_sabotage(folder: Path, code: str) -> dict:
    """An environment whose recorder processes (only those) run `code` first:
    what a broken install or a crash in a C extension would do to them."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\nif 'taskmeter.recorder' in sys.orig_argv:\n" + "".join(f"    {line}\n" for line in code.splitlines())
    )
    return {"PYTHONPATH": str(folder)}


def test_a_recorder_that_cannot_run_is_reported_once_and_the_calls_wait_in_the_spool(tmp_path, upstream):
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin})
    broken = _recorder_sabotage(tmp_path / "broken", "import os\nos._exit(7)")
    proxy = RunningProxy(config, tmp_path / "meter.db", extra_env=broken)
    spool = callfile.spool_path(proxy.db_path)
    try:
        with httpx.Client() as client:
            deadline = time.monotonic() + 20
            while "NOT RECORDING" not in proxy.stderr() and time.monotonic() < deadline:
                time.sleep(0.1)
            ids = [_post(client, proxy) for _ in range(3)]  # clients notice nothing
        deadline = time.monotonic() + 10
        while callfile.count_lines(spool) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = subprocess.run([str(VENV_BIN / "meter"), "status", "--db", str(proxy.db_path)], capture_output=True, text=True)
        as_json = subprocess.run(
            [str(VENV_BIN / "meter"), "status", "--json", "--db", str(proxy.db_path)], capture_output=True, text=True
        )
    finally:
        proxy.stop()
    assert proxy.stderr().count("NOT RECORDING") == 1  # said once, loudly
    assert "NOT RECORDING: the recorder process cannot run (exit code 7)" in status.stdout
    assert "calls wait in the spool" in status.stdout
    (running,) = json.loads(as_json.stdout)["proxies"]
    assert running["recording"].startswith("the recorder process cannot run")
    assert callfile.count_lines(spool) >= 3
    restarted = RunningProxy(config, tmp_path / "meter.db")  # a working install replays the spool
    try:
        rows = _stored(tmp_path / "meter.db", 3)
    finally:
        restarted.stop()
    assert set(ids) <= set(rows) and not spool.exists()


def test_a_batch_that_crashed_two_recorders_in_a_row_is_quarantined(tmp_path, upstream):
    upstream.routes["/crash" + CHAT] = Scenario(body=_chat(model='"CRASH-ME"'))
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "crash": f"{origin}/crash"})
    # A hard crash on one batch, as a segfault in a parser would be.
    crashing = _recorder_sabotage(
        tmp_path / "crashing",
        "import os, pickle\n"
        "loads = pickle.loads\n"
        "def crash_on_marker(data, *args, **kwargs):\n"
        "    if b'CRASH-ME' in data:\n"
        "        os._exit(9)\n"
        "    return loads(data, *args, **kwargs)\n"
        "pickle.loads = crash_on_marker",
    )
    proxy = RunningProxy(config, tmp_path / "meter.db", extra_env=crashing)
    quarantine = callfile.quarantine_path(proxy.db_path)
    try:
        with httpx.Client() as client:
            before = _post(client, proxy)
            _stored(proxy.db_path, 1)
            poison = _post(client, proxy, f"/crash{CHAT}")
            deadline = time.monotonic() + 20
            while not quarantine.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            after = _post(client, proxy)
            rows = _stored(proxy.db_path, 2)
        status = subprocess.run([str(VENV_BIN / "meter"), "status", "--db", str(proxy.db_path)], capture_output=True, text=True)
    finally:
        proxy.stop()
    assert set(rows) == {before, after}
    (line,) = quarantine.read_text().splitlines()
    assert json.loads(line)["id"] == poison and "2 recorders in a row died" in json.loads(line)["quarantined_because"]
    assert "1 calls could not be stored and are kept in" in status.stdout
    assert proxy.stderr().count("exited (exit code 9)") == 2
