"""The dashboard's guard: writes only from its own pages, and headers that keep
stored model text inert. Host names are checked by Starlette's TrustedHostMiddleware."""

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
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
