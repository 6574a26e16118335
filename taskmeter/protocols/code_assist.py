"""Gemini Code Assist (`cloudcode-pa.googleapis.com`, Gemini CLI's Login with
Google): `/v1internal:streamGenerateContent?alt=sse`, `:generateContent` and
`:countTokens`. Each body wraps Gemini's in an envelope: the request as
`{"model", "project", "user_prompt_id", "request": {...Gemini request...,
"session_id"}}`, each response event as `{"response": {...Gemini response...},
"traceId"}`. Unwrapped, everything is read by the gemini module's rules; the model
is the envelope's (finalize reads a request's `model`), the response ID the traceId."""

from taskmeter.protocols import gemini
from taskmeter.protocols.record import COUNT_TOKENS, GENERATE, Protocol
from taskmeter.protocols.texts import Turns


class CodeAssist(gemini.Gemini):
    def on_event(self, name, payload):
        if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
            super().on_event(name, payload["response"])
            if isinstance(payload.get("traceId"), str):
                self.response_id = payload["traceId"]
            return
        super().on_event(name, payload)  # countTokens answers and errors come unwrapped


def inner_request(request) -> dict:
    """The Gemini request inside the envelope ({} when there is none)."""
    inner = request.get("request") if isinstance(request, dict) else None
    return inner if isinstance(inner, dict) else {}


def session_in_request(request) -> str | None:
    session = inner_request(request).get("session_id")
    return session if isinstance(session, str) and session else None


def request_turns(request: dict, turns: Turns) -> None:
    gemini.request_turns(inner_request(request), turns)


PROTOCOL = Protocol(
    name="code_assist",
    # The method is the whole last segment: Gemini's own `models/x:streamGenerateContent` is not this.
    paths={
        "/v1internal:streamgeneratecontent": GENERATE,
        "/v1internal:generatecontent": GENERATE,
        "/v1internal:counttokens": COUNT_TOKENS,
    },
    accumulator=CodeAssist,
    streamed=lambda endpoint, request: ":streamGenerateContent" in endpoint,
    conversation_root=lambda request: gemini.conversation_root(inner_request(request)),
    request_turns=request_turns,
    loop_turns=lambda request: inner_request(request).get("contents"),
    error_body=gemini.error_body,
    tail_usage=("usageMetadata", lambda usage: {"response": {"usageMetadata": usage}}),
    session_in_request=session_in_request,
)
