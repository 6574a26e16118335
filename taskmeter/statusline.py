"""`meter statusline`: one short line for shell prompts and Claude Code's statusLine.

    P1-010 42m/1h30m · 182.4k tok · $1.23 · ⚑1
    NOT METERED · P1-010 42m/1h30m · ...

It runs on every prompt, so it stays cheap: the standard library and the store's
path and liveness helpers only (no click, rich or pydantic; `meter` hands it
over before importing them), and reads the database without writing or migrating it.

Given Claude Code's status JSON on stdin (`session_id`, `model`, `workspace`),
"not metered" means the meter has recorded no call of that session; without it,
it means no proxy records to the database.

Whatever happens (a missing, locked or corrupt database, a malformed value, a
chained command that hangs), it prints one short line and exits 0: a prompt
must never show a traceback, nor wait for us.
"""

import json
import os
import sqlite3
import sys
import time

from taskmeter.analytics import budgets
from taskmeter.money import usd
from taskmeter.printable import printable
from taskmeter.store import db as store_db
from taskmeter.store import proxies
from taskmeter.timefmt import from_stored

NOT_METERED = "NOT METERED"
# A chained status line gets this long; then its process group is killed.
CHAIN_TIMEOUT_SECONDS = 1.0
CHAIN_TIMED_OUT = f"(no answer in {CHAIN_TIMEOUT_SECONDS:g}s)"
# What is left of an error's text: the line is for a prompt.
ERROR_WIDTH = 80


def fast_path(arguments: list[str]) -> bool:
    """Print the status line when the command line is `statusline` with only
    `--db PATH` and `--chain COMMAND`; False for anything else (help, a typo),
    which click then handles."""
    if not arguments or arguments[0] != "statusline":
        return False
    options: dict[str, str] = {}
    rest = arguments[1:]
    while rest:
        name, _, value = rest[0].partition("=")
        if name not in ("--db", "--chain") or name in options or (not value and len(rest) < 2):
            return False
        options[name] = value or rest[1]
        rest = rest[1:] if value else rest[2:]
    print_status(options.get("--db"), options.get("--chain"))
    return True


def print_status(db_path: str | None, chain: str | None = None) -> None:
    """Our line; with `chain`, then the line of that command given the same stdin
    (a status line the user had before `meter claude install`)."""
    raw = _stdin()
    try:
        line = status_line(store_db.resolve_path(db_path), _claude_status(raw))
    except Exception as exc:  # a malformed value anywhere: still one line, never a traceback
        line = _failure(exc)
    line = printable(line, one_line=True)  # a task title is the user's, but may hold an escape sequence
    if chain:
        try:
            theirs = _chained_line(chain, raw)
        except Exception as exc:
            theirs = _failure(exc)
        line = f"{line} | {theirs}" if theirs else line
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the reader went away: nobody is left to tell


def _failure(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return "meter: " + (text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…")


def _chained_line(command: str, raw: str) -> str:
    """The chained command's line, given `raw` on stdin; after CHAIN_TIMEOUT_SECONDS
    it and everything it started (its own process group) is killed."""
    import signal
    import subprocess  # only with --chain: a prompt without one starts faster

    process = subprocess.Popen(
        command,
        shell=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(raw, timeout=CHAIN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()  # not communicate(): something outside the group may still hold the pipe
        assert process.stdout is not None  # opened as a pipe
        process.stdout.close()
        return CHAIN_TIMED_OUT
    return out.strip()


def _stdin() -> str:
    try:
        return "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    except OSError:
        return ""


def _claude_status(raw: str) -> dict:
    """Claude Code's JSON when it pipes one; {} from a terminal or an empty stdin."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _tokens(count: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if count >= size:
            return f"{count / size:.1f}{unit} tok"
    return f"{count} tok"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _seconds_since(stored: str) -> float:
    return time.time() - from_stored(stored).timestamp()


def status_line(path, claude: dict) -> str:
    if not os.path.exists(path):
        return f"{NOT_METERED} · no meter database at {path}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        db.row_factory = sqlite3.Row
        try:
            return _line(db, claude)
        finally:
            db.close()
    except sqlite3.Error as exc:
        return _failure(exc)


def _line(db: sqlite3.Connection, claude: dict) -> str:
    session = claude.get("session_id") if isinstance(claude.get("session_id"), str) else None
    # A Claude Code session bound to a task (`meter claude install`) shows its own task.
    bound = session and db.execute("SELECT task_id FROM session_tasks WHERE session_id = ?", (session,)).fetchone()
    state = dict(db.execute("SELECT key, value FROM state WHERE key = 'current_task'").fetchall())
    task_id = bound["task_id"] if bound else state.get("current_task")
    parts = []
    if task_id:
        task = db.execute("SELECT begin_at, estimate_seconds FROM tasks WHERE id = ?", (task_id,)).fetchone()
        elapsed = _duration(_seconds_since(task["begin_at"])) if task and task["begin_at"] else "?"
        estimate = f"/{_duration(task['estimate_seconds'])}" if task and task["estimate_seconds"] else ""
        parts.append(f"{task_id} {elapsed}{estimate}")
        usage = db.execute(
            "SELECT input_total + output_total AS tokens, cost_usd, flagged FROM task_usage WHERE task_key = ?", (task_id,)
        ).fetchone()
        if usage is not None:
            parts.append(_tokens(usage["tokens"] or 0))
            parts.append(usd(usage["cost_usd"] or 0))
            if usage["flagged"]:
                parts.append(f"⚑{usage['flagged']}")
        # Budgets set with --budget (the config's default needs the config: `meter status` shows it).
        # The one that binds: a phase at 95% shows, whatever the task's own has used.
        covered = budgets.task_budgets(db, budgets.budget_statuses(db, budgets.Defaults())).get(task_id)
        if covered is not None:
            bound = covered["binding"]
            share = bound["used_share"]
            scope = f"phase {bound['target']} " if bound["scope"] == "phase" else ""
            parts.append(f"{scope}budget {share * 100:.0f}%" + ("!" if share >= 1 else ""))
    else:
        # Why none is, when the meter cleared it: `no task (P1-010 approved)`.
        cleared = db.execute("SELECT note FROM task_events WHERE kind = 'switch' ORDER BY at DESC, id DESC LIMIT 1").fetchone()
        parts.append(f"no task ({cleared['note']})" if cleared and cleared["note"] else "no task")
    open_alerts = db.execute("SELECT count(*) FROM alerts WHERE cleared_at IS NULL").fetchone()[0]
    if open_alerts:
        parts.append(f"⚠ {open_alerts} alert{'s' if open_alerts > 1 else ''}")
    if session:
        seen = db.execute("SELECT 1 FROM interactions WHERE client_session = ? LIMIT 1", (session,)).fetchone()
        metered = seen is not None
    else:
        metered = any(proxy["recording"] == proxies.RECORDING for proxy in proxies.running(db))
    if not metered:
        parts.insert(0, NOT_METERED)
    return " · ".join(parts)
