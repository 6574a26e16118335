"""What the proxy keeps of a call while it is in flight, and the stream callable.

Everything here runs on mitmproxy's event loop, so it does O(chunk) work only:
no parsing, no I/O. Parsing happens later, in the recorder process.
"""

import logging
import time
from collections.abc import Callable

from taskmeter.handover.call import CapturedCall
from taskmeter.protocols.framing import DecodingError, looks_like_sse

log = logging.getLogger(__name__)

# Past the parse limit, the last bytes of a response are still kept: that is where
# most protocols state usage.
TAIL_BYTES = 256 * 1024


class ResponseTee:
    """mitmproxy's `flow.response.stream` callable: forwards every chunk at once and
    keeps a copy (up to a limit, then the tail) for the recorder to parse. Never raises.

    When the meter asked for stream usage, the usage-only event is removed from an
    event stream (by the protocol's stripper, `usage_stripper`), recognised by its content type or by its first bytes. A server
    that compresses anyway is decoded here, and the client gets the plain stream
    (the caller drops Content-Encoding)."""

    __slots__ = ("_call", "_limit", "_strip", "_stripper", "_decoder", "_observer_failed")

    def __init__(self, call: CapturedCall, limit: int, usage_stripper: Callable | None, decoder=None) -> None:
        self._call = call
        self._limit = limit
        self._strip = usage_stripper  # made once the stream is known to be SSE
        self._stripper = None
        self._decoder = decoder
        self._observer_failed = False  # said once per call, not once per chunk

    def __call__(self, data: bytes):
        at_end = not data  # mitmproxy's last call
        if self._decoder is not None:
            data = self._decode(data, at_end)
        try:
            self._observe(data)
        except Exception:
            if not self._observer_failed:
                self._observer_failed = True
                log.exception("meter: stream observer failed (said once per call); the stream is passed on untouched")
        if self._strip and self._stripper is None and data:
            if looks_like_sse(self._call.content_type, data):
                self._stripper = self._strip()
            self._strip = None
        if self._stripper is None:
            # An empty bytes object would end an HTTP/1.1 chunked body early.
            return data if data or at_end else []
        try:
            out = self._stripper.feed(data) if data else b""
            if at_end:
                return out + self._stripper.flush()
            return out if out else []
        except Exception:
            log.exception("meter: usage-chunk removal failed; the rest of the stream is passed on untouched")
            held = self._stripper.release()  # already includes `data`
            self._stripper = None
            return held or []

    def _decode(self, data: bytes, at_end: bool) -> bytes:
        """The stream decoded; as it came, from the first byte that cannot be."""
        try:
            return self._decoder.flush() if at_end else self._decoder.feed(data)
        except DecodingError as exc:
            log.warning("meter: cannot decode the stream (%s); it is passed on as it came", exc)
        except Exception:
            log.exception("meter: decoding the stream failed; it is passed on as it came")
        self._decoder, self._strip = None, None
        return data

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
