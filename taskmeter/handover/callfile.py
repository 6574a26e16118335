"""Files of captured calls kept beside the database, as JSON lines (bodies in base64):

- the **spool** (`<db>.spool.jsonl`) holds calls not yet stored: the database
  could not be written, or the recorder fell behind. The recorder stores them
  as soon as it can; inserts are idempotent, so a call replayed twice is stored
  once.
- the **quarantine** (`<db>.quarantine.jsonl`) holds calls that could not be
  stored at all, each with the reason: kept for a person to look at, never
  replayed automatically. `meter status` counts them.

The proxy and its recorder both append (under an exclusive lock, one write per
batch, cut back whole when it fails, so that a full disk never leaves half a
line for the next one to join); only the recorder takes the spool for replay,
by renaming it first. Files are created 0600: they may hold prompts. Secrets
never reach them: bodies and errors are redacted (taskmeter/secrets.py) first.
"""

import base64
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from taskmeter.handover.call import CapturedCall
from taskmeter.handover.callfiles import count_lines, quarantine_path, spool_path  # noqa: F401 (this module's API too)
from taskmeter.secrets import redact

log = logging.getLogger(__name__)

_BYTES_FIELDS = {"request_body", "response_body", "response_tail"}
_FIELDS = {f.name for f in fields(CapturedCall)}


def encode(call: CapturedCall, reason: str | None = None) -> str:
    data = {}
    for name in _FIELDS:
        value = getattr(call, name)
        if name in _BYTES_FIELDS and value is not None:
            value = base64.b64encode(_redacted(value)).decode()
        elif name == "error" and value:
            value = redact(value)
        data[name] = value
    if reason:
        data["quarantined_because"] = reason
    # ensure_ascii: lone surrogates and other odd text travel as escapes.
    return json.dumps(data, separators=(",", ":")) + "\n"


def _redacted(body: bytes | bytearray) -> bytes:
    """`body` with secrets redacted; every other byte as it was, invalid UTF-8 included."""
    return redact(bytes(body).decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def decode(line: str) -> CapturedCall:
    data = json.loads(line)
    values = {name: data[name] for name in _FIELDS if name in data}
    for name in _BYTES_FIELDS & values.keys():
        if values[name] is not None:
            values[name] = base64.b64decode(values[name])
    for name in ("response_body", "response_tail"):
        values[name] = bytearray(values.get(name) or b"")
    return CapturedCall(**values)


def append(path: Path, calls: list[CapturedCall], reason: str | None = None) -> None:
    """Append `calls` as whole lines in one locked write; raises OSError when it
    cannot. The file is opened before the calls are encoded: a file that cannot
    be opened costs no encoding (of bodies that may be many megabytes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        data = "".join(encode(call, reason) for call in calls).encode()
        while True:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == os.fstat(fd).st_ino:
                break
            # Renamed for replay while we encoded or waited: append to the new file.
            os.close(fd)
            fd = -1  # closed, should the open below fail
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        end = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            os.ftruncate(fd, end)  # no half line: the next append would join it and both be unreadable
            raise
    finally:
        if fd >= 0:
            os.close(fd)


def quarantine(path: Path, calls: list[CapturedCall], reason: str) -> int:
    """Keep `calls` apart with the reason, saying so; returns how many were lost
    because the quarantine itself could not be written."""
    log.error("meter: %d call(s) quarantined in %s: %s", len(calls), path, reason)
    try:
        append(path, calls, reason)
    except OSError as exc:
        log.error("meter: cannot write the quarantine (%s): %d call(s) lost", exc, len(calls))
        return len(calls)
    return 0


def replaying_path(spool: Path) -> Path:
    """Where the spool is while the recorder replays it."""
    return spool.with_name(spool.name + ".replaying")


def take_for_replay(spool: Path) -> Path | None:
    """Rename the spool aside (under its lock) so appends go to a fresh file; the
    renamed file, or None when there is nothing to replay."""
    taken = replaying_path(spool)
    if taken.exists():
        return taken  # a replay that did not finish
    try:
        fd = os.open(spool, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(spool, taken)
    finally:
        os.close(fd)
    return taken


def call_ids(path: Path) -> Iterator[str]:
    """The ID of each call in the file, its bodies left undecoded; a line that cannot be read is skipped."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            try:
                call_id = json.loads(line)["id"]
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(call_id, str):
                yield call_id


def read(path: Path) -> Iterator[CapturedCall | str]:
    """Each call in the file, or, for a line that cannot be read (the torn last
    line of a crash), that line."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield decode(line)
            except (ValueError, TypeError, KeyError):
                yield line
