"""`meter statusline`: one short line for shell prompts and Claude Code's statusLine.

    P1-010 42m/1h30m · 182.4k tok · $1.23 · ⚑1
    NOT METERED · P1-010 42m/1h30m · ...
    P1-010 42m/1h30m · $1.23 · session $0.42 · today $3.10    (show = [..., "session", "today"])

It runs on every prompt, so it stays cheap: the state comes from
analytics/snapshot.py, as `meter status` has it, without click, rich or pydantic
(`meter` hands it over before importing them), and the database is read without
writing or migrating it. Time is working time against the estimate, as reports count it.

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

from taskmeter.errors import MeterError
from taskmeter.money import usd
from taskmeter.printable import printable
from taskmeter.store import connection

NOT_METERED = "NOT METERED"
# What the line can show (config `[statusline] show`, in the order given), NOT_METERED always first:
# the task and its working time against its estimate, its tokens, cost and flags so far, the budget
# that binds it, the open alerts, the cost of every call since local midnight, and the cost of the
# Claude Code session whose status line it is.
ITEMS = ("task", "tokens", "cost", "flags", "budget", "alerts", "today", "session")
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
        line = status_line(connection.resolve_path(db_path), _claude_status(raw))
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
    from taskmeter.analytics.budgets import configured_defaults
    from taskmeter.analytics.snapshot import current_state, session_cost, task_figures, today_cost
    from taskmeter.config.files import NUMBER, TEXTS, read_values

    session = claude.get("session_id") if isinstance(claude.get("session_id"), str) else None
    config = read_values()
    show = shown_items(config.get("statusline.show", TEXTS) or [])
    state = current_state(db, configured_defaults(config), session)
    task_id = state["task_id"]
    parts: dict[str, str] = {}
    if task_id:
        figures = None
        if {"task", "tokens", "cost", "flags"} & set(show):
            figures = task_figures(db, task_id, config.get("record.idle_minutes", NUMBER) * 60)
        worked = figures["actual_duration"] if figures else None
        estimate = f"/{_duration(figures['estimate_seconds'])}" if figures and figures["estimate_seconds"] else ""
        parts["task"] = f"{task_id} {_duration(worked) if worked is not None else '?'}{estimate}"
        if figures and (figures["token_count_used"] is not None or figures["cost_usd"] is not None):
            parts["tokens"] = _tokens(figures["token_count_used"] or 0)
            parts["cost"] = usd(figures["cost_usd"] or 0)
            if figures["hallucination_count"]:
                parts["flags"] = f"⚑{figures['hallucination_count']}"
        # The one that binds: a phase at 95% shows, whatever the task's own has used.
        if state["budget"] is not None:
            bound = state["budget"]
            share = bound["used_share"]
            scope = f"phase {bound['target']} " if bound["scope"] == "phase" else ""
            parts["budget"] = f"{scope}budget {share * 100:.0f}%" + ("!" if share >= 1 else "")
    else:
        # Why none is, when the meter cleared it: `no task (P1-010 approved)`.
        parts["task"] = f"no task ({state['current_note']})" if state["current_note"] else "no task"
    if state["alerts"]:
        parts["alerts"] = f"⚠ {len(state['alerts'])} alert{'s' if len(state['alerts']) > 1 else ''}"
    if "today" in show:
        parts["today"] = f"today {usd(today_cost(db) or 0)}"
    if "session" in show and session:
        parts["session"] = f"session {usd(session_cost(db, session) or 0)}"
    line = [parts[item] for item in show if item in parts]
    if not state["metered"]:
        line.insert(0, NOT_METERED)
    return " · ".join(line)


def shown_items(show: list[str]) -> list[str]:
    """The items `[statusline] show` names, in its order; each must be one of ITEMS."""
    unknown = [item for item in show if item not in ITEMS]
    if unknown:  # short: the line is for a prompt, and `meter config check` says more
        raise MeterError(f"statusline.show: no item {unknown[0]!r} (`meter config check`)")
    return list(dict.fromkeys(show))
