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
