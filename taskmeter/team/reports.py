"""Team reports by the local code: what a report covers is loaded into a
scratch SQLite database with the local schema, and the same functions that
read a meter's own database read it. A task or phase report takes the team
store's rollups (t003, kept on the server from the rows) in place of the calls,
so its cost does not grow with them; so do the overview (t003's task_usage) and
the usage reports (t004's usage_quarters); `sessions` and `blocks` load the
calls. A team's phase record is thus computed by the same code and definitions
as a developer's own, and each developer's share of it by the same metrics from
the rows read once (docs/team.md).

Calls keep their team-wide ID (`device:id`); records of several developers
are put in time order, so "the first estimate" is the team's first."""

import contextlib
import itertools
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from taskmeter.errors import MeterError

# Which local table each kind of record fills, and the keys that name a call.
_RECORD_TABLES = {
    "flag": "flags",
    "call_text": "call_texts",
    "task_event": "task_events",
    "commit": "commits",
    "test_run": "test_runs",
    "automatic_mark": "automatic_marks",
    "phase_mark": "phase_marks",
    "task_estimate": "task_estimates",
    "task_approval": "task_approvals",
}
_CALL_KEYED = {"flag", "call_text"}
_INTEGER_IDS = {"task_event", "test_run", "automatic_mark", "phase_mark", "task_estimate", "task_approval"}


@contextlib.contextmanager
def team_database(
    url: str,
    tasks: list[str] | None = None,
    phases: list[str] | None = None,
    developer: str | None = None,
    reads: "str | UsageWindow | CallWindow" = "rollups",
) -> Iterator[sqlite3.Connection]:
    """A scratch database holding the team's rows: every task and phase, and what
    reports on `tasks` (or on `phases`' tasks and the phase before) read of them
    (their records and rollups, _fetch); when neither, what `reads` says: "rollups",
    the overview's (_rollups); a UsageWindow, a usage report's (_usage); a CallWindow,
    the calls `sessions` or `blocks` read (_window_calls). Of one `developer` or all."""
    import psycopg

    from taskmeter.store import scratch
    from taskmeter.store.connection import write_transaction
    from taskmeter.team.address import TeamStoreError, connect, connection_failure, describe
    from taskmeter.team.schema import check

    conn = _reading(connect(url))
    try:
        check(conn, describe(url))
        db = scratch.scratch_database()
        with write_transaction(db):
            covered = _load(conn, db, tasks, phases, developer, reads)
        conn.rollback()
    except psycopg.Error as exc:
        raise TeamStoreError(connection_failure(exc, url)) from None
    finally:
        conn.close()
    if covered is not None:
        _READ[db] = covered
    try:
        yield db
    finally:
        _READ.pop(db, None)
        db.close()


# What each open team database of a task or phase report was made of: the per-developer
# split (with_developers) computes each developer's share from it, reading nothing again.
_READ: dict[sqlite3.Connection, "_Covered"] = {}


def _reading(conn):
    """A report's connection: its statements are index lookups that take milliseconds, which
    JIT compiling (from PostgreSQL's cost estimates of a large store) would turn into 100s."""
    conn.execute("SET jit = off")
    return conn


def _with_previous(db: sqlite3.Connection, phases: list[str]) -> list[str]:
    from taskmeter.analytics.history import phase_ids

    ordered = [phase.upper() for phase in phase_ids(db)]
    extra = [ordered[ordered.index(p.upper()) - 1] for p in phases if p.upper() in ordered and ordered.index(p.upper()) > 0]
    return [*phases, *extra]


def _entities(conn) -> list[tuple]:
    return conn.execute("SELECT entity, id, fields, created_at FROM taskmeter.entities ORDER BY entity DESC, id").fetchall()


def _load(
    conn,
    db: sqlite3.Connection,
    tasks: list[str] | None,
    phases: list[str] | None,
    developer: str | None,
    reads: "str | UsageWindow | CallWindow" = "rollups",
) -> "_Covered | None":
    """Fill `db`: every task and phase, and what the report covers (see team_database);
    what was read of the tasks' rows, for a task or phase report."""
    from taskmeter.store import scratch

    entities = _entities(conn)
    task_phases: dict[str, str] = {}
    shared: dict[str, list[dict]] = {"phases": [], "tasks": []}
    for entity, entity_id, fields, created_at in entities:
        fields = fields or {}
        if fields.get("deleted") or created_at is None:
            continue
        row = {**fields, "id": entity_id, "created_at": created_at}
        if entity == "phase":
            shared["phases"].append(row)
        elif fields.get("phase_id"):
            shared["tasks"].append(row)
            task_phases[entity_id] = fields["phase_id"]
    for entity_table, entity_rows in shared.items():  # phases first: a task names its phase
        scratch.insert_rows(db, entity_table, entity_rows)
    scratch.drop_derived_estimates(db)
    if tasks is None and phases is not None:
        phases = _with_previous(db, phases)  # a phase's token change is taken against the one before
        wanted = {phase.upper() for phase in phases}
        tasks = [task_id for task_id, phase_id in task_phases.items() if phase_id.upper() in wanted]
    covered = None
    if tasks is None and isinstance(reads, UsageWindow):
        _usage(conn, db, developer, reads)
        return None
    if tasks is None and reads == CallWindow(None, None, None, None, False):
        _block_edges(conn, db, developer)
        return None
    if tasks is None and isinstance(reads, CallWindow):
        _window_calls(conn, db, developer, reads, entities)
        return None
    if tasks is None:
        records = _rollups(conn, db, developer)
    else:
        covered = _fetch(conn, entities, tasks, phases, developer)
        scratch.insert_rows(
            db, "interactions", ({**row, "id": call_id} for name, call_id, row in covered.calls if developer in (None, name))
        )
        records = [
            (kind, device, row)
            for name, kind, device, row, teams, owns, _ in covered.records
            if (owns and name == developer if developer is not None else teams)
        ]
    by_table: dict[str, list[dict]] = {}
    for kind, device, row in records:
        table = _RECORD_TABLES.get(kind)
        if table is None:
            continue
        row = dict(row)
        if kind in _CALL_KEYED:
            row["interaction_id"] = f"{device}:{row['interaction_id']}"
        if kind in _INTEGER_IDS:
            row.pop("id", None)  # each device numbers its own: renumbered here, in time order
        by_table.setdefault(table, []).append(row)
    for table, rows in by_table.items():
        scratch.insert_rows(db, table, rows, keep_first=table == "commits")  # one commit seen by two meters
    if covered is not None and tasks is not None:
        _take_rollups(db, covered, tasks, developer)
    return covered


def _rollups(conn, db: sqlite3.Connection, developer: str | None) -> list[tuple]:
    """The overview's rows: every task's sums and rework from the rollups (t003, summed over the
    developers on the server), and the records but switches, flags and call texts (returned)."""
    from taskmeter.store import scratch
    from taskmeter.team.schema import USAGE_COLUMNS

    mine, params = ("", []) if developer is None else (" AND developer = %s", [developer])
    usage = conn.execute(
        f"SELECT task_key, {_summed(USAGE_COLUMNS)} FROM taskmeter.task_usage WHERE true{mine} GROUP BY task_key",
        params,
    ).fetchall()
    # One row per task: the local history sums a task's sessions, which the server did.
    rework = conn.execute(
        "SELECT task_id, '', min(flagged_at), min(flagged_id), sum(calls), sum(tokens), sum(cost_usd)"
        f" FROM taskmeter.session_rework WHERE true{mine} GROUP BY task_id",
        params,
    ).fetchall()
    keys = [row[0] for row in usage] + [row[0] for row in rework]
    scratch.replace_rollups(
        db,
        keys,
        USAGE_COLUMNS,
        usage,
        [],
        [(*key, int(calls), int(tokens), float(cost)) for *key, calls, tokens, cost in rework],
    )
    return conn.execute(
        "SELECT kind, device, row FROM taskmeter.records WHERE kind NOT IN ('flag', 'call_text')"
        f" AND NOT (kind = 'task_event' AND row->>'kind' = 'switch') AND NOT deleted{mine} ORDER BY at, id",
        params,
    ).fetchall()


def _summed(columns: list[str]) -> str:
    """SQL summing a rollup's columns on the server, each as the local rollup keeps it: money as
    a double (the exact decimal sum rounded once, as Python's float() of it), counts as integers.
    Typed there, a row costs nothing to convert here."""
    return ", ".join(f"sum({column})::{'float8' if column.endswith('usd') else 'bigint'}" for column in columns)


class UsageWindow(NamedTuple):
    """What a usage report (analytics/periods.py usage_report) covers: since and until
    (stored moments), one task, and whether it is the models report (with latency)."""

    since: str | None
    until: str | None
    task_id: str | None
    models: bool


def _usage(conn, db: sqlite3.Connection, developer: str | None, window: UsageWindow) -> None:
    """A usage report's rows: the server's usage_quarters (t004) of the window, summed over the
    developers, in place of the local ones; the calls of the window (and their flags) when it
    does not start and end on a quarter hour; a models report's latency samples, each model's
    newest calls the local query picks among (periods.LATENCY_SAMPLE)."""
    from taskmeter.analytics.periods import LATENCY_SAMPLE, on_quarter  # the local report's own rules
    from taskmeter.store import scratch
    from taskmeter.team.schema import QUARTER_COLUMNS, failed_call

    clauses, params = ["true"], []
    for clause, value in (
        ("developer = %s", developer),
        ("upper(task_key) = upper(%s)", window.task_id),
        ("quarter || ':00.000000Z' >= %s", window.since),
        ("quarter || ':00.000000Z' < %s", window.until),
    ):
        if value:
            clauses.append(clause)
            params.append(value)
    # Summed over the developers into the local rows. One developer's rows stay per task, as that
    # developer's meter keeps them: the report adds their costs as the meter's own report does, to
    # the last bit. A team's are summed over the tasks too (only --task reads task_key): a row per
    # quarter hour and model, not per task worked, each cost the exact sum of its calls' rounded once.
    task_key = "task_key" if window.task_id or developer or _one_developer(conn) else "''"
    quarters = conn.execute(
        f"SELECT quarter, model, {task_key}, {_summed(QUARTER_COLUMNS)}"
        f" FROM taskmeter.usage_quarters WHERE {' AND '.join(clauses)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",  # in the key's order
        params,
    ).fetchall()
    calls = ["true"]
    call_params: list[Any] = []
    for clause, value in (
        ("c.developer = %s", developer),
        ("upper(c.task_id) = upper(%s)", window.task_id),
        ("c.started_at >= %s::timestamptz - interval '1 second'", window.since),  # a superset: the local query picks
        ("c.started_at < %s::timestamptz + interval '1 second'", window.until),
    ):
        if value:
            calls.append(clause)
            call_params.append(value)
    wanted = " AND ".join(calls)
    if not (on_quarter(window.since) and on_quarter(window.until)):
        _load_calls(conn, db, f"SELECT * FROM taskmeter.calls c WHERE {wanted} AND NOT c.deleted", call_params)
    if window.models:
        timed = (
            f"c.operation = 'generate' AND NOT {failed_call('c')} AND c.row->>'ended_at' IS NOT NULL"
            " AND c.row->>'usage_source' IS DISTINCT FROM 'agent-log' AND NOT c.deleted"
        )
        for model in sorted({row[1] for row in quarters}):
            named = "c.model IS NULL" if model == "?" else "c.model = %s"
            _load_calls(
                conn,
                db,
                f"SELECT * FROM taskmeter.calls c WHERE {named} AND {timed} AND {wanted} ORDER BY c.started_at DESC LIMIT %s",
                [*([] if model == "?" else [model]), *call_params, LATENCY_SAMPLE],
            )
    # What the calls loaded added to the rollup: the server's sums replace it.
    scratch.replace_usage_quarters(db, QUARTER_COLUMNS, quarters)


def _one_developer(conn) -> bool:
    """Whether the team store's calls are one developer's (task_usage has a row per task each worked on)."""
    return conn.execute("SELECT count(DISTINCT developer) <= 1 FROM taskmeter.task_usage").fetchone()[0]


class CallWindow(NamedTuple):
    """What `sessions` and `blocks` (analytics/windows.py) read: the generation calls from since
    until until (stored moments), of one task, of one provider, only those an agent named its
    session in (`sessions`)."""

    since: str | None
    until: str | None
    task_id: str | None
    provider: str | None
    sessions: bool


def _window_calls(conn, db: sqlite3.Connection, developer: str | None, window: CallWindow, entities: list[tuple]) -> None:
    """The calls (and their flags) `window` covers, each through an index (the calls' start, or
    the task's calls): never the store's other calls, nor any record but flags."""
    from taskmeter.store import scratch

    task_ids = [
        entity_id
        for entity, entity_id, _, _ in entities
        if entity == "task" and entity_id.upper() == (window.task_id or "").upper()
    ]
    clauses, params = ["c.operation = 'generate'", "NOT c.deleted"], []
    for clause, value in (
        ("c.developer = %s", developer),
        ("c.task_id = ANY(%s)", task_ids if window.task_id else None),
        ("c.started_at >= %s::timestamptz - interval '1 second'", window.since),  # a superset: the local query picks
        ("c.started_at < %s::timestamptz + interval '1 second'", window.until),
        ("c.row->>'provider' = %s", window.provider),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if window.sessions:
        clauses.append("c.row->>'client_session' IS NOT NULL")
    covered = " AND ".join(clauses)
    with conn.cursor(name="team_window_calls") as cursor:  # server-side: a window with no edge streams
        cursor.itersize = 5000
        cursor.execute(f"SELECT c.id, c.row FROM taskmeter.calls c WHERE {covered}", params)
        scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for call_id, row in cursor))
    flags = conn.execute(
        "SELECT f.device, f.row FROM taskmeter.calls c JOIN taskmeter.records f ON f.id = 'flag:' || c.id"
        f" WHERE {covered} AND NOT f.deleted",
        params,
    )
    scratch.insert_rows(db, "flags", ({**row, "interaction_id": f"{device}:{row['interaction_id']}"} for device, row in flags))


def _block_edges(conn, db: sqlite3.Connection, developer: str | None) -> None:
    """What `blocks` over the whole history reads (analytics/windows.py block_report): the
    server's usage_quarters, as a usage report takes them, and the first and last generation
    call of each quarter hour with one. A block starts after an hour (a quarter hour's start)
    and takes whole quarter hours from the rollup, so its first and last calls are those of
    their quarters; only a quarter with a call right at its start that may end a block (on the
    hour, with a call in the hour BLOCK_HOURS before, where that block would have begun) is read
    call by call, and loaded whole. So it reads two calls per quarter hour worked, through the
    calls' start index, never every call."""
    from datetime import timedelta

    from taskmeter.analytics.windows import BLOCK_HOURS, QUARTER_SECONDS
    from taskmeter.store import scratch

    mine, params = ("", []) if developer is None else (" AND c.developer = %s", [developer])
    generation = f"c.operation = 'generate' AND NOT c.deleted{mine}"
    quarter = "c.started_at >= q.start AND c.started_at < q.start + interval '15 minutes'"
    edges = conn.execute(
        f"""SELECT q.start, e.id, e.row, e.started_at = q.start FROM (
                SELECT DISTINCT (quarter || ':00Z')::timestamptz AS start FROM taskmeter.usage_quarters
                WHERE true{mine.replace("c.", "")}) q,
            LATERAL (
                (SELECT c.id, c.row, c.started_at FROM taskmeter.calls c WHERE {quarter} AND {generation}
                 ORDER BY c.started_at, c.id LIMIT 1)
                UNION ALL
                (SELECT c.id, c.row, c.started_at FROM taskmeter.calls c WHERE {quarter} AND {generation}
                 ORDER BY c.started_at DESC, c.id DESC LIMIT 1)) e""",
        params * 3,
    ).fetchall()
    scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for _, call_id, row, _ in edges), keep_first=True)
    worked = {start for start, *_ in edges}
    begun = [timedelta(hours=-BLOCK_HOURS, seconds=QUARTER_SECONDS * n) for n in range(3600 // QUARTER_SECONDS)]
    whole = sorted(
        {
            start
            for start, _, _, at_start in edges
            if at_start and start.minute == 0 and any(start + before in worked for before in begun)
        }
    )
    if whole:
        calls = conn.execute(
            f"""SELECT c.id, c.row FROM unnest(%s::timestamptz[]) AS q(start),
                LATERAL (SELECT c.id, c.row FROM taskmeter.calls c WHERE {quarter} AND {generation}) c""",
            [whole, *params],
        )
        scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for call_id, row in calls), keep_first=True)
    _usage(conn, db, developer, UsageWindow(None, None, None, False))  # the server's quarters replace the calls'


def _load_calls(conn, db: sqlite3.Connection, query: str, params: list) -> None:
    """The calls `query` selects (as `c`), and their flags, into `db` (each once)."""
    from taskmeter.store import scratch

    found = conn.execute(f"SELECT c.id, c.row FROM ({query}) c", params).fetchall()
    scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for call_id, row in found), keep_first=True)
    flags = conn.execute(
        "SELECT device, row FROM taskmeter.records WHERE id = ANY(%s) AND NOT deleted",
        [[f"flag:{call_id}" for call_id, _ in found]],
    ).fetchall()
    scratch.insert_rows(
        db, "flags", ({**row, "interaction_id": f"{device}:{row['interaction_id']}"} for device, row in flags), keep_first=True
    )


class _Covered(NamedTuple):
    """What a task or phase report reads of its tasks, each row with its developer: the calls
    after each task's approval, the records (with whether the team's report and the
    developer's own share read each), and the rollups (t003)."""

    calls: list[tuple]  # developer, id, row
    records: list[tuple]  # developer, kind, device, row, team's, developer's own, task_id
    usage: list[tuple]  # task_key, developer, *USAGE_COLUMNS
    runs: list[tuple]  # task_id, developer, start, end
    rework: list[tuple]  # task_id, developer, session_key, flagged_at, flagged_id, calls, tokens, cost_usd


def _fetch(conn, entities: list[tuple], tasks: list[str], phases: list[str] | None, developer: str | None) -> _Covered:
    """Read `tasks`' rows (of one `developer`, or of all) in a few statements, each by its index:
    the calls after each task's approval; the tasks' records, the switch after each switch to
    one of them (it ends its time as current: the team's next for the team's report, the
    developer's own next for a developer's share), the phases' marks; the rollups."""
    from taskmeter.team.schema import USAGE_COLUMNS

    mine, mine_params = ("", []) if developer is None else (" AND developer = %s", [developer])
    wanted = set(tasks)
    approved = [
        (entity_id, fields["final_approval_at"])
        for entity, entity_id, fields, _ in entities
        if entity == "task" and entity_id in wanted and (fields or {}).get("final_approval_at")
    ]
    calls = conn.execute(  # a superset (>= on the server's times): the report's own query picks its calls
        f"""SELECT c.developer, c.id, c.row FROM unnest(%s::text[], %s::timestamptz[]) AS a(task_id, at),
            LATERAL (SELECT * FROM taskmeter.calls c WHERE c.task_id = a.task_id AND c.started_at >= a.at
                     AND NOT c.deleted{mine.replace("developer", "c.developer")}
                     OFFSET 0) c""",  # a fence: one index range per task, never a scan of every call
        [[task_id for task_id, _ in approved], [at for _, at in approved], *mine_params],
    ).fetchall()
    records = _task_records(conn, tasks, phases, developer)
    usage = conn.execute(
        f"SELECT task_key, developer, {', '.join(USAGE_COLUMNS)} FROM taskmeter.task_usage WHERE task_key = ANY(%s){mine}",
        [tasks, *mine_params],
    ).fetchall()
    runs = conn.execute(
        f'SELECT task_id, developer, start, "end" FROM taskmeter.task_activity_runs WHERE task_id = ANY(%s){mine}',  # sorted here
        [tasks, *mine_params],
    ).fetchall()
    rework = conn.execute(
        "SELECT task_id, developer, session_key, flagged_at, flagged_id, calls, tokens, cost_usd"
        f" FROM taskmeter.session_rework WHERE task_id = ANY(%s){mine}",
        [tasks, *mine_params],
    ).fetchall()
    return _Covered(calls, records, usage, runs, rework)


_SWITCH = "kind = 'task_event' AND row->>'kind' = 'switch' AND NOT deleted"
# The switches of a developer `b.developer` (or, with no such condition, the team's) from
# `b.first` to `b.last` (stored moments), and the one after, in index order.
_SWITCHES_FROM = f"""LATERAL (
    SELECT n.at, n.id FROM taskmeter.records n WHERE n.{_SWITCH}{{who}} AND n.at >= b.first AND n.at <= b.last
    UNION ALL (SELECT n.at, n.id FROM taskmeter.records n WHERE n.{_SWITCH}{{who}} AND n.at > b.last ORDER BY n.at, n.id LIMIT 1)) w"""


def _task_records(conn, tasks: list[str], phases: list[str] | None, developer: str | None) -> list[tuple]:
    """The tasks' records and the phases' marks, and the switch after each of the tasks' switches
    (it ends the task's time as current): the team's next for the team's report, the developer's
    own next for a developer's share. Each row as _Covered.records has it, in (at, id) order.

    The switches after are found in one pass over the switches from the tasks' first to the one
    after their last, each developer's and the team's, read in index order: a range the size of
    the tasks' own switches, where a probe per switch cost ten times as much in index look-ups."""
    mine, mine_params = ("", []) if developer is None else (" AND developer = %s", [developer])
    marks, params = "", [tasks, *mine_params]
    if phases:
        marks = f""" UNION ALL SELECT at, id, developer, kind, device, row, task_id FROM taskmeter.records
            WHERE kind = 'phase_mark' AND NOT deleted AND upper(phase_id) = ANY(%s){mine}"""
        params += [[phase.upper() for phase in phases], *mine_params]
    own = conn.execute(
        f"""SELECT at, id, developer, kind, device, row, task_id FROM taskmeter.records
            WHERE task_id = ANY(%s) AND kind NOT IN ('flag', 'call_text') AND NOT deleted{mine}{marks}""",
        params,
    ).fetchall()
    rows = {row[1]: (*row[:6], True, True, row[6]) for row in own}  # the team's report and each share read them
    spans: dict[str | None, tuple[str, str]] = {}  # each developer's first and last switch (None: the team's)
    for at, _, name, kind, _, row, _ in own:
        if kind == "task_event" and row.get("kind") == "switch" and at is not None:
            for who in (name, None) if developer is None else (name,):
                first, last = spans.get(who, (at, at))
                spans[who] = (min(first, at), max(last, at))
    following: dict[str | None, list[tuple[str, str]]] = defaultdict(list)
    if spans:
        names = [name for name in spans if name is not None]
        team = spans.get(None)
        for name, at, record_id in conn.execute(
            f"""SELECT b.developer, w.at, w.id FROM unnest(%s::text[], %s::text[], %s::text[]) AS b(developer, first, last),
                {_SWITCHES_FROM.format(who=" AND n.developer = b.developer")}
            UNION ALL
            SELECT NULL, w.at, w.id FROM (SELECT %s::text AS first, %s::text AS last) b,
                {_SWITCHES_FROM.format(who="")} WHERE b.first IS NOT NULL""",
            [names, [spans[name][0] for name in names], [spans[name][1] for name in names], *(team or (None, None))],
        ):
            following[name].append((at, record_id))
    after: dict[str, list[bool]] = {}  # each switch after one of the tasks': [the team's next, a developer's own next]
    for name, switched in following.items():
        switched.sort()
        for (_, record_id), (_, next_id) in itertools.pairwise(switched):
            if record_id in rows and next_id not in rows:
                after.setdefault(next_id, [False, False])[name is not None] = True
    if after:
        for at, record_id, name, kind, device, row, task_id in conn.execute(
            "SELECT at, id, developer, kind, device, row, task_id FROM taskmeter.records WHERE id = ANY(%s)", [list(after)]
        ):
            rows[record_id] = (at, record_id, name, kind, device, row, *after[record_id], task_id)
    # In (at, id) order, a record with no moment last (as SQL's ORDER BY).
    return [row[2:] for row in sorted(rows.values(), key=lambda row: (row[0] is None, row[0] or "", row[1]))]


def _take_rollups(db: sqlite3.Connection, covered: _Covered, tasks: list[str], developer: str | None) -> None:
    """The tasks' sums, runs of minutes with a call and rework, from the team store's rollups
    (t003, computed there from the rows) in place of the calls: summed over the developers
    (or one developer's), they replace the local rows the few calls loaded made."""
    from taskmeter.store import scratch
    from taskmeter.team.schema import USAGE_COLUMNS

    def ours(rows: list[tuple]) -> list[tuple]:
        return [row for row in rows if developer in (None, row[1])]

    usage: dict[str, list] = {}
    for task_key, _, *sums in ours(covered.usage):
        usage[task_key] = [a + b for a, b in zip(usage[task_key], sums, strict=True)] if task_key in usage else sums
    money = [column.endswith("usd") for column in USAGE_COLUMNS]
    runs = sorted((task_id, start, end) for task_id, _, start, end in ours(covered.runs))
    rework: dict[tuple[str, str], list] = {}
    for task_id, _, session_key, flagged_at, flagged_id, calls, tokens, cost in ours(covered.rework):
        row = rework.setdefault((task_id, session_key), [flagged_at, flagged_id, 0, 0, 0])
        row[:] = [min(row[0], flagged_at), min(row[1], flagged_id), row[2] + calls, row[3] + tokens, row[4] + cost]
    scratch.replace_rollups(
        db,
        tasks,
        USAGE_COLUMNS,
        [(key, *(float(v) if m else int(v) for v, m in zip(sums, money, strict=True))) for key, sums in usage.items()],
        list(_joined(runs)),
        [(*key, at, first, int(calls), int(tokens), float(cost)) for key, (at, first, calls, tokens, cost) in rework.items()],
    )


def _joined(runs) -> Iterator[tuple[str, float, float]]:
    """Each task's runs of minutes over all developers (sorted by task and start): one where
    they overlap or meet, as the local task_activity_runs makes them of every call's minute."""
    current: list | None = None
    for task_id, start, end in runs:
        if current is not None and current[0] == task_id and start <= current[2]:
            current[2] = max(current[2], end)
            continue
        if current is not None:
            yield tuple(current)
        current = [task_id, start, end]
    if current is not None:
        yield tuple(current)


def configured_url(config_path: str | None = None) -> str:
    """[team] url, or a one-line error saying how to set it."""
    from taskmeter.config.files import TEXT, read_values

    url = read_values(config_path).get("team.url", TEXT)
    if not url:
        raise MeterError("no team store: `meter team join URL` sets [team] url")
    return url


@contextlib.contextmanager
def report_source(
    meta: dict,
    db_path,
    tasks: list[str] | None = None,
    phases: list[str] | None = None,
    reads: "str | UsageWindow | CallWindow" = "rollups",
) -> Iterator[sqlite3.Connection]:
    """What `meter report` reads: this meter's database, or with --team (in `meta`) the team's
    rows (team_database: `reads` says what a report on neither tasks nor phases needs)."""
    if not meta.get("team"):
        if meta.get("developer"):
            raise MeterError("--developer filters a team report: add --team")
        from taskmeter.cli.common import open_db

        with open_db(db_path, create=False) as db:
            yield db
        return
    with team_database(configured_url(), tasks, phases, meta.get("developer"), reads) as db:
        yield db


# Each developer's share of a task's or a phase's record: (name in the split, field of the record).
_TASK_SPLIT = [
    ("ai_interactions", "ai_interactions"),
    ("tokens", "token_count_used"),
    ("cost_usd", "cost_usd"),
    ("working_seconds", "actual_duration"),
    ("hallucination_count", "hallucination_count"),
    ("failed_calls", "failed_calls"),
]
_PHASE_SPLIT = [
    ("ai_interactions", "ai_interactions_total"),
    ("tokens", "total_tokens_used"),
    ("cost_usd", "cost_usd"),
    ("working_seconds", "actual_total"),
    ("hallucination_count", "hallucination_count_total"),
    ("failed_calls", "failed_calls"),
]


def with_developers(
    meta: dict,
    report: Mapping[str, Any],
    db: sqlite3.Connection,
    idle_seconds: float,
    task_id: str | None = None,
    phase_id: str | None = None,
):
    """A team task or phase report with `developers`: each developer's figures, computed by
    the same code as the report (analytics/metrics.py) over that developer's rows alone, from
    what `db` (the team_database the report read) was made of: the rollups of each task per
    developer, the developer's own switches (each ending at the developer's own next one),
    milestones, iterations, commits and test runs. One pass over rows already read."""
    if not meta.get("team"):
        return dict(report)
    from taskmeter.analytics import history, metrics
    from taskmeter.timefmt import now_stored

    covered, now = _READ[db], now_stored()
    team = history.phase_history(db, phase_id) if phase_id is not None else None
    team_tasks = team.tasks if team is not None else [history.task_history(db, str(task_id))]
    split = _PHASE_SPLIT if team is not None else _TASK_SPLIT
    ids = {task.task["id"] for task in team_tasks}
    own = _Own(covered, ids, history.rollup_columns(db))
    names = [meta["developer"]] if meta.get("developer") else sorted(own.developers)
    shares = []
    # A task a developer never touched adds nothing to their share's figures: a phase's share is
    # computed over their own tasks, and one begun task (a working time of 0, not missing).
    begun = [task for task in team_tasks if task.task["begin_at"]][:1]
    for name in names:
        if team is not None:
            tasks = [task for task in team_tasks if own.touched(task.task["id"], name)]
            tasks += [] if any(task.task["begin_at"] for task in tasks) else begun
            phase = team._replace(tasks=[own.history(task, name) for task in tasks])
            fields: Mapping[str, Any] = metrics.phase_fields(phase, now, None, idle_seconds)
        else:
            fields = metrics.task_fields(own.history(team_tasks[0], name), now, idle_seconds)
        shares.append({"developer": name, **{key: fields.get(field) for key, field in split}})
    return {**report, "developers": shares}


class _Own:
    """Each developer's own rows of the tasks `ids`, sorted out of a report's _Covered in one
    pass: what the local history (analytics/history.py) reads of a task, per developer."""

    def __init__(self, covered: "_Covered", ids: set[str], columns: list[str]) -> None:
        from taskmeter.team.schema import USAGE_COLUMNS
        from taskmeter.timefmt import from_stored

        self.columns = columns
        self.usage: dict[tuple[str, str], dict[str, Any]] = {}
        for task_key, name, *sums in covered.usage:
            if task_key in ids:
                usage = self.usage.setdefault((task_key, name), dict.fromkeys(columns, 0))
                for column, value in zip(USAGE_COLUMNS, sums, strict=True):
                    usage[column] += float(value) if column.endswith("usd") else int(value)
        self.runs: dict[tuple[str, str], list[tuple[str, float, float]]] = defaultdict(list)
        for task_id, name, start, end in sorted(covered.runs, key=lambda run: (run[0], run[2])):
            self.runs[task_id, name].append((task_id, start, end))
        # When the developer's own switches had a task current: each until the developer's next.
        self.current: dict[tuple[str, str], list[tuple[float, float | None]]] = defaultdict(list)
        self.events: dict[tuple[str, str], list[float]] = defaultdict(list)
        switches: dict[str, list[dict]] = defaultdict(list)
        self.developers = {name for _, name in self.usage}
        for name, kind, _, row, _, owns, task_id in covered.records:  # in (at, id) order, as the local switch_spans
            if not owns:
                continue
            if task_id in ids:
                self.developers.add(name)
            if kind == "task_event" and row.get("kind") == "switch":
                switches[name].append(row)
                continue
            at = _EVENT_MOMENTS.get(kind if kind != "task_event" else row.get("kind"))
            if at is not None and task_id in ids:
                self.events[task_id, name].append(from_stored(row[at]).timestamp())
        for name, rows in switches.items():
            moments = [from_stored(row["at"]).timestamp() for row in rows]
            for row, since, until in zip(rows, moments, [*moments[1:], None], strict=True):
                self.current[(row.get("task_id") or "").lower(), name].append((since, until))

    def touched(self, task_id: str, developer: str) -> bool:
        """Whether `developer` has calls, switches, minutes or events on the task."""
        return (
            any((task_id, developer) in rows for rows in (self.usage, self.runs, self.events))
            or (task_id.lower(), developer) in self.current
        )

    def history(self, task, developer: str):
        """`task`'s TaskHistory (the team's) with `developer`'s usage and working time in place of the team's."""
        from taskmeter.analytics.history import missing_when_unstated

        task_id = task.task["id"]
        usage = self.usage.get((task_id, developer)) or dict.fromkeys(self.columns, 0)
        return task._replace(
            usage=missing_when_unstated(dict(usage)),
            current=self.current.get((task_id.lower(), developer), []),
            activity=[(start, end) for _, start, end in _joined(self.runs.get((task_id, developer), []))],
            events=self.events.get((task_id, developer), []),
        )


# The records whose moment counts as work on their task (history.working_inputs): the
# kind (a task event's own kind) and the field holding the moment.
_EVENT_MOMENTS = {"milestone": "at", "iteration": "at", "commit": "committed_at", "test_run": "at"}


def split_text(render):
    """`render` (a record's text), followed by the per-developer table of a team report."""
    from taskmeter.money import usd
    from taskmeter.timefmt import format_duration

    def text(report: dict) -> str:
        shown = render(report)
        if "developers" not in report:
            return shown
        lines = ["", "Per developer:"]
        for share in report["developers"]:
            lines.append(
                f"  {share['developer']}: {share['ai_interactions']} calls, {share['tokens'] or 0:,} tokens,"
                f" {usd(share['cost_usd']) if share['cost_usd'] is not None else 'no price'},"
                f" working {format_duration(share['working_seconds']) or '-'},"
                f" {share['hallucination_count']} flagged, {share['failed_calls']} failed"
            )
        return shown.rstrip("\n") + "\n" + "\n".join(lines) + "\n"

    return text
