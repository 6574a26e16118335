"""Usage injection, for OpenAI-compatible streams, which carry usage only when
asked: the proxy asks (`include_usage_splice`), and removes the extra event
from the answer (`UsageChunkStripper`), so the client gets the stream it requested.

The request is spliced on the event loop, in bounded slices: its top-level keys
are found by a scan of its structure (strings are skipped by a regular
expression, nothing is decoded), and the scan pauses after each slice, so a request of many megabytes never holds
the loop. The body is spliced, never re-serialised.

`include_usage_splice(body)` is a generator: each `next()` does at most one slice
of work; its return value (StopIteration.value) is the spliced body, or None when
the request is to be sent as it came.
"""

import io
import json
import re
import sys
from collections.abc import Generator

from taskmeter.protocols.sse import SseSplitter, split_events, sse_event

# One slice of work: this many bytes, or this many structural characters (a
# slice of text full of escapes takes a few ms), or one copy of COPY_BYTES.
SLICE_BYTES = 64 * 1024
SLICE_STEPS = 2000
COPY_BYTES = 1024 * 1024
# A key this long is none of ours; a stream_options value this long is left alone.
_LONGEST_KEY = 64
_LONGEST_OPTIONS = 64 * 1024

_QUOTE = ord('"')
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)  # up to the closing quote, escapes skipped
_NESTED = re.compile(rb'["{}\[\]]')
_SCALAR = re.compile(rb"[^,}\] \t\r\n]*")
_INCLUDE_USAGE = b'"include_usage":true'
_ADDED_OPTIONS = b'"stream_options":{' + _INCLUDE_USAGE + b"}"


def _end(pattern: re.Pattern[bytes], body: bytes, pos: int = 0, endpos: int = sys.maxsize) -> int:
    """Where a match of `pattern` (which may be empty, so always matches) from `pos` ends."""
    found = pattern.match(body, pos, endpos)
    assert found is not None  # every pattern here matches the empty string
    return found.end()


Scan = Generator[None, None, bytes | None]


class _NotAnObject(Exception):
    """The body is not one JSON object: it goes as it came."""


class _Slices:
    """Counts work; `due(pos)` says when a slice is done (then the scan pauses)."""

    __slots__ = ("_until", "_steps")

    def __init__(self, pos: int) -> None:
        self._until, self._steps = pos + SLICE_BYTES, 0

    def due(self, pos: int) -> bool:
        self._steps += 1
        if pos < self._until and self._steps < SLICE_STEPS:
            return False
        self._until, self._steps = pos + SLICE_BYTES, 0
        return True


def include_usage_splice(body: bytes) -> Scan:
    """The body with `stream_options.include_usage: true` added when the request
    streams (`"stream": true`) and the client did not ask for usage itself: the
    option absent, `null`, or an object without it. `include_usage: false` is the
    client's choice and stays; a body that never spells `"stream"` plainly (only
    with escapes) is not looked into. See the module's docstring for how to drive it."""
    position = 0
    while True:  # the cheap test first, by slices too: most requests never say "stream"
        if body.find(b'"stream"', max(0, position - 8), position + 4 * SLICE_BYTES) >= 0:
            break
        position += 4 * SLICE_BYTES
        if position >= len(body):
            return None
        yield
    try:
        members = yield from _top_level_members(body, {"stream", "stream_options"})
    except _NotAnObject:
        return None
    stream, options = members.get("stream"), members.get("stream_options")
    if stream is None or body[stream[0] : stream[1]] != b"true":
        return None
    if options is None:
        opening = _end(_WHITESPACE, body) + 1
        return (yield from _joined((memoryview(body)[:opening], _ADDED_OPTIONS, b",", memoryview(body)[opening:])))
    start, end = options
    value = body[start:end]
    if value == b"null":
        added = _ADDED_OPTIONS[len(b'"stream_options":') :]
        return (yield from _joined((memoryview(body)[:start], added, memoryview(body)[end:])))
    if not value.startswith(b"{") or end - start > _LONGEST_OPTIONS:
        return None  # options of another type, or too odd to read: the client's choice stands
    try:
        parsed = json.loads(value.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(parsed, dict) or "include_usage" in parsed:
        return None  # asked for already, or declined
    inside = start + 1
    added = _INCLUDE_USAGE + (b"," if parsed else b"")
    return (yield from _joined((memoryview(body)[:inside], added, memoryview(body)[inside:])))


def _joined(parts) -> Generator[None, None, bytes]:
    """b"".join(parts), copied a slice at a time: one copy of many megabytes would
    hold the loop. BytesIO hands its buffer over without a last copy."""
    joined = io.BytesIO()
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), COPY_BYTES):
            joined.write(view[start : start + COPY_BYTES])
            yield
    return joined.getvalue()


def _top_level_members(body: bytes, wanted: set[str]) -> Generator[None, None, dict[str, tuple[int, int]]]:
    """(start, end) of the value of each wanted top-level key of the JSON object
    `body`; a repeated key's last value, as json.loads keeps. Raises _NotAnObject."""
    members: dict[str, tuple[int, int]] = {}
    slices = _Slices(0)
    end = len(body)
    pos = _end(_WHITESPACE, body)
    if pos >= end or body[pos] != ord("{"):
        raise _NotAnObject
    pos = _end(_WHITESPACE, body, pos + 1)
    if body[pos : pos + 1] == b"}":
        return members
    while True:
        if body[pos : pos + 1] != b'"':
            raise _NotAnObject
        key_start = pos + 1
        pos = yield from _string_end(body, key_start, slices)
        key = _key(body[key_start : pos - 1]) if pos - 1 - key_start <= _LONGEST_KEY else None
        pos = _end(_WHITESPACE, body, pos)
        if body[pos : pos + 1] != b":":
            raise _NotAnObject
        value_start = _end(_WHITESPACE, body, pos + 1)
        pos = yield from _value_end(body, value_start, slices)
        if key in wanted:
            members[key] = (value_start, pos)
        pos = _end(_WHITESPACE, body, pos)
        separator = body[pos : pos + 1]
        if separator == b"}":
            if _end(_WHITESPACE, body, pos + 1) != end:
                raise _NotAnObject
            return members
        if separator != b",":
            raise _NotAnObject
        pos = _end(_WHITESPACE, body, pos + 1)
        if slices.due(pos):
            yield


def _key(raw: bytes) -> str | None:
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:  # a key spelled with escapes (`"str\u0065am"`) is the key it decodes to
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return None


def _string_end(body: bytes, pos: int, slices: _Slices) -> Generator[None, None, int]:
    """The position after the closing quote of the string whose text starts at `pos`."""
    end = len(body)
    while True:
        limit = min(end, pos + SLICE_BYTES + 1)  # room for an escape, so each slice moves on
        pos = _end(_STRING_REST, body, pos, limit)
        if pos < end and body[pos] == _QUOTE:
            return pos + 1
        if limit == end:
            raise _NotAnObject  # the string never ends
        slices.due(limit)
        yield


def _value_end(body: bytes, pos: int, slices: _Slices) -> Generator[None, None, int]:
    """The position after the JSON value that starts at `pos`."""
    end = len(body)
    first = body[pos : pos + 1]
    if first == b'"':
        return (yield from _string_end(body, pos + 1, slices))
    if first not in (b"{", b"["):
        scalar_end = _end(_SCALAR, body, pos)
        if scalar_end == pos:
            raise _NotAnObject
        return scalar_end
    depth, pos = 1, pos + 1
    while True:
        found = _NESTED.search(body, pos, min(end, pos + SLICE_BYTES))
        if found is None:
            if pos + SLICE_BYTES >= end:
                raise _NotAnObject
            pos += SLICE_BYTES
            slices.due(pos)
            yield
            continue
        pos = found.end()
        character = body[found.start()]
        if character == _QUOTE:
            pos = yield from _string_end(body, pos, slices)
        elif character in b"{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
        if slices.due(pos):
            yield


class UsageChunkStripper:
    """Removes the usage-only chunk (`"choices": []` with a usage object) that the
    meter asked an OpenAI-compatible server for, so the client gets exactly the
    stream it requested. Events are cut where the recorder's parser cuts them
    (sse.py, any line ends); only the bytes of an event not yet complete are
    held back."""

    __slots__ = ("_splitter", "_unsent", "_removed_cr")

    def __init__(self) -> None:
        self._splitter = SseSplitter()
        self._unsent = b""
        self._removed_cr = False  # the usage event just removed ended the data with `\r`: a `\n` next is its own

    def feed(self, data: bytes) -> bytes:
        """The complete events so far, less the usage-only one; O(len(data)), in
        as few passes over the data as can be (this runs for every chunk)."""
        if self._removed_cr:
            self._removed_cr = False
            if data[:1] == b"\n":
                data = data[1:]  # the rest of the removed event's `\r\n`
        complete = self._splitter.whole(data)
        if b'"choices":[]' not in complete and b'"choices": []' not in complete:
            return complete  # the usual case: no candidate in these events
        try:
            events = split_events(complete)
            kept = b"".join(map(_without_usage, events))
            ends_data = not self._splitter.holds()  # only then may the next byte be the `\n` of its `\r\n`
            self._removed_cr = ends_data and events[-1].endswith(b"\r") and _is_usage_only(events[-1])
            return kept
        except Exception:
            self._unsent = complete  # for release(): the caller passes everything on untouched
            raise

    def flush(self) -> bytes:
        return b"".join(map(_without_usage, self._splitter.flush()))

    def release(self) -> bytes:
        """After feed() failed: every byte not passed on yet, as it came."""
        unsent, self._unsent = self._unsent, b""
        return unsent + b"".join(self._splitter.flush())


def _without_usage(raw_event: bytes) -> bytes:
    """The event, or nothing of it when it is the usage-only one but the empty
    lines before it (the `\n` of a `\r\n` cut from the event before), which are
    the stream's."""
    if not _is_usage_only(raw_event):
        return raw_event
    return raw_event[: len(raw_event) - len(raw_event.lstrip(b"\r\n"))]


def _is_usage_only(raw_event: bytes) -> bool:
    if b'"usage"' not in raw_event or b'"choices"' not in raw_event:
        return False
    event = sse_event(raw_event)
    if event is None:
        return False
    try:
        payload = json.loads(event[1])
    except (ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and payload.get("choices") == [] and isinstance(payload.get("usage"), dict)
