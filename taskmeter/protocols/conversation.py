"""Conversation identity: a hash of the conversation's root.

The root is what every later turn of a conversation repeats: the system prompt
(or instructions) and the first user turn; each protocol says where they are
(its `conversation_root`). Two calls with the same root belong to one
conversation; tools, later turns and parameters do not change it. A Responses
API call chained with previous_response_id joins the conversation of that response.
"""

import hashlib
import json

from taskmeter import protocols

_SYSTEM_ROLES = ("system", "developer")


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


def conversation_id(protocol: str, request: object) -> str | None:
    if not isinstance(request, dict):
        return None
    root = protocols.by_name(protocol).conversation_root(request)
    if root is None or root == [None, None]:
        return None
    canonical = json.dumps(root, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (half an emoji from a JavaScript client)
    # hashes like any other character.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]
