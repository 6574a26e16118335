"""Incremental decoders for response bodies: content encodings and message framings.

Every decoder takes bytes in arbitrary pieces (one byte, one network chunk or the
whole body) and yields the same results: chunk boundaries never matter.
"""

import json
import struct
import zlib
from collections.abc import Iterator

import brotli
import zstandard

# Decompression output is produced in slices so a bomb cannot balloon at once.
_MAX_SLICE = 1 << 20


class GzipDecoder:
    """gzip or zlib, including multi-member gzip (a new member after each end)."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            out += self._inflate.decompress(data, _MAX_SLICE)
            while self._inflate.unconsumed_tail:
                out += self._inflate.decompress(self._inflate.unconsumed_tail, _MAX_SLICE)
            if self._inflate.eof:
                data = self._inflate.unused_data.lstrip(b"\x00")
                self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
            else:
                data = b""
        return bytes(out)


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
        return self._inflate.decompress(data)


class BrotliDecoder:
    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        return self._decompressor.process(data)


class ZstdDecoder:
    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def feed(self, data: bytes) -> bytes:
        return self._decompressor.decompress(data)


class IdentityDecoder:
    def feed(self, data: bytes) -> bytes:
        return data


_CONTENT_DECODERS = {
    "gzip": GzipDecoder,
    "x-gzip": GzipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
    "zstd": ZstdDecoder,
    "identity": IdentityDecoder,
    "": IdentityDecoder,
}


class UnsupportedEncoding(ValueError):
    pass


def content_decoder(content_encoding: str | None):
    """A decoder for a Content-Encoding header value (several codings are applied in order)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in codings:
        if coding not in _CONTENT_DECODERS:
            raise UnsupportedEncoding(coding)
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


# ---------------------------------------------------------------- framings


class SseDecoder:
    """Server-sent events per the WHATWG grammar: `\\n`, `\\r\\n` or `\\r` line ends,
    comments, multi-line data, an optional space after the colon. Yields
    (event name, data) for each dispatched event."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> Iterator[tuple[str, str]]:
        self._buffer += data
        start = 0
        buffer = self._buffer
        length = len(buffer)
        while start < length:
            newline = buffer.find(b"\n", start)
            carriage = buffer.find(b"\r", start, newline if newline >= 0 else length)
            if carriage >= 0:
                if carriage + 1 == length:
                    break  # may be half of \r\n: wait for the next byte
                end, after = carriage, carriage + (2 if buffer[carriage + 1] == 0x0A else 1)
            elif newline >= 0:
                end, after = newline, newline + 1
            else:
                break
            event = self._line(bytes(buffer[start:end]))
            if event is not None:
                yield event
            start = after
        del self._buffer[:start]

    def close(self) -> Iterator[tuple[str, str]]:
        """End of stream: a last line and event without their blank line still count."""
        if self._buffer:
            event = self._line(bytes(self._buffer.rstrip(b"\r")))
            self._buffer.clear()
            if event is not None:
                yield event
        if self._data:
            yield self._dispatch()

    def _line(self, raw: bytes) -> tuple[str, str] | None:
        if not raw:
            if self._data:
                return self._dispatch()
            self._reset()
            return None
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _reset(self) -> None:
        self._event = ""
        self._data = []

    def _dispatch(self) -> tuple[str, str]:
        event = (self._event, "\n".join(self._data))
        self._reset()
        return event


class NdjsonDecoder:
    """One JSON document per line (Ollama's native stream)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str, str]]:
        self._buffer += data
        end = self._buffer.rfind(b"\n")
        if end < 0:
            return
        complete = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        for line in complete.split(b"\n"):
            if line.strip():
                yield "", line.decode("utf-8", "replace")

    def close(self) -> Iterator[tuple[str, str]]:
        if self._buffer.strip():
            yield "", self._buffer.decode("utf-8", "replace")
        self._buffer.clear()


class JsonDecoder:
    """A JSON document, or a JSON array streamed element by element (Gemini without
    `alt=sse`). The body is parsed at the end; a body cut short yields the array
    elements that arrived whole."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str, str]]:
        self._buffer += data
        return iter(())

    def close(self) -> Iterator[tuple[str, object]]:
        text = self._buffer.decode("utf-8", "replace")
        self._buffer.clear()
        if not text.strip():
            return
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            yield from _complete_array_elements(text)
            return
        if isinstance(document, list):
            for element in document:
                yield "", element
        else:
            yield "", document


def _complete_array_elements(text: str) -> Iterator[tuple[str, object]]:
    decoder = json.JSONDecoder()
    position = text.find("[")
    if position < 0:
        raise json.JSONDecodeError("response body is not JSON", text, 0)
    position += 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            element, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return  # the element the stream was cut in
        yield "", element


class EventStreamDecoder:
    """AWS `application/vnd.amazon.eventstream` frames (Bedrock converse-stream):
    [total length][headers length][prelude CRC][headers][payload][message CRC]."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str, str]]:
        self._buffer += data
        while len(self._buffer) >= 12:
            total, headers_length, prelude_crc = struct.unpack(">III", self._buffer[:12])
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise ValueError("eventstream frame has a bad prelude CRC")
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            if zlib.crc32(frame[:-4]) != struct.unpack(">I", frame[-4:])[0]:
                raise ValueError("eventstream frame has a bad message CRC")
            headers = _eventstream_headers(frame[12 : 12 + headers_length])
            payload = frame[12 + headers_length : -4].decode("utf-8", "replace")
            name = headers.get(":event-type") or headers.get(":exception-type") or ""
            if headers.get(":message-type") == "exception":
                name = "exception:" + name
            yield name, payload

    def close(self) -> Iterator[tuple[str, str]]:
        self._buffer.clear()
        return iter(())


_FIXED_HEADER_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def _eventstream_headers(raw: bytes) -> dict[str, str]:
    headers, position = {}, 0
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
