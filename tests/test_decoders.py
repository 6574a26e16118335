"""The decoders' contract (feed/flush, one DecodingError) and the error boundary
around them: the one SSE splitter that the proxy's usage-chunk stripper and the
recorder's parser share, under any line ends and any chunking; a stream with
CR-only line ends through a real `meter proxy`; input errors noted in the row,
our own bugs quarantined with their traceback said once."""

import gzip
import json
import logging
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import brotli
import httpx
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmeter.handover import callfile
from taskmeter.handover.call import CapturedCall
from taskmeter.protocols import openai_chat
from taskmeter.protocols.framing import FRAMINGS, DecodingError, SseDecoder, content_decoder
from taskmeter.protocols.sse import SseSplitter
from taskmeter.protocols.stream_usage import UsageChunkStripper
from taskmeter.recorder.finalize import Finalizer
from taskmeter.recorder.loop import RecorderLoop
from taskmeter.recorder.parse import BodyParser
from taskmeter.store import connection
from tests.fake_upstream import FakeUpstream, Scenario
from tests.proxy_harness import RunningProxy, write_config

CHAT = "/v1/chat/completions"
API_KEY = "sk-test-secret-4242"
LINE_ENDS = [b"\n", b"\r\n", b"\r"]


def _pieces(draw, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(1, len(body) - 1)), max_size=16)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _chunk(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


USAGE = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 4}}


def _content(text: str) -> dict:
    return {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": text}}]}


# ---------------------------------------------------------------- the one splitter


@st.composite
def event_streams(draw):
    """(stream bytes, its events as (name, data), the usage event's bytes): each
    line with its own line end, comments and multi-line data among them."""
    events, raw_events, usage_raw = [], [], b""
    previous = [b"\n"]

    def end() -> bytes:
        # A `\r` then a `\n` is one line end, `\r\n`: after a `\r`, the next line end is another.
        previous[0] = draw(st.sampled_from(LINE_ENDS[1:] if previous[0] == b"\r" else LINE_ENDS))
        return previous[0]

    texts = draw(st.lists(st.text(alphabet='ab "[]{}:é', max_size=12), min_size=1, max_size=6))
    payloads = [_chunk(_content(text)) for text in texts] + [_chunk(USAGE)]
    for index, payload in enumerate(payloads):
        lines = []
        if draw(st.booleans()):
            lines.append(b": keep-alive")
        name = draw(st.sampled_from(["", "message"]))
        if name:
            lines.append(b"event: " + name.encode())
        split = draw(st.integers(min_value=0, max_value=len(payload)))
        data = [payload[:split], payload[split:]] if 0 < split < len(payload) and index < len(texts) else [payload]
        lines += [b"data: " + part for part in data]
        raw = b"".join(line + end() for line in lines) + end()
        raw_events.append(raw)
        events.append((name, "\n".join(part.decode() for part in data)))
        if index == len(texts):
            usage_raw = raw
    done = b"data: [DONE]" + end() + end()
    return b"".join(raw_events) + done, [*events, ("", "[DONE]")], usage_raw


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), data=st.data())
def test_the_parser_reads_the_same_events_under_any_line_ends_and_chunking(stream, data):
    body, events, _ = stream
    decoder = SseDecoder()
    read = [event for piece in _pieces(data.draw, body) for event in decoder.feed(piece)] + decoder.flush()
    assert read == events


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), data=st.data())
def test_the_stripper_removes_the_usage_event_under_any_line_ends_and_passes_every_other_byte(stream, data):
    body, _, usage_raw = stream
    stripper = UsageChunkStripper()
    out = b"".join(stripper.feed(piece) for piece in _pieces(data.draw, body)) + stripper.flush()
    before, usage, after = body.partition(usage_raw)
    assert usage and out == before + after


@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["LF", "CRLF", "CR"])
def test_the_stripper_passes_every_other_byte_wherever_two_cuts_fall(line_end):
    # Exhaustive where chance is thin: a cut between the `\r` and the `\n` that end the usage event.
    events = [b"data: " + _chunk(payload) + line_end * 2 for payload in (_content("a"), USAGE)]
    body = b"".join(events) + b"data: [DONE]" + line_end * 2
    expected = body.replace(events[1], b"")
    for first in range(1, len(body)):
        for second in range(first, len(body)):
            stripper = UsageChunkStripper()
            out = b"".join(stripper.feed(piece) for piece in (body[:first], body[first:second], body[second:]) if piece)
            assert out + stripper.flush() == expected, (first, second)


@pytest.mark.parametrize("line_end", LINE_ENDS, ids=["LF", "CRLF", "CR"])
def test_each_whole_event_is_given_out_with_the_chunk_that_completes_it(line_end):
    splitter = SseSplitter()
    first, second = b"data: 1" + line_end * 2, b"data: 2" + line_end * 2
    assert splitter.feed(first + second[:4]) == [first]
    assert splitter.feed(second[4:]) == [second]
    assert splitter.flush() == []


def test_a_last_event_without_its_empty_line_is_read_at_the_end():
    decoder = SseDecoder()
    assert decoder.feed(b"data: 1\r\rdata: 2\r") == [("", "1")]
    assert decoder.flush() == [("", "2")]


# ---------------------------------------------------------------- one error type


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda body: zstandard.ZstdCompressor().compress(body),
}


@pytest.mark.parametrize("coding", ENCODERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_content_decoders_read_any_chunking_and_raise_only_decoding_errors(coding, data):
    body = b'data: {"usage": {"prompt_tokens": 3}}\n\n' * 20
    decoder = content_decoder(coding)
    assert b"".join(decoder.feed(piece) for piece in _pieces(data.draw, ENCODERS[coding](body))) + decoder.flush() == body
    garbage = data.draw(st.binary(min_size=1, max_size=64))
    decoder = content_decoder(coding)
    try:
        decoder.feed(b"\x00\xff" + garbage)
        decoder.flush()
    except DecodingError:
        pass  # the one error a decoder raises on bytes that are not what they say


@pytest.mark.parametrize("framing", FRAMINGS)
@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_framings_raise_only_decoding_errors(framing, garbage):
    decoder = FRAMINGS[framing]()
    try:
        decoder.feed(garbage)
        decoder.flush()
    except DecodingError:
        pass


def _eventstream_prelude(total: int, headers_length: int) -> bytes:
    prelude = struct.pack(">II", total, headers_length)
    return prelude + struct.pack(">I", zlib.crc32(prelude))


@pytest.mark.parametrize("total", [0, 12, 15])
def test_an_eventstream_frame_too_short_for_its_own_prelude_is_a_decoding_error(total):
    # A frame that says it has no length used to be read again and again, for ever.
    with pytest.raises(DecodingError, match="cannot hold"):
        FRAMINGS["eventstream"]().feed(_eventstream_prelude(total, 0) + b"\x00" * 16)


def test_an_unsupported_content_encoding_is_a_decoding_error():
    with pytest.raises(DecodingError, match="unsupported content encoding compress"):
        content_decoder("gzip, compress")
    result = BodyParser("openai_chat", "application/json", "compress").close()
    assert result.parse_error == "unsupported content encoding compress"


# ---------------------------------------------------------------- through a real proxy


@dataclass
class GatedScenario(Scenario):
    """Sends `first`, then waits for the test to open `gate` before the rest: a
    client that gets `first` before the gate opens got it as it came."""

    first: bytes = b""
    gate: threading.Event = field(default_factory=threading.Event)

    def chunks(self) -> Iterator[bytes]:
        yield self.first
        self.gate.wait(30)
        rest = self.body[len(self.first) :]
        yield from (rest[i : i + 40] for i in range(0, len(rest), 40))


def _stored(db_path, count: int) -> dict[str, dict]:
    deadline = time.monotonic() + 20
    while True:
        db = connection.connect(db_path)
        try:
            rows = {row["id"]: dict(row) for row in db.execute("SELECT * FROM interactions")}
        finally:
            db.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.e2e  # a real meter proxy
def test_a_stream_with_cr_only_line_ends_flows_as_it_comes_and_its_usage_is_stored(tmp_path):
    events = [_chunk(_content("Hel")), _chunk(_content("lo")), _chunk(_content("!")), _chunk(USAGE)]
    body = b"".join(b"data: " + event + b"\r\r" for event in events) + b"data: [DONE]\r\r"
    first = b"".join(b"data: " + event + b"\r\r" for event in events[:2])
    usage_event = b"data: " + events[3] + b"\r\r"
    with FakeUpstream() as upstream:
        streamed = GatedScenario(body=body, content_type="text/event-stream", chunk_size=1, first=first)
        upstream.routes[CHAT] = streamed
        origin = f"http://127.0.0.1:{upstream.port}"
        proxy = RunningProxy(write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": origin}), tmp_path / "meter.db")
        try:
            request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            # A read timeout well inside the gate's: a proxy that held the events would fail here.
            with httpx.Client(timeout=httpx.Timeout(30, read=10), headers={"authorization": f"Bearer {API_KEY}"}) as client:
                with client.stream("POST", f"{proxy.origin}/openai{CHAT}", json=request) as response:
                    chunks = response.iter_raw()
                    received = b""
                    while len(received) < len(first):
                        received += next(chunks)
                    assert received == first and not streamed.gate.is_set()
                    streamed.gate.set()
                    received += b"".join(chunks)
                    streamed_id = response.headers["x-meter-interaction-id"]
                upstream.routes[CHAT] = Scenario(body=_chunk({**USAGE, "object": "chat.completion"}))
                plain_id = client.post(f"{proxy.origin}/openai{CHAT}", json={**request, "stream": False}).headers[
                    "x-meter-interaction-id"
                ]
            assert json.loads(upstream.received[0].body)["stream_options"] == {"include_usage": True}
            assert received == body.replace(usage_event, b"")  # the meter asked for usage: the client never sees it
            rows = _stored(proxy.db_path, 2)
        finally:
            assert proxy.stop() == 0
    assert set(rows) == {streamed_id, plain_id}  # each call stored exactly once
    stored = rows[streamed_id]
    assert (stored["input_total"], stored["output_total"], stored["usage_source"]) == (21, 4, "reported")
    assert stored["error"] is None and stored["outcome"] == "complete" and stored["streamed"] == 1
    assert (rows[plain_id]["input_total"], rows[plain_id]["output_total"]) == (21, 4)


# ---------------------------------------------------------------- input errors and our bugs


def _call(n: int, body: bytes, **values) -> CapturedCall:
    call = CapturedCall(
        id=f"00000000{n:04d}",
        started=time.time(),
        provider="openai",
        protocol="openai_chat",
        operation="generate",
        method="POST",
        endpoint=CHAT,
        status=200,
        content_type="application/json",
        outcome="complete",
        request_body=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        **values,
    )
    call.response_body += body
    return call


def _rows(db_path) -> dict[str, dict]:
    db = connection.connect(db_path)
    try:
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM interactions")}
    finally:
        db.close()


GOOD = _chunk({**USAGE, "object": "chat.completion"})


def test_a_body_that_is_not_what_it_says_is_recorded_as_unparsed_and_nothing_is_quarantined(db_path, caplog):
    loop = RecorderLoop(db_path, Finalizer(), proxy_id=None)
    with caplog.at_level(logging.WARNING):
        loop.record(
            [
                _call(1, GOOD),
                _call(2, b"\x1f\x8b\x08\x00 not gzip at all", content_encoding="gzip"),
                _call(3, b"<html>502 Bad Gateway</html>"),
                _call(4, GOOD),
            ]
        )
        loop.finish()
    rows = _rows(db_path)
    assert set(rows) == {f"00000000{n:04d}" for n in (1, 2, 3, 4)}
    assert rows["000000000002"]["error"].startswith("unparsed response body: gzip: ")
    assert rows["000000000003"]["error"] == "unparsed response body: not JSON"
    assert rows["000000000001"]["input_total"] == rows["000000000004"]["input_total"] == 21
    assert not callfile.quarantine_path(db_path).exists()
    assert not [record for record in caplog.records if record.exc_info]  # no traceback: the input was at fault


def test_a_bug_of_ours_is_said_once_with_its_traceback_and_its_calls_are_quarantined(db_path, caplog, monkeypatch):
    original = openai_chat.OpenAIChat.on_event

    def on_event(self, name, payload):
        if isinstance(payload, dict) and payload.get("id") == "chatcmpl-bug":
            raise KeyError("a bug in the chat reader")
        original(self, name, payload)

    monkeypatch.setattr(openai_chat.OpenAIChat, "on_event", on_event)
    buggy = _chunk({**USAGE, "object": "chat.completion", "id": "chatcmpl-bug"})
    loop = RecorderLoop(db_path, Finalizer(), proxy_id=None)
    with caplog.at_level(logging.ERROR, logger="taskmeter.recorder"):
        loop.record([_call(1, GOOD), _call(2, buggy), _call(3, GOOD)])
        loop.record([_call(4, buggy), _call(5, GOOD)])
        loop.finish()
    assert set(_rows(db_path)) == {f"00000000{n:04d}" for n in (1, 3, 5)}  # each other call stored exactly once
    quarantined = [json.loads(line) for line in callfile.quarantine_path(db_path).read_text().splitlines()]
    assert [call["id"] for call in quarantined] == ["000000000002", "000000000004"]
    assert all("a bug of ours): KeyError: 'a bug in the chat reader'" in call["quarantined_because"] for call in quarantined)
    assert callfile.decode(json.dumps(quarantined[0])).response_body == buggy  # kept whole, for the fix
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[0] is KeyError  # said once for its kind
    assert "a bug in the meter" in tracebacks[0].getMessage()
    assert loop.dropped == 0
