"""Failures of the upstream in the provider's own words.

When the upstream cannot be reached, times out, or fails its TLS handshake
before answering, mitmproxy writes its own HTML error page; SDKs then show only
"Error code: 502". Instead the client gets JSON in the shape its provider uses
(provider_errors.py), naming the upstream and the cause, with the call's
`x-meter-interaction-id`.

mitmproxy builds that page in its HTTP/1 layer, after the `error` hook and
without the flow; `install()` wraps that one function. The `error` hook leaves
the reply under the identity of the error message, which is the very string
the layer passes on, so no other flow's page can be taken by mistake.
"""

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from taskmeter.protocols import provider_errors

BAD_GATEWAY, GATEWAY_TIMEOUT = 502, 504

# error message object's id -> (that message, the reply to send instead)
_replies: dict[int, tuple[str, http.Response]] = {}
_mitmproxy_error_page = _http1.make_error_response
_UNCLAIMED_MAX = 1000


def _error_page(status_code: int, message: str = "") -> bytes:
    entry = _replies.pop(id(message), None)
    if entry is None or entry[0] is not message:
        return _mitmproxy_error_page(status_code, message)
    return http1.assemble_response(entry[1])


def install() -> None:
    _http1.make_error_response = _error_page


def status_for(cause: str) -> int:
    return GATEWAY_TIMEOUT if "timed out" in cause.lower() or "timeout" in cause.lower() else BAD_GATEWAY


def reply_instead(flow: http.HTTPFlow, protocol: str, interaction_id: str) -> int | None:
    """From the `error` hook: have the client get the provider-shaped error, when
    mitmproxy is about to send its own page. Returns the status sent, or None."""
    if flow.response is not None or flow.error is None:
        return None  # the response had begun: the stream is cut, no page follows
    cause = flow.error.msg
    status = status_for(cause)
    upstream = f"{flow.request.host}:{flow.request.port}"
    message = f"taskmeter: the upstream {upstream} could not be reached: {cause}"
    response = http.Response.make(
        status,
        provider_errors.body(protocol, status, "timeout" if status == GATEWAY_TIMEOUT else "unreachable", message),
        {"content-type": "application/json", "x-meter-interaction-id": interaction_id, "connection": "close"},
    )
    _replies[id(cause)] = (cause, response)
    while len(_replies) > _UNCLAIMED_MAX:  # pages mitmproxy never asked for (the client had left)
        del _replies[next(iter(_replies))]
    return status
