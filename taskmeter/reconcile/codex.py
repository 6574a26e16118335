"""Codex's rollouts: `${CODEX_HOME:-~/.codex}/sessions/YYYY/MM/DD/rollout-*.jsonl`,
and `archived_sessions/` for archived ones. Lines are `{timestamp, type, payload}`:
`session_meta` first (session ID, cwd, version, git), `turn_context` with the
model in use, then events.

Since about 0.171 each response's usage is a `token_usage_record` line with the
response's `resp_…` ID, the ID the meter stores. Older rollouts have only
`event_msg`/`token_count` events: cumulative `total_token_usage` with the
latest response's `last_token_usage`, re-emitted now and then unchanged, and
replayed into a resumed session's new file. There a turn is a token_count
whose total moved, keyed by (session, total), so repeats and replays count once."""

from collections.abc import Mapping
from pathlib import Path

from taskmeter.protocols.openai_responses import openai_responses_usage
from taskmeter.protocols.usage import Usage
from taskmeter.reconcile.turns import LogTurn, Warn, count, json_lines, major_version, stored_time, text

NAME = "codex"
TITLE = "Codex"
PROVIDER = "openai"
PROTOCOLS = ("openai_responses",)
CLIENT_PREFIX = "codex_"  # codex_exec/…, codex_cli_rs/…: its User-Agent
KNOWN_MAJOR_VERSIONS = (0,)
_VECTOR = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens")


def log_files(env: Mapping[str, str], home: Path) -> list[Path]:
    root = Path(env["CODEX_HOME"]).expanduser() if env.get("CODEX_HOME") else home / ".codex"
    return sorted(
        path
        for folder in ("sessions", "archived_sessions")
        for path in (root / folder).rglob("rollout-*.jsonl")
        if path.is_file()
    )


def usage_of(vector: dict) -> Usage | None:
    """Codex's usage vector is the Responses API's, flattened: the same rule applies."""
    if any(count(vector.get(name)) is None for name in ("input_tokens", "output_tokens")):
        return None
    usage = openai_responses_usage(
        {
            "input_tokens": vector["input_tokens"],
            "input_tokens_details": {
                "cached_tokens": vector.get("cached_input_tokens"),
                "cache_write_tokens": vector.get("cache_write_input_tokens"),
            },
            "output_tokens": vector["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": vector.get("reasoning_output_tokens")},
        }
    )
    usage.raw = vector
    return usage


def read(paths: list[Path], warn: Warn) -> list[LogTurn]:
    turns: dict[str, LogTurn] = {}
    for path in paths:
        for turn in _read_file(path, warn):
            turns.setdefault(turn.key, turn)
    return list(turns.values())


def _read_file(path: Path, warn: Warn) -> list[LogTurn]:
    meta: dict = {}
    model = None
    records: list[LogTurn] = []  # from token_usage_record lines
    counts: list[LogTurn] = []  # from token_count events, used when there are no records
    last_total = None
    for number, line in json_lines(path, warn):
        kind, payload = line.get("type"), line.get("payload")
        if not isinstance(payload, dict):
            continue
        if kind == "session_meta":
            meta = payload
            version = payload.get("cli_version")
            if major_version(version) not in (*KNOWN_MAJOR_VERSIONS, None):
                warn(f"{path}:{number}: written by Codex {version}, a version this meter does not know; read as 0.x")
        elif kind == "turn_context" and isinstance(payload.get("model"), str):
            model = payload["model"]
        elif kind == "token_usage_record":
            usage = usage_of(payload.get("usage") or {}) if isinstance(payload.get("usage"), dict) else None
            at = stored_time(line.get("timestamp"))
            if usage is None or at is None:
                warn(f"{path}:{number}: a token_usage_record in a form this meter does not know; line skipped")
                continue
            response_id = text(payload, "response_id")
            session = payload.get("session_id") or meta.get("id")
            key = response_id or f"{session}:{_vector_key(payload.get('thread_token_usage') or {})}"
            records.append(_turn(path, number, at, usage, model, meta, session, f"{NAME}:{key}", response_id))
        elif kind == "event_msg" and payload.get("type") == "token_count":
            info = payload.get("info")
            if info is None:  # early in a turn: nothing yet
                continue
            total = info.get("total_token_usage") if isinstance(info, dict) else None
            last = info.get("last_token_usage") if isinstance(info, dict) else None
            usage = usage_of(last) if isinstance(last, dict) else None
            at = stored_time(line.get("timestamp"))
            if usage is None or not isinstance(total, dict) or at is None:
                warn(f"{path}:{number}: a token_count in a form this meter does not know; line skipped")
                continue
            total_key = _vector_key(total)
            if total_key == last_total:  # re-emitted unchanged: the same response
                continue
            last_total = total_key
            counts.append(_turn(path, number, at, usage, model, meta, meta.get("id"), f"{NAME}:{meta.get('id')}:{total_key}"))
    return records or counts


def _vector_key(vector: dict) -> str:
    return ",".join(str(vector.get(name)) for name in _VECTOR)


def _turn(path, number, at, usage, model, meta, session, key, response_id=None) -> LogTurn:
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    return LogTurn(
        agent=NAME,
        key=key,
        at=at,
        file=str(path),
        line=number,
        usage=usage,
        model=model,
        session=session if isinstance(session, str) else None,
        response_id=response_id,
        cwd=text(meta, "cwd"),
        branch=text(git, "branch"),
        version=text(meta, "cli_version"),
    )
