"""The recorder's OpenTelemetry export: one span per stored call, in the GenAI
semantic conventions, and the gen_ai.client.* metrics (docs/telemetry.md).

Best effort, never the system of record, and off the recording path: after the
store's commit, the recorder hands the calls' IDs to `CallExport.stored`, which
only queues them (a bounded queue; past it, calls are not exported and the count
says so). A thread of its own reads the stored rows (the one failed-call rule is
SQL: store/interactions.py FAILED_CALL_SQL) and makes the spans and data points;
the SDK's BatchSpanProcessor (its own bounded queue, max_queue_size) and
periodic metric reader send them over OTLP/HTTP from their threads. The SDK is
imported by that thread, so the recorder starts as fast with export as without.

A collector that is down, refuses or hangs costs nothing but a line in
`meter status`: each HTTP attempt's outcome goes to the state file beside the
database (telemetry/__init__.py), written only when it changes. The SDK's own
log lines (a warning per failed batch) are silenced: that file says it once.
"""

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from taskmeter.store.calls import CallRow
from taskmeter.store.interactions import FAILED_CALL_SQL
from taskmeter.telemetry import developer, state_path
from taskmeter.timefmt import from_stored, now_stored

log = logging.getLogger(__name__)

# Batches of stored calls waiting for the export thread (a batch is one transaction's calls).
QUEUE_BATCHES = 1024
# How long the recorder waits, at its end, for what is queued to be sent.
CLOSE_SECONDS = 2.0
_QUERY_CHUNK = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The GenAI conventions' well-known gen_ai.provider.name values, by the meter's provider names.
PROVIDER_NAMES = {
    "openai": "openai",
    "chatgpt": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "code_assist": "gcp.gen_ai",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
}
# The explicit bucket boundaries the conventions advise for each metric.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]


def operation_name(operation: str, protocol: str | None) -> str:
    """gen_ai.operation.name: a generation is `chat` (Gemini's is `generate_content`)."""
    if operation == "generate":
        return "generate_content" if protocol in ("gemini", "code_assist") else "chat"
    return operation  # count_tokens, other: no well-known name


def _nanoseconds(stored: str) -> int:
    return (from_stored(stored) - _EPOCH) // timedelta(microseconds=1) * 1000


def span_attributes(row: sqlite3.Row, request_model: str | None, response_model: str | None, developer: str | None) -> dict:
    """Every attribute of a stored call's span; a value the call lacks is left out."""
    attributes = {
        "gen_ai.operation.name": operation_name(row["operation"], row["protocol"]),
        "gen_ai.provider.name": PROVIDER_NAMES.get(row["provider"] or "", row["provider"]),
        "gen_ai.request.model": request_model or row["model"],
        "gen_ai.response.model": response_model,
        "gen_ai.response.id": row["response_id"],
        "gen_ai.conversation.id": row["conversation_id"],
        "gen_ai.usage.input_tokens": row["input_total"],
        "gen_ai.usage.output_tokens": row["output_total"],
        "gen_ai.usage.cache_read.input_tokens": row["cache_read"],
        "gen_ai.usage.cache_write.input_tokens": row["cache_write"],
        # The older name of cache_write, which some backends still read.
        "gen_ai.usage.cache_creation.input_tokens": row["cache_write"],
        "gen_ai.usage.reasoning.output_tokens": row["reasoning"],
        "http.response.status_code": row["http_status"],
        "taskmeter.call.id": row["id"],
        "taskmeter.task.id": row["task_id"],
        "taskmeter.phase.id": row["phase_id"],
        "taskmeter.cost.usd": row["cost_usd"],
        "taskmeter.cost.basis": row["price_basis"],
        "taskmeter.usage.source": row["usage_source"],
        "taskmeter.outcome": row["outcome"],
        "taskmeter.session.id": row["session_id"],
        "taskmeter.client": row["client"],
        "taskmeter.developer": developer,
    }
    if row["failed"]:
        attributes["error.type"] = error_type(row)
    return {name: value for name, value in attributes.items() if value is not None}


def error_type(row: sqlite3.Row) -> str:
    """error.type of a failed call: its HTTP status, the meter's refusal, or its outcome."""
    if row["http_status"] and row["http_status"] >= 400:
        return str(row["http_status"])
    if row["blocked"]:
        return f"blocked_by_{row['blocked']}"
    return row["outcome"] or "failed"


def metric_attributes(span: dict) -> dict:
    """The data points' attributes: the conventions' few, and the task."""
    kept = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "error.type")
    return {name: span[name] for name in (*kept, "taskmeter.task.id") if name in span}


class ExportState:
    """What `meter status` says of export: the endpoints failing (since when, why)
    and the calls not exported. Written (atomically) only when it changes."""

    def __init__(self, db_path: Path) -> None:
        self.path = state_path(db_path)
        self._lock = threading.Lock()
        self._failing: dict[str, dict] = {}
        self._dropped = 0

    def attempt(self, url: str, cause: str | None) -> None:
        """An HTTP attempt to `url` ended: `cause` of failure, or None when it was taken."""
        with self._lock:
            before = self._failing.get(url)
            if cause is None:
                if before is None:
                    return
                del self._failing[url]
            elif before is not None and before["cause"] == cause:
                return
            else:
                self._failing[url] = {"since": before["since"] if before else now_stored(), "cause": cause}
            self._write()

    def dropped(self, calls: int) -> None:
        """`calls` stored calls in all were not exported (queue full, or export could not run)."""
        with self._lock:
            if calls != self._dropped:
                self._dropped = calls
                self._write()

    def _write(self) -> None:
        state = {"pid": os.getpid(), "failing": self._failing, "dropped_calls": self._dropped}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(state))
            os.replace(temporary, self.path)
        except OSError:
            pass  # a full disk: status cannot say it, export goes on as it can

    def remove(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def failure_cause(error: BaseException) -> str:
    """A short reason for a failed HTTP attempt: `connection refused`, `timed out`."""
    import requests

    if isinstance(error, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = current.__cause__ or current.__context__ or nested or getattr(current, "reason", None)
    return type(error).__name__


class CallExport:
    """The recorder's hook: `stored(rows)` after each commit, `close()` at the end."""

    def __init__(self, db_path: Path, traces_endpoint: str | None, metrics_endpoint: str | None) -> None:
        self._db_path = db_path
        self._traces_endpoint = traces_endpoint
        self._metrics_endpoint = metrics_endpoint
        self._batches: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.state = ExportState(db_path)
        self._not_queued = 0  # calls the full queue turned away (counted by the recorder's thread only)
        self._not_exported = 0  # calls the export thread could not export (counted by it only)
        self._db: sqlite3.Connection | None = None
        self._providers: list = []
        self._thread = threading.Thread(target=self._run, name="taskmeter-otel-export", daemon=True)
        self._thread.start()

    def stored(self, rows: Iterable[CallRow]) -> None:
        """Queue the stored calls for export; never waits (a full queue drops them, counted)."""
        batch = [(row.interaction.id, row.request_model, row.response_model) for row in rows]
        if not batch:
            return
        try:
            self._batches.put_nowait(batch)
        except queue.Full:
            self._not_queued += len(batch)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Send what is queued, for up to `timeout` seconds; then give up on it."""
        closing = threading.Thread(target=self._close, args=(timeout,), name="taskmeter-otel-close", daemon=True)
        closing.start()
        closing.join(timeout)
        self.state.remove()

    def _close(self, timeout: float) -> None:
        try:
            self._batches.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join()
        for provider in self._providers:
            provider.shutdown()

    # ------------------------------------------------------------ the export thread

    def _run(self) -> None:
        self.state.dropped(0)  # this recorder's state file, from its start
        try:
            signals: tuple | None = self._start_sdk()
            the_developer = developer()
        except Exception as exc:
            log.exception("meter: OpenTelemetry export cannot start; calls are still recorded")
            for url in filter(None, (self._traces_endpoint, self._metrics_endpoint)):
                self.state.attempt(url, f"export cannot start: {type(exc).__name__}: {exc}")
            signals, the_developer = None, None
        while True:
            try:
                batch = self._batches.get(timeout=1.0)
            except queue.Empty:
                batch = []
            if batch is None:
                if self._db is not None:
                    self._db.close()
                return
            if batch and signals is not None:
                try:
                    self._export(batch, signals, the_developer)
                except Exception:
                    if not self._not_exported:  # said once; `meter status` keeps the count
                        log.exception("meter: calls could not be exported to OpenTelemetry (a bug of ours); recording goes on")
                    self._not_exported += len(batch)
            elif batch:
                self._not_exported += len(batch)
            self.state.dropped(self._not_queued + self._not_exported)

    def _start_sdk(self):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The SDK logs each failed batch; the state file says it once instead.
        sdk_log = logging.getLogger("opentelemetry")
        sdk_log.setLevel(logging.CRITICAL)
        sdk_log.propagate = False
        from taskmeter import __version__

        resource = Resource.create({"service.name": "taskmeter", "service.version": __version__})
        tracer = token_usage = duration = None
        if self._traces_endpoint:
            exporter = OTLPSpanExporter(endpoint=self._traces_endpoint, session=_watched_session(self.state))
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            self._providers.append(tracer_provider)
            tracer = tracer_provider.get_tracer("taskmeter", __version__)
        if self._metrics_endpoint:
            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=self._metrics_endpoint, session=_watched_session(self.state))
            )
            meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            self._providers.append(meter_provider)
            meter = meter_provider.get_meter("taskmeter", __version__)
            token_usage = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            )
            duration = meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
        return tracer, token_usage, duration

    def _stored_rows(self, ids: list[str]) -> list[sqlite3.Row]:
        """The calls as stored, read on a connection of this thread's own, opened on
        first use (the database exists by then) and again when rows are missing
        (the database was made anew under the recorder)."""
        query = (
            f"SELECT i.*, coalesce({FAILED_CALL_SQL.format(r='i')}, 0) AS failed, t.phase_id"
            " FROM interactions i LEFT JOIN tasks t ON t.id = i.task_id"
            f" WHERE i.id IN ({', '.join('?' * len(ids))})"
        )
        rows: list[sqlite3.Row] = []
        for reopen in (self._db is None, True):
            if reopen:
                if self._db is not None:
                    self._db.close()
                self._db = sqlite3.connect(f"file:{quote(str(self._db_path))}?mode=ro", uri=True, timeout=5)
                self._db.row_factory = sqlite3.Row
            assert self._db is not None
            rows = self._db.execute(query, ids).fetchall()
            if len(rows) == len(set(ids)):
                break
        return rows

    def _export(self, batch: list, signals: tuple, the_developer: str | None) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tracer, token_usage, duration = signals

        models = {call_id: (requested, responded) for call_id, requested, responded in batch}
        ids = list(models)
        for start in range(0, len(ids), _QUERY_CHUNK):
            rows = self._stored_rows(ids[start : start + _QUERY_CHUNK])
            self._not_exported += len(ids[start : start + _QUERY_CHUNK]) - len(rows)
            for row in rows:
                attributes = span_attributes(row, *models[row["id"]], the_developer)
                started = _nanoseconds(row["started_at"])
                ended = _nanoseconds(row["ended_at"]) if row["ended_at"] else started
                if tracer is not None:
                    name = " ".join(filter(None, [attributes["gen_ai.operation.name"], attributes.get("gen_ai.request.model")]))
                    span = tracer.start_span(name, kind=SpanKind.CLIENT, start_time=started, attributes=attributes)
                    if row["failed"]:
                        span.set_status(Status(StatusCode.ERROR, row["error"] or attributes["error.type"]))
                    span.end(end_time=ended)
                if token_usage is not None:
                    points = metric_attributes(attributes)
                    for kind, count in (("input", row["input_total"]), ("output", row["output_total"])):
                        if count is not None:
                            token_usage.record(count, {**points, "gen_ai.token.type": kind})
                    duration.record(max(0, ended - started) / 1e9, points)


def _watched_session(state: ExportState):
    """A requests session that tells `state` how each export attempt ended."""
    import requests

    class WatchedSession(requests.Session):
        def request(self, method, url, *args, **kwargs):
            try:
                response = super().request(method, url, *args, **kwargs)
            except Exception as exc:
                state.attempt(url, failure_cause(exc))
                raise
            state.attempt(url, f"HTTP {response.status_code} {response.reason}".strip() if response.status_code >= 400 else None)
            return response

    return WatchedSession()
