"""The mitmproxy addons, one small class per concern, hooks named after events,
added in this order: Gateway (where a call goes, and who may send it),
TaskAttribution (which task it belongs to), Capture (what it says, handed over
when it ends), ResponsesWebSocket (each response on a Responses API WebSocket, in
proxy/websocket.py), Guard (whether a budget or a loop refuses it, in proxy/refusals.py).
They pass what they learn to the next through flow.metadata.

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
import logging
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from taskmeter import protocols
from taskmeter.config import Settings
from taskmeter.errors import MeterError
from taskmeter.handover.call import CapturedCall
from taskmeter.ids import new_id
from taskmeter.protocols.framing import UnsupportedEncoding, content_decoder
from taskmeter.protocols.record import Protocol, StreamUsage
from taskmeter.proxy import upstream_errors
from taskmeter.proxy.environment import PING_PATH
from taskmeter.proxy.routing import (
    Endpoint,
    GatewayError,
    Redirect,
    Router,
    classify,
    host_address,
    is_loopback_host,
    subscription_login,
    websocket_endpoint,
)
from taskmeter.proxy.tee import ResponseTee
from taskmeter.secrets import is_secret_query_name
from taskmeter.store.tasks import validate_task_id

TASK_HEADER = "x-meter-task"
ID_HEADER = "x-meter-interaction-id"
BUDGET_HEADER = "x-meter-budget"
log = logging.getLogger(__name__)
# flow.metadata keys, each set by one addon for those after it.
_ROUTE = "taskmeter.route"  # Gateway: a metered AI call's Route
_TASK = "taskmeter.task"  # TaskAttribution: (task ID or None, attribution or None)
_CALL = "taskmeter.call"  # Capture: the CapturedCall
_SOCKET = "taskmeter.socket"  # Gateway: the Route of a WebSocket upgrade to the Responses API
_ORIGIN = "taskmeter.origin"  # Gateway: the allowed web page a call comes from, for its CORS headers
_SHUTDOWN = "proxy shut down during the call"
_LOOP = "taskmeter: this request came back to the meter that sent it (a forwarding loop); refused"
_LOOP_FIX = "point clients at an upstream, not at the meter, and check [upstreams] (`meter config show`)"
_NOT_AN_AI_HOST = (
    "taskmeter: the meter forwards plain HTTP only to AI hosts, and {host} is not one; use the gateway "
    "(http://HOST:PORT/<upstream>/...), or add the host under [intercept.hosts] in the config file"
)
_WEB_PAGE = (
    "taskmeter: refused a call from a web page ({page}): pages you visit may not use the meter; "
    "to allow a browser-based client, add its origin to [proxy] allowed_origins in the config file"
)
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
    """The request path with secret query parameters (Gemini's `key=`, a signed URL's `sig=`) redacted."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    query = [(k, "redacted" if is_secret_query_name(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return f"{parts.path}?{urlencode(query)}"


def client_session(protocol: Protocol, headers) -> str | None:
    """A client's own session ID, from the first of its protocol's session headers it sends."""
    return next(filter(None, map(headers.get, protocol.session_headers)), None)


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
    """Where a call goes, and who may send it: `/<upstream>/...` (with an optional
    `/t/<TASK>/` prefix) to its upstream, or, in proxy mode, a known AI host.
    Refused: requests from web pages whose origin is not allowed, requests that
    came back from this meter (a loop), plain-HTTP forwarding to any host but an
    AI host, proxy mode for clients beyond loopback not in --allow-from (and, for
    those in it, this machine's loopback services), and new calls while the meter
    stops."""

    def __init__(self, settings: Settings) -> None:
        self.apply_settings(settings)
        self.draining = False  # stopping: calls in flight finish, no new ones start
        # Added to what this meter forwards in the clear: a request that carries it came back to us.
        self._via = f"1.1 taskmeter-{secrets.token_hex(8)}"
        self._origins_said: set[str] = set()  # refused origins already logged
        # Per client connection, the redirected addresses it reaches and the host it
        # named for each: the TLS server name of those connections (server_connect).
        self._named_hosts: dict[str, dict[tuple[str, int], str]] = {}

    def apply_settings(self, settings: Settings) -> None:
        """At start, and again when the config is reloaded."""
        self._router = Router(settings)
        self._trusted = settings.trusted_networks()
        self._allowed_origins = set(settings.proxy.allowed_origins)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._may_use_proxy_mode(flow):
            flow.response = _error_response(403, _GATEWAY_ONLY)
        else:
            flow.response = self._target_refusal(flow, flow.request.host, flow.request.port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = _error_response(503, "taskmeter: the meter is stopping; send the call again once it runs")
            return
        request = flow.request
        if any(self._via in value for value in request.headers.get_all("via")):
            flow.response = _error_response(508, _LOOP)
            return
        if not self._from_allowed_page(flow):
            return
        if flow.metadata.get(_ORIGIN) and request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            flow.response = _preflight_answer(request)
            return
        path_task = None
        provider: str | None
        if self._addressed_to_us(flow):
            if request.path == PING_PATH:  # `meter doctor`: the gateway answers, nothing leaves the machine
                flow.response = http.Response.make(200, b'{"meter": "ok"}', {"content-type": "application/json"})
                return
            try:
                target = self._router.gateway(request.path, from_network=not self._client_address(flow).is_loopback)
            except GatewayError as exc:
                flow.response = _error_response(404, f"taskmeter: {exc}")
                return
            if self._is_us(flow, target.host, target.port):
                flow.response = _error_response(508, f"taskmeter: upstream {target.provider!r} is this meter itself; {_LOOP_FIX}")
                return
            request.scheme, request.host, request.port = target.scheme, target.host, target.port
            request.path = target.path
            request.host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            provider, path_task = target.provider, target.task_id
        elif not self._may_use_proxy_mode(flow):
            flow.response = _error_response(403, _GATEWAY_ONLY)
            return
        else:
            # request.host is where mitmproxy connects; the Host header may name another.
            provider = self._router.provider_for_host(request.host)
            refusal = self._target_refusal(flow, request.host, request.port)
            if refusal is None and provider is None and not flow.client_conn.tls:
                refusal = _error_response(403, _NOT_AN_AI_HOST.format(host=request.host))
            if refusal is not None or provider is None:
                flow.response = refusal
                return
            redirect = self._router.redirect_for(request.host)
            if redirect is not None:
                if self._is_us(flow, redirect.host, redirect.port):
                    flow.response = _error_response(508, f"taskmeter: the redirect of {request.host} leads to this meter itself")
                    return
                self._redirect(flow, redirect)
        if request.scheme == "http":
            request.headers.add("via", self._via)
        endpoint = classify(request.method, request.path)
        if endpoint is not None:
            flow.metadata[_ROUTE] = Route(provider, endpoint, path_task)
        elif (endpoint := websocket_endpoint(request.method, request.path, request.headers)) is not None:
            flow.metadata[_SOCKET] = Route(provider, endpoint, path_task)  # metered by proxy/websocket.py

    def _redirect(self, flow: http.HTTPFlow, redirect: Redirect) -> None:
        """Connect to the redirect's address instead (`[intercept.redirect]`), as
        curl's --connect-to does: the Host header stays as the client sent it, and
        TLS names and verifies the host the client named."""
        request = flow.request
        named, host_header = request.host, request.host_header
        request.scheme, request.host, request.port = redirect.scheme, redirect.host, redirect.port
        request.host_header = host_header  # setting the host rewrote it
        if redirect.scheme == "https":
            self._named_hosts.setdefault(flow.client_conn.id, {})[(redirect.host, redirect.port)] = named

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """A redirected connection's TLS server name is the host the client named
        (mitmproxy would name the address it connects to)."""
        address = data.server.address
        named = self._named_hosts.get(data.client.id, {}).get(address) if address is not None else None
        if named is not None:
            data.server.sni = named

    def client_disconnected(self, client: connection.Client) -> None:
        self._named_hosts.pop(client.id, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """An allowed page may read the answer, and the meter's headers on it."""
        origin = flow.metadata.get(_ORIGIN)
        if origin is None:
            return
        assert flow.response is not None  # mitmproxy calls this hook with the response's headers
        headers = flow.response.headers
        headers["access-control-allow-origin"] = origin
        exposed = [value for value in headers.get_all("access-control-expose-headers") if value.strip() != "*"]
        headers.set_all("access-control-expose-headers", [*exposed, f"{ID_HEADER}, {BUDGET_HEADER}"])
        headers.add("vary", "origin")

    def _from_allowed_page(self, flow: http.HTTPFlow) -> bool:
        """SDKs and agents send no `Origin` and no cross-site `Sec-Fetch-Site`; a web
        page does, and is refused unless its origin is allowed, so that a page the
        user visits cannot create tasks, spend budgets or raise alerts."""
        headers = flow.request.headers
        origin, site = headers.get("origin"), headers.get("sec-fetch-site", "none").lower()
        if origin is None and site in ("none", "same-origin"):
            return True
        if origin is not None and origin.lower() in self._allowed_origins:
            flow.metadata[_ORIGIN] = origin
            return True
        page = (origin or f"a {site} page")[:200]
        if page not in self._origins_said and len(self._origins_said) < 32:  # a line per page, a few pages
            self._origins_said.add(page)
            log.warning("meter: refused a call from a web page (%s); allow it with [proxy] allowed_origins", ascii(page))
        flow.response = _error_response(403, _WEB_PAGE.format(page=page))
        return False

    def _addressed_to_us(self, flow: http.HTTPFlow) -> bool:
        """A request in the clear whose target is the proxy itself is a gateway request."""
        if flow.client_conn.tls or flow.client_conn.sockname is None:
            return False
        return self._is_us(flow, flow.request.host, flow.request.port)

    @staticmethod
    def _is_us(flow: http.HTTPFlow, host: str, port: int) -> bool:
        """`host:port` reaches this proxy: our port on any loopback, unspecified or
        `localhost` host, in any form (`127.1`, `0x7f000001`, `[::ffff:127.0.0.1]`,
        `localhost.`), or on the address the client came in on. Parsed, never
        resolved; a name that resolves to us is caught by the `via` mark instead."""
        own_host, own_port = flow.client_conn.sockname[:2]
        if port != own_port:
            return False
        address = host_address(host)
        return is_loopback_host(host) or (address is not None and address == host_address(own_host))

    def _target_refusal(self, flow: http.HTTPFlow, host: str, port: int) -> http.Response | None:
        """Proxy mode never leads back to the proxy, nor a client beyond loopback
        to this machine's loopback-only services."""
        if flow.client_conn.sockname is not None and self._is_us(flow, host, port):
            return _error_response(508, f"taskmeter: {host}:{port} is this meter itself; {_LOOP_FIX}")
        if not self._client_address(flow).is_loopback and is_loopback_host(host):
            return _error_response(403, "taskmeter: clients beyond loopback cannot reach this machine's loopback services")
        return None

    @staticmethod
    def _client_address(flow: http.HTTPFlow) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        address = ipaddress.ip_address(flow.client_conn.peername[0])
        return address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address

    def _may_use_proxy_mode(self, flow: http.HTTPFlow) -> bool:
        """HTTPS-proxy mode and absolute-form requests reach any host and port: only
        for loopback clients and the networks named with --allow-from, so that the
        meter is never an open forwarder into this machine's loopback services."""
        address = self._client_address(flow)
        return address.is_loopback or any(address in network for network in self._trusted)


def _preflight_answer(request: http.Request) -> http.Response:
    """A browser's CORS preflight from an allowed origin, answered by the meter:
    the method and headers it asks for are granted."""
    headers = {
        "access-control-allow-origin": request.headers["origin"],
        "access-control-allow-methods": request.headers["access-control-request-method"],
        "access-control-allow-headers": request.headers.get("access-control-request-headers", ""),
        "access-control-max-age": "600",
        "vary": "origin",
    }
    if request.headers.get("access-control-request-private-network") == "true":
        headers["access-control-allow-private-network"] = "true"
    return http.Response.make(204, b"", headers)


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
        route: Route | None = flow.metadata.get(_ROUTE) or flow.metadata.get(_SOCKET)
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
        self._body_limit = settings.proxy.parse_limit_bytes

    # ---------------------------------------------------------- requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get(_ROUTE)
        if route is None or flow.response is not None:
            return
        task_id, attribution = flow.metadata[_TASK]
        request = flow.request
        protocol = protocols.by_name(route.endpoint.protocol)
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
            client_session=client_session(protocol, request.headers),
            subscription=subscription_login(route.provider, request.headers.get("authorization")),
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
        stream_usage = protocols.by_name(call.protocol).stream_usage
        if self._settings.proxy.inject_stream_usage and stream_usage and call.operation == "generate":
            await self._ask_for_stream_usage(flow, call, stream_usage)

    @staticmethod
    async def _ask_for_stream_usage(flow: http.HTTPFlow, call: CapturedCall, stream_usage: StreamUsage) -> None:
        """Streams that carry usage only when asked (OpenAI-compatible ones): ask,
        and strip the extra chunk later so the client gets the stream it
        requested. The request is spliced, never re-serialised, so every other
        byte the client sent (a large body, a character cut in half) goes
        upstream unchanged. A large body is scanned in slices, other calls'
        hooks running in between."""
        if not call.request_body:
            return
        scan = stream_usage.splice(call.request_body)
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
        assert response is not None  # mitmproxy calls this hook with the response's headers
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
        stream_usage = protocols.by_name(call.protocol).stream_usage  # there is one whenever usage was injected
        stripper = stream_usage.stripper if call.injected_usage and stream_usage is not None else None
        response.stream = ResponseTee(call, self._body_limit, None if call.content_encoding else stripper, decoder)

    def response(self, flow: http.HTTPFlow) -> None:
        call = self._ending(flow)
        if call is None:
            return
        call.outcome = "failed" if call.blocked else "complete"  # a refused call never reached a model
        response = flow.response
        assert response is not None  # mitmproxy calls this hook with the whole response
        call.status = response.status_code
        if not call.response_body and response.raw_content:
            # A response mitmproxy made itself (e.g. 502) was not streamed.
            call.response_body += response.raw_content
            call.content_type = response.headers.get("content-type")
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
