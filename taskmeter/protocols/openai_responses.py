"""OpenAI Responses API: /responses (SSE or JSON) and /responses/input_tokens.
A response chained to an earlier one by previous_response_id continues its conversation.
Codex names its session in a header, and in client_metadata.session_id."""

from taskmeter.protocols.conversation import first_user
from taskmeter.protocols.provider_errors import openai_style
from taskmeter.protocols.record import COUNT_TOKENS, GENERATE, Protocol, input_or_messages, stream_requested
from taskmeter.protocols.texts import Turns, one_line, plain, tool_call_line, tool_result_line, typed
from taskmeter.protocols.usage import Accumulator, Usage, openai_style_usage
from taskmeter.store.interactions import token_count


def openai_responses_usage(usage: dict) -> Usage:
    return openai_style_usage(usage, "responses")


class OpenAIResponses(Accumulator):
    """Responses API: usage only in the terminal event (completed/incomplete/failed)."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if not isinstance(payload, dict):
            return
        kind = payload.get("type") or name
        if payload.get("object") == "response.input_tokens":
            self.counted_tokens = token_count(payload.get("input_tokens"))
            return
        response = payload.get("response") if isinstance(payload.get("response"), dict) else None
        if response is None and payload.get("object") == "response":
            response = payload  # not streamed: the body is the response
            kind = "response." + str(payload.get("status", "completed"))
        if response is not None:
            self._note_model(response.get("model"))
            self.response_id = response.get("id") or self.response_id
            if isinstance(response.get("usage"), dict):
                self._usage = response["usage"]
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.finished = True
                self._note_error(response.get("error"))
            if payload is response:
                for item in response.get("output") or ():
                    if isinstance(item, dict) and item.get("type") == "function_call":
                        self._tool_call(item.get("name"), item.get("arguments"))
                    for content in (item.get("content") or ()) if isinstance(item, dict) else ():
                        if isinstance(content, dict) and isinstance(content.get("text"), str):
                            self._said(content["text"])
        elif kind == "error":
            self._note_error(payload.get("error") or payload)
        elif kind == "response.output_item.added" and isinstance(payload.get("item"), dict):
            if payload["item"].get("type") == "function_call":
                self._tool_call(payload["item"].get("name"))
        elif kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self._said(payload["delta"])
        elif kind == "response.function_call_arguments.delta" and isinstance(payload.get("delta"), str):
            self._tool_arguments(payload["delta"])
        elif "error" in payload:
            self._note_error(payload["error"])

    def usage(self):
        return openai_responses_usage(self._usage) if self._usage else None


def conversation_root(request: dict) -> object:
    items = request.get("input")
    first = items if isinstance(items, str) else first_user(items)
    return [request.get("instructions"), first]


def session_in_client_metadata(request) -> str | None:
    """Codex's session ID from the body's client_metadata (0.171 sends it there as
    well as in its `session-id` header; a WebSocket `response.create` frame has only the body)."""
    metadata = request.get("client_metadata") if isinstance(request, dict) else None
    session = metadata.get("session_id") if isinstance(metadata, dict) else None
    return session if isinstance(session, str) and session else None


def request_turns(request: dict, turns: Turns) -> None:
    items = request.get("input")
    if isinstance(items, str):
        turns.typed(items)
        return
    for item in items or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "user":
            text = plain(item.get("content"))
            if typed(text):
                turns.typed(text)
        elif kind == "message" and item.get("role") == "assistant":
            turns.step(one_line(f"assistant {plain(item.get('content'))}"))
        elif kind in ("function_call", "custom_tool_call"):
            turns.step(tool_call_line(item.get("name"), item.get("arguments", item.get("input"))))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            turns.step(tool_result_line(item.get("output")))


PROTOCOL = Protocol(
    name="openai_responses",
    paths={"/responses": GENERATE, "/responses/input_tokens": COUNT_TOKENS},
    accumulator=OpenAIResponses,
    streamed=lambda endpoint, request: stream_requested(request),
    conversation_root=conversation_root,
    request_turns=request_turns,
    loop_turns=input_or_messages,
    error_body=openai_style,
    tail_usage=("usage", lambda usage: {"type": "response.completed", "response": {"usage": usage}}),
    # Codex: `session-id` since about 0.100 (with `thread-id`), `session_id` before.
    session_headers=("session-id", "session_id"),
    session_in_request=session_in_client_metadata,
    chains_responses=True,
)
