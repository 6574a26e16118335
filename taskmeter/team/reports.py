"""Team reports by the local code: what a report covers is loaded into a
scratch SQLite database with the local schema, and the same functions that
read a meter's own database read it. A task or phase report takes the team
store's rollups (t003, kept on the server from the rows) in place of the calls,
so its cost does not grow with them; the overview and the usage reports load
the rows, whose triggers rebuild the rollups. A team's phase record is thus
computed by the same code and definitions as a developer's own (docs/team.md).

Calls keep their team-wide ID (`device:id`); records of several developers
are put in time order, so "the first estimate" is the team's first."""

import contextlib
import sqlite3
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
    url: str, tasks: list[str] | None = None, phases: list[str] | None = None, developer: str | None = None
) -> Iterator[sqlite3.Connection]:
    """A scratch database holding the team's rows: every task and phase, and what
    reports on `tasks` (or on `phases`' tasks and the phase before) read of them
    (their records and rollups, _fetch), or every call and record when neither;
    of one `developer` or all."""
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
            _load(conn, db, tasks, phases, developer)
        conn.rollback()
    except psycopg.Error as exc:
        raise TeamStoreError(connection_failure(exc, url)) from None
    finally:
        conn.close()
    try:
        yield db
    finally:
        db.close()


def _reading(conn):
    """A report's connection: its statements are index lookups that take milliseconds, which
    JIT compiling (from PostgreSQL's cost estimates of a large store) would turn into 100s."""
    conn.execute("SET jit = off")
    return conn


def developers(url: str, tasks: list[str]) -> list[str]:
    """The developers with calls or records on any of `tasks`, by name."""
    import psycopg

    from taskmeter.team.address import TeamStoreError, connect, connection_failure

    conn = _reading(connect(url))
    try:
        found = conn.execute(
            "SELECT developer FROM taskmeter.task_usage WHERE task_key = ANY(%s)"
            " UNION SELECT developer FROM taskmeter.records WHERE task_id = ANY(%s) AND NOT deleted ORDER BY 1",
            (tasks, tasks),
        ).fetchall()
    except psycopg.Error as exc:
        raise TeamStoreError(connection_failure(exc, url)) from None
    finally:
        conn.close()
    return [row[0] for row in found]


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
    entities: list[tuple] | None = None,
    covered: "_Covered | None" = None,
) -> None:
    """Fill `db`: every task and phase, and what the report covers (see team_database).
    `entities` and `covered` (all developers' rows of `tasks`) may come read already."""
    from taskmeter.store import scratch

    if entities is None:
        entities = _entities(conn)
    task_phases: dict[str, str] = {}
    for entity, entity_id, fields, created_at in entities:  # phases first ("phase" > "task" descending)
        fields = fields or {}
        if fields.get("deleted") or created_at is None:
            continue
        row = {**fields, "id": entity_id, "created_at": created_at}
        if entity == "phase":
            scratch.insert_rows(db, "phases", [row])
        elif fields.get("phase_id"):
            scratch.insert_rows(db, "tasks", [row])
            task_phases[entity_id] = fields["phase_id"]
    scratch.drop_derived_estimates(db)
    if tasks is None and phases is not None:
        phases = _with_previous(db, phases)  # a phase's token change is taken against the one before
        wanted = {phase.upper() for phase in phases}
        tasks = [task_id for task_id, phase_id in task_phases.items() if phase_id.upper() in wanted]
    if tasks is None:
        records = _everything(conn, db, developer)
    else:
        covered = covered or _fetch(conn, entities, tasks, phases, developer)
        scratch.insert_rows(
            db, "interactions", ({**row, "id": call_id} for name, call_id, row in covered.calls if developer in (None, name))
        )
        records = [
            (kind, device, row)
            for name, kind, device, row, teams, owns in covered.records
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


def _everything(conn, db: sqlite3.Connection, developer: str | None) -> list[tuple]:
    """Every call (loaded here) and record (returned) of one developer or all: the overview
    and the usage reports read the calls."""
    from taskmeter.store import scratch

    where, params = ("NOT deleted", []) if developer is None else ("NOT deleted AND developer = %s", [developer])
    with conn.cursor(name="team_calls") as cursor:  # server-side: a big store streams
        cursor.itersize = 5000
        cursor.execute(f"SELECT id, row FROM taskmeter.calls WHERE {where}", params)
        scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for call_id, row in cursor))
    return conn.execute(f"SELECT kind, device, row FROM taskmeter.records WHERE {where} ORDER BY at, id", params).fetchall()


class _Covered(NamedTuple):
    """What a task or phase report reads of its tasks, each row with its developer: the calls
    after each task's approval, the records (with whether the team's report and the
    developer's own share read each), and the rollups (t003)."""

    calls: list[tuple]  # developer, id, row
    records: list[tuple]  # developer, kind, device, row, team's, developer's own
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
    switch = "kind = 'task_event' AND row->>'kind' = 'switch' AND NOT deleted"

    def next_switch(same_developer: bool) -> str:
        who = " AND n.developer = s.developer" if same_developer else mine.replace("developer", "n.developer")
        return f"""SELECT after.id FROM taskmeter.records s, LATERAL (
                SELECT n.id FROM taskmeter.records n WHERE n.{switch}{who}
                AND (n.at, n.id) > (s.at, s.id) ORDER BY n.at, n.id LIMIT 1) after
            WHERE s.task_id = ANY(%s) AND s.{switch}{mine.replace("developer", "s.developer")}"""

    own = f"SELECT id, true, true FROM taskmeter.records WHERE task_id = ANY(%s) AND kind NOT IN ('flag', 'call_text') AND NOT deleted{mine}"
    chosen = [own, f"SELECT id, false, true FROM ({next_switch(True)}) o"]
    params: list[Any] = [tasks, *mine_params, tasks, *mine_params]
    if developer is None:
        chosen.append(f"SELECT id, true, false FROM ({next_switch(False)}) t")
        params += [tasks]
    if phases:
        chosen.append(
            f"SELECT id, true, true FROM taskmeter.records WHERE kind = 'phase_mark' AND NOT deleted AND upper(phase_id) = ANY(%s){mine}"
        )
        params += [[phase.upper() for phase in phases], *mine_params]
    records = conn.execute(
        f"""SELECT r.developer, r.kind, r.device, r.row, x.teams, x.owns FROM taskmeter.records r JOIN (
                SELECT id, bool_or(teams) AS teams, bool_or(owns) AS owns
                FROM ({" UNION ALL ".join(chosen)}) AS chosen(id, teams, owns) GROUP BY id
            ) x ON r.id = x.id ORDER BY r.at, r.id""",
        params,
    ).fetchall()
    usage = conn.execute(
        f"SELECT task_key, developer, {', '.join(USAGE_COLUMNS)} FROM taskmeter.task_usage WHERE task_key = ANY(%s){mine}",
        [tasks, *mine_params],
    ).fetchall()
    runs = conn.execute(
        f'SELECT task_id, developer, start, "end" FROM taskmeter.task_activity_runs WHERE task_id = ANY(%s){mine} ORDER BY 1, 3',
        [tasks, *mine_params],
    ).fetchall()
    rework = conn.execute(
        "SELECT task_id, developer, session_key, flagged_at, flagged_id, calls, tokens, cost_usd"
        f" FROM taskmeter.session_rework WHERE task_id = ANY(%s){mine}",
        [tasks, *mine_params],
    ).fetchall()
    return _Covered(calls, records, usage, runs, rework)


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
    meta: dict, db_path, tasks: list[str] | None = None, phases: list[str] | None = None
) -> Iterator[sqlite3.Connection]:
    """What `meter report` reads: this meter's database, or with --team (in `meta`) the team's rows."""
    if not meta.get("team"):
        if meta.get("developer"):
            raise MeterError("--developer filters a team report: add --team")
        from taskmeter.cli.common import open_db

        with open_db(db_path, create=False) as db:
            yield db
        return
    with team_database(configured_url(), tasks, phases, meta.get("developer")) as db:
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
    meta: dict, report: Mapping[str, Any], compute, tasks: list[str] | None = None, phases: list[str] | None = None
):
    """A team task or phase report with `developers`: each developer's figures, computed
    by `compute(db)` (the same report function) over that developer's rows alone."""
    if not meta.get("team"):
        return dict(report)
    url = configured_url()
    split = _TASK_SPLIT if phases is None else _PHASE_SPLIT
    if tasks is None:  # the phases' own tasks: who worked on them, and each one's share of them
        wanted = {phase.upper() for phase in phases or []}
        with team_database(url, phases=[]) as db:
            tasks = [task_id for task_id, phase_id in db.execute("SELECT id, phase_id FROM tasks") if phase_id.upper() in wanted]
    names = [meta["developer"]] if meta.get("developer") else developers(url, tasks)
    shares = []
    for name, own in _each_developer(url, tasks, phases, names, compute):
        shares.append({"developer": name, **{key: own.get(field) for key, field in split}})
    return {**report, "developers": shares}


def _each_developer(url: str, tasks: list[str], phases: list[str] | None, names: list[str], compute) -> Iterator[tuple]:
    """(name, `compute(db)`) over each developer's rows of `tasks`, all read at once."""
    import psycopg

    from taskmeter.store import scratch
    from taskmeter.store.connection import write_transaction
    from taskmeter.team.address import TeamStoreError, connect, connection_failure, describe
    from taskmeter.team.schema import check

    conn = _reading(connect(url))
    try:
        check(conn, describe(url))
        entities = _entities(conn)
        covered = _fetch(conn, entities, tasks, phases, None)  # every developer's rows, read once
        for name in names:
            db = scratch.scratch_database()
            try:
                with write_transaction(db):
                    _load(conn, db, tasks, phases, name, entities, covered)
                yield name, compute(db)
            finally:
                db.close()
        conn.rollback()
    except psycopg.Error as exc:
        raise TeamStoreError(connection_failure(exc, url)) from None
    finally:
        conn.close()


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
