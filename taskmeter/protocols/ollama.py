"""Ollama's native API: /api/chat and /api/generate, streamed as NDJSON unless
told not to. Its requests are read as Chat Completions' are."""

from taskmeter.protocols.openai_chat import conversation_root, request_turns
from taskmeter.protocols.provider_errors import openai_style
from taskmeter.protocols.record import GENERATE, Protocol, input_or_messages, stream_requested
from taskmeter.protocols.usage import Accumulator, Stated, Usage

_OLLAMA_KEYS = (
    "prompt_eval_count",
    "prompt_eval_cached_count",
    "eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)


def ollama_usage(final: dict) -> Usage:
    """Old Ollama omits prompt_eval_count on a KV-cache hit: the input is then unknown."""
    stated = Stated({key: final[key] for key in _OLLAMA_KEYS if key in final})
    return stated.usage_of(
        input_total=stated.count("prompt_eval_count"),
        cache_read=stated.count("prompt_eval_cached_count"),
        cache_write=0,
        output_total=stated.count("eval_count"),
        reasoning=None,
    )


class Ollama(Accumulator):
    """Native /api/chat and /api/generate: usage on the line with done: true."""

    _final: dict | None = None

    def on_event(self, name, payload):
        if not isinstance(payload, dict):
            return
        self._note_model(payload.get("model"))
        self._note_error(payload.get("error"))
        message = payload.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            self._said(message["content"])
        if isinstance(payload.get("response"), str):
            self._said(payload["response"])
        if payload.get("done") is True:
            self._final = payload
            self.finished = True

    def usage(self):
        return ollama_usage(self._final) if self._final else None


PROTOCOL = Protocol(
    name="ollama",
    paths={"/api/chat": GENERATE, "/api/generate": GENERATE},
    accumulator=Ollama,
    streamed=lambda endpoint, request: stream_requested(request, default=True),  # streams unless told not to
    conversation_root=conversation_root,
    request_turns=request_turns,
    loop_turns=input_or_messages,
    error_body=openai_style,
)
