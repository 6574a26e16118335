"""What every agent's log reader gives: one LogTurn per model call, read
line by line, so that one bad line costs only itself."""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from taskmeter.protocols.usage import Usage
from taskmeter.timefmt import to_stored

# Told once per problem: "FILE:LINE: what is wrong; what was done".
Warn = Callable[[str], None]


@dataclass(slots=True)
class LogTurn:
    """One model call an agent logged. `key` names it across files (resumed
    sessions copy turns into new files) and across runs of `meter reconcile`."""

    agent: str
    key: str
    at: str  # stored form; when the agent wrote the turn down, i.e. about when the response ended
    file: str
    line: int
    usage: Usage
    model: str | None = None
    session: str | None = None
    response_id: str | None = None
    cwd: str | None = None
    branch: str | None = None
    version: str | None = None


def stored_time(value) -> str | None:
    """An agent's ISO 8601 timestamp (`…Z` or an offset) in the stored form, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("z", "Z")) else value)
    except ValueError:
        return None
    return to_stored(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def text(record: dict, key: str) -> str | None:
    """`record[key]` when it is a string, else None: a log field in a form we do not know reads as absent."""
    value = record.get(key)
    return value if isinstance(value, str) else None


def count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def json_lines(path: Path, warn: Warn) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each line of a JSON Lines file. A line that is
    not a JSON object is warned about and skipped. A last line with no newline
    that does not parse is a line the agent is still writing: it is left, quietly,
    for the next run."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        warn(f"{path}: cannot be read ({exc.strerror or exc}); skipped")
        return
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if number == len(lines):  # no newline after it: still being written
                continue
            warn(f"{path}:{number}: not JSON; line skipped")
            continue
        if not isinstance(record, dict):
            warn(f"{path}:{number}: not a JSON object; line skipped")
            continue
        yield number, record


def major_version(version) -> int | None:
    if not isinstance(version, str):
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None
