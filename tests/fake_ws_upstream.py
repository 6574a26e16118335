"""A loopback stand-in for the Responses API over WebSocket: answers each
`response.create` frame with the frames its script gives, and remembers what it
was sent."""

import json
import threading
import time
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

MODEL = "gpt-5.4-mini-2026-03-17"


def sse_frames(body: bytes) -> list[str]:
    """A recorded SSE stream of the Responses API as the WebSocket sends it: one
    text frame per event, its JSON as it is."""
    frames = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if data and data != "[DONE]":
            frames.append(data)
    return frames


def response_frames(
    response_id: str,
    usage: dict | None,
    text: str = "Hello.",
    terminal: str = "response.completed",
    stream_id: str | None = None,
    model: str = MODEL,
) -> list[str]:
    """The frames of one response: created, a text delta per word, and the terminal event."""
    routing = {"stream_id": stream_id} if stream_id is not None else {}

    def response(status: str) -> dict:
        return {"id": response_id, "object": "response", "model": model, "status": status, "usage": None}

    frames = [{"type": "response.created", **routing, "response": response("in_progress")}]
    for word in text.split(" ") if text else ():
        frames.append(
            {"type": "response.output_text.delta", **routing, "item_id": "msg_1", "output_index": 0, "delta": word + " "}
        )
    if terminal is not None:
        final = response({"response.completed": "completed", "response.failed": "failed"}.get(terminal, "incomplete"))
        final["usage"] = usage
        if terminal == "response.failed":
            final["error"] = {"code": "server_error", "message": "The model failed."}
        frames.append({"type": terminal, **routing, "response": final})
    return [json.dumps(frame) for frame in frames]


def usage(input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0) -> dict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass
class Socket:
    path: str
    headers: dict
    frames: list  # what the client sent, in order


class FakeResponsesSocket:
    """`script(create, socket)` gives the frames that answer one `response.create`
    (str: a text frame, bytes: a binary frame, a float: seconds to wait before the
    next frame). A script that gives no terminal event leaves its response open."""

    def __init__(self, script, tls_context=None, host: str = "127.0.0.1") -> None:
        self.script = script
        self.sockets: list[Socket] = []
        self._server = serve(
            self._handle, host, 0, ssl=tls_context, compression=None, max_size=None, process_request=self._refuse_some
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._thread.join(5)

    @staticmethod
    def _refuse_some(connection, request):
        """An upgrade to a path under /refused/ gets a 403, as from a server that takes no WebSocket there."""
        if request.path.startswith("/refused/"):
            return connection.respond(403, "no WebSocket here\n")
        return None

    def _handle(self, connection) -> None:
        socket = Socket(connection.request.path, dict(connection.request.headers.raw_items()), [])
        self.sockets.append(socket)
        try:
            for message in connection:
                socket.frames.append(message)
                try:
                    create = json.loads(message)
                except ValueError:
                    continue
                if not isinstance(create, dict) or create.get("type") != "response.create":
                    continue
                for frame in self.script(create, socket):
                    if isinstance(frame, float):
                        time.sleep(frame)
                    else:
                        connection.send(frame)
        except ConnectionClosed:
            pass
