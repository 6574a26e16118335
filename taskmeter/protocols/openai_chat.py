"""OpenAI Chat Completions, and every server that speaks it (OpenRouter, Groq,
Azure, vLLM, LM Studio, Ollama's /v1, ...): also the legacy /completions and
/embeddings. Streams state usage only when asked: the meter asks (stream_usage.py)."""

from taskmeter.protocols.conversation import first_user, system_messages
from taskmeter.protocols.provider_errors import openai_style
from taskmeter.protocols.record import GENERATE, OTHER, Protocol, StreamUsage, input_or_messages, stream_requested
from taskmeter.protocols.stream_usage import UsageChunkStripper, include_usage_splice
from taskmeter.protocols.texts import Turns, one_line, plain, tool_call_line, tool_result_line, typed
from taskmeter.protocols.usage import Accumulator, Usage, openai_style_usage


def openai_chat_usage(usage: dict) -> Usage:
    return openai_style_usage(usage, "chat")


class OpenAIChat(Accumulator):
    """Chat Completions and compatible servers: the last non-null `usage` wins
    (Groq also puts it in `x_groq.usage`); `choices: []` is not a usage signal."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if payload == "[DONE]":
            self.finished = True
            return
        if not isinstance(payload, dict):
            return
        self._note_model(payload.get("model"))
        self.response_id = payload.get("id") or self.response_id
        self._note_error(payload.get("error"))
        if name == "error" and "error" not in payload:
            self._note_error(payload)
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            usage = (payload.get("x_groq") or {}).get("usage") if isinstance(payload.get("x_groq"), dict) else None
        if isinstance(usage, dict):
            self._usage = usage
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            part = choice.get("delta") or choice.get("message") or {}
            if isinstance(part, dict):
                if isinstance(part.get("content"), str):
                    self._said(part["content"])
                for call in part.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(function, dict):
                        continue
                    if function.get("name"):  # a stream names a call in its first piece only
                        self._tool_call(function["name"])
                    if isinstance(function.get("arguments"), str):
                        self._tool_arguments(function["arguments"])
        if payload.get("object") == "chat.completion":  # not streamed: the whole answer
            self.finished = True

    def usage(self):
        return openai_chat_usage(self._usage) if self._usage else None


def conversation_root(request: dict) -> object:
    if "messages" in request:
        return [system_messages(request["messages"]), first_user(request["messages"])]
    return [request.get("system"), request.get("prompt")]  # legacy completions, Ollama's /api/generate


def request_turns(request: dict, turns: Turns) -> None:
    if "messages" in request:
        message_turns(request["messages"], turns)
    elif isinstance(request.get("prompt"), str):
        turns.typed(request["prompt"])  # legacy completions, Ollama's /api/generate


def message_turns(messages, turns: Turns) -> None:
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            text = plain(message.get("content"))
            if typed(text):
                turns.typed(text)
        elif role in ("tool", "function"):
            turns.step(tool_result_line(message.get("content")))
        elif role == "assistant":
            if plain(message.get("content")).strip():
                turns.step(one_line(f"assistant {plain(message.get('content'))}"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {} if isinstance(call, dict) else {}
                turns.step(tool_call_line(function.get("name"), function.get("arguments")))


PROTOCOL = Protocol(
    name="openai_chat",
    paths={"/chat/completions": GENERATE, "/completions": GENERATE, "/embeddings": OTHER},
    accumulator=OpenAIChat,
    streamed=lambda endpoint, request: stream_requested(request),
    conversation_root=conversation_root,
    request_turns=request_turns,
    loop_turns=input_or_messages,
    error_body=openai_style,
    tail_usage=("usage", lambda usage: {"usage": usage}),
    stream_usage=StreamUsage(splice=include_usage_splice, stripper=UsageChunkStripper),
)
