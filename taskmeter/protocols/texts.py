"""Reading the words a person reads before flagging a call out of a request: the
last message a person typed, and the tool calls and tool results that followed it
(one line each). Each protocol walks its own request shape (its `request_turns`)
with these helpers.

Tool results travel as user turns (Anthropic, Bedrock, Gemini) or as their own
role (OpenAI), but nobody typed them: they are steps, not the prompt. Claude
Code's `<system-reminder>` blocks are not typed either.
"""

import json

from taskmeter import protocols
from taskmeter.printable import clip

STEP_WIDTH = 160


def one_line(text: str, width: int = STEP_WIDTH) -> str:
    return clip(" ".join(str(text).split()), width)


def tool_call_line(name: str | None, arguments) -> str:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False) if arguments not in (None, {}) else ""
    return one_line(f"tool call {name or '?'} {arguments}".rstrip())


def tool_result_line(content) -> str:
    return one_line(f"tool result {plain(content) or '(empty)'}")


def plain(content) -> str:
    """The text of a message's content, whatever shape the protocol gives it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(filter(None, (plain(part) for part in content)))
    if isinstance(content, dict):
        for key in ("text", "input_text", "output", "content", "result", "response"):
            if key in content:
                return plain(content[key])
        if "json" in content:
            return json.dumps(content["json"], ensure_ascii=False)
    return ""


def typed(text: str) -> bool:
    """Whether a person typed the text (not blank, not a `<system-reminder>`)."""
    return bool(text.strip()) and not text.lstrip().startswith("<system-reminder>")


class Turns:
    """Walks a conversation keeping the last typed prompt and the steps after it."""

    def __init__(self) -> None:
        self.prompt: str | None = None
        self.steps: list[str] = []

    def typed(self, text: str) -> None:
        self.prompt, self.steps = text, []

    def step(self, line: str) -> None:
        self.steps.append(line)


def request_turns(protocol: str, request) -> tuple[str | None, list[str]]:
    """The last typed prompt of a request and the tool steps after it."""
    turns = Turns()
    if not isinstance(request, dict):
        return None, []
    protocols.by_name(protocol).request_turns(request, turns)
    return turns.prompt, turns.steps
