"""Pairing each turn of an agent's log with the meter's call for it.

First by ID: the response ID the meter stores (Claude Code's `msg_…`, Codex's
`resp_…`), and the ID an earlier `--import` gave the turn. Then, for turns with
no ID match (Gemini CLI logs none), by the exact usage, the model (an alias
agrees with its dated version), the session where both state one, and time:
the agent writes a turn down as its response ends, so the turn must fall
between the call's start and shortly after its end.
Each call pairs with one turn at most; of several, the nearest in time."""

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from taskmeter import ids
from taskmeter.automation.git import current_branch, task_of_branch
from taskmeter.reconcile import claude, codex, gemini
from taskmeter.reconcile.turns import LogTurn, Warn
from taskmeter.recorder import pricing
from taskmeter.store.calls import attribute
from taskmeter.store.interactions import FAILED_CALL_SQL, Interaction
from taskmeter.timefmt import from_stored, to_stored
from taskmeter.tokens import AGENT_LOG, TOKEN_COLUMNS

AGENTS: dict[str, ModuleType] = {module.NAME: module for module in (claude, codex, gemini)}
# How long after a call's end its turn may be written down, and how far around
# the logs' turns the meter's calls are looked at.
WRITE_DELAY_SECONDS = 120
_CALL_COLUMNS = (
    "id, task_id, started_at, ended_at, model, protocol, client, client_session, response_id, usage_source, cost_usd, "
    + ", ".join(TOKEN_COLUMNS)
)


@dataclass
class Turn:
    """A log turn and what became of it: `seen` (the meter has the call),
    `imported` (an earlier --import stored it) or `missed`; the task it is, or
    would be, attributed to, and its cost."""

    log: LogTurn
    status: str
    task_id: str | None
    attribution: str | None
    cost_usd: float | None
    price_source: str | None = None

    @property
    def import_id(self) -> str:
        return import_id(self.log)


@dataclass
class AgentResult:
    agent: ModuleType
    log_files: int
    turns: list[Turn] = field(default_factory=list)
    meter_only: list[dict] = field(default_factory=list)  # the meter's calls the log does not have


def import_id(turn: LogTurn) -> str:
    """The call ID an import gives this turn: the same on every run."""
    return ids.derived_id(from_stored(turn.at).timestamp(), turn.key)


def read_logs(
    agents: list[str], env: Mapping[str, str], home: Path, since: str | None, warn: Warn
) -> dict[str, tuple[int, list]]:
    """Per agent: how many log files, and their turns from `since` on, oldest first."""
    found = {}
    for name in agents:
        module = AGENTS[name]
        files = module.log_files(env, home)
        if since is not None:  # a file last written before `since` holds no turn after it
            files = [path for path in files if _written_since(path, since)]
        turns = [turn for turn in module.read(files, warn) if since is None or turn.at >= since]
        found[name] = (len(files), sorted(turns, key=lambda turn: (turn.at, turn.key)))
    return found


def reconcile(
    db: sqlite3.Connection, logs: dict[str, tuple[int, list]], since: str | None, branch_pattern: str
) -> list[AgentResult]:
    results = []
    destinations = _Destinations(db, branch_pattern)
    for name, (files, turns) in logs.items():
        module = AGENTS[name]
        result = AgentResult(module, files)
        paired = _pair(db, module, turns, since)
        taken = {call_id for call_id, _ in paired.values()}
        for turn in turns:
            call_id, status = paired.get(turn.key, (None, "missed"))
            if status == "missed":
                task_id, attribution = destinations.of(turn)
                cost, price_source = pricing.price(module.PROVIDER, turn.model, turn.usage)
            else:
                row = db.execute(
                    "SELECT task_id, attribution, cost_usd, price_source FROM interactions WHERE id = ?", (call_id,)
                ).fetchone()
                task_id, attribution, cost, price_source = tuple(row)
            result.turns.append(Turn(turn, status, task_id, attribution, cost, price_source))
        result.meter_only = _meter_only(db, module, turns, since, taken)
        results.append(result)
    return results


def _pair(db, module, turns: list[LogTurn], since: str | None) -> dict[str, tuple[str, str]]:
    """turn key -> (call ID, 'seen' or 'imported') for every turn the store has."""
    paired: dict[str, tuple[str, str]] = {}
    if not turns:
        return paired
    by_import_id = {import_id(turn): turn for turn in turns}
    for row in _rows(db, "id", list(by_import_id)):
        if row["usage_source"] == AGENT_LOG:
            paired[by_import_id[row["id"]].key] = (row["id"], "imported")
    by_response = {turn.response_id: turn for turn in turns if turn.response_id and turn.key not in paired}
    for row in _rows(db, "response_id", list(by_response)):
        if row["usage_source"] != AGENT_LOG:
            paired[by_response[row["response_id"]].key] = (row["id"], "seen")
    taken = {call_id for call_id, _ in paired.values()}
    low, high = _window(turns, since)
    marks = ", ".join("?" for _ in module.PROTOCOLS)
    candidates: dict[tuple, list[dict]] = {}  # by (input, output): only calls with a turn's usage can be its call
    for row in db.execute(
        f"SELECT {_CALL_COLUMNS} FROM interactions WHERE operation = 'generate' AND protocol IN ({marks})"
        " AND started_at >= ? AND started_at <= ? AND usage_source IS NOT ? ORDER BY started_at, id",
        (*module.PROTOCOLS, low, high, AGENT_LOG),
    ):
        if row["id"] not in taken:
            candidates.setdefault((row["input_total"], row["output_total"]), []).append(dict(row))
    for turn in turns:
        if turn.key in paired:
            continue
        same_usage = candidates.get((turn.usage.input_total, turn.usage.output_total), [])
        fitting = [call for call in same_usage if call["id"] not in taken and _same_call(turn, call)]
        if fitting:
            call = min(fitting, key=lambda call: abs(_seconds(turn.at) - _seconds(call["ended_at"] or call["started_at"])))
            paired[turn.key] = (call["id"], "seen")
            taken.add(call["id"])
    return paired


def _same_call(turn: LogTurn, call: dict) -> bool:
    usage = turn.usage
    if (call["input_total"], call["output_total"]) != (usage.input_total, usage.output_total):
        return False
    if call["cache_read"] is not None and usage.cache_read is not None and call["cache_read"] != usage.cache_read:
        return False
    if turn.model and call["model"] and not _same_model(turn.model, call["model"]):
        return False
    if turn.response_id and call["response_id"]:  # both named and not the same: another response
        return False
    if turn.session and call["client_session"] and turn.session != call["client_session"]:
        return False
    at = _seconds(turn.at)
    return _seconds(call["started_at"]) <= at <= _seconds(call["ended_at"] or call["started_at"]) + WRITE_DELAY_SECONDS


def _same_model(logged: str, metered: str) -> bool:
    """A log may name the model asked for, the meter the one that answered: an
    alias and its dated version (`gemini-2.5-flash`, `gemini-2.5-flash-001`) agree."""
    return logged.startswith(metered) or metered.startswith(logged)


def _meter_only(db, module, turns: list[LogTurn], since: str | None, taken: set[str]) -> list[dict]:
    """The agent's calls (by its User-Agent) that reached a model, around its logs'
    turns (or since `since`), that no turn paired with."""
    if not turns and since is None:
        return []
    low, high = _window(turns, since)
    marks = ", ".join("?" for _ in module.PROTOCOLS)
    rows = db.execute(
        f"SELECT {_CALL_COLUMNS} FROM interactions i WHERE operation = 'generate' AND protocol IN ({marks})"
        " AND substr(client, 1, ?) = ? AND started_at >= ? AND started_at <= ? AND usage_source IS NOT ?"
        f" AND blocked IS NULL AND NOT {FAILED_CALL_SQL.format(r='i')} ORDER BY started_at, id",
        (*module.PROTOCOLS, len(module.CLIENT_PREFIX), module.CLIENT_PREFIX, low, high, AGENT_LOG),
    )
    return [dict(row) for row in rows if row["id"] not in taken]


def _written_since(path: Path, since: str) -> bool:
    try:
        return to_stored(datetime.fromtimestamp(path.stat().st_mtime, UTC)) >= since
    except OSError:
        return False  # gone since it was listed (the agent's cleanup)


def _window(turns: list[LogTurn], since: str | None) -> tuple[str, str]:
    slack = timedelta(seconds=WRITE_DELAY_SECONDS)
    if since is not None:
        return since, "9999"
    return to_stored(from_stored(turns[0].at) - slack), to_stored(from_stored(turns[-1].at) + slack)


def _rows(db, column: str, values: list[str]) -> list[sqlite3.Row]:
    rows = []
    for start in range(0, len(values), 500):  # SQLite's limit on bound values
        chunk = values[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        rows += db.execute(f"SELECT {_CALL_COLUMNS} FROM interactions WHERE {column} IN ({marks})", chunk).fetchall()
    return rows


def _seconds(stored: str) -> float:
    return from_stored(stored).timestamp()


class _Destinations:
    """The task a missed turn would go to: the store's rule (the task current at
    its time, or the task its Claude Code session was bound to), else the task
    of the branch the log names, or of its working directory's branch now."""

    def __init__(self, db: sqlite3.Connection, branch_pattern: str) -> None:
        self._db = db
        self._pattern = branch_pattern
        self._branches: dict[str, str | None] = {}

    def of(self, turn: LogTurn) -> tuple[str | None, str | None]:
        row = Interaction(id="", started_at=turn.at, client_session=turn.session)
        attribute(self._db, row)
        if row.task_id is None:
            task_id = task_of_branch(turn.branch or self._branch_of(turn.cwd), self._pattern)
            if task_id is not None:
                return task_id, "branch"
        return row.task_id, row.attribution

    def _branch_of(self, cwd: str | None) -> str | None:
        if not cwd:
            return None
        if cwd not in self._branches:
            self._branches[cwd] = current_branch(Path(cwd)) if Path(cwd).is_dir() else None
        return self._branches[cwd]
