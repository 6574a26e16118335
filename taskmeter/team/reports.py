"""Team reports by the local code: the team store's rows for what a report
covers are loaded into a scratch SQLite database with the local schema (its
triggers rebuild the rollups from the rows), and the same functions that read
a meter's own database read it. A team's phase record is thus computed by the
same code and definitions as a developer's own (docs/team.md).

Calls keep their team-wide ID (`device:id`); records of several developers
are put in time order, so "the first estimate" is the team's first."""

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

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
    """A scratch database holding the team's rows: every task and phase, and the
    calls and records of `tasks` (or of `phases`' tasks; all when neither), of
    one `developer` or all."""
    import psycopg

    from taskmeter.store import scratch
    from taskmeter.store.connection import write_transaction
    from taskmeter.team.address import TeamStoreError, connect, connection_failure, describe
    from taskmeter.team.schema import check

    conn = connect(url)
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


def developers(url: str, tasks: list[str]) -> list[str]:
    """The developers with calls or records on any of `tasks`, by name."""
    import psycopg

    from taskmeter.team.address import TeamStoreError, connect, connection_failure

    conn = connect(url)
    try:
        found = conn.execute(
            "SELECT developer FROM taskmeter.calls WHERE task_id = ANY(%s) AND NOT deleted"
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


def _load(conn, db: sqlite3.Connection, tasks: list[str] | None, phases: list[str] | None, developer: str | None) -> None:
    from taskmeter.store import scratch

    entities = conn.execute("SELECT entity, id, fields, created_at FROM taskmeter.entities ORDER BY entity DESC, id").fetchall()
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
    clauses, params = ["NOT deleted"], list[Any]()
    if tasks is not None:
        clauses.append("task_id = ANY(%s)")
        params.append(tasks)
    if developer is not None:
        clauses.append("developer = %s")
        params.append(developer)
    where = " AND ".join(clauses)
    with conn.cursor(name="team_calls") as cursor:  # server-side: a big phase streams
        cursor.itersize = 5000
        cursor.execute(f"SELECT id, row FROM taskmeter.calls WHERE {where}", params)
        scratch.insert_rows(db, "interactions", ({**row, "id": call_id} for call_id, row in cursor))
    record_where = where
    record_params = list(params)
    if tasks is not None:  # flags and texts name their call, not its task
        record_where = where.replace(
            "task_id = ANY(%s)",
            "(task_id = ANY(%s) OR id IN (SELECT called.kind || ':' || c.id FROM taskmeter.calls c,"
            " unnest(ARRAY['flag', 'call_text']) AS called(kind) WHERE c.task_id = ANY(%s)))",  # by their IDs: the index
        )
        record_params.insert(1, tasks)
        # Every switch: the one away from a task (to another phase's, or to none) ends its time as current.
        record_where = f"({record_where}) OR (kind = 'task_event' AND NOT deleted AND row->>'kind' = 'switch'"
        if developer is not None:
            record_where += " AND developer = %s"
            record_params.append(developer)
        record_where += ")"
        if phases:
            record_where = f"({record_where}) OR (kind = 'phase_mark' AND NOT deleted AND upper(phase_id) = ANY(%s)"
            record_params.append([phase.upper() for phase in phases])
            if developer is not None:
                record_where += " AND developer = %s"
                record_params.append(developer)
            record_where += ")"
    records = conn.execute(
        f"SELECT kind, device, row FROM taskmeter.records WHERE {record_where} ORDER BY at, id", record_params
    ).fetchall()
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
    if tasks is None:
        with team_database(url, phases=phases) as db:
            tasks = [row[0] for row in db.execute("SELECT id FROM tasks")]
    names = [meta["developer"]] if meta.get("developer") else developers(url, tasks)
    shares = []
    for name in names:
        with team_database(url, tasks, phases, name) as db:
            own = compute(db)
        shares.append({"developer": name, **{key: own.get(field) for key, field in split}})
    return {**report, "developers": shares}


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
