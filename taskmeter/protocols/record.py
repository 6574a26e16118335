"""What the meter needs from each wire protocol, in one record.

The proxy reads the routing, session header, error shape and usage injection; the
recorder reads the rest. A protocol's module builds its record; the registry
(taskmeter/protocols/__init__.py) lists them all.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from taskmeter.protocols.stream_usage import Scan
from taskmeter.protocols.texts import Turns
from taskmeter.protocols.usage import Accumulator

GENERATE, COUNT_TOKENS, OTHER = "generate", "count_tokens", "other"


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Usage the protocol states in a stream only when asked: the request is
    spliced to ask (a generator, see stream_usage.py), and the extra event the
    answer then carries is removed (`stripper()`, fed the stream's chunks)."""

    splice: Callable[[bytes], Scan]
    stripper: Callable[[], object]


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str  # as stored in interactions.protocol
    # Routing (proxy/routing.py reads each path as upstream servers may): the
    # lower-cased path by its ending, else its last segment `name:verb` by its
    # verb; each to its operation (GENERATE, COUNT_TOKENS or OTHER).
    paths: dict[str, str]
    # Reading a response: the framing (SSE, NDJSON, JSON, eventstream) follows the
    # content type (framing.py); the accumulator reads the events into usage,
    # model, response id, text, tool calls, errors and the end marker.
    accumulator: type[Accumulator]
    # Whether the call streams, from its endpoint (query included) and request JSON.
    streamed: Callable[[str, object], bool]
    # The conversation's root (conversation.py hashes it), from the request JSON.
    conversation_root: Callable[[dict], object]
    # The last typed prompt and the tool steps after it, for `meter show`.
    request_turns: Callable[[dict, Turns], None]
    # The request's conversation turns, whose last two make the loop signature.
    loop_turns: Callable[[dict], object]
    # A refusal (budget, loop, unreachable upstream) as the protocol's clients read it:
    # (status, cause, message) -> body; causes are provider_errors.CAUSES.
    error_body: Callable[[int, str, str], bytes]
    verbs: dict[str, str] = field(default_factory=dict)
    # Where a plain JSON body states usage, and the event that carries it to the
    # accumulator, to read usage from the tail of a body too large to keep.
    tail_usage: tuple[str, Callable[[dict], dict]] | None = None
    # The model named in the endpoint, when the body names none (Gemini).
    model_in_endpoint: Callable[[str], str | None] | None = None
    # Headers a client names its session in, and the request field it may use instead.
    session_headers: tuple[str, ...] = ()
    session_in_request: Callable[[object], str | None] | None = None
    # A call chained to an earlier response by its id (previous_response_id): it
    # joins that response's conversation, and the conversation is the session.
    chains_responses: bool = False
    stream_usage: StreamUsage | None = None


def stream_requested(request, default: bool = False) -> bool:
    """The request's own `stream` field, else `default`."""
    if isinstance(request, dict) and "stream" in request:
        return bool(request["stream"])
    return default


def input_or_messages(request: dict) -> object:
    """The turns of a request whose turns are its `input` or its `messages`."""
    return request.get("input", request.get("messages"))
