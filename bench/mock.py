"""A fast loopback stand-in for an OpenAI-compatible API, for benchmarks.

POST /v1/chat/completions answers with fixed bytes (so every arm can be compared
byte for byte). Headers set the shape: x-mock-delay-ms (before the first byte),
x-mock-chunks and x-mock-interval-ms (paced SSE when the body says "stream": true),
x-mock-stream-mb (an SSE stream of that many MB, sent as fast as it is read).
The usage chunk is sent only when the request asks for it (include_usage). A body
past LARGE_BODY is not parsed, so that it stalls no other reply: it is answered
as a stream with usage.
Run: python -m bench.mock  (prints the port, serves until killed).
"""

import asyncio
import json
import sys

USAGE = {"prompt_tokens": 25, "completion_tokens": 32, "total_tokens": 57}
LARGE_BODY = 1 << 20
# One event of the large stream: about 1 KB of text.
LARGE_EVENT_TEXT = "x" * 1000


def completion_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 32}, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    ).encode()


def chunk(delta: dict, finish=None, usage=None, choices=True) -> bytes:
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18"}
    event["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[dict, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return headers, body


async def _large_stream(writer: asyncio.StreamWriter, size: int, request: dict) -> None:
    """About `size` bytes of content events in 64 KB HTTP chunks, then usage (if asked) and [DONE]."""
    event = chunk({"content": LARGE_EVENT_TEXT})
    piece = event * (65536 // len(event))
    framed = b"%x\r\n%s\r\n" % (len(piece), piece)
    for _ in range(size // len(piece)):
        writer.write(framed)
        await writer.drain()
    tail = chunk({}, finish="stop")
    if (request.get("stream_options") or {}).get("include_usage"):
        tail += chunk({}, usage=USAGE, choices=False)
    tail += b"data: [DONE]\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                headers, body = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if len(body) > LARGE_BODY:
                request = {"stream": True, "stream_options": {"include_usage": True}}
            else:
                request = json.loads(body or b"{}")
            delay = int(headers.get("x-mock-delay-ms", "0")) / 1000
            if delay:
                await asyncio.sleep(delay)
            if not request.get("stream"):
                payload = completion_body()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            if "x-mock-stream-mb" in headers:
                await _large_stream(writer, int(headers["x-mock-stream-mb"]) << 20, request)
                continue
            chunks = int(headers.get("x-mock-chunks", "32"))
            interval = int(headers.get("x-mock-interval-ms", "10")) / 1000
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": f"tok{n} "}) for n in range(chunks)]
            events.append(chunk({}, finish="stop"))
            if (request.get("stream_options") or {}).get("include_usage"):
                events.append(chunk({}, usage=USAGE, choices=False))
            events.append(b"data: [DONE]\n\n")
            for index, event in enumerate(events):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if 0 < index <= chunks and interval:
                    await asyncio.sleep(interval)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
