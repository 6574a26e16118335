"""Reading a response body, in pieces, into what the meter records."""

import json
import re
from dataclasses import dataclass

from taskmeter import protocols
from taskmeter.protocols.framing import FRAMINGS, DecodingError, Framing, IdentityDecoder, content_decoder, framing_for
from taskmeter.protocols.sse import first_event_end
from taskmeter.protocols.usage import Usage


@dataclass(slots=True)
class ParseResult:
    usage: Usage | None
    model: str | None
    response_id: str | None
    errors: list[str]
    text: str  # everything the model wrote, for token estimates
    answer: str  # its prose
    tool_calls: list[list]  # [name, [argument pieces]] per tool call
    counted_tokens: int | None
    finished: bool
    parse_error: str | None


class BodyParser:
    """Feed the body's bytes as they come (any boundaries), then close(). The
    framing follows the content type, or the first bytes for an event stream."""

    def __init__(self, protocol: str, content_type: str | None, content_encoding: str | None = None) -> None:
        self._protocol = protocols.by_name(protocol)
        self._content_type = content_type
        self._framing_name: str | None = None
        self._framing: Framing | None = None  # chosen with the first bytes
        self._accumulator = self._protocol.accumulator()
        self._parse_error: str | None = None
        try:
            self._decoder = content_decoder(content_encoding)
        except DecodingError as exc:
            self._decoder = None
            self._parse_error = str(exc)

    def feed(self, data: bytes) -> None:
        """Bytes that are not what the body says they are (DecodingError) are noted
        in parse_error and the rest is not read; any other exception is a bug of
        ours and is raised, for the caller to keep the call aside."""
        if self._parse_error or not data:
            return
        try:
            self._frame(self._decoder.feed(data))
        except DecodingError as exc:
            self._parse_error = str(exc)[:500]

    def _frame(self, data: bytes) -> None:
        """Decoded bytes into the framing, which their first bytes choose."""
        if not data:
            return
        if self._framing is None:
            self._framing_name = framing_for(self._content_type, data)
            self._framing = FRAMINGS[self._framing_name]()
        for name, payload in self._framing.feed(data):
            self._event(name, payload)

    def feed_tail(self, tail: bytes) -> str | None:
        """After feed(): the last bytes of a body whose middle was not kept. Parsing
        resumes at the tail's first whole event. Returns why the tail could not be
        read, or None."""
        if self._parse_error or self._framing is None:
            return self._parse_error
        if not isinstance(self._decoder, IdentityDecoder):
            return "the body is compressed, so its tail cannot be read on its own"
        try:
            if self._framing_name in ("sse", "ndjson"):
                start = first_event_end(tail) if self._framing_name == "sse" else tail.find(b"\n") + 1
                if start <= 0:
                    return "no whole event in the kept tail"
                self._framing = FRAMINGS[self._framing_name]()
                for name, payload in self._framing.feed(tail[start:]):
                    self._event(name, payload)
                return None
            if self._framing_name == "json" and self._protocol.tail_usage:
                self._framing = FRAMINGS["json"]()  # the head alone is no document
                key, event = self._protocol.tail_usage
                usage = _last_object(tail.decode("utf-8", "replace"), key)
                if usage is None:
                    return f"no {key} object in the kept tail"
                self._event("", event(usage))
                return None
        except DecodingError as exc:
            return str(exc)[:500]
        return f"the tail of a {self._framing_name} body cannot be read on its own"

    def close(self) -> ParseResult:
        if not self._parse_error:
            try:
                self._frame(self._decoder.flush())
                for name, payload in self._framing.flush() if self._framing is not None else ():
                    self._event(name, payload, at_end=True)
            except DecodingError as exc:
                self._parse_error = str(exc)[:500]
        acc = self._accumulator
        return ParseResult(
            usage=acc.usage(),
            model=acc.model,
            response_id=acc.response_id,
            errors=acc.errors,
            text="".join(acc.text),
            answer="".join(acc.answer),
            tool_calls=acc.tool_calls,
            counted_tokens=acc.counted_tokens,
            finished=acc.finished,
            parse_error=self._parse_error,
        )

    def _event(self, name: str, payload, at_end: bool = False) -> None:
        if isinstance(payload, str):
            stripped = payload.strip()
            if stripped == "[DONE]":
                payload = "[DONE]"
            elif not stripped:
                return
            else:
                try:
                    payload = json.loads(stripped)
                except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply to read
                    if not at_end:  # at the end it is the event the stream was cut in
                        self._accumulator.errors.append(f"malformed JSON event: {stripped[:80]}")
                    return
        self._accumulator.events += 1
        self._accumulator.on_event(name, payload)


def _last_object(text: str, key: str) -> dict | None:
    """The JSON object that follows the last `"key":` in `text`."""
    decoder = json.JSONDecoder()
    for match in reversed(list(re.finditer(r'"' + re.escape(key) + r'"\s*:\s*', text))):
        try:
            value, _ = decoder.raw_decode(text, match.end())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None
