"""Anthropic Messages: /messages and /messages/count_tokens, and Claude on Vertex
AI (`:rawPredict`, `:streamRawPredict`). Claude Code names its session in a header,
or in metadata.user_id."""

import json

from taskmeter.protocols.conversation import first_user
from taskmeter.protocols.provider_errors import CAUSES
from taskmeter.protocols.record import COUNT_TOKENS, GENERATE, Protocol, input_or_messages, stream_requested
from taskmeter.protocols.texts import Turns, one_line, tool_call_line, tool_result_line, typed
from taskmeter.protocols.usage import Accumulator, Stated, Usage, cache_outside_input, usage_details
from taskmeter.store.interactions import token_count


def anthropic_usage(usage: dict) -> Usage:
    stated = Stated(usage)
    thinking = stated.count("thinking_tokens", usage_details(usage, "output_tokens_details"))
    return cache_outside_input(
        stated, "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens", thinking
    )


class Anthropic(Accumulator):
    """Messages API: message_start's usage, overwritten field by field by every
    message_delta (its counts are cumulative: never add them)."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if not isinstance(payload, dict):
            return
        kind = payload.get("type") or name
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            message = payload["message"]
            self._note_model(message.get("model"))
            self.response_id = message.get("id")
            if isinstance(message.get("usage"), dict):
                self._usage = dict(message["usage"])
        elif kind == "message_delta" and isinstance(payload.get("usage"), dict):
            merged = self._usage or {}
            merged.update({k: v for k, v in payload["usage"].items() if v is not None})
            self._usage = merged
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            if payload["content_block"].get("type") == "tool_use":
                self._tool_call(payload["content_block"].get("name"))
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            delta = payload["delta"]
            if isinstance(delta.get("text"), str):
                self._said(delta["text"])
            if isinstance(delta.get("partial_json"), str):
                self._tool_arguments(delta["partial_json"])
            if isinstance(delta.get("thinking"), str):
                self.text.append(delta["thinking"])
        elif kind == "message_stop":
            self.finished = True
        elif kind == "message":  # not streamed: the body is the message
            self._note_model(payload.get("model"))
            self.response_id = payload.get("id")
            if isinstance(payload.get("usage"), dict):
                self._usage = dict(payload["usage"])
            for block in payload.get("content") or ():
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    self._said(block["text"])
                elif isinstance(block, dict) and block.get("type") == "tool_use":
                    self._tool_call(block.get("name"), block.get("input"))
            self.finished = True
        elif kind == "error":
            self._note_error(payload.get("error") or payload)
        elif set(payload) == {"input_tokens"}:  # /v1/messages/count_tokens
            self.counted_tokens = token_count(payload["input_tokens"])

    def usage(self):
        return anthropic_usage(self._usage) if self._usage else None


def streamed(endpoint: str, request) -> bool:
    return ":streamRawPredict" in endpoint or stream_requested(request)


def conversation_root(request: dict) -> object:
    return [request.get("system"), first_user(request.get("messages"))]


def message_turns(messages, turns: Turns, bedrock: bool = False) -> None:
    """Anthropic's messages, or Bedrock Converse's (blocks keyed by their kind)."""
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        role = message.get("role")
        if isinstance(content, str):
            if role == "user" and typed(content):
                turns.typed(content)
            elif role == "assistant" and content.strip():
                turns.step(one_line(f"assistant {content}"))
            continue
        typed_texts = []
        for block in content or ():
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if bedrock:  # Converse blocks are keyed by their kind
                kind = next((key for key in ("text", "toolUse", "toolResult") if key in block), None)
            if kind == "text" and isinstance(block.get("text"), str):
                if role == "user" and typed(block["text"]):
                    typed_texts.append(block["text"])
                elif role == "assistant" and block["text"].strip():
                    turns.step(one_line(f"assistant {block['text']}"))
            elif kind == "tool_use":
                turns.step(tool_call_line(block.get("name"), block.get("input")))
            elif kind == "toolUse" and isinstance(block.get("toolUse"), dict):
                turns.step(tool_call_line(block["toolUse"].get("name"), block["toolUse"].get("input")))
            elif kind == "tool_result":
                turns.step(tool_result_line(block.get("content")))
            elif kind == "toolResult" and isinstance(block.get("toolResult"), dict):
                turns.step(tool_result_line(block["toolResult"].get("content")))
        if typed_texts:
            turns.typed("\n".join(typed_texts))


def session_in_metadata(request) -> str | None:
    """Claude Code's session ID from metadata.user_id, for versions that send no
    header: `user_…_session_<uuid>`, or (from 2.1.78) a JSON object with session_id."""
    user_id = (request.get("metadata") or {}).get("user_id") if isinstance(request, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            session = json.loads(user_id).get("session_id")
        except (ValueError, AttributeError):
            return None
        return session if isinstance(session, str) and session else None
    _, found, session = user_id.rpartition("_session_")
    return session or None if found else None


def error_body(status: int, cause: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": CAUSES[cause][2], "message": message}}).encode()


PROTOCOL = Protocol(
    name="anthropic",
    paths={"/messages": GENERATE, "/messages/count_tokens": COUNT_TOKENS},
    verbs={"rawpredict": GENERATE, "streamrawpredict": GENERATE},  # Claude on Vertex AI
    accumulator=Anthropic,
    streamed=streamed,
    conversation_root=conversation_root,
    request_turns=lambda request, turns: message_turns(request.get("messages"), turns),
    loop_turns=input_or_messages,
    error_body=error_body,
    tail_usage=("usage", lambda usage: {"type": "message_delta", "usage": usage}),
    session_headers=("x-claude-code-session-id",),
    session_in_request=session_in_metadata,
)
