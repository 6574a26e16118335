"""Amazon Bedrock Converse: /converse (JSON) and /converse-stream (AWS eventstream)."""

from taskmeter.protocols.anthropic import message_turns
from taskmeter.protocols.conversation import first_user
from taskmeter.protocols.provider_errors import openai_style
from taskmeter.protocols.record import GENERATE, Protocol, input_or_messages
from taskmeter.protocols.usage import Accumulator, Stated, Usage, cache_outside_input


def bedrock_usage(usage: dict) -> Usage:
    return cache_outside_input(
        Stated(usage), "inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens", "outputTokens", None
    )


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


PROTOCOL = Protocol(
    name="bedrock",
    paths={"/converse": GENERATE, "/converse-stream": GENERATE},
    accumulator=Bedrock,
    streamed=lambda endpoint, request: endpoint.split("?")[0].endswith("-stream"),
    conversation_root=lambda request: [request.get("system"), first_user(request.get("messages"))],
    request_turns=lambda request, turns: message_turns(request.get("messages"), turns, bedrock=True),
    loop_turns=input_or_messages,
    error_body=openai_style,
    tail_usage=("usage", lambda usage: {"usage": usage}),
)
