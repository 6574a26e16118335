"""What the proxy keeps of a call while it is in flight, and the stream callable.

Everything here runs on mitmproxy's event loop, so it does O(chunk) work only:
no parsing, no I/O. Parsing happens later, in the recorder process.
"""

import json
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("taskmeter.proxy")


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
    request_body: bytes | None = None
    injected_usage: bool = False
    first_byte: float | None = None
    ended: float | None = None
    status: int | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    response_body: bytearray = field(default_factory=bytearray)
    response_truncated: bool = False
    outcome: str | None = None
    error: str | None = None


class UsageChunkStripper:
    """Removes the usage-only chunk (`"choices": []` with a usage object) that the
    meter asked an OpenAI-compatible server for, so the client gets exactly the
    stream it requested. Holds back only the bytes of an event not yet complete."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        out = bytearray()
        while True:
            end, separator = self._event_end()
            if end < 0:
                break
            block = bytes(self._pending[: end + separator])
            del self._pending[: end + separator]
            if not self._is_usage_only(block):
                out += block
        return bytes(out)

    def flush(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return b"" if self._is_usage_only(rest) else rest

    def _event_end(self) -> tuple[int, int]:
        lf = self._pending.find(b"\n\n")
        crlf = self._pending.find(b"\r\n\r\n")
        if crlf >= 0 and (lf < 0 or crlf < lf):
            return crlf, 4
        return lf, 2

    @staticmethod
    def _is_usage_only(block: bytes) -> bool:
        if b'"usage"' not in block or b'"choices"' not in block:
            return False
        for line in block.splitlines():
            if line.startswith(b"data:"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    return False
                return isinstance(event, dict) and event.get("choices") == [] and isinstance(event.get("usage"), dict)
        return False


class ResponseTee:
    """mitmproxy's `flow.response.stream` callable: forwards every chunk at once and
    keeps a copy (up to a limit) for the recorder to parse. Never raises."""

    __slots__ = ("_call", "_limit", "_stripper")

    def __init__(self, call: CapturedCall, limit: int, strip_usage_chunk: bool) -> None:
        self._call = call
        self._limit = limit
        self._stripper = UsageChunkStripper() if strip_usage_chunk else None

    def __call__(self, data: bytes):
        try:
            self._observe(data)
        except Exception:
            log.exception("meter: stream observer failed; the stream is passed on untouched")
        if self._stripper is None:
            return data
        try:
            if not data:
                return self._stripper.flush()
            out = self._stripper.feed(data)
            # An empty bytes object would end an HTTP/1.1 chunked body early.
            return out if out else []
        except Exception:
            log.exception("meter: usage-chunk removal failed; the rest of the stream is passed on untouched")
            held = bytes(self._stripper._pending)  # already includes `data`
            self._stripper = None
            return held or []

    def _observe(self, data: bytes) -> None:
        if not data:
            return
        call = self._call
        if call.first_byte is None:
            call.first_byte = time.time()
        if len(call.response_body) + len(data) <= self._limit:
            call.response_body += data
        else:
            call.response_truncated = True
