"""What the proxy keeps of a call while it is in flight, and the stream callable.

Everything here runs on mitmproxy's event loop, so it does O(chunk) work only:
no parsing, no I/O. Parsing happens later, in the recorder process.
"""

import json
import logging
import time

from taskmeter.handover.call import CapturedCall
from taskmeter.recorder.framing import looks_like_sse

log = logging.getLogger("taskmeter.proxy")

# Past the parse limit, the last bytes of a response are still kept: that is where
# most protocols state usage.
TAIL_BYTES = 256 * 1024


class UsageChunkStripper:
    """Removes the usage-only chunk (`"choices": []` with a usage object) that the
    meter asked an OpenAI-compatible server for, so the client gets exactly the
    stream it requested. Holds back only the bytes of an event not yet complete."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        """The complete events so far, less the usage-only one; O(len(data)), in
        as few passes over the data as can be (this runs for every chunk)."""
        if self._pending:  # the start of an event cut by the last chunk: short
            data = bytes(self._pending) + data
            self._pending.clear()
        lf = data.rfind(b"\n\n")  # from the end: stops at the last event's end
        crlf = data.rfind(b"\r\n\r\n", max(lf, 0))
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self._pending += memoryview(data)[end:]
        complete = data[:end]  # the chunk itself when it ends with an event, as most do
        if b'"choices":[]' not in complete and b'"choices": []' not in complete:
            return complete  # the usual case: no candidate in these events
        try:
            return b"".join(block for block in self._events(complete) if not self._is_usage_only(block))
        except Exception:
            self._pending[:0] = complete  # held again, so the caller can pass everything on untouched
            raise

    def flush(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return b"" if self._is_usage_only(rest) else rest

    @staticmethod
    def _events(data: bytes):
        start = 0
        while start < len(data):
            lf = data.find(b"\n\n", start)
            crlf = data.find(b"\r\n\r\n", start)
            if crlf >= 0 and (lf < 0 or crlf < lf):
                end = crlf + 4
            elif lf >= 0:
                end = lf + 2
            else:
                end = len(data)
            yield data[start:end]
            start = end

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
    keeps a copy (up to a limit, then the tail) for the recorder to parse. Never raises.

    When the meter asked for stream usage, the usage-only event is removed from an
    event stream, recognised by its content type or by its first bytes. A server
    that compresses anyway is decoded here, and the client gets the plain stream
    (the caller drops Content-Encoding)."""

    __slots__ = ("_call", "_limit", "_strip", "_stripper", "_decoder")

    def __init__(self, call: CapturedCall, limit: int, strip_usage_chunk: bool, decoder=None) -> None:
        self._call = call
        self._limit = limit
        self._strip = strip_usage_chunk  # once the stream is known to be SSE
        self._stripper: UsageChunkStripper | None = None
        self._decoder = decoder

    def __call__(self, data: bytes):
        at_end = not data  # mitmproxy's last call
        if self._decoder is not None and data:
            try:
                data = self._decoder.feed(data)
            except Exception:
                log.exception("meter: cannot decode the stream; it is passed on as it came")
                self._decoder, self._strip = None, False
        try:
            self._observe(data)
        except Exception:
            log.exception("meter: stream observer failed; the stream is passed on untouched")
        if self._strip and self._stripper is None and data:
            self._strip = looks_like_sse(self._call.content_type, data)
            if self._strip:
                self._stripper = UsageChunkStripper()
        if self._stripper is None:
            # An empty bytes object would end an HTTP/1.1 chunked body early.
            return data if data or at_end else []
        try:
            if at_end:
                return self._stripper.flush()
            out = self._stripper.feed(data)
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
        tail = call.response_tail
        if not tail and len(call.response_body) + len(data) <= self._limit:
            call.response_body += data
            return
        tail += data
        if len(tail) > 2 * TAIL_BYTES:  # trimmed in steps, so each byte moves at most twice
            call.response_skipped += len(tail) - TAIL_BYTES
            del tail[:-TAIL_BYTES]
