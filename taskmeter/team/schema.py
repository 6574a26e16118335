"""The team store's schema on PostgreSQL: its own ordered migrations (append
only, as the local ones), the roles and row-level security `meter team setup`
makes, and the check every meter runs before it syncs or reports.

Rows, not counters: each device's rows (calls, flags, events, commits, test
runs, marks) are upserted whole with their revision, and the tasks' and
phases' fields one by one; every sum is a view over them (docs/team.md)."""

import secrets

from taskmeter.team.address import TeamStoreError

SCHEMA = "taskmeter"
DEVELOPERS = "taskmeter_developer"  # the group every developer's login role is in
REPORTING = "taskmeter_reporting"  # reads everything, writes nothing
OLDEST_SERVER = 130000  # PostgreSQL 13

_OWNED_ROWS = """
    id text PRIMARY KEY,
    developer text NOT NULL DEFAULT current_user,
    device text NOT NULL,
    rev bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    synced_at timestamptz NOT NULL DEFAULT now()"""


def _own_rows_only(table: str) -> str:
    """A developer inserts and changes only rows with their own name; everyone reads all."""
    return f"""
    ALTER TABLE taskmeter.{table} ENABLE ROW LEVEL SECURITY;
    CREATE POLICY {table}_read ON taskmeter.{table} FOR SELECT USING (true);
    CREATE POLICY {table}_insert ON taskmeter.{table} FOR INSERT TO {DEVELOPERS}
        WITH CHECK (developer = current_user);
    CREATE POLICY {table}_update ON taskmeter.{table} FOR UPDATE TO {DEVELOPERS}
        USING (developer = current_user) WITH CHECK (developer = current_user);
    """


# What a call adds to its task's local task_usage row (taskmeter/store/migrations.py m002,
# m004, m014, m015, m017): the same rules, over the team's row `c` (its `row` is the local
# interactions row as JSON). Every column counts generation calls only.
# A generation call that never reached a model (m017's rule), of the call {r}.
_FAILED_OF = (
    "coalesce({r}.input_total IS NULL AND ({r}.row->>'outcome' = 'failed' OR ({r}.row->>'http_status')::int >= 400), false)"
)
_FAILED = _FAILED_OF.format(r="c")


def failed_call(r: str) -> str:
    """Whether the team's call `r` is a generation call that never reached a model (m017's rule)."""
    return _FAILED_OF.format(r=r)


_TOKENS = "coalesce(c.input_total, 0) + coalesce(c.output_total, 0)"
_USAGE_COLUMNS = {
    "interactions": f"(NOT {_FAILED})::int",
    "input_total": "coalesce(c.input_total, 0)",
    "input_total_calls": "(c.input_total IS NOT NULL)::int",
    "cache_read": "coalesce((c.row->>'cache_read')::bigint, 0)",
    "cache_read_calls": "(c.row->>'cache_read' IS NOT NULL)::int",
    "cache_read_input": "CASE WHEN c.row->>'cache_read' IS NOT NULL THEN coalesce(c.input_total, 0) ELSE 0 END",
    "cache_write": "coalesce((c.row->>'cache_write')::bigint, 0)",
    "cache_write_calls": "(c.row->>'cache_write' IS NOT NULL)::int",
    "output_total": "coalesce(c.output_total, 0)",
    "output_total_calls": "(c.output_total IS NOT NULL)::int",
    "reasoning": "coalesce((c.row->>'reasoning')::bigint, 0)",
    "reasoning_calls": "(c.row->>'reasoning' IS NOT NULL)::int",
    "reasoning_output": "CASE WHEN c.row->>'reasoning' IS NOT NULL THEN coalesce(c.output_total, 0) ELSE 0 END",
    # Exact sums of the costs as stored (the JSON text of each double): no order of arrival changes a digit.
    "cost_usd": "coalesce((c.row->>'cost_usd')::numeric, 0)",
    "cost_calls": "(c.cost_usd IS NOT NULL)::int",
    "reported_tokens": f"CASE WHEN c.row->>'usage_source' = 'reported' THEN {_TOKENS} ELSE 0 END",
    "estimated_tokens": f"CASE WHEN c.row->>'usage_source' = 'estimated' THEN {_TOKENS} ELSE 0 END",
    "partial_tokens": f"CASE WHEN c.row->>'usage_source' = 'partial' THEN {_TOKENS} ELSE 0 END",
    "context_switches": "coalesce((c.row->>'context_switch')::bigint, 0)",
    "flagged": "EXISTS (SELECT 1 FROM taskmeter.records f WHERE f.id = 'flag:' || c.id AND NOT f.deleted)::int",
    "failed_calls": f"{_FAILED}::int",
    "agent_log_tokens": f"CASE WHEN c.row->>'usage_source' = 'agent-log' THEN {_TOKENS} ELSE 0 END",
    "api_equivalent_usd": "CASE WHEN c.row->>'price_basis' = 'api-equivalent' THEN coalesce((c.row->>'cost_usd')::numeric, 0) ELSE 0 END",
}
USAGE_COLUMNS = list(_USAGE_COLUMNS)


def _usage_delta(rows: str) -> str:
    """Add to task_usage each (task, developer)'s sums over `rows` (a set of calls `c` with a `sign`):
    +1 for a row as it is now, -1 for a row as it was before an update."""
    sums = ", ".join(
        f"sum(c.sign * CASE WHEN c.operation = 'generate' THEN {expr} ELSE 0 END)" for expr in _USAGE_COLUMNS.values()
    )
    added = ", ".join(f"{column} = u.{column} + EXCLUDED.{column}" for column in _USAGE_COLUMNS)
    return f"""
        INSERT INTO taskmeter.task_usage AS u (task_key, developer, calls, {", ".join(_USAGE_COLUMNS)})
        SELECT coalesce(c.task_id, ''), c.developer, sum(c.sign), {sums}
        FROM ({rows}) c WHERE NOT c.deleted GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (task_key, developer) DO UPDATE SET calls = u.calls + EXCLUDED.calls, {added};
        DELETE FROM taskmeter.task_usage u USING (SELECT DISTINCT coalesce(task_id, '') AS task_key, developer FROM ({rows}) c) k
        WHERE u.task_key = k.task_key AND u.developer = k.developer AND u.calls = 0;"""


def _minutes_delta(rows: str) -> str:
    """Count in task_minutes each (task, developer, minute) of `rows`, as the local task_activity
    keeps a task's minutes with a call (m007: its start's first 16 characters, as stored)."""
    return f"""
        INSERT INTO taskmeter.task_minutes AS m (task_id, developer, minute, calls)
        SELECT c.task_id, c.developer, substr(c.row->>'started_at', 1, 16), sum(c.sign)
        FROM ({rows}) c WHERE NOT c.deleted AND c.task_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (task_id, developer, minute) DO UPDATE SET calls = m.calls + EXCLUDED.calls;
        DELETE FROM taskmeter.task_minutes m USING ({rows}) c
        WHERE m.task_id = c.task_id AND m.developer = c.developer AND m.minute = substr(c.row->>'started_at', 1, 16)
            AND m.calls = 0;"""


# A task_minutes minute ('YYYY-MM-DDTHH:MM', UTC) as POSIX seconds, as the local m024 unixepoch(minute).
_EPOCH_OF = "extract(epoch FROM ({m} || ':00Z')::timestamptz)::double precision"
_MINUTE_OF = "to_char(to_timestamp({e}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI')"


def _runs_refresh(rows: str) -> str:
    """task_activity_runs (the local m024's: runs of consecutive minutes, [start, end) in
    POSIX seconds) per task and developer, made again from task_minutes around the minutes
    of `rows`: the runs touching them are replaced by the runs of the minutes they span.
    The spans are kept in the trigger's arrays (a statement cannot insert a key it deletes)."""
    epoch = _EPOCH_OF.format(m="substr(c.row->>'started_at', 1, 16)")
    spans = "unnest(span_tasks, span_developers, span_starts, span_ends) AS s(task_id, developer, lo, hi)"
    return f"""
        SELECT array_agg(task_id), array_agg(developer), array_agg(lo), array_agg(hi)
        INTO span_tasks, span_developers, span_starts, span_ends
        FROM (
            SELECT t.task_id, t.developer, least(t.lo, min(r.start)) AS lo, greatest(t.hi, max(r."end")) AS hi
            FROM (
                SELECT c.task_id, c.developer, min({epoch}) - 60 AS lo, max({epoch}) + 60 AS hi
                FROM ({rows}) c WHERE c.task_id IS NOT NULL AND c.row->>'started_at' IS NOT NULL GROUP BY 1, 2
            ) t LEFT JOIN taskmeter.task_activity_runs r
                ON r.task_id = t.task_id AND r.developer = t.developer AND r."end" >= t.lo AND r.start <= t.hi
            GROUP BY t.task_id, t.developer, t.lo, t.hi
        ) touched;
        DELETE FROM taskmeter.task_activity_runs r USING {spans}
        WHERE r.task_id = s.task_id AND r.developer = s.developer AND r."end" >= s.lo AND r.start <= s.hi;
        {
        _runs_of(f'''{spans} JOIN taskmeter.task_minutes m ON m.task_id = s.task_id AND m.developer = s.developer
            AND m.minute >= {_MINUTE_OF.format(e="s.lo")} AND m.minute <= {_MINUTE_OF.format(e="s.hi")}''')
    }"""


def _runs_of(minutes: str) -> str:
    """Insert the runs of consecutive minutes of `minutes` (a FROM clause naming task_minutes `m`)."""
    at = _EPOCH_OF.format(m="m.minute")
    return f"""
        INSERT INTO taskmeter.task_activity_runs (task_id, developer, start, "end")
        SELECT task_id, developer, min(at), max(at) + 60 FROM (
            SELECT m.task_id, m.developer, {at} AS at,
                {at} - 60 * row_number() OVER (PARTITION BY m.task_id, m.developer ORDER BY m.minute) AS run
            FROM {minutes}
        ) islands GROUP BY task_id, developer, run;"""


def _flag_delta(rows: str) -> str:
    """A flag (or its tombstone) in `rows` counts (or stops counting) its call in task_usage.flagged."""
    return f"""
        INSERT INTO taskmeter.task_usage AS u (task_key, developer, flagged)
        SELECT coalesce(c.task_id, ''), c.developer, sum(f.sign)
        FROM ({rows}) f JOIN taskmeter.calls c ON c.id = substr(f.id, 6)
        WHERE f.kind = 'flag' AND NOT f.deleted AND NOT c.deleted AND c.operation = 'generate'
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (task_key, developer) DO UPDATE SET flagged = u.flagged + EXCLUDED.flagged;"""


# A call's session as the local session_rework (m013) keys it: no session is a session of its own.
_SESSION_OF = "coalesce({r}.row->>'session_id', {r}.row->>'id')"


def _rework_recompute(keys: str) -> str:
    """session_rework's rows of the sessions `keys` (task_id, developer, session_key) made
    again from their calls, as the local m013/m022 rows are: after a session's first flagged
    generation call, the calls a model answered, their tokens and cost."""
    g, later = _SESSION_OF.format(r="g"), _SESSION_OF.format(r="later")
    return f"""
        DELETE FROM taskmeter.session_rework r USING ({keys}) k
        WHERE r.task_id = k.task_id AND r.developer = k.developer AND r.session_key = k.session_key;
        INSERT INTO taskmeter.session_rework (task_id, developer, session_key, flagged_at, flagged_id, calls, tokens, cost_usd)
        SELECT first.task_id, first.developer, first.session_key, first.started_at, first.id, count(later.id),
            coalesce(sum(coalesce(later.input_total, 0) + coalesce(later.output_total, 0)), 0),
            coalesce(sum((later.row->>'cost_usd')::numeric), 0)
        FROM (
            SELECT DISTINCT ON (g.task_id, g.developer, {g}) g.task_id, g.developer, {g} AS session_key,
                g.row->>'started_at' AS started_at, g.id
            FROM (SELECT DISTINCT * FROM ({keys}) k0) k
            JOIN taskmeter.calls g ON g.task_id = k.task_id AND {g} = k.session_key AND g.developer = k.developer
            JOIN taskmeter.records f ON f.id = 'flag:' || g.id AND NOT f.deleted
            WHERE g.operation = 'generate' AND NOT g.deleted
            ORDER BY g.task_id, g.developer, {g}, g.row->>'started_at', g.id
        ) first
        LEFT JOIN taskmeter.calls later ON later.task_id = first.task_id AND {later} = first.session_key
            AND later.developer = first.developer AND later.operation = 'generate' AND NOT later.deleted
            AND (later.row->>'started_at', later.id) > (first.started_at, first.id) AND NOT {_FAILED_OF.format(r="later")}
        GROUP BY first.task_id, first.developer, first.session_key, first.started_at, first.id;"""


def _rework_of_calls(rows: str) -> str:
    """The sessions of the calls `rows` that have a rework row or gain one (the call is flagged)."""
    c = _SESSION_OF.format(r="c")
    return _rework_recompute(f"""
        SELECT c.task_id, c.developer, {c} AS session_key FROM ({rows}) c
        WHERE c.task_id IS NOT NULL AND (
            EXISTS (SELECT 1 FROM taskmeter.records f WHERE f.id = 'flag:' || c.id)
            OR EXISTS (SELECT 1 FROM taskmeter.session_rework r
                       WHERE r.task_id = c.task_id AND r.developer = c.developer AND r.session_key = {c}))""")


def _rework_of_flags(rows: str) -> str:
    """The sessions of the calls the flags `rows` name."""
    c = _SESSION_OF.format(r="c")
    return _rework_recompute(f"""
        SELECT c.task_id, c.developer, {c} AS session_key
        FROM ({rows}) f JOIN taskmeter.calls c ON c.id = substr(f.id, 6)
        WHERE f.kind = 'flag' AND c.task_id IS NOT NULL""")


def _trigger_functions() -> str:
    """Statement-level triggers over the rows each upsert inserted or changed (transition
    tables): the rollups move by exactly what the rows did, in the same transaction."""
    inserted = "SELECT 1 AS sign, * FROM inserted"
    changed = "SELECT -1 AS sign, * FROM before_update UNION ALL SELECT 1, * FROM after_update"
    functions = {
        "calls_inserted": _usage_delta(inserted)
        + _minutes_delta(inserted)
        + _runs_refresh(inserted)
        + _rework_of_calls(inserted),
        "calls_changed": _usage_delta(changed) + _minutes_delta(changed) + _runs_refresh(changed) + _rework_of_calls(changed),
        "flags_inserted": _flag_delta(inserted) + _rework_of_flags(inserted),
        "flags_changed": _flag_delta(changed) + _rework_of_flags(changed),
    }
    # SECURITY DEFINER: a developer writes the rollups only through its rows; search_path fixed for it.
    return "".join(
        f"""
        CREATE FUNCTION taskmeter.{name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE span_tasks text[]; span_developers text[]; span_starts float8[]; span_ends float8[];
        BEGIN {body} RETURN NULL; END $body$;"""
        for name, body in functions.items()
    )


# The rollups of every row a store holds (into empty rollups): an upgraded store's, the bench's.
ROLLUPS_FROM_ROWS = f"""
        {_usage_delta("SELECT 1 AS sign, * FROM taskmeter.calls")}
        {_minutes_delta("SELECT 1 AS sign, * FROM taskmeter.calls")}
        {_runs_of("taskmeter.task_minutes m")}
        {_rework_of_flags("SELECT * FROM taskmeter.records WHERE kind = 'flag' AND NOT deleted")}"""

_ROLLUPS = f"""
        -- Per task (task_key '' = no task) and developer: the local task_usage's sums, and every call counted.
        CREATE TABLE taskmeter.task_usage (
            task_key text NOT NULL,
            developer text NOT NULL,
            calls bigint NOT NULL DEFAULT 0,
            {", ".join(f"{column} {'numeric' if column.endswith('usd') else 'bigint'} NOT NULL DEFAULT 0" for column in _USAGE_COLUMNS)},
            PRIMARY KEY (task_key, developer)
        );
        -- Per task and developer, the minutes with a call (the local task_activity), and how many calls each.
        CREATE TABLE taskmeter.task_minutes (
            task_id text NOT NULL,
            developer text NOT NULL,
            minute text NOT NULL,
            calls bigint NOT NULL,
            PRIMARY KEY (task_id, developer, minute)
        );
        -- Per task and developer, the runs of consecutive minutes with a call (the local task_activity_runs).
        CREATE TABLE taskmeter.task_activity_runs (
            task_id text NOT NULL,
            developer text NOT NULL,
            start double precision NOT NULL,
            "end" double precision NOT NULL,
            PRIMARY KEY (task_id, developer, start)
        );
        -- Per task, developer and session with a flagged call: the local session_rework (the calls after it).
        CREATE TABLE taskmeter.session_rework (
            task_id text NOT NULL,
            developer text NOT NULL,
            session_key text NOT NULL,
            flagged_at text NOT NULL,
            flagged_id text NOT NULL,
            calls bigint NOT NULL,
            tokens bigint NOT NULL,
            cost_usd numeric NOT NULL,
            PRIMARY KEY (task_id, developer, session_key)
        );
        -- A session's calls (its rework is made again from them); a task's calls after its approval (a report loads them).
        CREATE INDEX calls_session ON taskmeter.calls (task_id, {_SESSION_OF.format(r="calls")});
        CREATE INDEX calls_task_started ON taskmeter.calls (task_id, started_at);
        -- One developer's records of a phase's tasks (each developer's share of a team report).
        CREATE INDEX records_task_developer ON taskmeter.records (task_id, developer);
        -- The switch after a task's switch ends its time as current: the team's next, or one developer's.
        CREATE INDEX records_switch_order ON taskmeter.records (at, id)
            WHERE kind = 'task_event' AND row->>'kind' = 'switch' AND NOT deleted;
        CREATE INDEX records_developer_switch_order ON taskmeter.records (developer, at, id)
            WHERE kind = 'task_event' AND row->>'kind' = 'switch' AND NOT deleted;
        {_trigger_functions()}
        CREATE TRIGGER calls_inserted AFTER INSERT ON taskmeter.calls REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION taskmeter.calls_inserted();
        CREATE TRIGGER calls_changed AFTER UPDATE ON taskmeter.calls REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
            FOR EACH STATEMENT EXECUTE FUNCTION taskmeter.calls_changed();
        CREATE TRIGGER flags_inserted AFTER INSERT ON taskmeter.records REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION taskmeter.flags_inserted();
        CREATE TRIGGER flags_changed AFTER UPDATE ON taskmeter.records REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
            FOR EACH STATEMENT EXECUTE FUNCTION taskmeter.flags_changed();
        -- A store made before: the rollups from the rows it holds.
        {ROLLUPS_FROM_ROWS}
        """


# Usage per quarter hour (UTC), model, task and developer: the local usage_quarters (m011,
# with m017's failed-call rule), which the usage reports read. Each counted column keeps
# how many calls stated it; cost is an exact decimal, as in task_usage.
_QUARTER_OF = (
    "substr({r}.row->>'started_at', 1, 14) || CASE WHEN substr({r}.row->>'started_at', 15, 2) < '15' THEN '00'"
    " WHEN substr({r}.row->>'started_at', 15, 2) < '30' THEN '15' WHEN substr({r}.row->>'started_at', 15, 2) < '45' THEN '30'"
    " ELSE '45' END"
)
_STATED = {
    "input_total": "c.input_total",
    "cache_read": "(c.row->>'cache_read')::bigint",
    "cache_write": "(c.row->>'cache_write')::bigint",
    "output_total": "c.output_total",
    "reasoning": "(c.row->>'reasoning')::bigint",
    "cost_usd": "(c.row->>'cost_usd')::numeric",
}
_QUARTER_COLUMNS = {
    "ai_interactions": f"(NOT {_FAILED})::int",
    "failed_calls": f"{_FAILED}::int",
    **{
        name: expr
        for column, value in _STATED.items()
        for name, expr in ((column, f"coalesce({value}, 0)"), (f"{column}_calls", f"({value} IS NOT NULL)::int"))
    },
    "priced": f"(c.cost_usd IS NOT NULL AND NOT {_FAILED})::int",
    "flagged": _USAGE_COLUMNS["flagged"],
}
QUARTER_COLUMNS = list(_QUARTER_COLUMNS)
_QUARTER_KEY = "quarter, model, task_key, developer"


def quarters_delta(rows: str) -> str:
    """Add to usage_quarters each quarter's sums over the generation calls `rows` (with a `sign`);
    a quarter left with no call goes."""
    sums = ", ".join(f"sum(c.sign * {expr})" for expr in _QUARTER_COLUMNS.values())
    added = ", ".join(f"{column} = q.{column} + EXCLUDED.{column}" for column in _QUARTER_COLUMNS)
    key = f"{_QUARTER_OF.format(r='c')}, coalesce(c.model, '?'), coalesce(c.task_id, ''), c.developer"
    return f"""
        INSERT INTO taskmeter.usage_quarters AS q ({_QUARTER_KEY}, {", ".join(_QUARTER_COLUMNS)})
        SELECT {key}, {sums}
        FROM ({rows}) c WHERE NOT c.deleted AND c.operation = 'generate' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT ({_QUARTER_KEY}) DO UPDATE SET {added};
        DELETE FROM taskmeter.usage_quarters q USING (SELECT DISTINCT {key} FROM ({rows}) c) AS k({_QUARTER_KEY})
        WHERE (q.quarter, q.model, q.task_key, q.developer) = (k.quarter, k.model, k.task_key, k.developer)
            AND q.ai_interactions = 0 AND q.failed_calls = 0;"""


def _quarters_flag_delta(rows: str) -> str:
    """A flag (or its tombstone) in `rows` counts (or stops counting) its call in usage_quarters.flagged."""
    return f"""
        INSERT INTO taskmeter.usage_quarters AS q ({_QUARTER_KEY}, flagged)
        SELECT {_QUARTER_OF.format(r="c")}, coalesce(c.model, '?'), coalesce(c.task_id, ''), c.developer, sum(f.sign)
        FROM ({rows}) f JOIN taskmeter.calls c ON c.id = substr(f.id, 6)
        WHERE f.kind = 'flag' AND NOT f.deleted AND NOT c.deleted AND c.operation = 'generate'
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT ({_QUARTER_KEY}) DO UPDATE SET flagged = q.flagged + EXCLUDED.flagged;"""


# The quarters of every call a store holds (into an empty usage_quarters): t004's, the bench's.
QUARTERS_FROM_ROWS = quarters_delta("SELECT 1 AS sign, * FROM taskmeter.calls")


def _quarter_triggers() -> str:
    """usage_quarters kept as t003 keeps its rollups: statement-level triggers over each upsert's rows."""
    inserted = "SELECT 1 AS sign, * FROM inserted"
    changed = "SELECT -1 AS sign, * FROM before_update UNION ALL SELECT 1, * FROM after_update"
    functions = {
        "quarters_calls_inserted": (quarters_delta(inserted), "calls", "INSERT", "NEW TABLE AS inserted"),
        "quarters_calls_changed": (
            quarters_delta(changed),
            "calls",
            "UPDATE",
            "OLD TABLE AS before_update NEW TABLE AS after_update",
        ),
        "quarters_flags_inserted": (_quarters_flag_delta(inserted), "records", "INSERT", "NEW TABLE AS inserted"),
        "quarters_flags_changed": (
            _quarters_flag_delta(changed),
            "records",
            "UPDATE",
            "OLD TABLE AS before_update NEW TABLE AS after_update",
        ),
    }
    return "".join(
        f"""
        CREATE FUNCTION taskmeter.{name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $body$
        BEGIN {body} RETURN NULL; END $body$;
        CREATE TRIGGER {name} AFTER {event} ON taskmeter.{table} REFERENCING {tables}
            FOR EACH STATEMENT EXECUTE FUNCTION taskmeter.{name}();"""
        for name, (body, table, event, tables) in functions.items()
    )


_QUARTERS = f"""
        CREATE TABLE taskmeter.usage_quarters (
            quarter text NOT NULL,
            model text NOT NULL,
            task_key text NOT NULL,
            developer text NOT NULL,
            {", ".join(f"{column} {'numeric' if column == 'cost_usd' else 'bigint'} NOT NULL DEFAULT 0" for column in _QUARTER_COLUMNS)},
            PRIMARY KEY ({_QUARTER_KEY})
        );
        CREATE INDEX usage_quarters_task ON taskmeter.usage_quarters (task_key, quarter);
        -- A phase's marks, by the phase in any case.
        CREATE INDEX records_phase_marks ON taskmeter.records (upper(phase_id)) WHERE kind = 'phase_mark' AND NOT deleted;
        -- What the overview reads of the records: all but the switches, flags and call texts, in order.
        CREATE INDEX records_facts ON taskmeter.records (at, id)
            WHERE kind NOT IN ('flag', 'call_text') AND NOT (kind = 'task_event' AND row->>'kind' = 'switch') AND NOT deleted;
        -- A model's newest calls (the models report's latency).
        CREATE INDEX calls_model_started ON taskmeter.calls (model, started_at);
        {_quarter_triggers()}
        {QUARTERS_FROM_ROWS}
        """


# (name, SQL): never edit or reorder one a team may have applied; append.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "t001_rows",
        f"""
        CREATE TABLE taskmeter.calls ({_OWNED_ROWS},
            task_id text,
            started_at timestamptz,
            model text,
            operation text,
            input_total bigint,
            output_total bigint,
            cost_usd double precision,
            row jsonb NOT NULL
        );
        CREATE INDEX calls_task ON taskmeter.calls (task_id, developer);
        CREATE INDEX calls_started ON taskmeter.calls (started_at);
        CREATE TABLE taskmeter.records ({_OWNED_ROWS},
            kind text NOT NULL,
            task_id text,
            phase_id text,
            at text,
            row jsonb NOT NULL
        );
        CREATE INDEX records_task ON taskmeter.records (task_id);
        -- Every report reads the switches of the developers it covers (they end a task's time as current).
        CREATE INDEX records_switches ON taskmeter.records (developer) WHERE kind = 'task_event' AND row->>'kind' = 'switch';
        CREATE INDEX records_phase ON taskmeter.records (phase_id);
        CREATE TABLE taskmeter.fields (
            id text PRIMARY KEY,
            entity text NOT NULL CHECK (entity IN ('task', 'phase')),
            entity_id text NOT NULL,
            field text NOT NULL,
            value jsonb,
            developer text NOT NULL DEFAULT current_user,
            device text NOT NULL,
            rev bigint NOT NULL,
            set_at timestamptz NOT NULL,
            synced_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX fields_entity ON taskmeter.fields (entity, entity_id);
        {_own_rows_only("calls")}
        {_own_rows_only("records")}
        -- Tasks and phases are shared: anyone may set a field, as themselves (the writer is kept).
        ALTER TABLE taskmeter.fields ENABLE ROW LEVEL SECURITY;
        CREATE POLICY fields_read ON taskmeter.fields FOR SELECT USING (true);
        CREATE POLICY fields_insert ON taskmeter.fields FOR INSERT TO {DEVELOPERS}
            WITH CHECK (developer = current_user);
        CREATE POLICY fields_update ON taskmeter.fields FOR UPDATE TO {DEVELOPERS}
            USING (true) WITH CHECK (developer = current_user);
        """,
    ),
    (
        "t002_views",
        """
        -- Each task and phase as the team sees it: the latest value of each field,
        -- and the earliest creation any device saw.
        CREATE VIEW taskmeter.entities AS
            SELECT entity, entity_id AS id,
                   jsonb_object_agg(field, value) FILTER (WHERE field <> 'created_at') AS fields,
                   min(value #>> '{}') FILTER (WHERE field = 'created_at') AS created_at
            FROM taskmeter.fields GROUP BY entity, entity_id;
        -- Per task and developer: calls that reached a model, tokens, cost, flags.
        CREATE VIEW taskmeter.task_usage_by_developer AS
            SELECT c.task_id, c.developer,
                   count(*) FILTER (WHERE c.operation = 'generate') AS calls,
                   coalesce(sum(c.input_total), 0) AS input_tokens,
                   coalesce(sum(c.output_total), 0) AS output_tokens,
                   coalesce(sum(c.cost_usd), 0) AS cost_usd,
                   count(f.id) AS flags
            FROM taskmeter.calls c
            LEFT JOIN taskmeter.records f ON f.id = 'flag:' || c.id AND NOT f.deleted
            WHERE NOT c.deleted
            GROUP BY c.task_id, c.developer;
        """,
    ),
    ("t003_rollups", _ROLLUPS),
    ("t004_usage_quarters", _QUARTERS),
]
KNOWN = [name for name, _ in MIGRATIONS]


def applied(conn) -> list[str] | None:
    """The team migrations the server has, in order; None where there is no team store."""
    found = conn.execute("SELECT to_regclass('taskmeter.migrations')").fetchone()[0]
    if found is None:
        return None
    return [row[0] for row in conn.execute("SELECT name FROM taskmeter.migrations ORDER BY applied_at, name")]


def check(conn, where: str) -> None:
    """Refuse, in one line, a server or schema this meter cannot use."""
    version = conn.info.server_version
    if version < OLDEST_SERVER:
        raise TeamStoreError(f"the team store at {where} runs PostgreSQL {version // 10000}: too old, 13 or newer is needed")
    done = applied(conn)
    if done is None:
        raise TeamStoreError(f"{where} holds no team store: the admin runs `meter team setup --admin-url URL`")
    newer = [name for name in done if name not in KNOWN]
    if newer:
        raise TeamStoreError(
            f"the team store at {where} has a newer schema ({newer[0]}) than this meter knows: upgrade taskmeter"
        )
    missing = [name for name in KNOWN if name not in done]
    if missing:
        raise TeamStoreError(
            f"the team store at {where} has an older schema (without {missing[0]}): the admin runs `meter team setup` again"
        )


def setup(conn, developers: list[str], upto: int | None = None) -> list[str]:
    """Create or upgrade the team store (in one transaction) with the roles and their
    grants; the lines to print. `upto` applies only the first migrations (a store
    an older meter made)."""
    from psycopg import sql

    if conn.info.server_version < OLDEST_SERVER:
        raise TeamStoreError(f"PostgreSQL {conn.info.server_version // 10000} is too old for the team store: 13 or newer")
    lines: list[str] = []
    with conn.transaction():
        existing = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}
        if DEVELOPERS not in existing:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(DEVELOPERS)))
        lines.append(_login_role(conn, REPORTING, existing, "reads the whole team store, writes nothing"))
        conn.execute("CREATE SCHEMA IF NOT EXISTS taskmeter")
        conn.execute("CREATE TABLE IF NOT EXISTS taskmeter.migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL)")
        done = applied(conn) or []
        newer = [name for name in done if name not in KNOWN]
        if newer:
            raise TeamStoreError(f"the team store has a newer schema ({newer[0]}) than this meter knows: upgrade taskmeter")
        for name, script in MIGRATIONS[:upto]:
            if name not in done:
                conn.execute(script)
                conn.execute("INSERT INTO taskmeter.migrations (name, applied_at) VALUES (%s, clock_timestamp())", (name,))
                lines.append(f"applied {name}")
        grants = [
            f"GRANT USAGE ON SCHEMA taskmeter TO {DEVELOPERS}, {REPORTING}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA taskmeter TO {DEVELOPERS}, {REPORTING}",
            f"GRANT INSERT, UPDATE ON taskmeter.calls, taskmeter.records, taskmeter.fields TO {DEVELOPERS}",
        ]
        for grant in grants:
            conn.execute(grant)
            lines.append(grant)
        for developer in developers:
            lines.append(_login_role(conn, developer, existing, "a developer: writes only its own rows"))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(DEVELOPERS), sql.Identifier(developer)))
            lines.append(f'GRANT {DEVELOPERS} TO "{developer}"')
    return lines


def _login_role(conn, name: str, existing: set[str], what: str) -> str:
    """A login role with a new password, or the one there (its password left alone)."""
    from psycopg import sql

    if name in existing:
        return f'role "{name}" ({what}) exists: its password is unchanged'
    password = secrets.token_urlsafe(18)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
    return f'created role "{name}" ({what}), password {password}'
