"""Claude Code's transcripts: `~/.claude/projects/<encoded cwd>/<session>.jsonl`
(also `~/.config/claude/projects`; `CLAUDE_CONFIG_DIR`, comma-separated, moves
both). Usage sits on `type: "assistant"` lines as the API's `message.usage`.

A response is logged once per content block, each line repeating its usage,
and a streaming snapshot may come first with a lower output count; resumed
sessions copy lines into new files. So turns are keyed by the message ID
(`msg_…`, the ID the meter stores) and the line with the largest output wins."""

from collections.abc import Mapping
from pathlib import Path

from taskmeter.protocols.anthropic import anthropic_usage
from taskmeter.reconcile.turns import LogTurn, Warn, count, json_lines, major_version, stored_time, text

NAME = "claude"
TITLE = "Claude Code"
PROVIDER = "anthropic"
PROTOCOLS = ("anthropic",)
CLIENT_PREFIX = "claude-cli/"  # its User-Agent
KNOWN_MAJOR_VERSIONS = (1, 2)


def log_files(env: Mapping[str, str], home: Path) -> list[Path]:
    configured = [Path(part).expanduser() for part in env.get("CLAUDE_CONFIG_DIR", "").split(",") if part.strip()]
    roots = configured or [home / ".claude", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "claude"]
    return sorted({path for root in roots for path in (root / "projects").rglob("*.jsonl") if path.is_file()})


def read(paths: list[Path], warn: Warn) -> list[LogTurn]:
    best: dict[str, LogTurn] = {}
    for path in paths:
        warned_version = False
        for number, record in json_lines(path, warn):
            if record.get("type") != "assistant":
                continue
            version = record.get("version")
            if not warned_version and major_version(version) not in (*KNOWN_MAJOR_VERSIONS, None):
                warn(f"{path}:{number}: written by Claude Code {version}, a version this meter does not know; read as 2.x")
                warned_version = True
            turn = _turn(path, number, record)
            if turn is None:
                warn(f"{path}:{number}: an assistant line without usage in a form this meter knows; line skipped")
                continue
            if turn.model == "<synthetic>":  # Claude Code's own stand-in message: no model was called
                continue
            kept = best.get(turn.key)
            if kept is None or (turn.usage.output_total or 0) > (kept.usage.output_total or 0):
                best[turn.key] = turn
    return list(best.values())


def _turn(path: Path, number: int, record: dict) -> LogTurn | None:
    message = record.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None
    usage = anthropic_usage(message["usage"])
    at = stored_time(record.get("timestamp"))
    if usage.input_total is None or count(message["usage"].get("output_tokens")) is None or at is None:
        return None
    message_id = text(message, "id")
    session = text(record, "sessionId")
    key = message_id or f"{session}:{record.get('uuid')}"
    return LogTurn(
        agent=NAME,
        key=f"{NAME}:{key}",
        at=at,
        file=str(path),
        line=number,
        usage=usage,
        model=text(message, "model"),
        session=session,
        response_id=message_id,
        cwd=text(record, "cwd"),
        branch=text(record, "gitBranch"),
        version=text(record, "version"),
    )
