"""Errors the meter itself answers with, in the shape each provider's clients
read (each protocol's `error_body`): OpenAI-style `{"error": {...}}` (every
OpenAI-compatible server, Ollama and Bedrock too), Anthropic's
`{"type": "error", "error": {...}}`, Gemini's `{"error": {"code", "message", "status"}}`.
One table of what each cause is called."""

import json

from taskmeter import protocols

# cause -> (OpenAI type, OpenAI code, Anthropic type, Gemini status)
CAUSES = {
    "unreachable": ("upstream_error", "upstream_unreachable", "api_error", "UNAVAILABLE"),
    "timeout": ("upstream_error", "upstream_timeout", "timeout_error", "DEADLINE_EXCEEDED"),
    "budget": ("budget_exceeded", "budget_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "loop": ("loop_detected", "loop_detected", "rate_limit_error", "RESOURCE_EXHAUSTED"),
}


def body(protocol: str, status: int, cause: str, message: str) -> bytes:
    """The error as `protocol`'s clients expect to read it."""
    return protocols.by_name(protocol).error_body(status, cause, message)


def openai_style(status: int, cause: str, message: str) -> bytes:
    openai_type, openai_code, _, _ = CAUSES[cause]
    return json.dumps({"error": {"message": message, "type": openai_type, "param": None, "code": openai_code}}).encode()
