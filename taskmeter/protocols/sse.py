"""Server-sent events, cut and read per the WHATWG grammar: the one splitter the
proxy's usage-chunk stripper (stream_usage.py) and the recorder's SseDecoder
(framing.py) share, so that both see the same events whatever the line ends.
Light on purpose: the proxy imports it."""

import re

# A line ends with `\r\n`, `\n` or `\r`, and an event ends with an empty line.
# A `\r` followed by `\n` is one line end, never a line end and an empty line.
_LINE_END = re.compile(rb"\r\n|\n|\r")
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
# The last event end in a buffer: `.*` runs to the end and backs off, so the
# search costs what lies after that end, not the whole buffer.
_LAST_EVENT_END = re.compile(rb".*" + _EVENT_END.pattern, re.S)


class SseSplitter:
    """The one place that knows where a server-sent event ends: it cuts a stream
    into whole events, each exactly as it came (its line ends included), and holds
    back the start of an event not yet complete. The proxy's usage-chunk stripper
    passes events on with it; the recorder's SseDecoder reads them with it.

    An event ending in `\\r` is given out at once: a `\\n` that follows it (the
    rest of a `\\r\\n`) starts the next piece, as an empty line, which means nothing."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        return split_events(self.whole(data))

    def whole(self, data: bytes) -> bytes:
        """The events `data` completes, in one piece (the chunk itself when it ends
        with an event, as most do); the start of the next one is held back."""
        start = 0
        if self._held:
            if b"\n" not in data and b"\r" not in data:
                self._held += data  # no line end, so no event end: nothing to give out yet
                return b""
            # The held bytes hold no event end, so one can start at most 3 bytes before their end.
            start = max(0, len(self._held) - 3)
            data = bytes(self._held) + data
            self._held.clear()
        # An event ends at a line end: the search starts from the last one, found at C speed.
        last_line_end = max(data.rfind(b"\n", start), data.rfind(b"\r", start))
        last = _LAST_EVENT_END.match(data, start, last_line_end + 1) if last_line_end > start else None
        end = last.end() if last else 0
        self._held += memoryview(data)[end:]
        return data[:end]

    def holds(self) -> bool:
        """Whether the start of an event is held back."""
        return bool(self._held)

    def flush(self) -> list[bytes]:
        """The end of the stream: what was held, a last event without its empty line."""
        rest = bytes(self._held)
        self._held.clear()
        return [rest] if rest else []


def split_events(whole: bytes) -> list[bytes]:
    """Whole events (what SseSplitter.whole gives out) one by one, every byte kept:
    empty lines between events start the next one."""
    events, start = [], 0
    for end in _EVENT_END.finditer(whole):
        events.append(whole[start : end.end()])
        start = end.end()
    if start < len(whole):
        events.append(whole[start:])
    return events


def first_event_end(data: bytes) -> int:
    """Where the first event in `data` ends, or -1: a stream read from the middle
    (the kept tail of a large body) starts after it."""
    end = _EVENT_END.search(data)
    return end.end() if end else -1


def sse_event(raw: bytes) -> tuple[str, str] | None:
    """(event name, data) of one event as SseSplitter gives it out, or None when it
    has no data line (a comment, a keep-alive). Multi-line data is joined with
    `\\n`; one space after the colon is dropped."""
    name, data = "", []
    for line in _LINE_END.split(raw):
        if not line or line[0] == 0x3A:  # an empty line, or a comment (`:`)
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data:
        return None
    return name, b"\n".join(data).decode("utf-8", "replace")
