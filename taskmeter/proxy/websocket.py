"""The Responses API over WebSocket (Codex's default transport): every response on
a socket is metered as one call, as the same response over HTTP streaming would be.

A socket carries many responses. The client sends `response.create` frames (the
Responses create body, with `type` and without `stream`); the server answers each
with the events of the SSE stream, as JSON text frames, ending in a terminal event
(`response.completed`, `.failed`, `.incomplete`, or `error`). `stream_id` runs
several responses side by side on one socket. Each response becomes a
CapturedCall whose request body is its create frame (as an HTTP streaming request:
no `type`, `"stream": true`) and whose response body is its server events framed
as SSE, so that the recorder reads it as it reads any Responses stream.

Frames pass through untouched and undelayed: the hooks only copy a frame's bytes
(bounded, as the HTTP tee does) and drop it from the flow, so a socket that lives
for an hour holds only its responses in flight. What cannot be read (binary
frames, text that is not a JSON event, responses cut off by the socket's end) is
recorded with its bytes and the reason, never dropped.

Each create is judged by the Guard as an HTTP call is (budgets in block mode,
loop blocks). A refused one is dropped, never reaching the upstream, and the
client gets the `error` event OpenAI sends for a create it refuses, with the text
of the HTTP 429; the socket stays open. One that must wait for the calls in
flight holds its socket's later frames (only that socket's) until judged, unless
responses of that socket are still streaming: then it is judged on the spend stored.
"""

import json
import logging
import re
import time
from collections import deque

from mitmproxy import ctx, http

from taskmeter import protocols
from taskmeter.config import Settings
from taskmeter.handover.call import CapturedCall
from taskmeter.ids import new_id
from taskmeter.protocols import provider_errors
from taskmeter.proxy.addons import (
    _SHUTDOWN,
    _SOCKET,
    _TASK,
    ID_HEADER,
    Route,
    _error_response,
    client_session,
    safe_endpoint,
)
from taskmeter.proxy.refusals import HOLD, Guard, Refusal
from taskmeter.proxy.routing import subscription_login
from taskmeter.proxy.tee import ResponseTee

log = logging.getLogger(__name__)

_TERMINAL = frozenset(("response.completed", "response.failed", "response.incomplete"))
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_REFUSED = (
    'taskmeter: this meter does not take the Responses API over WebSocket ([proxy] websocket = "refuse"); use HTTP streaming'
)


class _Response:
    """One response in flight on a socket, from its create frame to its terminal event."""

    __slots__ = ("call", "tee", "stream", "response_id", "errored")

    def __init__(self, call: CapturedCall, limit: int, stream) -> None:
        self.call = call
        self.tee = ResponseTee(call, limit, None)  # keeps a bounded copy; sets first_byte
        self.stream = stream  # the client's stream_id; None when it sends none
        self.response_id: str | None = None
        self.errored = False  # an `error` event came; `response.failed` may follow


class _Socket:
    """One metered socket: what its upgrade said, and its responses in flight."""

    def __init__(self, flow: http.HTTPFlow, route: Route, limit: int) -> None:
        request = flow.request
        self.id = new_id()
        self.route = route
        self.task_id, self.attribution = flow.metadata[_TASK]
        self.endpoint = safe_endpoint(request.path)
        self.client = request.headers.get("user-agent")
        self.client_session = client_session(protocols.by_name(route.endpoint.protocol), request.headers)
        self.subscription = subscription_login(route.provider, request.headers.get("authorization"))
        self.limit = limit
        self.waiting: dict[object, deque[_Response]] = {}  # per stream_id: creates not yet answered with response.created
        self.active: dict[object, _Response] = {}  # per stream_id: the response whose events are streaming
        self.by_id: dict[str, _Response] = {}
        self.held: _Response | None = None  # a create waiting for the Guard's verdict
        self.unread: _Response | None = None  # frames the meter could not read, as one call
        self.unread_reasons: dict[str, int] = {}

    def call(self, started: float, operation: str = "generate") -> CapturedCall:
        return CapturedCall(
            id=new_id(),
            started=started,
            provider=self.route.provider,
            protocol=self.route.endpoint.protocol,
            operation=operation,
            method="GET",
            endpoint=self.endpoint,
            task_id=self.task_id,
            attribution=self.attribution,
            client=self.client,
            client_session=self.client_session,
            subscription=self.subscription,
        )

    def open(self) -> list[_Response]:
        queued = [response for queue in self.waiting.values() for response in queue]
        held = [self.held] if self.held is not None else []
        return list(dict.fromkeys([*self.active.values(), *queued, *self.by_id.values(), *held]))

    def forget(self, response: _Response) -> None:
        queue = self.waiting.get(response.stream)
        if queue is not None and response in queue:
            queue.remove(response)
            if not queue:
                del self.waiting[response.stream]
        for stream in [stream for stream, active in self.active.items() if active is response]:
            del self.active[stream]
        if response.response_id is not None:
            self.by_id.pop(response.response_id, None)

    def start(self, response: _Response, stream, response_id: str | None) -> None:
        """A response whose events now stream on `stream`."""
        if response_id is not None:
            response.response_id = response_id
            self.by_id[response_id] = response
        self.active[stream] = response

    def response_for(self, kind: str, event: dict) -> _Response | None:
        """The response a server event belongs to: by response id once known; a
        `response.created` takes the oldest create waiting on its stream; other
        events belong to the response streaming on their stream (or, an error
        before any `response.created`, to the oldest create waiting there)."""
        stream, response_id = _stream_of(event), _response_id_of(event)
        if response_id in self.by_id:
            return self.by_id[response_id]
        if kind == "response.created":
            queue = self.waiting.get(stream) or next(iter(self.waiting.values()), None)  # a server that drops stream_id
            if not queue:
                return None
            response = queue.popleft()
            if not queue:
                del self.waiting[response.stream]
            self.start(response, stream, response_id)
            return response
        if stream in self.active:
            return self.active[stream]
        queue = self.waiting.get(stream)
        if queue:
            return queue[0]
        if len(self.active) == 1:  # a server that drops stream_id on some events
            return next(iter(self.active.values()))
        return None


class ResponsesWebSocket:
    """Meters the Responses API over WebSocket, or refuses the upgrade with 426
    (`[proxy] websocket = "refuse"`), so that the client falls back to HTTP."""

    def __init__(self, settings: Settings, submit, guard: Guard) -> None:
        self.apply_settings(settings)
        self._submit = submit
        self._guard = guard
        self.sockets: dict[str, _Socket] = {}

    def apply_settings(self, settings: Settings) -> None:
        """At start, and again when the config is reloaded."""
        self._refuse = settings.proxy.websocket == "refuse"
        self._body_limit = settings.proxy.max_parsed_body_mb * 1024 * 1024

    def in_flight(self) -> int:
        """Responses started and not yet ended, on every socket."""
        return sum(len(socket.open()) for socket in self.sockets.values())

    # ---------------------------------------------------------- the upgrade

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get(_SOCKET)
        if route is None or flow.response is not None:
            return
        if self._refuse:
            flow.response = _error_response(426, _REFUSED)
            return
        self.sockets[flow.id] = _Socket(flow, route, self._body_limit)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        socket = self.sockets.get(flow.id)
        if socket is None:
            return
        assert flow.response is not None  # mitmproxy calls this hook with the response's headers
        if flow.response.status_code == 101:
            flow.response.headers[ID_HEADER] = socket.id
        else:
            del self.sockets[flow.id]  # not upgraded: no socket, and the reply is not a response

    def error(self, flow: http.HTTPFlow) -> None:
        self._closed(flow, "the connection failed: " + (flow.error.msg if flow.error else "unknown error"))

    # ---------------------------------------------------------- frames

    def websocket_message(self, flow: http.HTTPFlow):
        assert flow.websocket is not None  # mitmproxy calls this hook on a WebSocket flow
        messages = flow.websocket.messages
        socket = self.sockets.get(flow.id)
        try:
            for message in messages if socket is not None else ():
                if message.injected:
                    continue  # the meter's own: an error event refusing a create
                assert socket is not None  # no frame is read without its socket
                if not message.from_client:
                    self._server_frame(socket, message)
                elif (held := self._client_frame(flow, socket, message)) is not None:
                    return held  # mitmproxy awaits it: this socket's frames wait, no other socket's
        except Exception:
            log.exception("meter: a WebSocket frame could not be read; the socket is passed on untouched")
        finally:
            # mitmproxy forwards the frame it holds itself; the meter keeps no frame.
            messages.clear()
        return None

    def _client_frame(self, flow: http.HTTPFlow, socket: _Socket, message):
        """A create opens a call, judged by the Guard as an HTTP call is; a
        coroutine when it must wait for the calls in flight."""
        event, reason = _event(message)
        if event is None:
            _keep_unread(socket, message, f"client {reason}")
            return None
        if event.get("type") != "response.create":
            return None  # response.cancel and the like: no response of their own
        call = socket.call(started=message.timestamp)
        request = {key: value for key, value in event.items() if key != "type"}
        call.request_body = json.dumps({**request, "stream": True}).encode()
        response = _Response(call, socket.limit, _stream_of(event))
        # Responses of its own still streaming on this socket would wait with it:
        # then it is judged on the spend stored, as a call that waited too long.
        verdict = self._guard.judge(call, may_hold=not socket.open())
        if verdict is HOLD:
            socket.held = response
            return self._hold(flow, socket, message, response)
        self._judged(flow, socket, message, response, verdict)
        return None

    async def _hold(self, flow: http.HTTPFlow, socket: _Socket, message, response: _Response) -> None:
        verdict = await self._guard.held(response.call)
        if socket.held is not response:
            return  # the socket ended meanwhile, and the call with it
        socket.held = None
        try:
            self._judged(flow, socket, message, response, verdict)
        except Exception:
            log.exception("meter: a WebSocket frame could not be read; the socket is passed on untouched")

    def _judged(self, flow: http.HTTPFlow, socket: _Socket, message, response: _Response, verdict: Refusal | None) -> None:
        if verdict is None:
            socket.waiting.setdefault(response.stream, deque()).append(response)
            return
        # Refused: the upstream never sees the frame, the client gets the error
        # event OpenAI sends for a create it refuses, with the HTTP 429's text.
        message.drop()
        call = response.call
        verdict.mark(call)
        error = json.loads(provider_errors.body(call.protocol, 429, verdict.cause, verdict.message))["error"]
        event = {"type": "error", "status": 429, "error": error}
        if response.stream is not None:
            event["stream_id"] = response.stream
        frame = json.dumps(event).encode()
        ctx.master.commands.call("inject.websocket", flow, True, frame, True)
        call.status, call.content_type = 429, "text/event-stream"
        response.tee(_as_sse("error", frame))
        self._finish(call, "failed", verdict.message)

    def _server_frame(self, socket: _Socket, message) -> None:
        event, reason = _event(message)
        if event is None:
            _keep_unread(socket, message, f"server {reason}")
            return
        kind = event["type"]
        if kind == "response.created":
            self._supersede(socket, event)
        response = socket.response_for(kind, event)
        if response is None:
            if not (kind.startswith("response.") or kind == "error"):
                return  # a notice outside any response (rate limits, ...)
            # A response no create frame the meter saw asked for: still a call.
            call = socket.call(started=message.timestamp)
            call.notes = "a response on a WebSocket with no response.create before it"
            response = _Response(call, socket.limit, _stream_of(event))
            socket.start(response, response.stream, _response_id_of(event))
        call = response.call
        refused = kind == "error" and response.response_id is None
        if call.status is None:
            call.content_type = "text/event-stream"
            # A create refused before any response began is an HTTP error reply:
            # nothing was generated, so no usage is estimated for it.
            call.status = (event.get("status") if isinstance(event.get("status"), int) else None) if refused else 200
        response.tee(_as_sse(kind, message.content))
        if refused:
            socket.forget(response)
            self._finish(call, "failed")
        elif kind in _TERMINAL:
            socket.forget(response)
            self._finish(call, "complete")
        elif kind == "error":
            response.errored = True  # `response.failed` follows, as in the HTTP stream

    def _supersede(self, socket: _Socket, event: dict) -> None:
        """A new response on a stream whose last one never sent its terminal event
        (an `error` with no `response.failed` after it): that one has ended."""
        previous = socket.active.get(_stream_of(event))
        if previous is None or previous.response_id == _response_id_of(event):
            return
        socket.forget(previous)
        if previous.errored:
            self._finish(previous.call, "complete")
        else:
            self._finish(previous.call, "partial", "a new response began on its stream before this one ended")

    # ---------------------------------------------------------- the end

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        websocket = flow.websocket
        assert websocket is not None  # mitmproxy calls this hook on a WebSocket flow
        by = "client" if websocket.closed_by_client else "server"
        self._closed(flow, f"the WebSocket was closed by the {by} (code {websocket.close_code}) before this response ended")

    def _closed(self, flow: http.HTTPFlow, why: str) -> None:
        socket = self.sockets.pop(flow.id, None)
        if socket is not None:
            self._end_socket(socket, why, "partial")

    def _end_socket(self, socket: _Socket, why: str, outcome: str) -> None:
        for response in socket.open():
            call = response.call
            # A create the server never answered got nothing back: aborted, not partial.
            self._finish(call, outcome if call.first_byte is not None else "aborted", why)
        socket.waiting.clear()
        socket.held = None
        socket.active.clear()
        socket.by_id.clear()
        if socket.unread is not None:
            counts = ", ".join(
                f"{count} {reason}" + ("s" if count > 1 else "") for reason, count in socket.unread_reasons.items()
            )
            call = socket.unread.call
            size = len(call.response_body) + call.response_skipped + len(call.response_tail)
            call.notes = f"WebSocket frames the meter could not read: {counts} ({size:,} bytes)"
            self._finish(call, "complete")
            socket.unread = None

    def _finish(self, call: CapturedCall, outcome: str, error: str | None = None) -> None:
        call.ended = time.time()
        call.outcome, call.error = outcome, error
        self._submit(call)

    def done(self) -> None:
        """Shutdown ends every socket without its end hook: responses in flight were aborted."""
        for socket in self.sockets.values():
            self._end_socket(socket, _SHUTDOWN, "aborted")
        self.sockets.clear()


def _event(message) -> tuple[dict | None, str]:
    """A frame's JSON event (an object with a string `type`), or None and why not."""
    if not message.is_text:
        return None, "binary frame"
    try:
        event = json.loads(message.content)
    except ValueError:
        return None, "text frame that is not JSON"
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None, "JSON frame that is not an event"
    return event, ""


def _stream_of(event: dict):
    """The event's `stream_id` as a key (None when absent; any JSON value is taken)."""
    stream = event.get("stream_id")
    return stream if stream is None or isinstance(stream, (str, int)) else json.dumps(stream, sort_keys=True)


def _response_id_of(event: dict) -> str | None:
    body = event.get("response")
    response_id = body.get("id") if isinstance(body, dict) else event.get("response_id")
    return response_id if isinstance(response_id, str) else None


def _keep_unread(socket: _Socket, message, reason: str) -> None:
    if socket.unread is None:
        call = socket.call(started=message.timestamp, operation="other")
        call.status, call.content_type = 101, "application/octet-stream"
        socket.unread = _Response(call, socket.limit, None)
    socket.unread_reasons[reason] = socket.unread_reasons.get(reason, 0) + 1
    socket.unread.tee(message.content)


def _as_sse(kind: str, text: bytes) -> bytes:
    """A server event as the HTTP stream frames it (`event:` line, `data:` lines)."""
    name = b"event: " + kind.encode() + b"\n" if _EVENT_NAME.fullmatch(kind) else b""
    return name + b"".join(b"data: " + line + b"\n" for line in text.splitlines() or [b""]) + b"\n"
