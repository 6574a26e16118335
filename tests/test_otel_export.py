"""OpenTelemetry export, end to end: the official SDKs -> a real `meter proxy` ->
its recorder -> a loopback OTLP/HTTP receiver decoding the protobuf with
opentelemetry-proto. A collector that is down, refuses or hangs loses no local
row and costs only a line in `meter status`; no endpoint, no SDK loaded."""

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import openai
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from taskmeter.errors import MeterError
from taskmeter.handover.pipe import HEADER
from taskmeter.store import connection
from taskmeter.telemetry import Endpoints, resolve, resource_attributes
from taskmeter.timefmt import from_stored
from tests.captured import chat_call
from tests.conftest import run_concurrently
from tests.fake_upstream import FakeUpstream, Scenario
from tests.meter_forks import METER
from tests.proxy_harness import VENV_BIN, RunningProxy, write_config

API_KEY = "sk-test-otel-4242"
DEVELOPER = "ada@example.com"
# The developer as git says it, whatever the machine's own git config (command-line level wins).
GIT_IDENTITY = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.email", "GIT_CONFIG_VALUE_0": DEVELOPER}
# Export at once in the tests (the SDK's own variables: batch delay and metric interval, in ms).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "200"}

ANTHROPIC_REPLY = {
    "id": "msg_otel_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "text", "text": "Hello."}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 50},
}
OPENAI_REPLY = {
    "id": "chatcmpl-otel-2",
    "object": "chat.completion",
    "created": 1,
    "model": "o4-mini-2025-04-16",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 40,
        "total_tokens": 52,
        "completion_tokens_details": {"reasoning_tokens": 32},
    },
}


class OtlpReceiver:
    """A loopback OTLP/HTTP collector: `answer` is "ok", "fail" (HTTP 500) or
    "hang" (never answers until closed). Keeps the spans and metric requests it took."""

    def __init__(self, answer: str = "ok") -> None:
        self.answer = answer
        self.spans: list[tuple[dict, Span]] = []  # (resource attributes, span)
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.attempts = 0
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.attempts += 1
                receiver.authorizations.append(self.headers.get("authorization"))
                if receiver.answer == "hang":
                    receiver._released.wait(60)
                    return
                if receiver.answer == "fail":
                    self._reply(500, b"collector broken", "text/plain")
                    return
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        resource = attributes_of(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans += [(resource, span) for span in scope_spans.spans]
                    self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")
                elif self.path == "/v1/metrics":
                    receiver.metric_requests.append(ExportMetricsServiceRequest.FromString(body))
                    self._reply(200, ExportMetricsServiceResponse().SerializeToString(), "application/x-protobuf")
                else:
                    self._reply(404, b"no such signal", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def spans_named(self, call_id: str) -> list[tuple[dict, Span]]:
        return [
            (resource, span) for resource, span in self.spans if attributes_of(span.attributes)["taskmeter.call.id"] == call_id
        ]

    def histogram_points(self, name: str) -> list:
        """The data points of the metric `name` in the latest request that has it (cumulative)."""
        for request in reversed(self.metric_requests):
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name == name:
                            return [(metric, point) for point in metric.histogram.data_points]
        return []


def attributes_of(key_values) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in key_values}


def wait_for(condition, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port_closed() -> str:
    """An endpoint on a loopback port nothing listens on."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


def no_otel_environment() -> dict:
    """This test's environment without the machine's OTEL_* variables, with a known developer."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return {**env, **GIT_IDENTITY, **FAST_EXPORT}


def start_proxy(tmp_path: Path, upstream: FakeUpstream, endpoint: str | None, **env) -> RunningProxy:
    origin = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin, "anthropic": origin})
    if endpoint:
        config.write_text(config.read_text() + f'[otel]\nendpoint = "{endpoint}"\n')
    return RunningProxy(config, tmp_path / "meter.db", extra_env={**no_otel_environment(), **env})


def stored_rows(db_path: Path) -> dict[str, dict]:
    db = connection.connect(db_path)
    try:
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM interactions")}
    finally:
        db.close()


def nanoseconds(stored: str) -> int:
    moment = from_stored(stored)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        fake.routes["/v1/messages"] = Scenario(body=json.dumps(ANTHROPIC_REPLY).encode())
        fake.routes["/v1/chat/completions"] = Scenario(body=json.dumps(OPENAI_REPLY).encode())
        fake.routes["/v1/responses"] = Scenario(status=500, body=b'{"error":{"message":"overloaded","type":"server_error"}}')
        yield fake


def meter_status(db_path: Path) -> str:
    """`meter status`, as the tests poll it: a fork of the preloaded meter (tests/meter_forks.py)."""
    done = METER.run(["status", "--db", str(db_path)], env=no_otel_environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def meter_status_json(db_path: Path) -> str:
    done = METER.run(["status", "--json", "--db", str(db_path)], env=no_otel_environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.e2e
def test_each_stored_call_is_one_span_with_every_attribute_and_the_metrics_data_points(tmp_path, upstream):
    receiver = OtlpReceiver()
    # Headers (a collector's API key) come from the standard variable, never from our config file.
    proxy = start_proxy(tmp_path, upstream, receiver.endpoint, OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20t0ken")
    try:
        claude = anthropic.Anthropic(base_url=f"{proxy.origin}/t/P7-001/anthropic", api_key=API_KEY, max_retries=0)
        reply = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        cached_id = reply.headers["x-meter-interaction-id"]
        gpt = openai.OpenAI(base_url=f"{proxy.origin}/t/P7-001/openai/v1", api_key=API_KEY, max_retries=0)
        thought_id = gpt.chat.completions.with_raw_response.create(
            model="o4-mini", messages=[{"role": "user", "content": "2+2?"}]
        ).headers["x-meter-interaction-id"]
        with pytest.raises(openai.InternalServerError) as refused:
            gpt.responses.create(model="gpt-4.1", input="hi")
        failed_id = refused.value.response.headers["x-meter-interaction-id"]
        wait_for(lambda: len(receiver.spans) >= 3, "three spans")
        wait_for(lambda: receiver.histogram_points("gen_ai.client.operation.duration"), "the duration metric")
    finally:
        assert proxy.stop() == 0
        receiver.close()
    rows = stored_rows(proxy.db_path)
    assert set(rows) == {cached_id, thought_id, failed_id}
    assert receiver.authorizations and set(receiver.authorizations) == {"Bearer t0ken"}
    # The proxy said where calls go, once, at its start.
    said = f"stored calls are exported to OpenTelemetry: {receiver.endpoint}/v1/traces, {receiver.endpoint}/v1/metrics"
    assert proxy.stderr().count(said) == 1

    # Every stored call exactly once (the flush at the end sent nothing twice).
    (resource, cached), *others = receiver.spans_named(cached_id)
    assert not others
    assert resource["service.name"] == "taskmeter"
    row = rows[cached_id]
    assert row["cost_usd"] > 0 and row["conversation_id"] and row["session_id"] and row["client"].startswith("Anthropic/Python")
    assert attributes_of(cached.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5-20251001",
        "gen_ai.response.id": "msg_otel_1",
        "gen_ai.conversation.id": row["conversation_id"],
        "gen_ai.usage.input_tokens": 420,  # inclusive: 100 + 20 written + 300 read
        "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.cache_read.input_tokens": 300,
        "gen_ai.usage.cache_write.input_tokens": 20,
        "gen_ai.usage.cache_creation.input_tokens": 20,
        "http.response.status_code": 200,
        "taskmeter.call.id": cached_id,
        "taskmeter.task.id": "P7-001",
        "taskmeter.phase.id": "P7",
        "taskmeter.cost.usd": row["cost_usd"],
        "taskmeter.cost.basis": "api",
        "taskmeter.usage.source": "reported",
        "taskmeter.outcome": "complete",
        "taskmeter.session.id": row["session_id"],
        "taskmeter.client": row["client"],
        "taskmeter.developer": DEVELOPER,
    }
    assert cached.name == "chat claude-haiku-4-5"
    assert cached.kind == Span.SPAN_KIND_CLIENT
    assert cached.status.code == Status.STATUS_CODE_UNSET
    # The call's own times, to the microsecond, not the export's.
    assert (cached.start_time_unix_nano, cached.end_time_unix_nano) == (
        nanoseconds(row["started_at"]),
        nanoseconds(row["ended_at"]),
    )

    (_, thought), *others = receiver.spans_named(thought_id)
    assert not others
    thought_attributes = attributes_of(thought.attributes)
    assert thought_attributes["gen_ai.usage.reasoning.output_tokens"] == 32
    assert thought_attributes["gen_ai.usage.output_tokens"] == 40
    assert (thought_attributes["gen_ai.request.model"], thought_attributes["gen_ai.response.model"]) == (
        "o4-mini",
        "o4-mini-2025-04-16",
    )
    assert thought_attributes["gen_ai.provider.name"] == "openai"

    # A failed call (the store's one rule: no usage, HTTP 500) is an error span.
    (_, failed), *others = receiver.spans_named(failed_id)
    assert not others
    failed_attributes = attributes_of(failed.attributes)
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert failed_attributes["error.type"] == "500"
    assert "gen_ai.usage.input_tokens" not in failed_attributes  # no usage stated: none invented

    # Metrics: token usage per type, and one duration per call.
    tokens = {
        (attributes_of(point.attributes)["gen_ai.token.type"], attributes_of(point.attributes)["gen_ai.request.model"]): point
        for _, point in receiver.histogram_points("gen_ai.client.token.usage")
    }
    assert {key: (point.count, point.sum) for key, point in tokens.items()} == {
        ("input", "claude-haiku-4-5"): (1, 420),
        ("output", "claude-haiku-4-5"): (1, 50),
        ("input", "o4-mini"): (1, 12),
        ("output", "o4-mini"): (1, 40),
    }
    metric, _ = receiver.histogram_points("gen_ai.client.token.usage")[0]
    assert metric.unit == "{token}"
    assert attributes_of(tokens[("input", "claude-haiku-4-5")].attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5-20251001",
        "gen_ai.token.type": "input",
        "taskmeter.task.id": "P7-001",
    }
    durations = {
        attributes_of(point.attributes)["gen_ai.request.model"]: point
        for _, point in receiver.histogram_points("gen_ai.client.operation.duration")
    }
    assert {model: point.count for model, point in durations.items()} == {"claude-haiku-4-5": 1, "o4-mini": 1, "gpt-4.1": 1}
    assert attributes_of(durations["gpt-4.1"].attributes)["error.type"] == "500"
    call_seconds = (nanoseconds(row["ended_at"]) - nanoseconds(row["started_at"])) / 1e9
    assert durations["claude-haiku-4-5"].sum == pytest.approx(call_seconds)
    duration_metric, _ = receiver.histogram_points("gen_ai.client.operation.duration")[0]
    assert duration_metric.unit == "s"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("collector", "cause"),
    [("closed", "connection refused"), ("fail", "HTTP 500 Internal Server Error"), ("hang", "timed out")],
)
def test_a_dead_collector_loses_no_call_and_costs_one_status_line(tmp_path, upstream, collector, cause):
    receiver = None if collector == "closed" else OtlpReceiver(collector)
    endpoint = free_port_closed() if receiver is None else receiver.endpoint
    # A hanging collector is given up on after a second (the Python SDK reads this variable in seconds).
    proxy = start_proxy(tmp_path, upstream, endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1")
    ids: list[str] = []
    try:
        gpt = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key=API_KEY, max_retries=0)

        def call():
            reply = gpt.chat.completions.with_raw_response.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}])
            ids.append(reply.headers["x-meter-interaction-id"])

        assert run_concurrently(call, 8) == []
        for _ in range(12):
            call()
        # One line per failing endpoint, each with the cause: the traces' (the metrics' may come
        # first, or join once their first export is due).
        traces_line = f"telemetry: export to {endpoint}/v1/traces failing since"
        status = wait_for(
            lambda: (text := meter_status(proxy.db_path)) and traces_line in text and text, "the traces' status line"
        )
        lines = [line for line in status.splitlines() if "telemetry:" in line]
        assert all(f"({cause})" in line and f"export to {endpoint}/v1/" in line for line in lines), status
        failing = json.loads(meter_status_json(proxy.db_path))["telemetry"]["failing"]
        assert failing[f"{endpoint}/v1/traces"]["cause"] == cause
        # The proxy keeps recording while export fails.
        for _ in range(5):
            call()
    finally:
        assert proxy.stop() == 0
        if receiver is not None:
            receiver.close()
    rows = stored_rows(proxy.db_path)
    assert sorted(rows) == sorted(ids) and len(ids) == 25
    assert all(row["output_total"] == 40 for row in rows.values())
    # The proxy's terminal is not flooded with the SDK's retries.
    assert "Failed to export" not in proxy.stderr() and "Traceback" not in proxy.stderr()
    # Once the proxy is gone, status no longer speaks of export.
    assert "telemetry:" not in meter_status(proxy.db_path)


@pytest.mark.e2e
def test_recovery_clears_the_status_line(tmp_path, upstream):
    receiver = OtlpReceiver("fail")
    proxy = start_proxy(tmp_path, upstream, receiver.endpoint)
    try:
        gpt = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key=API_KEY, max_retries=0)
        gpt.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: "(HTTP 500" in meter_status(proxy.db_path), "the failure line")
        receiver.answer = "ok"
        last = gpt.chat.completions.with_raw_response.create(model="o4-mini", messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: receiver.spans_named(last.headers["x-meter-interaction-id"]), "the span after recovery")
        wait_for(lambda: "/v1/traces failing" not in meter_status(proxy.db_path), "the line to go")
    finally:
        assert proxy.stop() == 0
        receiver.close()


def _recorder_imports(tmp_path: Path, *args: str) -> str:
    """Run the real recorder process on one captured call (as the proxy hands it
    over) and return what it imported (`python -X importtime` reports each module)."""
    request = {"model": "o4-mini", "messages": [{"role": "user", "content": "hi"}]}
    call = chat_call("0000000000000001", request, json.dumps(OPENAI_REPLY).encode())
    payload = pickle.dumps([call])
    db_path = tmp_path / "meter.db"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "taskmeter.recorder", str(db_path), *args],
        input=HEADER.pack(len(payload), 1) + payload,
        capture_output=True,
        env=no_otel_environment(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert list(stored_rows(db_path)) == ["0000000000000001"]
    return done.stderr.decode()


@pytest.mark.e2e
def test_no_endpoint_no_sdk_in_the_recorder(tmp_path):
    imported = _recorder_imports(tmp_path)
    assert "taskmeter.recorder.loop" in imported
    assert "opentelemetry" not in imported and "taskmeter.telemetry" not in imported
    # With an endpoint the same process loads it: the check above can fail.
    exporting = tmp_path / "exporting"
    exporting.mkdir()
    with_export = _recorder_imports(exporting, "--otel-traces-endpoint", free_port_closed() + "/v1/traces")
    assert "opentelemetry.sdk.trace" in with_export


@pytest.mark.e2e
def test_a_malformed_endpoint_is_one_line_at_config_check_and_proxy_start(tmp_path, upstream):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    good = config.read_text()
    config.write_text(good + '[otel]\nendpoint = "localhost:4318"\n')
    checked = subprocess.run(
        [str(VENV_BIN / "meter"), "config", "check", str(config)], capture_output=True, text=True, env=no_otel_environment()
    )
    assert checked.returncode != 0
    assert checked.stderr.strip().count("\n") == 0 and "otel.endpoint" in checked.stderr and "localhost:4318" in checked.stderr
    assert "Traceback" not in checked.stderr

    config.write_text(good)
    env = {**no_otel_environment(), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:notaport"}
    started = subprocess.run(
        [str(VENV_BIN / "meter"), "proxy", "--port", "0", "--config", str(config), "--db", str(tmp_path / "meter.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert started.returncode != 0
    assert started.stderr.strip().count("\n") == 0, started.stderr
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in started.stderr and "Traceback" not in started.stderr
    checked = subprocess.run([str(VENV_BIN / "meter"), "config", "check", str(config)], capture_output=True, text=True, env=env)
    assert checked.returncode != 0 and "OTEL_EXPORTER_OTLP_ENDPOINT" in checked.stderr


@pytest.mark.e2e
def test_meter_run_gives_the_agent_its_task_in_otel_resource_attributes(tmp_path, upstream):
    config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
    env = {**no_otel_environment(), "OTEL_RESOURCE_ATTRIBUTES": "service.name=claude%20code,taskmeter.task.id=OLD-1"}
    done = subprocess.run(
        [
            str(VENV_BIN / "meter"),
            "run",
            "--config",
            str(config),
            "--db",
            str(tmp_path / "meter.db"),
            "--task",
            "P9-042",
            "--create",
            "--",
            sys.executable,
            "-c",
            "import os; print(os.environ['OTEL_RESOURCE_ATTRIBUTES'])",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "service.name=claude%20code,taskmeter.task.id=P9-042,taskmeter.phase.id=P9,taskmeter.developer=ada%40example.com"
    )


def test_resource_attributes_merge_and_percent_encode():
    assert resource_attributes(None, {"taskmeter.task.id": "P1-010", "taskmeter.developer": None}) == "taskmeter.task.id=P1-010"
    assert (
        resource_attributes("a=1, taskmeter.task.id=X ,broken", {"taskmeter.task.id": "T 1,=%"})
        == "a=1,taskmeter.task.id=T%201%2C%3D%25"
    )


def test_where_export_goes_follows_the_config_then_the_specifications_variables():
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318/"}
    assert resolve(None, {}) == Endpoints(None, None)
    assert resolve(None, base) == Endpoints("http://env:4318/v1/traces", "http://env:4318/v1/metrics")
    # [otel] endpoint is the meter's own setting: it wins over the variables.
    assert resolve("https://collector.example/otlp/", base) == Endpoints(
        "https://collector.example/otlp/v1/traces", "https://collector.example/otlp/v1/metrics"
    )
    # A signal's own variable is used as it is, before the base one.
    own = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom"}
    assert resolve(None, own) == Endpoints("http://traces:9999/custom", "http://env:4318/v1/metrics")
    assert resolve(None, {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:1/x"}) == Endpoints(None, "http://m:1/x")
    assert resolve("http://c:4318", {"OTEL_SDK_DISABLED": "true"}) == Endpoints(None, None)
    # gRPC is not what the meter speaks: that signal is left out, and said once.
    grpc = resolve(None, {**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert (grpc.traces, grpc.metrics) == (None, "http://env:4318/v1/metrics")
    assert len(grpc.notes) == 1 and "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in grpc.notes[0]
    assert grpc.recorder_args() == ["--otel-metrics-endpoint", "http://env:4318/v1/metrics"]


@pytest.mark.parametrize(
    ("configured", "environ", "named"),
    [
        ("localhost:4318", {}, "otel.endpoint"),
        ("http://c:4318?x=1", {}, "otel.endpoint"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:port/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ],
)
def test_a_malformed_endpoint_names_where_it_came_from(configured, environ, named):
    with pytest.raises(MeterError) as refused:
        resolve(configured, environ)
    assert str(refused.value).startswith(f"{named}: ") and "\n" not in str(refused.value)
