"""The recorded provider responses in tests/recorded/, ready to replay."""

import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "recorded"

# Count endpoints were recorded as protocol "raw"; they belong to their provider's protocol.
_PROTOCOL_OF_PROVIDER = {"openai_responses": "openai_responses", "gemini": "gemini", "anthropic": "anthropic"}


@dataclass(frozen=True)
class Fixture:
    name: str
    meta: dict
    body: bytes
    content_type: str
    protocol: str

    @property
    def request(self) -> dict | None:
        path = FIXTURES / self.meta["provider"] / f"{self.meta['name']}.request.json"
        return json.loads(path.read_text()) if path.exists() else None


def _body(directory: Path, meta: dict) -> tuple[bytes, str]:
    response_file = next(f for f in meta["files"] if ".response." in f and not f.endswith(".http.txt"))
    raw = (directory / response_file).read_bytes()
    content_type = meta["response_content_type"]
    if response_file.endswith(".chunks.jsonl"):
        # That recorder kept one SSE data payload per line: rebuild the stream.
        lines = [line for line in raw.decode().splitlines() if line.strip()]
        return "".join(f"data: {line}\n\n" for line in lines).encode(), "text/event-stream"
    return raw, content_type


def load_all() -> list[Fixture]:
    fixtures = []
    for meta in json.loads((FIXTURES / "index.json").read_text()):
        directory = FIXTURES / meta["provider"]
        body, content_type = _body(directory, meta)
        protocol = meta["protocol"]
        if protocol in ("raw", "anthropic_count_tokens"):
            protocol = _PROTOCOL_OF_PROVIDER[meta["provider"]]
        fixtures.append(Fixture(f"{meta['provider']}/{meta['name']}", meta, body, content_type, protocol))
    return fixtures


ALL = load_all()
