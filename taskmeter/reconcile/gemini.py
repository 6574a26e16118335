"""Gemini CLI's chat recordings: `~/.gemini/tmp/<project>/chats/session-*.jsonl`
(older builds: one `session-*.json` object with `messages`). A JSONL file is a
header (`sessionId`, `projectHash`, `startTime`, `kind`), message records
(`id`, `timestamp`, `type`; `gemini` records carry `model` and `tokens`),
`{"$set": …}` metadata updates and `{"$rewindTo": id}` records.

A record may be written again as it grows: the last one per `id` wins. A
rewind drops messages from the conversation, not from the bill: rewound turns
were paid for and are kept. `tokens` follow usageMetadata (input =
promptTokenCount, cached inside it; thoughts and tool-use prompts apart), so the
recorder's Gemini rule maps them. The project folder's `.project_root` names
the working directory."""

import json
from collections.abc import Mapping
from pathlib import Path

from taskmeter.protocols.gemini import gemini_usage
from taskmeter.protocols.usage import Usage
from taskmeter.reconcile.turns import LogTurn, Warn, count, json_lines, stored_time, text

NAME = "gemini"
TITLE = "Gemini CLI"
PROVIDER = "gemini"
PROTOCOLS = ("gemini",)
CLIENT_PREFIX = "GeminiCLI"  # GeminiCLI/…, GeminiCLI-tui/…: its User-Agent
_METADATA = {
    "input": "promptTokenCount",
    "output": "candidatesTokenCount",
    "cached": "cachedContentTokenCount",
    "thoughts": "thoughtsTokenCount",
    "tool": "toolUsePromptTokenCount",
}


def log_files(env: Mapping[str, str], home: Path) -> list[Path]:
    chats = home / ".gemini" / "tmp"
    return sorted(path for pattern in ("*/chats/session-*.jsonl", "*/chats/session-*.json") for path in chats.glob(pattern))


def usage_of(tokens: dict) -> Usage | None:
    if count(tokens.get("input")) is None or count(tokens.get("output")) is None:
        return None
    usage = gemini_usage({_METADATA[name]: value for name, value in tokens.items() if name in _METADATA})
    usage.raw = tokens
    return usage


def read(paths: list[Path], warn: Warn) -> list[LogTurn]:
    turns: dict[str, LogTurn] = {}
    for path in paths:
        cwd = _project_root(path)
        records = _legacy_records(path, warn) if path.suffix == ".json" else _records(path, warn)
        session = None
        for number, record in records:
            if "sessionId" in record and "type" not in record:
                session = record["sessionId"] if isinstance(record["sessionId"], str) else None
                continue
            if record.get("type") != "gemini" or "tokens" not in record:
                continue
            tokens = record["tokens"]
            usage = usage_of(tokens) if isinstance(tokens, dict) else None
            at = stored_time(record.get("timestamp"))
            if usage is None or at is None or not isinstance(record.get("id"), str):
                warn(f"{path}:{number}: a gemini record in a form this meter does not know; line skipped")
                continue
            key = f"{NAME}:{session}:{record['id']}"
            turns[key] = LogTurn(
                agent=NAME,
                key=key,
                at=at,
                file=str(path),
                line=number,
                usage=usage,
                model=text(record, "model"),
                session=session,
                cwd=cwd,
            )
    return list(turns.values())


def _records(path: Path, warn: Warn) -> list[tuple[int, dict]]:
    """The header and the last version of each message, in first-written order."""
    latest: dict[str, tuple[int, dict]] = {}
    header: list[tuple[int, dict]] = []
    for number, record in json_lines(path, warn):
        updates = found if isinstance(found := record.get("$set"), dict) else {}
        messages = listed if isinstance(listed := updates.get("messages"), list) else [record]
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("id"), str) and "type" in message:
                latest.pop(message["id"], None)  # re-insert: the newer version replaces the older
                latest[message["id"]] = (number, message)
        if "sessionId" in record and "type" not in record and not header:
            header.append((number, record))
    return header + list(latest.values())


def _legacy_records(path: Path, warn: Warn) -> list[tuple[int, dict]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        warn(f"{path}:1: not a Gemini CLI session ({type(exc).__name__}); file skipped")
        return []
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        warn(f"{path}:1: a session file in a form this meter does not know; file skipped")
        return []
    header = {"sessionId": data.get("sessionId")}
    return [(1, header)] + [(1, message) for message in data["messages"] if isinstance(message, dict)]


def _project_root(path: Path) -> str | None:
    try:
        return (path.parent.parent / ".project_root").read_text().strip() or None
    except OSError:
        return None
