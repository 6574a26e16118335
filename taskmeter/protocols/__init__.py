"""The wire protocols the meter reads, one module each, and their registry.

Each module builds one `Protocol` record (record.py) of what the proxy and the
recorder need from it; `ALL` lists them. Adding a protocol means adding its module
and listing it here: docs/protocols.md. What no protocol owns (content decoding
and framings, the plausibility of counts, the conversation hash, the shape of a
refusal's causes) is in the shared modules beside them.
"""

from taskmeter.protocols import anthropic, bedrock, code_assist, gemini, ollama, openai_chat, openai_responses
from taskmeter.protocols.record import Protocol

ALL: tuple[Protocol, ...] = tuple(
    module.PROTOCOL for module in (openai_chat, openai_responses, anthropic, gemini, code_assist, ollama, bedrock)
)
_BY_NAME = {protocol.name: protocol for protocol in ALL}


def by_name(name: str) -> Protocol:
    """The protocol stored as `name`; KeyError for one the meter does not read."""
    return _BY_NAME[name]
