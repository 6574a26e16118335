"""What a call said, in the words a person reads before flagging it: the last
message a person typed, the tool calls and tool results that followed it (one
line each), and the response's text with its own tool calls.

Tool results travel as user turns (Anthropic, Bedrock, Gemini) or as their own
role (OpenAI), but nobody typed them: they are steps, not the prompt. Claude
Code's `<system-reminder>` blocks are not typed either.
"""

import json
from dataclasses import dataclass, field

from taskmeter.secrets import redact
from taskmeter.store.texts import clip

# Each text is cut here (characters), as the issue of storing text promises.
TEXT_LIMIT = 65536
STEP_WIDTH = 160


@dataclass(slots=True)
class CallText:
    prompt: str | None = None
    steps: list[str] = field(default_factory=list)
    response: str | None = None

    def stored(self) -> tuple[str | None, str | None, str | None]:
        """(prompt, steps as JSON, response), redacted and cut, as call_texts holds them."""
        return (
            _cut(redact(self.prompt)) if self.prompt else None,
            json.dumps([redact(step) for step in self.steps], ensure_ascii=False) if self.steps else None,
            _cut(redact(self.response)) if self.response else None,
        )


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"\n[… cut at {TEXT_LIMIT:,} of {len(text):,} characters]"


def one_line(text: str, width: int = STEP_WIDTH) -> str:
    return clip(" ".join(str(text).split()), width)


def tool_call_line(name: str | None, arguments) -> str:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False) if arguments not in (None, {}) else ""
    return one_line(f"tool call {name or '?'} {arguments}".rstrip())


def tool_result_line(content) -> str:
    return one_line(f"tool result {_plain(content) or '(empty)'}")


def _plain(content) -> str:
    """The text of a message's content, whatever shape the protocol gives it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(filter(None, (_plain(part) for part in content)))
    if isinstance(content, dict):
        for key in ("text", "input_text", "output", "content", "result", "response"):
            if key in content:
                return _plain(content[key])
        if "json" in content:
            return json.dumps(content["json"], ensure_ascii=False)
    return ""


def _typed(text: str) -> bool:
    return bool(text.strip()) and not text.lstrip().startswith("<system-reminder>")


class _Turns:
    """Walks a conversation keeping the last typed prompt and the steps after it."""

    def __init__(self) -> None:
        self.prompt: str | None = None
        self.steps: list[str] = []

    def typed(self, text: str) -> None:
        self.prompt, self.steps = text, []

    def step(self, line: str) -> None:
        self.steps.append(line)


def _anthropic_like(messages, turns: _Turns, bedrock: bool = False) -> None:
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        role = message.get("role")
        if isinstance(content, str):
            if role == "user" and _typed(content):
                turns.typed(content)
            elif role == "assistant" and content.strip():
                turns.step(one_line(f"assistant {content}"))
            continue
        typed = []
        for block in content or ():
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if bedrock:  # Converse blocks are keyed by their kind
                kind = next((key for key in ("text", "toolUse", "toolResult") if key in block), None)
            if kind == "text" and isinstance(block.get("text"), str):
                if role == "user" and _typed(block["text"]):
                    typed.append(block["text"])
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
        if typed:
            turns.typed("\n".join(typed))


def _openai_chat(messages, turns: _Turns) -> None:
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            text = _plain(message.get("content"))
            if _typed(text):
                turns.typed(text)
        elif role in ("tool", "function"):
            turns.step(tool_result_line(message.get("content")))
        elif role == "assistant":
            if _plain(message.get("content")).strip():
                turns.step(one_line(f"assistant {_plain(message.get('content'))}"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {} if isinstance(call, dict) else {}
                turns.step(tool_call_line(function.get("name"), function.get("arguments")))


def _openai_responses(items, turns: _Turns) -> None:
    if isinstance(items, str):
        turns.typed(items)
        return
    for item in items or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "user":
            text = _plain(item.get("content"))
            if _typed(text):
                turns.typed(text)
        elif kind == "message" and item.get("role") == "assistant":
            turns.step(one_line(f"assistant {_plain(item.get('content'))}"))
        elif kind in ("function_call", "custom_tool_call"):
            turns.step(tool_call_line(item.get("name"), item.get("arguments", item.get("input"))))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            turns.step(tool_result_line(item.get("output")))


def _gemini(contents, turns: _Turns) -> None:
    for content in contents or ():
        if not isinstance(content, dict):
            continue
        typed = []
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and content.get("role", "user") == "user":
                typed.append(part["text"])
            elif isinstance(part.get("text"), str):
                turns.step(one_line(f"assistant {part['text']}"))
            elif isinstance(part.get("functionCall"), dict):
                turns.step(tool_call_line(part["functionCall"].get("name"), part["functionCall"].get("args")))
            elif isinstance(part.get("functionResponse"), dict):
                turns.step(tool_result_line(json.dumps(part["functionResponse"].get("response"), ensure_ascii=False)))
        if typed and _typed("\n".join(typed)):
            turns.typed("\n".join(typed))


def request_turns(protocol: str, request) -> tuple[str | None, list[str]]:
    """The last typed prompt of a request and the tool steps after it."""
    turns = _Turns()
    if not isinstance(request, dict):
        return None, []
    if protocol == "anthropic":
        _anthropic_like(request.get("messages"), turns)
    elif protocol == "bedrock":
        _anthropic_like(request.get("messages"), turns, bedrock=True)
    elif protocol in ("openai_chat", "ollama"):
        if "messages" in request:
            _openai_chat(request["messages"], turns)
        elif isinstance(request.get("prompt"), str):
            turns.typed(request["prompt"])  # Ollama /api/generate, legacy completions
    elif protocol == "openai_responses":
        _openai_responses(request.get("input"), turns)
    elif protocol == "gemini":
        _gemini(request.get("contents"), turns)
    return turns.prompt, turns.steps


def call_text(protocol: str, request, answer: str, tool_calls: list[list]) -> CallText:
    """The call's texts; the response's tool calls follow its text, a line each."""
    prompt, steps = request_turns(protocol, request)
    response = "\n".join(filter(None, [answer, *(tool_call_line(name, "".join(parts)) for name, parts in tool_calls)]))
    return CallText(prompt, steps, response or None)
