"""What a call said, in the words a person reads before flagging it: the last
message a person typed, the tool calls and tool results that followed it (one
line each; each protocol reads its request: protocols/texts.py), and the
response's text with its own tool calls."""

import json
from dataclasses import dataclass, field

from taskmeter.protocols.texts import request_turns, tool_call_line
from taskmeter.secrets import redact

# Each text is cut here (characters), as the issue of storing text promises.
TEXT_LIMIT = 65536


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


def call_text(protocol: str, request, answer: str, tool_calls: list[list]) -> CallText:
    """The call's texts; the response's tool calls follow its text, a line each."""
    prompt, steps = request_turns(protocol, request)
    response = "\n".join(filter(None, [answer, *(tool_call_line(name, "".join(parts)) for name, parts in tool_calls)]))
    return CallText(prompt, steps, response or None)
