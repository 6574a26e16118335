"""A loopback stand-in for the remote AI APIs: replays recorded response bytes,
paced and chunked like the real thing, and remembers what it was sent."""

import gzip
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# How often a serving loop looks for a shutdown(), which waits for it: the stdlib's 0.5 s, at the end of every
# test with an upstream, was about 0.2 s of waiting each (wake-ups this often cost next to nothing).
SHUTDOWN_POLL_SECONDS = 0.02


@dataclass
class Scenario:
    body: bytes = b"{}"
    content_type: str = "application/json"
    status: int = 200
    chunk_size: int | None = None  # set: chunked transfer, one write per chunk
    delay: float = 0.0  # seconds between chunks
    gzip: bool = False
    abort_after_chunks: int | None = None  # close the connection mid-body
    headers: dict = field(default_factory=dict)

    def chunks(self) -> list[bytes]:
        body = gzip.compress(self.body) if self.gzip else self.body
        if not self.chunk_size:
            return [body]
        return [body[i : i + self.chunk_size] for i in range(0, len(body), self.chunk_size)]


@dataclass
class Received:
    method: str
    path: str
    headers: dict
    body: bytes
    at: float


class FakeUpstream:
    def __init__(self, tls_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Scenario] = {}
        self.received: list[Received] = []
        self.last_chunk_sent_at: dict[str, float] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                upstream.received.append(Received("POST", self.path, dict(self.headers.items()), body, time.time()))
                route = self.path.split("?")[0]
                scenario = upstream.routes.get(route)
                if scenario is None:
                    self._send_simple(404, b'{"error":{"message":"no fake route for ' + route.encode() + b'"}}')
                    return
                self.send_response(scenario.status)
                self.send_header("content-type", scenario.content_type)
                if scenario.gzip:
                    self.send_header("content-encoding", "gzip")
                for name, value in scenario.headers.items():
                    self.send_header(name, value)
                chunks = scenario.chunks()
                if scenario.chunk_size:
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for index, chunk in enumerate(chunks):
                        if scenario.abort_after_chunks is not None and index >= scenario.abort_after_chunks:
                            self.wfile.flush()
                            self.connection.shutdown(2)
                            self.close_connection = True
                            return
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        upstream.last_chunk_sent_at[route] = time.time()
                        if scenario.delay:
                            time.sleep(scenario.delay)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("content-length", str(len(chunks[0])))
                    self.end_headers()
                    self.wfile.write(chunks[0])
                self.wfile.flush()

            def _send_simple(self, status, body):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many clients connect at once in the concurrency tests

            def handle_error(self, request, client_address):
                pass  # clients that hang up mid-stream are part of the tests

        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def forget(self) -> None:
        """No routes and nothing received, as a new one: for the next test of a module sharing it."""
        self.routes.clear()
        self.received.clear()
        self.last_chunk_sent_at.clear()

    def request_json(self, index: int = -1) -> dict:
        return json.loads(self.received[index].body)
