"""Interactions (one row per AI call), hallucination flags and their look-ups."""

import json
import sqlite3
from dataclasses import dataclass, fields
from operator import attrgetter

from taskmeter import ids
from taskmeter.errors import Ambiguous, MeterError, NotFound
from taskmeter.store.connection import require_transaction, write_transaction
from taskmeter.store.rules import FAILED_CALL_SQL  # the failed-call rule, kept apart to import cheaply
from taskmeter.timefmt import now_stored
from taskmeter.tokens import TOKEN_COLUMNS, TOKENS_SQL


@dataclass(slots=True)
class Interaction:
    """One AI call as stored. Token counts are inclusive (OpenTelemetry GenAI):
    input_total includes cache_read and cache_write, output_total includes
    reasoning. A number the provider did not give stays None (NULL), never 0."""

    id: str
    started_at: str
    task_id: str | None = None
    attribution: str | None = None
    first_byte_at: str | None = None
    ended_at: str | None = None
    provider: str | None = None
    protocol: str | None = None
    operation: str = "generate"
    method: str | None = None
    endpoint: str | None = None
    model: str | None = None
    streamed: bool | None = None
    http_status: int | None = None
    outcome: str | None = None
    error: str | None = None
    input_total: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    output_total: int | None = None
    reasoning: int | None = None
    usage_source: str | None = None
    raw_usage: str | None = None
    cost_usd: float | None = None
    price_source: str | None = None
    conversation_root: str | None = None  # the root hash (protocols/conversation.py), as the proxy computes it
    conversation_id: str | None = None  # set when stored: the root in the call's task and session (store/sessions.py)
    context_switch: bool | None = None
    client: str | None = None
    client_session: str | None = None
    session_id: str | None = None  # set when stored: see store/sessions.py
    proxy_id: str | None = None
    # What the recorder had to change or drop to store the call (see storable()).
    notes: str | None = None
    blocked: str | None = None  # "budget" or "loop": the meter refused the call, the upstream never saw it
    response_id: str | None = None  # the provider's ID of the response (msg_…, chatcmpl-…, resp_…, responseId)
    # "api": cost_usd is what the call costs; "api-equivalent": a subscription login
    # paid for it, and cost_usd is its price at the API's list price (docs/budgets.md).
    price_basis: str = "api"


COLUMNS = tuple(f.name for f in fields(Interaction))
_VALUES = attrgetter(*COLUMNS)  # a row's values in COLUMNS' order, read in one call
_INSERT = f"INSERT INTO interactions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT(id) DO NOTHING"


def insert_many(db: sqlite3.Connection, rows: list[Interaction]) -> None:
    """Insert in the caller's transaction. Replaying a row already stored is a no-op,
    so a spool replayed twice never double-counts."""
    require_transaction(db, "insert_many")
    db.executemany(_INSERT, [_VALUES(storable(row)) for row in rows])


# What SQLite can hold: 64-bit signed integers, finite floats, UTF-8 text.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# A float past this is no real number of ours; it would only poison sums.
_FLOAT_MAX = 1e15

# What one call can really count or cost: the largest context windows hold about
# 10^7 tokens, and the dearest call of today's price lists costs about $100. A
# value past these is a broken or hostile upstream, and one such row would
# poison every sum and every budget.
MAX_TOKENS_PER_CALL = 10**9
MAX_COST_PER_CALL_USD = 10_000.0


def token_count(value) -> int | None:
    """`value` as a token count of one call, or None when it cannot be one: not a
    JSON number (a string, a boolean, an object), not whole, negative, or past
    MAX_TOKENS_PER_CALL. The one rule for every token count the meter stores."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 12.0 is a count; 12.5, NaN and infinities are not
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_PER_CALL:
        return value
    return None


def call_cost(value) -> float | None:
    """`value` as the cost in USD of one call, or None when it cannot be one:
    not a number, negative, not finite, or past MAX_COST_PER_CALL_USD."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_COST_PER_CALL_USD:
        return float(value)
    return None


def shown(value) -> str:
    """A value as it came, short, for a note."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON, or an integer past Python's digit limit
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:39] + "…"


_TEXT_MAX = {
    "model": 256,
    "endpoint": 4096,
    "client": 1024,
    "error": 8192,
    "conversation_id": 256,
    "conversation_root": 256,
    "response_id": 256,
}
_TEXT_MAX_DEFAULT = 65536
# The columns storable() checks for SQLite (the token columns and notes have their own rules), with their place
# in COLUMNS and the longest text each keeps.
_CHECKED = tuple(
    (place, column, _TEXT_MAX.get(column, _TEXT_MAX_DEFAULT))
    for place, column in enumerate(COLUMNS)
    if column != "notes" and column not in TOKEN_COLUMNS
)


def storable_text(value: str, limit: int | None = None) -> tuple[str, list[str]]:
    """`value` as text SQLite stores faithfully, and what was changed: lone
    surrogates become U+FFFD, NUL characters go, and text past `limit` is cut."""
    if value.isascii() and "\x00" not in value and (limit is None or len(value) <= limit):
        return value, []  # the common case, checked without encoding
    changes = []
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        changes.append("lone surrogates replaced")
    if "\x00" in value:
        value = value.replace("\x00", "")
        changes.append("NUL characters removed")
    if limit is not None and len(value) > limit:
        changes.append(f"cut from {len(value)} to {limit} characters")
        value = value[:limit]
    return value, changes


def storable(row: Interaction) -> Interaction:
    """Clamp or null, in place, every value SQLite cannot hold, noting each change
    on the row: one odd value from an upstream must never stop recording."""
    notes = []
    for column in TOKEN_COLUMNS:
        value = getattr(row, column)
        if value is not None and token_count(value) is None:
            setattr(row, column, None)
            notes.append(f"{column} {shown(value)} is not a plausible count: stored as NULL")
    if notes and row.cost_usd is not None:
        # A price is only as good as the counts it was computed from.
        notes.append(f"cost_usd {row.cost_usd!r} was computed from them: stored as NULL")
        row.cost_usd = None
    if row.cost_usd is not None and call_cost(row.cost_usd) is None:
        notes.append(f"cost_usd {shown(row.cost_usd)} is not a plausible cost of one call: stored as NULL")
        row.cost_usd = None
    values = _VALUES(row)
    for place, column, limit in _CHECKED:
        value = values[place]
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                setattr(row, column, None)
                notes.append(f"{column} {str(value)[:40]} is past SQLite's integer range: stored as NULL")
        elif isinstance(value, float):
            if not (value == value and abs(value) <= _FLOAT_MAX):
                setattr(row, column, None)
                notes.append(f"{column} {value!r} is not a plausible number: stored as NULL")
        elif isinstance(value, str):
            text, changes = storable_text(value, limit)
            if changes:
                setattr(row, column, text)
                notes.append(f"{column}: {', '.join(changes)}")
        else:
            setattr(row, column, None)
            notes.append(f"{column} of type {type(value).__name__} cannot be stored: stored as NULL")
    if notes:
        row.notes = "; ".join(filter(None, [row.notes, *notes]))
    if row.notes:
        row.notes = storable_text(row.notes, _TEXT_MAX_DEFAULT)[0]
    return row


def insert(db: sqlite3.Connection, row: Interaction) -> None:
    with write_transaction(db):
        insert_many(db, [row])


# An ambiguous reference lists at most this many of the calls it matches.
CANDIDATES_LISTED = 10


def resolve_id(db: sqlite3.Connection, reference: str) -> str:
    """An interaction ID from a full ID or any unique part of one (ids.MIN_PREFIX
    characters or more: IDs made in the same minutes share their first ones, so
    the random end tells calls apart best). A full ID must pass its check
    character, so a typo fails. A part that several IDs hold names none of them:
    Ambiguous, with a line per candidate (its task, model and time)."""
    part = ids.normalise_prefix(reference)
    problem = ids.prefix_problem(part)
    if problem:
        raise MeterError(f"not an interaction ID: {reference.strip()!r}: {problem}")
    if len(part) >= ids.BODY_LENGTH and db.execute("SELECT 1 FROM interactions WHERE id = ?", (part,)).fetchone():
        return part
    # Only the IDs are read (the primary key's index covers them): a part can be anywhere in one.
    matches = [row[0] for row in db.execute("SELECT id FROM interactions WHERE instr(id, ?) > 0", (part,))]
    if not matches:
        raise NotFound(f"unknown interaction {reference.strip()!r}: see `meter log` for IDs")
    if len(matches) > 1:
        first = sorted(matches)[:CANDIDATES_LISTED]  # IDs sort by the time they were made
        listed = db.execute(
            f"SELECT id, task_id, model, started_at FROM interactions WHERE id IN ({', '.join('?' for _ in first)})"
            " ORDER BY started_at, id",
            first,
        )
        lines = [f"{row['id']}  {row['task_id'] or 'unassigned'}  {row['model'] or '?'}  {row['started_at']}" for row in listed]
        if len(matches) > CANDIDATES_LISTED:
            lines.append(f"and {len(matches) - CANDIDATES_LISTED} more")
        raise Ambiguous(
            f"{reference.strip()!r} is ambiguous: part of {len(matches)} interaction IDs; type more of it, or another part of one",
            lines,
        )
    return matches[0]


def resolve_session(db: sqlite3.Connection, reference: str) -> str:
    """A session's ID as stored, from the whole ID (as a loop alert names it) or a
    unique beginning of ids.MIN_PREFIX characters or more (as reports shorten it)."""
    text = reference.strip()
    if db.execute("SELECT 1 FROM interactions WHERE session_id = ? LIMIT 1", (text,)).fetchone():
        return text
    if len(text) < ids.MIN_PREFIX:
        raise NotFound(f"unknown session {text!r}: give its whole ID, or at least {ids.MIN_PREFIX} characters of it")
    found = [
        row[0]
        for row in db.execute(
            "SELECT DISTINCT session_id FROM interactions WHERE session_id >= ? AND session_id < ? LIMIT ?",
            (text, text + "\U0010ffff", CANDIDATES_LISTED + 1),
        )
    ]
    if not found:
        raise NotFound(f"unknown session {text!r}: `meter report sessions` lists them")
    if len(found) > 1:
        raise Ambiguous(f"{text!r} begins several session IDs: type more of it", found[:CANDIDATES_LISTED])
    return found[0]


def select_ids(db: sqlite3.Connection, references: list[str] | None = None, between: tuple[str, str] | None = None) -> list[str]:
    """Interaction IDs named one by one, or as an inclusive ID range."""
    if references:
        return list(dict.fromkeys(resolve_id(db, reference) for reference in references))
    if between:
        low, high = sorted(resolve_id(db, reference) for reference in between)
        return [row[0] for row in db.execute("SELECT id FROM interactions WHERE id BETWEEN ? AND ? ORDER BY id", (low, high))]
    return []


# `last` picks the main conversation among this many of its session's newest answered calls.
MAIN_CONVERSATION_WINDOW = 20
_ANSWERED = "{r}.operation = 'generate' AND {r}.http_status BETWEEN 200 AND 299"


@dataclass(frozen=True)
class LastCall:
    """What `last` names, and the newer calls of its scope it passed over, newest
    first, each as (interaction ID, why)."""

    interaction_id: str
    skipped: list[tuple[str, str]]


def _scope(alias: str, task_id: str | None, client_session: str | None) -> tuple[str, list]:
    clauses, params = [], []
    if task_id is not None:
        clauses.append(f"{alias}.task_id = ?")
        params.append(task_id)
    if client_session is not None:
        clauses.append(f"{alias}.client_session = ?")
        params.append(client_session)
    # With no other clause, an open range on started_at lets SQLite walk its index newest first.
    return " AND ".join(clauses) or f"{alias}.started_at > ''", params


def last_call(db: sqlite3.Connection, task_id: str | None, client_session: str | None = None) -> LastCall:
    """What `last` names (docs/metrics.md). Among the answered calls of
    `task_id` (of every task when None; of the client's session `client_session`
    alone when given), take the newest one's session; in that session and task,
    its main conversation: the one with the most tokens among the session's last
    MAIN_CONVERSATION_WINDOW answered calls (ties: the newest); and that
    conversation's newest call. Side calls (a client's title, topic or quota
    requests, each a conversation of its own, mostly to a small model) and calls
    that got no model answer are passed over, and named with why."""
    scope, params = _scope("i", task_id, client_session)
    newest = db.execute(
        f"SELECT i.id, i.task_id, i.session_id FROM interactions i"
        f" WHERE {scope} AND {_ANSWERED.format(r='i')} ORDER BY i.started_at DESC, i.id DESC LIMIT 1",
        params,
    ).fetchone()
    if newest is None:
        raise NotFound(f"no answered AI call of {task_id} yet" if task_id else "no answered AI call recorded yet")
    # A call stored with no session is a session of its own.
    in_session = ("i.session_id = ?", newest["session_id"]) if newest["session_id"] else ("i.id = ?", newest["id"])
    session_calls = db.execute(
        "SELECT i.id, i.started_at, coalesce(i.conversation_id, i.id) AS conversation,"
        f" {TOKENS_SQL.format(r='i.')} AS tokens FROM interactions i"
        f" WHERE {in_session[0]} AND i.task_id IS ? AND {_ANSWERED.format(r='i')}"
        " ORDER BY i.started_at DESC, i.id DESC LIMIT ?",
        (in_session[1], newest["task_id"], MAIN_CONVERSATION_WINDOW),
    ).fetchall()
    tokens: dict[str, int] = {}
    for row in session_calls:
        tokens[row["conversation"]] = tokens.get(row["conversation"], 0) + row["tokens"]
    main = max(tokens, key=tokens.__getitem__)  # ties: the conversation seen first, which is the newest
    chosen = next(row for row in session_calls if row["conversation"] == main)
    newer = db.execute(
        "SELECT i.id, i.operation, i.model, i.http_status, i.outcome, i.blocked, coalesce(i.session_id, i.id) AS session,"
        f" coalesce({FAILED_CALL_SQL.format(r='i')}, 0) AS failed FROM interactions i"
        f" WHERE {scope} AND i.started_at >= ? AND (i.started_at, i.id) > (?, ?) ORDER BY i.started_at DESC, i.id DESC",
        (*params, chosen["started_at"], chosen["started_at"], chosen["id"]),
    ).fetchall()
    session = newest["session_id"] or newest["id"]
    return LastCall(chosen["id"], [(row["id"], _why_passed_over(dict(row), session)) for row in newer])


def _why_passed_over(row: dict, session: str) -> str:
    """Why `last` passed over a newer call of its scope."""
    if row["operation"] != "generate":
        return f"not a generation: {row['operation']}"
    if row["failed"] or not (row["http_status"] is not None and 200 <= row["http_status"] < 300):
        return f"a failed call: {no_answer_reason(row)}"
    if row["session"] != session:
        return "a call of another session"
    return f"a side call: {row['model'] or '?'}, another conversation of its session"


def no_answer_reason(row: dict) -> str:
    """In words, why a call got no model answer: refused by the meter, an HTTP error, or no response."""
    if row.get("blocked"):
        return f"refused by the meter: {row['blocked']}"
    if row["http_status"] is not None and not 200 <= row["http_status"] < 300:
        return f"HTTP {row['http_status']}"
    return "no response"


def flag(db: sqlite3.Connection, interaction_id: str, note: str | None = None) -> bool:
    """Flag an interaction as a hallucination; returns whether it was already
    flagged. Only a model's answer can be one: a call that got none (a failed
    call), or that is no generation (a token count), is refused."""
    with write_transaction(db):
        call = db.execute(
            f"SELECT i.*, coalesce({FAILED_CALL_SQL.format(r='i')}, 0) AS failed FROM interactions i WHERE i.id = ?",
            (interaction_id,),
        ).fetchone()
        if call is not None and call["operation"] != "generate":
            raise MeterError(f"{interaction_id} is not a generation ({call['operation']}): only an answer can be a hallucination")
        if call is not None and call["failed"]:
            raise MeterError(
                f"{interaction_id} got no model answer ({no_answer_reason(dict(call))}): only an answer can be a hallucination"
            )
        existing = db.execute("SELECT note FROM flags WHERE interaction_id = ?", (interaction_id,)).fetchone()
        if existing is None:
            db.execute(
                "INSERT INTO flags (interaction_id, note, flagged_at) VALUES (?, ?, ?)",
                (interaction_id, note, now_stored()),
            )
        elif note is not None:
            db.execute("UPDATE flags SET note = ? WHERE interaction_id = ?", (note, interaction_id))
    return existing is not None


def set_aside_flag(db: sqlite3.Connection, interaction_id: str) -> dict | None:
    """The flag a call got before flags on failed calls were refused, which
    migration m017 set aside: kept, counted nowhere."""
    row = db.execute(
        "SELECT note, flagged_at, set_aside_at FROM failed_call_flags WHERE interaction_id = ?", (interaction_id,)
    ).fetchone()
    return dict(row) if row else None


def unflag(db: sqlite3.Connection, reference: str) -> str:
    with write_transaction(db):
        interaction_id = resolve_id(db, reference)
        deleted = db.execute("DELETE FROM flags WHERE interaction_id = ?", (interaction_id,)).rowcount
        deleted += db.execute("DELETE FROM failed_call_flags WHERE interaction_id = ?", (interaction_id,)).rowcount
        if not deleted:
            raise MeterError(f"interaction {interaction_id} is not flagged")
    return interaction_id


@dataclass(frozen=True)
class CallFilter:
    """Which calls a listing shows; every field narrows, None leaves it open."""

    task_id: str | None = None
    unassigned: bool = False
    since: str | None = None  # stored timestamps
    until: str | None = None
    model: str | None = None  # a substring, any case
    flagged: bool = False
    failed: bool = False
    search: str | None = None  # in the stored text, the model or the error
    session: str | None = None  # the session's ID as stored

    def where(self) -> tuple[str, list]:
        """SQL over `interactions i`, `flags f` and `call_texts t`, and its parameters."""
        clauses, params = [], []
        if self.task_id is not None:
            clauses.append("i.task_id = ?")
            params.append(self.task_id)
        if self.unassigned:
            clauses.append("i.task_id IS NULL")
        if self.since:
            clauses.append("i.started_at >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("i.started_at < ?")
            params.append(self.until)
        if self.model:
            clauses.append("i.model LIKE ? ESCAPE '\\'")
            params.append("%" + _like_escape(self.model) + "%")
        if self.flagged:
            clauses.append("f.interaction_id IS NOT NULL")
        if self.failed:
            clauses.append(FAILED_CALL_SQL.format(r="i"))
        if self.session is not None:
            clauses.append("i.session_id = ?")  # an agent's own session ID is its session_id (store/sessions.py)
            params.append(self.session)
        if self.search:
            pattern = "%" + _like_escape(self.search) + "%"
            clauses.append(
                "(t.prompt LIKE ? ESCAPE '\\' OR t.response LIKE ? ESCAPE '\\' OR t.steps LIKE ? ESCAPE '\\'"
                " OR i.model LIKE ? ESCAPE '\\' OR i.error LIKE ? ESCAPE '\\')"
            )
            params += [pattern] * 5
        return (" AND ".join(clauses) or "1"), params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_CALLS = f"""
    SELECT i.rowid, i.*, coalesce({FAILED_CALL_SQL.format(r="i")}, 0) AS failed, f.flagged_at, f.note AS flag_note, t.response
    FROM interactions i
    LEFT JOIN flags f ON f.interaction_id = i.id
    LEFT JOIN call_texts t ON t.interaction_id = i.id
"""


def stored_after_query(rowid: int, calls: CallFilter = CallFilter(), limit: int = -1) -> tuple[str, tuple]:
    """SQL and parameters for the calls stored after the row `rowid` (insertion
    order), oldest first: for this module's connection and the dashboard's async one."""
    where, params = calls.where()
    return f"{_CALLS} WHERE i.rowid > ? AND {where} ORDER BY i.rowid LIMIT ?", (rowid, *params, limit)


def stored_after(db: sqlite3.Connection, rowid: int, calls: CallFilter = CallFilter()) -> list[dict]:
    return [dict(row) for row in db.execute(*stored_after_query(rowid, calls)).fetchall()]


def recent(db: sqlite3.Connection, limit: int = 20, calls: CallFilter = CallFilter()) -> list[dict]:
    """Newest first, with the flag (if any) and the response text (if kept) of each."""
    where, params = calls.where()
    rows = db.execute(f"{_CALLS} WHERE {where} ORDER BY i.started_at DESC, i.id DESC LIMIT ?", (*params, limit)).fetchall()
    return [dict(row) for row in rows]


def matching_ids(db: sqlite3.Connection, calls: CallFilter) -> list[str]:
    where, params = calls.where()
    return [
        row[0]
        for row in db.execute(
            "SELECT i.id FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id"
            f" LEFT JOIN call_texts t ON t.interaction_id = i.id WHERE {where} ORDER BY i.started_at",
            params,
        )
    ]


def one(db: sqlite3.Connection, interaction_id: str) -> dict:
    return dict(db.execute(f"{_CALLS} WHERE i.id = ?", (interaction_id,)).fetchone())
