"""What the proxy keeps of a call while it is in flight: filled on the event loop,
handed over to the recorder process when the call ends."""

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class CapturedCall:
    id: str
    started: float
    provider: str
    protocol: str
    operation: str
    method: str
    endpoint: str
    task_id: str | None = None
    attribution: str | None = None
    client: str | None = None
    client_session: str | None = None  # a client's own session ID header (Claude Code's)
    subscription: bool = False  # billed by a subscription login (routing.subscription_login), not per token
    request_body: bytes | None = None
    injected_usage: bool = False
    first_byte: float | None = None
    ended: float | None = None
    status: int | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    response_body: bytearray = field(default_factory=bytearray)
    # Set once the body passed the parse limit: the bytes skipped, and the last
    # the last bytes of the rest (taskmeter.proxy.tee.TAIL_BYTES).
    response_skipped: int = 0
    response_tail: bytearray = field(default_factory=bytearray)
    outcome: str | None = None
    error: str | None = None
    notes: str | None = None
    blocked: str | None = None  # "budget" or "loop": answered by the meter (the Guard addon)
