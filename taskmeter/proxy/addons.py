"""The mitmproxy addons, one small class per concern, hooks named after events,
added in this order: Gateway (where a call goes, and who may send it),
TaskAttribution (which task it belongs to), Capture (what it says, handed over
when it ends), Guard (whether a budget or a loop refuses it). They pass what
they learn to the next through flow.metadata.

Hooks do in-memory work only. Finished calls go to the hand-over; parsing,
estimation, pricing and SQLite all happen in the recorder process.

mitmproxy calls every addon method named after one of its events, so settings
and state come in through `apply_settings` and `take_state`, never `configure`
or `update` (which mitmproxy calls with option names and flows).
"""

import asyncio
import base64
import binascii
import ipaddress
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from mitmproxy import http

from taskmeter.config import Settings
from taskmeter.errors import MeterError
from taskmeter.handover.call import CapturedCall
from taskmeter.ids import new_id
from taskmeter.proxy import provider_errors, upstream_errors
from taskmeter.proxy.routing import Endpoint, GatewayError, Router, classify
from taskmeter.proxy.stream_usage import include_usage_splice
from taskmeter.proxy.tee import ResponseTee
from taskmeter.recorder.conversation import conversation_id, request_json
from taskmeter.recorder.framing import UnsupportedEncoding, content_decoder
from taskmeter.secrets import is_secret_name
from taskmeter.store.tasks import validate_task_id

TASK_HEADER = "x-meter-task"
PING_PATH = "/_meter/ping"
ID_HEADER = "x-meter-interaction-id"
BUDGET_HEADER = "x-meter-budget"
# flow.metadata keys, each set by one addon for those after it.
_ROUTE = "taskmeter.route"  # Gateway: a metered AI call's Route
_TASK = "taskmeter.task"  # TaskAttribution: (task ID or None, attribution or None)
_CALL = "taskmeter.call"  # Capture: the CapturedCall
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SHUTDOWN = "proxy shut down during the call"
_GATEWAY_ONLY = (
    "taskmeter: clients beyond loopback may use only the gateway (http://HOST:PORT/<upstream>/...); "
    "start the meter with --allow-from CIDR to let this network use it as an HTTPS proxy"
)


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    endpoint: Endpoint
    path_task: str | None  # a /t/<TASK>/ prefix


def _error_response(status: int, message: str) -> http.Response:
    body = json.dumps({"error": {"type": "taskmeter_error", "message": message}})
    return http.Response.make(status, body, {"content-type": "application/json"})


def safe_endpoint(path: str) -> str:
    """The request path with secret query parameters (Gemini's `key=`) redacted."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    query = [(k, "redacted" if is_secret_name(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return f"{parts.path}?{urlencode(query)}"


def task_from_proxy_auth(value: str | None) -> str | None:
    """`meter run --task ID` sets HTTPS_PROXY=http://task:ID@host:port; clients send it
    as Proxy-Authorization: Basic base64("task:ID")."""
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user == "task" and password else None


class Gateway:
    """Where a call goes: `/<upstream>/...` (with an optional `/t/<TASK>/` prefix)
    to its upstream, or, in HTTPS-proxy mode, a known AI host. Only loopback
    clients and --allow-from networks may use the proxy mode; new calls are
    refused while the meter stops."""

    def __init__(self, settings: Settings) -> None:
        self.apply_settings(settings)
        self.draining = False  # stopping: calls in flight finish, no new ones start

    def apply_settings(self, settings: Settings) -> None:
        """At start, and again when the config is reloaded."""
        self._router = Router(settings)
        self._trusted = settings.trusted_networks()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._may_use_proxy_mode(flow):
            flow.response = _error_response(403, _GATEWAY_ONLY)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = _error_response(503, "taskmeter: the meter is stopping; send the call again once it runs")
            return
        request = flow.request
        path_task = None
        if self._addressed_to_us(flow):
            if request.path == PING_PATH:  # `meter doctor`: the gateway answers, nothing leaves the machine
                flow.response = http.Response.make(200, b'{"meter": "ok"}', {"content-type": "application/json"})
                return
            try:
                target = self._router.gateway(request.path)
            except GatewayError as exc:
                flow.response = _error_response(404, f"taskmeter: {exc}")
                return
            request.scheme, request.host, request.port = target.scheme, target.host, target.port
            request.path = target.path
            request.host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            provider, path_task = target.provider, target.task_id
        elif not self._may_use_proxy_mode(flow):
            flow.response = _error_response(403, _GATEWAY_ONLY)
            return
        else:
            provider = self._router.provider_for_host(request.pretty_host)
            if provider is None:
                return
        endpoint = classify(request.method, urlsplit(request.path).path)
        if endpoint is not None:
            flow.metadata[_ROUTE] = Route(provider, endpoint, path_task)

    def _addressed_to_us(self, flow: http.HTTPFlow) -> bool:
        """An origin-form request to the proxy's own address is a gateway request."""
        if flow.client_conn.tls or flow.client_conn.sockname is None:
            return False
        own_host, own_port = flow.client_conn.sockname[:2]
        host = flow.request.host.strip("[]")
        return flow.request.port == own_port and (host == own_host or host in _LOOPBACK)

    def _may_use_proxy_mode(self, flow: http.HTTPFlow) -> bool:
        """HTTPS-proxy mode and absolute-form requests reach any host and port: only
        for loopback clients and the networks named with --allow-from, so that the
        meter is never an open forwarder into this machine's loopback services."""
        address = ipaddress.ip_address(flow.client_conn.peername[0])
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in network for network in self._trusted)


class TaskAttribution:
    """Which task a call belongs to, in this order: the `/t/<TASK>/` prefix, the
    `x-meter-task` header (removed before forwarding), the task `meter run --task`
    put on an HTTPS-proxy tunnel; otherwise the recorder attributes it to the task
    current at its start."""

    def __init__(self) -> None:
        self._tunnel_tasks: dict[str, str] = {}

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        task = task_from_proxy_auth(flow.request.headers.get("proxy-authorization"))
        if task:
            self._tunnel_tasks[flow.client_conn.id] = task
        flow.request.headers.pop("proxy-authorization", None)

    def client_disconnected(self, client) -> None:
        self._tunnel_tasks.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        header_task = flow.request.headers.pop(TASK_HEADER, None)
        route: Route | None = flow.metadata.get(_ROUTE)
        if route is None or flow.response is not None:
            return
        task_id, attribution = self._named_task(flow, route.path_task, header_task)
        if task_id:
            try:
                task_id = validate_task_id(task_id)
            except MeterError as exc:
                flow.response = _error_response(400, f"taskmeter: {exc}")
                return
        flow.metadata[_TASK] = (task_id, attribution)

    def _named_task(self, flow, path_task, header_task) -> tuple[str | None, str | None]:
        if path_task:
            return path_task, "path"
        if header_task:
            return header_task.strip(), "header"
        tunnel_task = self._tunnel_tasks.get(flow.client_conn.id)
        if tunnel_task:
            return tunnel_task, "path"
        return None, None


class Capture:
    """What a metered call sends and receives, kept in a CapturedCall and handed
    over when the call ends."""

    def __init__(self, settings: Settings, submit) -> None:
        self.apply_settings(settings)
        self._submit = submit
        self.live: dict[str, CapturedCall] = {}
        self.shutting_down = False  # calls cut off from now on were aborted by us

    def apply_settings(self, settings: Settings) -> None:
        """At start, and again when the config is reloaded."""
        self._settings = settings
        self._body_limit = settings.proxy.max_parsed_body_mb * 1024 * 1024

    # ---------------------------------------------------------- requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get(_ROUTE)
        if route is None or flow.response is not None:
            return
        task_id, attribution = flow.metadata[_TASK]
        request = flow.request
        call = CapturedCall(
            id=new_id(),
            started=time.time(),
            provider=route.provider,
            protocol=route.endpoint.protocol,
            operation=route.endpoint.operation,
            method=request.method,
            endpoint=safe_endpoint(request.path),
            task_id=task_id,
            attribution=attribution,
            client=request.headers.get("user-agent"),
            client_session=request.headers.get("x-claude-code-session-id"),
        )
        # Plain bodies: nothing to decompress, and the client is not slowed by
        # block-buffered compression (servers may still compress; we decode then).
        request.headers["accept-encoding"] = "identity"
        flow.metadata[_CALL] = call
        self.live[flow.id] = call

    async def request(self, flow: http.HTTPFlow) -> None:
        call: CapturedCall | None = flow.metadata.get(_CALL)
        if call is None:
            return
        call.request_body = flow.request.get_content(strict=False)
        if self._settings.proxy.inject_stream_usage and call.protocol == "openai_chat" and call.operation == "generate":
            await self._ask_for_stream_usage(flow, call)

    @staticmethod
    async def _ask_for_stream_usage(flow: http.HTTPFlow, call: CapturedCall) -> None:
        """OpenAI-compatible streams carry usage only when asked: ask, and strip the
        extra chunk later so the client gets the stream it requested. The request is
        spliced, never re-serialised, so every other byte the client sent (a large
        body, a character cut in half) goes upstream unchanged. A large body is
        scanned in slices, other calls' hooks running in between."""
        if not call.request_body:
            return
        scan = include_usage_splice(call.request_body)
        try:
            while True:
                next(scan)
                await asyncio.sleep(0)
        except StopIteration as finished:
            spliced = finished.value
        if spliced is not None:
            flow.request.content = spliced
            call.injected_usage = True

    # ---------------------------------------------------------- responses

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: CapturedCall | None = flow.metadata.get(_CALL)
        if call is None:
            return
        response = flow.response
        call.status = response.status_code
        call.content_type = response.headers.get("content-type")
        call.content_encoding = response.headers.get("content-encoding")
        response.headers[ID_HEADER] = call.id
        # A server that compresses although asked not to: decode, so the usage
        # event can still be removed; the client gets the plain stream.
        decoder = None
        if call.injected_usage and call.content_encoding:
            try:
                decoder = content_decoder(call.content_encoding)
            except UnsupportedEncoding:
                pass  # passed on as it came; the usage event stays in it
            else:
                response.headers.pop("content-encoding", None)
                response.headers.pop("content-length", None)
                call.content_encoding = None  # what is kept is the decoded stream
        response.stream = ResponseTee(call, self._body_limit, call.injected_usage and not call.content_encoding, decoder)

    def response(self, flow: http.HTTPFlow) -> None:
        call = self._ending(flow)
        if call is None:
            return
        call.outcome = "failed" if call.blocked else "complete"  # a refused call never reached a model
        call.status = flow.response.status_code
        if not call.response_body and flow.response.raw_content:
            # A response mitmproxy made itself (e.g. 502) was not streamed.
            call.response_body += flow.response.raw_content
            call.content_type = flow.response.headers.get("content-type")
        self._submit(call)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self._ending(flow)
        if call is None:
            return
        if flow.response is not None:
            call.status = flow.response.status_code
        if self.shutting_down:
            call.outcome, call.error = "aborted", _SHUTDOWN
        else:
            call.outcome = "partial" if call.first_byte is not None else "failed"
            call.error = flow.error.msg if flow.error else "unknown error"
            call.status = upstream_errors.reply_instead(flow, call.protocol, call.id) or call.status
        self._submit(call)

    def _ending(self, flow: http.HTTPFlow) -> CapturedCall | None:
        """The call of a flow that just ended, no longer live; None if not metered."""
        call = self.live.pop(flow.id, None)
        if call is not None:
            call.ended = time.time()
        return call

    def done(self) -> None:
        """Shutdown drops in-flight flows without an error hook: record them as aborted."""
        for call in self.live.values():
            call.ended = time.time()
            call.outcome, call.error = "aborted", _SHUTDOWN
            self._submit(call)
        self.live.clear()


@dataclass(frozen=True, slots=True)
class GuardState:
    """What the recorder pushes (recorder/guard.py): per task (lower-case) its
    x-meter-budget header and, when spent in block mode, its refusal; the current
    task; bound Claude Code sessions; what loop alerts block."""

    current_task: str | None = None
    tasks: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict)
    blocked_sessions: dict = field(default_factory=dict)
    blocked_conversations: dict = field(default_factory=dict)


class Guard:
    """Budgets and loops, decided on the event loop by dictionary lookups in the
    state the recorder pushes. A refused call gets HTTP 429 in its provider's
    shape with `x-should-retry: false` (the official SDKs and Claude Code then do
    not retry), never reaches the upstream, and is recorded as blocked. Calls in
    flight are never cut. A call is judged on its own task (the /t/ prefix, the
    header, a bound Claude Code session), else on the current one."""

    def __init__(self) -> None:
        self._state = GuardState()

    def take_state(self, state: dict) -> None:
        """From the hand-over's reply thread: one reference swapped, read whole by the hooks."""
        self._state = GuardState(
            state["current_task"],
            state["tasks"],
            state["sessions"],
            state["blocked"]["sessions"],
            state["blocked"]["conversations"],
        )

    def request(self, flow: http.HTTPFlow) -> None:
        call: CapturedCall | None = flow.metadata.get(_CALL)
        state = self._state
        if (
            call is None
            or call.operation != "generate"
            or not (state.tasks or state.blocked_sessions or state.blocked_conversations)
        ):
            return
        refusal = self._loop(call, state)
        kind = "loop"
        if refusal is None:
            guarded = state.tasks.get(self._task(call, state))
            refusal, kind = (guarded["refusal"], "budget") if guarded else (None, None)
        if refusal is None:
            return
        call.blocked, call.error = kind, refusal
        flow.response = http.Response.make(
            429,
            provider_errors.body(call.protocol, 429, kind, refusal),
            {"content-type": "application/json", "x-should-retry": "false"},
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: CapturedCall | None = flow.metadata.get(_CALL)
        state = self._state
        if call is None or not state.tasks:
            return
        guarded = state.tasks.get(self._task(call, state))
        if guarded:
            flow.response.headers[BUDGET_HEADER] = guarded["header"]

    @staticmethod
    def _task(call: CapturedCall, state: GuardState) -> str | None:
        if call.task_id:
            return call.task_id.lower()
        return state.sessions.get(call.client_session) or state.current_task

    @staticmethod
    def _loop(call: CapturedCall, state: GuardState) -> str | None:
        if call.client_session and call.client_session in state.blocked_sessions:
            return state.blocked_sessions[call.client_session]
        if state.blocked_conversations:  # only while a loop is blocked: the request is hashed
            conversation = conversation_id(call.protocol, request_json(call.request_body))
            return state.blocked_conversations.get(conversation)
        return None
