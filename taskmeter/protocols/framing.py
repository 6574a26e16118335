"""Incremental decoders for response bodies: content encodings and message framings.

Every decoder keeps one contract (httpx's, in httpx/_decoders.py): `feed(data)`
takes bytes in arbitrary pieces (one byte, one network chunk or the whole body)
and returns what they complete; `flush()`, at the end of the body, returns the
rest. Chunk boundaries never change the result. A content decoder returns bytes;
a framing returns a list of (event name, payload) items.

Bytes that are not what their headers or framing say raise `DecodingError`, and
nothing else: the caller notes it as a fault of the input. Any other exception
out of a decoder is a bug of ours.
"""

import json
import struct
import zlib

import brotli
import zstandard

from taskmeter.protocols.sse import SseSplitter, sse_event

# Decompression output is produced in slices so a bomb cannot balloon at once.
_MAX_SLICE = 1 << 20


class DecodingError(ValueError):
    """The one error a decoder raises: the body is not what it says it is."""


class UnsupportedEncoding(DecodingError):
    """A Content-Encoding no decoder reads (raised when one is asked for)."""


class GzipDecoder:
    """gzip or zlib, including multi-member gzip (a new member after each end)."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        try:
            while data:
                out += self._inflate.decompress(data, _MAX_SLICE)
                while self._inflate.unconsumed_tail:
                    out += self._inflate.decompress(self._inflate.unconsumed_tail, _MAX_SLICE)
                if self._inflate.eof:
                    data = self._inflate.unused_data.lstrip(b"\x00")
                    self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
                else:
                    data = b""
        except zlib.error as exc:
            raise DecodingError(f"gzip: {exc}") from exc
        return bytes(out)

    def flush(self) -> bytes:
        try:
            return self._inflate.flush()
        except zlib.error as exc:
            raise DecodingError(f"gzip: {exc}") from exc


class DeflateDecoder:
    """`deflate` is zlib-wrapped in practice, raw deflate in a few servers."""

    def __init__(self) -> None:
        self._inflate: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        if self._inflate is None:
            if not data:
                return b""
            zlib_header = (data[0] & 0x0F) == 8
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        try:
            return self._inflate.decompress(data)
        except zlib.error as exc:
            raise DecodingError(f"deflate: {exc}") from exc

    def flush(self) -> bytes:
        if self._inflate is None:
            return b""
        try:
            return self._inflate.flush()
        except zlib.error as exc:
            raise DecodingError(f"deflate: {exc}") from exc


class BrotliDecoder:
    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            return self._decompressor.process(data)
        except brotli.error as exc:
            raise DecodingError(f"br: {exc}") from exc

    def flush(self) -> bytes:
        return b""  # the decompressor gives out all it can at each feed


class ZstdDecoder:
    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def feed(self, data: bytes) -> bytes:
        try:
            return self._decompressor.decompress(data)
        except zstandard.ZstdError as exc:
            raise DecodingError(f"zstd: {exc}") from exc

    def flush(self) -> bytes:
        return self._decompressor.flush()


class IdentityDecoder:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


_CONTENT_DECODERS = {
    "gzip": GzipDecoder,
    "x-gzip": GzipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
    "zstd": ZstdDecoder,
    "identity": IdentityDecoder,
    "": IdentityDecoder,
}


def content_decoder(content_encoding: str | None):
    """A decoder for a Content-Encoding header value (several codings are applied
    in order). Raises UnsupportedEncoding for a coding no decoder reads."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in codings:
        if coding not in _CONTENT_DECODERS:
            raise UnsupportedEncoding(f"unsupported content encoding {coding}")
    decoders = [_CONTENT_DECODERS[c]() for c in reversed(codings)]
    if not decoders:
        return IdentityDecoder()
    if len(decoders) == 1:
        return decoders[0]
    return _Chain(decoders)


class _Chain:
    def __init__(self, decoders) -> None:
        self._decoders = decoders

    def feed(self, data: bytes) -> bytes:
        for decoder in self._decoders:
            data = decoder.feed(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for decoder in self._decoders:
            data = decoder.feed(data) + decoder.flush()
        return data


# ---------------------------------------------------------------- framings


class SseDecoder:
    """Server-sent events (sse.py): (event name, data) for each event with data."""

    def __init__(self) -> None:
        self._splitter = SseSplitter()

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        return _events(self._splitter.feed(data))

    def flush(self) -> list[tuple[str, str]]:
        """End of stream: a last event without its empty line still counts."""
        return _events(self._splitter.flush())


def _events(raw_events: list[bytes]) -> list[tuple[str, str]]:
    return [event for raw in raw_events if (event := sse_event(raw)) is not None]


class NdjsonDecoder:
    """One JSON document per line (Ollama's native stream)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buffer += data
        end = self._buffer.rfind(b"\n")
        if end < 0:
            return []
        complete = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return [("", line.decode("utf-8", "replace")) for line in complete.split(b"\n") if line.strip()]

    def flush(self) -> list[tuple[str, str]]:
        rest = self._buffer.decode("utf-8", "replace")
        self._buffer.clear()
        return [("", rest)] if rest.strip() else []


class JsonDecoder:
    """A JSON document, or a JSON array streamed element by element (Gemini without
    `alt=sse`). The body is parsed at the end; a body cut short yields the array
    elements that arrived whole."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self._buffer += data
        return []

    def flush(self) -> list[tuple[str, object]]:
        text = self._buffer.decode("utf-8", "replace")
        self._buffer.clear()
        if not text.strip():
            return []
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return _complete_array_elements(text)
        except RecursionError as exc:
            raise DecodingError("the JSON body is nested too deeply to read") from exc
        if isinstance(document, list):
            return [("", element) for element in document]
        return [("", document)]


def _complete_array_elements(text: str) -> list[tuple[str, object]]:
    decoder = json.JSONDecoder()
    position = text.find("[")
    if position < 0:
        raise DecodingError("not JSON")
    position += 1
    elements: list[tuple[str, object]] = []
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return elements
        try:
            element, position = decoder.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError):
            return elements  # the element the stream was cut in
        elements.append(("", element))


# An eventstream frame: [total length][headers length][prelude CRC] (the prelude),
# [headers][payload], [message CRC].
_PRELUDE_BYTES, _CRC_BYTES = 12, 4


class EventStreamDecoder:
    """AWS `application/vnd.amazon.eventstream` frames (Bedrock converse-stream)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buffer += data
        events = []
        while len(self._buffer) >= _PRELUDE_BYTES:
            total, headers_length, prelude_crc = struct.unpack(">III", self._buffer[:_PRELUDE_BYTES])
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise DecodingError("eventstream frame has a bad prelude CRC")
            if headers_length > total - _PRELUDE_BYTES - _CRC_BYTES:
                raise DecodingError(f"eventstream frame of {total} bytes cannot hold {headers_length} bytes of headers")
            if len(self._buffer) < total:
                break
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            if zlib.crc32(frame[:-_CRC_BYTES]) != struct.unpack(">I", frame[-_CRC_BYTES:])[0]:
                raise DecodingError("eventstream frame has a bad message CRC")
            headers = _eventstream_headers(frame[_PRELUDE_BYTES : _PRELUDE_BYTES + headers_length])
            payload = frame[_PRELUDE_BYTES + headers_length : -_CRC_BYTES].decode("utf-8", "replace")
            name = headers.get(":event-type") or headers.get(":exception-type") or ""
            if headers.get(":message-type") == "exception":
                name = "exception:" + name
            events.append((name, payload))
        return events

    def flush(self) -> list[tuple[str, str]]:
        self._buffer.clear()  # a frame cut short says nothing whole
        return []


_FIXED_HEADER_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def _eventstream_headers(raw: bytes) -> dict[str, str]:
    headers, position = {}, 0
    try:
        while position < len(raw):
            name_length = raw[position]
            name = raw[position + 1 : position + 1 + name_length].decode()
            position += 1 + name_length
            kind = raw[position]
            position += 1
            if kind in (6, 7):  # byte array, string: 2-byte length
                (length,) = struct.unpack(">H", raw[position : position + 2])
                value = raw[position + 2 : position + 2 + length]
                position += 2 + length
                headers[name] = value.decode("utf-8", "replace") if kind == 7 else value.hex()
            else:
                position += _FIXED_HEADER_SIZES[kind]
    except (IndexError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise DecodingError(f"eventstream frame has malformed headers: {type(exc).__name__}: {exc}") from exc
    return headers


Framing = SseDecoder | NdjsonDecoder | JsonDecoder | EventStreamDecoder
FRAMINGS: dict[str, type[Framing]] = {
    "sse": SseDecoder,
    "ndjson": NdjsonDecoder,
    "json": JsonDecoder,
    "eventstream": EventStreamDecoder,
}


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


def looks_like_sse(content_type: str | None, first_bytes: bytes) -> bool:
    """An event stream by its content type, or, whatever the type says, by its
    first bytes: some servers send SSE as text/plain or application/json."""
    if framing_for(content_type) == "sse":
        return True
    return first_bytes.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_SSE_FIELDS)


def framing_for(content_type: str | None, first_bytes: bytes = b"") -> str:
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "text/event-stream" or (first_bytes and looks_like_sse(None, first_bytes)):
        return "sse"
    if media in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        return "ndjson"
    if media == "application/vnd.amazon.eventstream":
        return "eventstream"
    return "json"
