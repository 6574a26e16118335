"""Where each protocol states token usage, and how it maps to our inclusive columns.

The rules are those of docs/wire-formats.md, pinned by the recorded responses in
tests/recorded/: input_total includes cache reads and writes, output_total includes
reasoning. A count the protocol cannot state is None; a count the protocol omits
because it is zero (Gemini, Anthropic before caching, OpenAI details) is 0; a
count stated with a value no call can have is None, and noted (`_Stated`).
"""

import json
from dataclasses import dataclass, field

from taskmeter.store.interactions import call_cost, shown, token_count


@dataclass(slots=True)
class Usage:
    input_total: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    output_total: int | None = None
    reasoning: int | None = None
    raw: dict | None = None
    reported_cost: float | None = None  # the provider's own price of the call (OpenRouter's `cost`)
    # What the provider stated that cannot be real, one note each. A count stated
    # so is not reported (None), and the call is not priced.
    implausible: list[str] = field(default_factory=list)
    counts_nulled: bool = False


class _Stated:
    """Reads a provider's usage object by the store's one rule of what a count can
    be (token_count): a value that cannot be real is not reported, and noted."""

    def __init__(self, usage: dict) -> None:
        self.usage = usage
        self.implausible: list[str] = []
        self.counts_nulled = False

    def count(self, key: str, within: dict | None = None, absent=None) -> int | None:
        """The count at `key` (of `within`, else of the usage object); `absent` when
        it is not stated (missing or null), None when it cannot be real."""
        value = (self.usage if within is None else within).get(key)
        if value is None:
            return absent
        count = token_count(value)
        if count is None:
            self._nulled(f"{key}: {shown(value)} is not a plausible count")
        return count

    def total(self, name: str, *parts: int | None) -> int | None:
        """The sum of `parts`: unknown when one is, and not real past the rule."""
        if any(part is None for part in parts):
            return None
        count = token_count(sum(parts))
        if count is None:
            self._nulled(f"{name}: the sum {sum(parts)} is not a plausible count")
        return count

    def usage_of(self, **counts) -> Usage:
        cost = self.usage.get("cost")
        reported = call_cost(cost)
        if cost is not None and reported is None:
            self.implausible.append(f"cost: {shown(cost)} is not a plausible cost of one call: not trusted")
        return Usage(
            **counts, raw=self.usage, reported_cost=reported, implausible=self.implausible, counts_nulled=self.counts_nulled
        )

    def _nulled(self, note: str) -> None:
        self.implausible.append(note)
        self.counts_nulled = True


def _details(usage: dict, key: str) -> dict:
    details = usage.get(key)
    return details if isinstance(details, dict) else {}


def _openai_style(usage: dict, prefix: str) -> Usage:
    """OpenAI's shape: cached tokens inside the prompt count, reasoning inside the
    completion count. Chat says prompt/completion, Responses input/output."""
    inputs, outputs = ("prompt", "completion") if prefix == "chat" else ("input", "output")
    prompt = _details(usage, f"{inputs}_tokens_details")
    completion = _details(usage, f"{outputs}_tokens_details")
    stated = _Stated(usage)
    return stated.usage_of(
        input_total=stated.count(f"{inputs}_tokens"),
        cache_read=stated.count("cached_tokens", prompt, absent=0),
        cache_write=stated.count("cache_write_tokens", prompt, absent=0),
        output_total=stated.count(f"{outputs}_tokens"),
        reasoning=stated.count("reasoning_tokens", completion, absent=0),
    )


def openai_chat_usage(usage: dict) -> Usage:
    return _openai_style(usage, "chat")


def openai_responses_usage(usage: dict) -> Usage:
    return _openai_style(usage, "responses")


def _cache_outside_input(stated: _Stated, uncached: str, read: str, write: str, output: str, reasoning: int | None) -> Usage:
    """Anthropic's and Bedrock's shape: the input count excludes cache reads and
    writes, so they are added back to make input_total inclusive (and it is
    unknown when one of the three is)."""
    read_count = stated.count(read, absent=0)
    write_count = stated.count(write, absent=0)
    return stated.usage_of(
        input_total=stated.total("input_total", stated.count(uncached), read_count, write_count),
        cache_read=read_count,
        cache_write=write_count,
        output_total=stated.count(output),
        reasoning=reasoning,
    )


def anthropic_usage(usage: dict) -> Usage:
    stated = _Stated(usage)
    thinking = stated.count("thinking_tokens", _details(usage, "output_tokens_details"))
    return _cache_outside_input(
        stated, "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens", thinking
    )


def gemini_usage(metadata: dict) -> Usage:
    """Gemini omits zero counts; thoughts and tool-use prompts sit outside
    candidates and prompt but are billed, so they join output and input."""
    stated = _Stated(metadata)
    thoughts = stated.count("thoughtsTokenCount", absent=0)
    return stated.usage_of(
        input_total=stated.total(
            "input_total", stated.count("promptTokenCount", absent=0), stated.count("toolUsePromptTokenCount", absent=0)
        ),
        cache_read=stated.count("cachedContentTokenCount", absent=0),
        cache_write=0,
        output_total=stated.total("output_total", stated.count("candidatesTokenCount", absent=0), thoughts),
        reasoning=thoughts,
    )


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
    stated = _Stated({key: final[key] for key in _OLLAMA_KEYS if key in final})
    return stated.usage_of(
        input_total=stated.count("prompt_eval_count"),
        cache_read=stated.count("prompt_eval_cached_count"),
        cache_write=0,
        output_total=stated.count("eval_count"),
        reasoning=None,
    )


def bedrock_usage(usage: dict) -> Usage:
    return _cache_outside_input(
        _Stated(usage), "inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens", "outputTokens", None
    )


# ---------------------------------------------------------------- accumulators


def _error_text(error) -> str:
    if isinstance(error, dict):
        for key in ("message", "type", "code"):
            if error.get(key):
                return str(error[key])
        return json.dumps(error)[:500]
    return str(error)[:500]


@dataclass
class Accumulator:
    """Collects what a response says, event by event, for one protocol."""

    model: str | None = None
    response_id: str | None = None
    errors: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # everything the model wrote, for token estimates
    answer: list[str] = field(default_factory=list)  # its prose alone, for `meter show`
    tool_calls: list[list] = field(default_factory=list)  # [name, [argument pieces]] per tool call
    counted_tokens: int | None = None
    finished: bool = False
    events: int = 0

    def on_event(self, name: str, payload) -> None:
        raise NotImplementedError

    def usage(self) -> Usage | None:
        raise NotImplementedError

    def _note_error(self, error) -> None:
        if error:
            text = _error_text(error)
            if text not in self.errors:  # e.g. Responses' `error` repeated in `response.failed`
                self.errors.append(text)

    def _said(self, text: str) -> None:
        self.text.append(text)
        self.answer.append(text)

    def _tool_call(self, name, arguments=None) -> None:
        """A tool call starts (streams send its arguments in later pieces)."""
        self.tool_calls.append([name if isinstance(name, str) else None, []])
        if arguments is not None:
            self._tool_arguments(arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))

    def _tool_arguments(self, piece: str) -> None:
        """A piece of the latest tool call's arguments (calls stream one after another)."""
        self.text.append(piece)
        if self.tool_calls:
            self.tool_calls[-1][1].append(piece)

    def _note_model(self, model) -> None:
        if isinstance(model, str) and model:
            self.model = model


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


class Gemini(Accumulator):
    """generateContent / streamGenerateContent: every chunk carries a cumulative
    usageMetadata snapshot; the last one is the total."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if not isinstance(payload, dict):
            return
        if "totalTokens" in payload and "candidates" not in payload:  # :countTokens
            self.counted_tokens = token_count(payload["totalTokens"])
            return
        self._note_model(payload.get("modelVersion"))
        self.response_id = payload.get("responseId") or self.response_id
        self._note_error(payload.get("error"))
        if isinstance(payload.get("usageMetadata"), dict):
            self._usage = payload["usageMetadata"]
        for candidate in payload.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    self._said(part["text"])
                elif isinstance(part, dict) and isinstance(part.get("functionCall"), dict):
                    self._tool_call(part["functionCall"].get("name"), part["functionCall"].get("args") or {})
            if candidate.get("finishReason"):
                self.finished = True

    def usage(self):
        return gemini_usage(self._usage) if self._usage else None


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


class Bedrock(Accumulator):
    """Converse (JSON usage) and converse-stream (the `metadata` frame's usage)."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if name.startswith("exception:"):
            self._note_error(payload if isinstance(payload, dict) else {"message": str(payload)})
            return
        if not isinstance(payload, dict):
            return
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        if name == "messageStop" or "stopReason" in payload:
            self.finished = True
        if name == "contentBlockStart" and isinstance((payload.get("start") or {}).get("toolUse"), dict):
            self._tool_call(payload["start"]["toolUse"].get("name"))
        if name == "contentBlockDelta" and isinstance(payload.get("delta"), dict):
            delta = payload["delta"]
            if isinstance(delta.get("text"), str):
                self._said(delta["text"])
            tool_input = delta.get("toolUse").get("input") if isinstance(delta.get("toolUse"), dict) else None
            if isinstance(tool_input, str):
                self._tool_arguments(tool_input)
        message = (payload.get("output") or {}).get("message") if isinstance(payload.get("output"), dict) else None
        if isinstance(message, dict):
            for block in message.get("content") or ():
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    self._said(block["text"])
                elif isinstance(block, dict) and isinstance(block.get("toolUse"), dict):
                    self._tool_call(block["toolUse"].get("name"), block["toolUse"].get("input"))
        if "message" in payload and "output" not in payload and len(payload) == 1:
            self._note_error(payload)

    def usage(self):
        return bedrock_usage(self._usage) if self._usage else None


ACCUMULATORS: dict[str, type[Accumulator]] = {
    "openai_chat": OpenAIChat,
    "openai_responses": OpenAIResponses,
    "anthropic": Anthropic,
    "gemini": Gemini,
    "ollama": Ollama,
    "bedrock": Bedrock,
}
