"""Who may use the dashboard: every request carries this run's access token, writes
come only from its own pages, and headers keep stored model text inert. Host
names are checked by Starlette's TrustedHostMiddleware."""

import html
import secrets
from urllib.parse import urlencode

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The names a browser on this machine reaches the dashboard by; it listens on 127.0.0.1 only.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")

# No inline or remote script, style or frame: a `<script>` in a model's reply is text.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: with it, browsers send `Origin: null` on the dashboard's own forms.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
SAFE_METHODS = ("GET", "HEAD")


class SameOriginWrites:
    """Refuses a write (any method but GET and HEAD) whose Origin is not one of
    `origins`: a page elsewhere cannot flag or retag through the user's browser.
    (The form's per-run token is checked by the app.) Adds the security headers."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = set(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if scope["method"] not in SAFE_METHODS and Headers(scope=scope).get("origin") not in self.origins:
            response = PlainTextResponse("cross-origin write refused: use the dashboard's own pages", status_code=403)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def same_secret(given: str, expected: str) -> bool:
    """In constant time; any text may be given (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode(), expected.encode())


def tokened_url(address: str, token: str) -> str:
    """The URL `meter ui` prints: opening it once lets the browser in."""
    return f"{address}/?token={token}"


def moving_on_page(target: str, what: str) -> str:
    """A page that goes to `target` at once (a meta refresh: no script, which the policy forbids)."""
    target = html.escape(target)
    return (
        f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
        f'<link rel="icon" href="data:,"><title>taskmeter</title><p><a href="{target}">{html.escape(what)}</a></p>\n'
    )


class AccessToken:
    """Every request, reads included, carries this run's access token: as
    `?token=` or as the HttpOnly SameSite=Strict cookie a GET with the token
    sets. Another user of the machine reaches 127.0.0.1 too, but has neither: 403.

    The GET with the token answers a page that moves on to the same URL without
    it (the token leaves the address bar) by a meta refresh, not a redirect: a
    navigation of this origin carries the Strict cookie even when the URL was
    opened from another site or from a file, as `meter ui --open` does."""

    def __init__(self, app: ASGIApp, token: str, port: int) -> None:
        self.app = app
        self.token = token
        self.cookie = f"taskmeter-ui-{port}"  # cookies ignore ports: one name per dashboard
        self.refusal = (
            f"this dashboard needs its access token: open the URL `meter ui` printed (http://127.0.0.1:{port}/?token=...)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        given = connection.query_params.get("token")
        if given is not None and same_secret(given, self.token):
            if scope["method"] in SAFE_METHODS:
                await self._let_in(connection)(scope, receive, send)
                return
        elif not same_secret(connection.cookies.get(self.cookie, ""), self.token):
            await PlainTextResponse(self.refusal, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _let_in(self, connection: HTTPConnection) -> HTMLResponse:
        rest = [(key, value) for key, value in connection.query_params.multi_items() if key != "token"]
        target = "/" + connection.url.path.lstrip("/")  # a path here, never `//elsewhere`
        page = moving_on_page(target + (f"?{urlencode(rest)}" if rest else ""), "Continue to the dashboard")
        response = HTMLResponse(page, headers={"cache-control": "no-store"})
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response
