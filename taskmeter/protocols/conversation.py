"""Conversation identity: a hash of the conversation's root.

The root is what every later turn of a conversation repeats: the system prompt
(or instructions) and the first user turn; each protocol says where they are
(its `conversation_root`). Two calls with the same root continue one conversation;
tools, later turns and parameters do not change it, nor do the per-request
annotations a client moves from turn to turn (`_PER_REQUEST`). A Responses API call
chained with previous_response_id joins the conversation of that response.

The root hash is what the proxy can compute from one request. The stored
conversation ID scopes it to the call's task and session (store/sessions.py).
"""

import hashlib
import json

from taskmeter import protocols

_SYSTEM_ROLES = ("system", "developer")
# Keys a client sets on a block for this request only: Claude Code and opencode
# move Anthropic's `cache_control` marker to the newest message at every turn
# (OpenAI-compatible gateways take it on content parts too).
_PER_REQUEST = frozenset({"cache_control"})
# Blocks that only mark where a cache ends (Bedrock Converse's `cachePoint`), moved likewise.
_MARKER_BLOCKS = frozenset({"cachePoint"})


def request_json(body: bytes | None):
    """A request body as JSON, or None. Invalid UTF-8 (a client that cut a
    character in half) does not hide the model and prompt around it."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None


def first_user(messages) -> object:
    for message in messages or ():
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return message.get("content", message.get("parts"))
    return None


def system_messages(messages) -> list:
    return [m.get("content") for m in messages or () if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES]


def without_annotations(value: object) -> object:
    """`value` without the per-request annotations: what stays the same from turn to turn."""
    if isinstance(value, dict):
        return {key: without_annotations(item) for key, item in value.items() if key not in _PER_REQUEST}
    if isinstance(value, list):
        return [
            without_annotations(item)
            for item in value
            if not (isinstance(item, dict) and item and _MARKER_BLOCKS.issuperset(item))
        ]
    return value


def root_hash(protocol: str, request: object) -> str | None:
    """The hash of a request's conversation root; None when it has none."""
    if not isinstance(request, dict):
        return None
    root = protocols.by_name(protocol).conversation_root(request)
    if root is None or root == [None, None]:
        return None
    return short_hash(without_annotations(root))


def short_hash(value: object) -> str:
    """16 hex digits of the SHA-256 of `value` as canonical JSON."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (half an emoji from a JavaScript client)
    # hashes like any other character.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]
