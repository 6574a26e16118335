"""Reading a response body, in pieces, into what the meter records."""

import json
from dataclasses import dataclass

from taskmeter.proxy.framing import FRAMINGS, UnsupportedEncoding, content_decoder, framing_for
from taskmeter.proxy.usage import ACCUMULATORS, Usage


@dataclass(slots=True)
class ParseResult:
    usage: Usage | None
    model: str | None
    response_id: str | None
    errors: list[str]
    text: str
    counted_tokens: int | None
    finished: bool
    parse_error: str | None


class BodyParser:
    """Feed the body's bytes as they come (any boundaries), then close()."""

    def __init__(self, protocol: str, content_type: str | None, content_encoding: str | None = None) -> None:
        self._framing = FRAMINGS[framing_for(content_type)]()
        self._accumulator = ACCUMULATORS[protocol]()
        self._parse_error: str | None = None
        try:
            self._decoder = content_decoder(content_encoding)
        except UnsupportedEncoding as exc:
            self._decoder = None
            self._parse_error = f"unsupported content encoding {exc}"

    def feed(self, data: bytes) -> None:
        if self._parse_error or not data:
            return
        try:
            for name, payload in self._framing.feed(self._decoder.feed(data)):
                self._event(name, payload)
        except Exception as exc:  # a malformed body must never stop the meter
            self._parse_error = f"{type(exc).__name__}: {exc}"[:500]

    def close(self) -> ParseResult:
        if not self._parse_error:
            try:
                for name, payload in self._framing.close():
                    self._event(name, payload, at_end=True)
            except Exception as exc:
                self._parse_error = f"{type(exc).__name__}: {exc}"[:500]
        acc = self._accumulator
        return ParseResult(
            usage=acc.usage(),
            model=acc.model,
            response_id=acc.response_id,
            errors=acc.errors,
            text="".join(acc.text),
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
                except json.JSONDecodeError:
                    if not at_end:  # at the end it is the event the stream was cut in
                        self._accumulator.errors.append(f"malformed JSON event: {stripped[:80]}")
                    return
        self._accumulator.events += 1
        self._accumulator.on_event(name, payload)
