"""Schema changes as an ordered, append-only list of named functions.

Each function runs once, inside the transaction that records its name in
`_meter_migrations`. Never edit or reorder a released migration: add a new one
(tests/test_migration_guard.py locks them by the hash of their source). After
adding one, `python -m taskmeter.store.schema_doc` brings docs/schema.md up to date.
"""

import re
import sqlite3
from collections.abc import Callable

from taskmeter.errors import MeterError
from taskmeter.timefmt import now_stored

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: executescript() would COMMIT the open transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement!r}")


def widen_checks(db: sqlite3.Connection, table: str, changes: dict[str, str]) -> None:
    """Loosen CHECK constraints of `table` in place, each `old` clause text made
    `new`: SQLite's documented procedure for removing or relaxing a constraint
    (lang_altertable.html, "other kinds of table schema changes"). Every stored
    row meets the wider constraint, so the table is not rebuilt; the schema
    version is bumped so that every connection reads the new schema. A
    constraint made stricter needs rebuild_table()."""
    sql = _changed_table_sql(db, table, changes)
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    db.execute("PRAGMA writable_schema = ON")
    try:
        db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, table))
        db.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        db.execute("PRAGMA writable_schema = OFF")


def _changed_table_sql(db: sqlite3.Connection, table: str, changes: dict[str, str]) -> str:
    """The CREATE TABLE statement of `table`, each `old` text in it made `new`."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    for old, new in changes.items():
        if old not in sql:
            raise MeterError(f"cannot upgrade table {table}: its schema lacks {old!r}")
        sql = sql.replace(old, new)
    return sql


# Migrations that call rebuild_table(), which migrate() runs with foreign keys off.
_REBUILDING: set[str] = set()


def rebuilds_tables(fn: Migration) -> Migration:
    """Mark a migration that calls rebuild_table() (under @migration): migrate()
    turns foreign keys off around its transaction, where SQLite heeds the pragma.
    With them on, dropping the old table would delete, by cascade, every row that
    refers to it."""
    _REBUILDING.add(fn.__name__)
    return fn


def rebuild_table(db: sqlite3.Connection, table: str, changes: dict[str, str]) -> None:
    """Change `table` in any way its CREATE TABLE statement can say (a stricter
    CHECK, a column's type or default), each `old` text of the statement made
    `new`: SQLite's 12-step procedure (lang_altertable.html, "making other kinds
    of table schema changes"). In a migration marked @rebuilds_tables, so in
    its transaction with foreign keys off (steps 1, 2, 11 and 12 are migrate()'s):
    a new table, the rows copied (the columns both tables have), the old one
    dropped, the new one renamed, its indexes and triggers made again, and the
    foreign keys to and from it checked. A row the new table refuses fails the
    migration, which then changes nothing."""
    if not db.in_transaction or db.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise MeterError(f"cannot rebuild table {table}: only in a migration marked @rebuilds_tables")
    rebuilt = f"_rebuild_{table}"
    sql = re.sub(
        r'^CREATE TABLE\s+(?:"[^"]+"|\S+?)(?=\s*\()', f'CREATE TABLE "{rebuilt}"', _changed_table_sql(db, table, changes)
    )
    companions = db.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY rowid",
        (table,),
    ).fetchall()
    sequence = _autoincrement_sequence(db, table)
    db.execute(sql)
    old_columns = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
    columns = ", ".join(f'"{row[1]}"' for row in db.execute(f'PRAGMA table_info("{rebuilt}")') if row[1] in old_columns)
    db.execute(f'INSERT INTO "{rebuilt}" ({columns}) SELECT {columns} FROM "{table}"')
    db.execute(f'DROP TABLE "{table}"')
    # Legacy renaming leaves other tables' triggers and views alone: they name
    # `table`, which is missing until the rename, and name it again after.
    db.execute("PRAGMA legacy_alter_table = ON")
    try:
        db.execute(f'ALTER TABLE "{rebuilt}" RENAME TO "{table}"')
    finally:
        db.execute("PRAGMA legacy_alter_table = OFF")
    for (companion,) in companions:
        db.execute(companion)
    if sequence is not None:  # AUTOINCREMENT never hands out an ID it gave before, even of a deleted row
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (sequence, table))
    referring = [
        name
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if any(row[2] == table for row in db.execute(f'PRAGMA foreign_key_list("{name}")'))
    ]
    for name in dict.fromkeys([table, *referring]):
        broken = db.execute(f'PRAGMA foreign_key_check("{name}")').fetchone()
        if broken is not None:
            raise MeterError(f"cannot rebuild table {table}: a row of {broken[0]} refers to a missing row of {broken[2]}")


def _autoincrement_sequence(db: sqlite3.Connection, table: str) -> int | None:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        return None
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return row[0] if row else None


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    run_script(
        db,
        """
        CREATE TABLE phases (
            id TEXT PRIMARY KEY COLLATE NOCASE,
            title TEXT,
            created_at TEXT NOT NULL,
            begin_at TEXT,
            first_code_at TEXT,
            tests_passing_at TEXT,
            integration_complete_at TEXT,
            documentation_complete_at TEXT,
            final_approval_at TEXT,
            projected_deliverables TEXT,
            deliverables_completed TEXT,
            critical_blockers TEXT,
            patterns_extracted TEXT,
            technical_debt TEXT,
            biggest_surprise TEXT,
            biggest_win TEXT,
            biggest_challenge TEXT,
            theory_improvements TEXT
        );

        CREATE TABLE tasks (
            id TEXT PRIMARY KEY COLLATE NOCASE,
            phase_id TEXT NOT NULL REFERENCES phases(id),
            title TEXT,
            created_at TEXT NOT NULL,
            begin_at TEXT,
            initial_completion_at TEXT,
            tests_completion_at TEXT,
            validation_at TEXT,
            final_approval_at TEXT,
            estimate_seconds INTEGER CHECK (estimate_seconds > 0),
            projected_outcome TEXT,
            actual_outcome TEXT,
            projection_met INTEGER CHECK (projection_met IN (0, 1)),
            success TEXT CHECK (success IN ('pass', 'pending', 'fail')),
            coverage_target REAL,
            coverage_actual REAL,
            performance_target TEXT,
            performance_actual TEXT,
            performance_met INTEGER CHECK (performance_met IN (0, 1)),
            doc_completeness REAL,
            blockers TEXT,
            lessons TEXT
        );
        CREATE INDEX tasks_phase ON tasks(phase_id);

        -- Everything that happened to a task, in order: switches, milestones, iterations.
        CREATE TABLE task_events (
            id INTEGER PRIMARY KEY,
            task_id TEXT REFERENCES tasks(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('switch', 'milestone', 'iteration')),
            at TEXT NOT NULL,
            milestone TEXT,
            previous_task_id TEXT,
            note TEXT
        );
        CREATE INDEX task_events_task ON task_events(task_id, at);
        CREATE INDEX task_events_at ON task_events(at);

        -- Single-row facts shared by every process on this database.
        CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT
        );

        CREATE TABLE interactions (
            id TEXT PRIMARY KEY,
            task_id TEXT REFERENCES tasks(id) ON DELETE SET NULL,
            attribution TEXT CHECK (attribution IN ('path', 'header', 'current', 'none', 'retag')),
            started_at TEXT NOT NULL,
            first_byte_at TEXT,
            ended_at TEXT,
            provider TEXT,
            protocol TEXT,
            operation TEXT NOT NULL DEFAULT 'generate'
                CHECK (operation IN ('generate', 'count_tokens', 'other')),
            method TEXT,
            endpoint TEXT,
            model TEXT,
            streamed INTEGER CHECK (streamed IN (0, 1)),
            http_status INTEGER,
            outcome TEXT CHECK (outcome IN ('complete', 'partial', 'aborted', 'failed')),
            error TEXT,
            input_total INTEGER,
            cache_read INTEGER,
            cache_write INTEGER,
            output_total INTEGER,
            reasoning INTEGER,
            usage_source TEXT CHECK (usage_source IN ('reported', 'estimated', 'partial')),
            raw_usage TEXT,
            cost_usd REAL,
            price_source TEXT,
            conversation_id TEXT,
            context_switch INTEGER CHECK (context_switch IN (0, 1)),
            client TEXT,
            proxy_id TEXT
        );
        CREATE INDEX interactions_task ON interactions(task_id, started_at);
        CREATE INDEX interactions_started ON interactions(started_at);
        CREATE INDEX interactions_ended ON interactions(ended_at);

        CREATE TABLE flags (
            interaction_id TEXT PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
            kind TEXT NOT NULL DEFAULT 'hallucination',
            note TEXT,
            flagged_at TEXT NOT NULL
        );

        -- Opt-in request/response bodies, kept apart so the metrics table stays narrow.
        CREATE TABLE bodies (
            interaction_id TEXT PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
            request_body TEXT,
            response_body TEXT
        );

        -- Running proxies announce themselves here so `meter status` can see them.
        CREATE TABLE proxies (
            id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            hostname TEXT NOT NULL,
            listen TEXT NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL
        );
        """,
    )


@migration
def m002_task_usage_rollup(db: sqlite3.Connection) -> None:
    """Sums kept per task (task_key '' = unassigned) over AI interactions
    (operation 'generate'), so reports never scan the interactions table."""
    run_script(
        db,
        """
        CREATE TABLE task_usage (
            task_key TEXT PRIMARY KEY,
            interactions INTEGER NOT NULL DEFAULT 0,
            input_total INTEGER NOT NULL DEFAULT 0,
            input_total_calls INTEGER NOT NULL DEFAULT 0,
            cache_read INTEGER NOT NULL DEFAULT 0,
            cache_read_calls INTEGER NOT NULL DEFAULT 0,
            cache_read_input INTEGER NOT NULL DEFAULT 0,
            cache_write INTEGER NOT NULL DEFAULT 0,
            cache_write_calls INTEGER NOT NULL DEFAULT 0,
            output_total INTEGER NOT NULL DEFAULT 0,
            output_total_calls INTEGER NOT NULL DEFAULT 0,
            reasoning INTEGER NOT NULL DEFAULT 0,
            reasoning_calls INTEGER NOT NULL DEFAULT 0,
            reasoning_output INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            cost_calls INTEGER NOT NULL DEFAULT 0,
            reported_tokens INTEGER NOT NULL DEFAULT 0,
            estimated_tokens INTEGER NOT NULL DEFAULT 0,
            partial_tokens INTEGER NOT NULL DEFAULT 0,
            context_switches INTEGER NOT NULL DEFAULT 0,
            flagged INTEGER NOT NULL DEFAULT 0
        );

        CREATE TRIGGER task_usage_insert AFTER INSERT ON interactions
        BEGIN
            INSERT INTO task_usage (
                task_key,
                interactions,
                input_total,
                input_total_calls,
                cache_read,
                cache_read_calls,
                cache_read_input,
                cache_write,
                cache_write_calls,
                output_total,
                output_total_calls,
                reasoning,
                reasoning_calls,
                reasoning_output,
                cost_usd,
                cost_calls,
                reported_tokens,
                estimated_tokens,
                partial_tokens,
                context_switches,
                flagged
            )
            SELECT coalesce(NEW.task_id, ''),
                +(1),
                +(coalesce(NEW.input_total, 0)),
                +(NEW.input_total IS NOT NULL),
                +(coalesce(NEW.cache_read, 0)),
                +(NEW.cache_read IS NOT NULL),
                +(CASE WHEN NEW.cache_read IS NOT NULL THEN coalesce(NEW.input_total, 0) ELSE 0 END),
                +(coalesce(NEW.cache_write, 0)),
                +(NEW.cache_write IS NOT NULL),
                +(coalesce(NEW.output_total, 0)),
                +(NEW.output_total IS NOT NULL),
                +(coalesce(NEW.reasoning, 0)),
                +(NEW.reasoning IS NOT NULL),
                +(CASE WHEN NEW.reasoning IS NOT NULL THEN coalesce(NEW.output_total, 0) ELSE 0 END),
                +(coalesce(NEW.cost_usd, 0)),
                +(NEW.cost_usd IS NOT NULL),
                +(CASE WHEN NEW.usage_source = 'reported' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(CASE WHEN NEW.usage_source = 'estimated' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(CASE WHEN NEW.usage_source = 'partial' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(coalesce(NEW.context_switch, 0)),
                +(EXISTS (SELECT 1 FROM flags WHERE interaction_id = NEW.id))
            WHERE NEW.operation = 'generate'
            ON CONFLICT(task_key) DO UPDATE SET
                interactions = interactions + excluded.interactions,
                input_total = input_total + excluded.input_total,
                input_total_calls = input_total_calls + excluded.input_total_calls,
                cache_read = cache_read + excluded.cache_read,
                cache_read_calls = cache_read_calls + excluded.cache_read_calls,
                cache_read_input = cache_read_input + excluded.cache_read_input,
                cache_write = cache_write + excluded.cache_write,
                cache_write_calls = cache_write_calls + excluded.cache_write_calls,
                output_total = output_total + excluded.output_total,
                output_total_calls = output_total_calls + excluded.output_total_calls,
                reasoning = reasoning + excluded.reasoning,
                reasoning_calls = reasoning_calls + excluded.reasoning_calls,
                reasoning_output = reasoning_output + excluded.reasoning_output,
                cost_usd = cost_usd + excluded.cost_usd,
                cost_calls = cost_calls + excluded.cost_calls,
                reported_tokens = reported_tokens + excluded.reported_tokens,
                estimated_tokens = estimated_tokens + excluded.estimated_tokens,
                partial_tokens = partial_tokens + excluded.partial_tokens,
                context_switches = context_switches + excluded.context_switches,
                flagged = flagged + excluded.flagged;
        END;

        CREATE TRIGGER task_usage_update AFTER UPDATE OF task_id, operation, input_total, cache_read, cache_write, output_total, reasoning, cost_usd, usage_source, context_switch ON interactions
        BEGIN
            INSERT INTO task_usage (
                task_key,
                interactions,
                input_total,
                input_total_calls,
                cache_read,
                cache_read_calls,
                cache_read_input,
                cache_write,
                cache_write_calls,
                output_total,
                output_total_calls,
                reasoning,
                reasoning_calls,
                reasoning_output,
                cost_usd,
                cost_calls,
                reported_tokens,
                estimated_tokens,
                partial_tokens,
                context_switches,
                flagged
            )
            SELECT coalesce(OLD.task_id, ''),
                -(1),
                -(coalesce(OLD.input_total, 0)),
                -(OLD.input_total IS NOT NULL),
                -(coalesce(OLD.cache_read, 0)),
                -(OLD.cache_read IS NOT NULL),
                -(CASE WHEN OLD.cache_read IS NOT NULL THEN coalesce(OLD.input_total, 0) ELSE 0 END),
                -(coalesce(OLD.cache_write, 0)),
                -(OLD.cache_write IS NOT NULL),
                -(coalesce(OLD.output_total, 0)),
                -(OLD.output_total IS NOT NULL),
                -(coalesce(OLD.reasoning, 0)),
                -(OLD.reasoning IS NOT NULL),
                -(CASE WHEN OLD.reasoning IS NOT NULL THEN coalesce(OLD.output_total, 0) ELSE 0 END),
                -(coalesce(OLD.cost_usd, 0)),
                -(OLD.cost_usd IS NOT NULL),
                -(CASE WHEN OLD.usage_source = 'reported' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(CASE WHEN OLD.usage_source = 'estimated' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(CASE WHEN OLD.usage_source = 'partial' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(coalesce(OLD.context_switch, 0)),
                -(EXISTS (SELECT 1 FROM flags WHERE interaction_id = OLD.id))
            WHERE OLD.operation = 'generate'
            ON CONFLICT(task_key) DO UPDATE SET
                interactions = interactions + excluded.interactions,
                input_total = input_total + excluded.input_total,
                input_total_calls = input_total_calls + excluded.input_total_calls,
                cache_read = cache_read + excluded.cache_read,
                cache_read_calls = cache_read_calls + excluded.cache_read_calls,
                cache_read_input = cache_read_input + excluded.cache_read_input,
                cache_write = cache_write + excluded.cache_write,
                cache_write_calls = cache_write_calls + excluded.cache_write_calls,
                output_total = output_total + excluded.output_total,
                output_total_calls = output_total_calls + excluded.output_total_calls,
                reasoning = reasoning + excluded.reasoning,
                reasoning_calls = reasoning_calls + excluded.reasoning_calls,
                reasoning_output = reasoning_output + excluded.reasoning_output,
                cost_usd = cost_usd + excluded.cost_usd,
                cost_calls = cost_calls + excluded.cost_calls,
                reported_tokens = reported_tokens + excluded.reported_tokens,
                estimated_tokens = estimated_tokens + excluded.estimated_tokens,
                partial_tokens = partial_tokens + excluded.partial_tokens,
                context_switches = context_switches + excluded.context_switches,
                flagged = flagged + excluded.flagged;
            INSERT INTO task_usage (
                task_key,
                interactions,
                input_total,
                input_total_calls,
                cache_read,
                cache_read_calls,
                cache_read_input,
                cache_write,
                cache_write_calls,
                output_total,
                output_total_calls,
                reasoning,
                reasoning_calls,
                reasoning_output,
                cost_usd,
                cost_calls,
                reported_tokens,
                estimated_tokens,
                partial_tokens,
                context_switches,
                flagged
            )
            SELECT coalesce(NEW.task_id, ''),
                +(1),
                +(coalesce(NEW.input_total, 0)),
                +(NEW.input_total IS NOT NULL),
                +(coalesce(NEW.cache_read, 0)),
                +(NEW.cache_read IS NOT NULL),
                +(CASE WHEN NEW.cache_read IS NOT NULL THEN coalesce(NEW.input_total, 0) ELSE 0 END),
                +(coalesce(NEW.cache_write, 0)),
                +(NEW.cache_write IS NOT NULL),
                +(coalesce(NEW.output_total, 0)),
                +(NEW.output_total IS NOT NULL),
                +(coalesce(NEW.reasoning, 0)),
                +(NEW.reasoning IS NOT NULL),
                +(CASE WHEN NEW.reasoning IS NOT NULL THEN coalesce(NEW.output_total, 0) ELSE 0 END),
                +(coalesce(NEW.cost_usd, 0)),
                +(NEW.cost_usd IS NOT NULL),
                +(CASE WHEN NEW.usage_source = 'reported' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(CASE WHEN NEW.usage_source = 'estimated' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(CASE WHEN NEW.usage_source = 'partial' THEN coalesce(NEW.input_total, 0) + coalesce(NEW.output_total, 0) ELSE 0 END),
                +(coalesce(NEW.context_switch, 0)),
                +(EXISTS (SELECT 1 FROM flags WHERE interaction_id = NEW.id))
            WHERE NEW.operation = 'generate'
            ON CONFLICT(task_key) DO UPDATE SET
                interactions = interactions + excluded.interactions,
                input_total = input_total + excluded.input_total,
                input_total_calls = input_total_calls + excluded.input_total_calls,
                cache_read = cache_read + excluded.cache_read,
                cache_read_calls = cache_read_calls + excluded.cache_read_calls,
                cache_read_input = cache_read_input + excluded.cache_read_input,
                cache_write = cache_write + excluded.cache_write,
                cache_write_calls = cache_write_calls + excluded.cache_write_calls,
                output_total = output_total + excluded.output_total,
                output_total_calls = output_total_calls + excluded.output_total_calls,
                reasoning = reasoning + excluded.reasoning,
                reasoning_calls = reasoning_calls + excluded.reasoning_calls,
                reasoning_output = reasoning_output + excluded.reasoning_output,
                cost_usd = cost_usd + excluded.cost_usd,
                cost_calls = cost_calls + excluded.cost_calls,
                reported_tokens = reported_tokens + excluded.reported_tokens,
                estimated_tokens = estimated_tokens + excluded.estimated_tokens,
                partial_tokens = partial_tokens + excluded.partial_tokens,
                context_switches = context_switches + excluded.context_switches,
                flagged = flagged + excluded.flagged;
        END;

        -- Flags leave with their interaction: count them down while it still exists.
        CREATE TRIGGER task_usage_delete BEFORE DELETE ON interactions
        BEGIN
            DELETE FROM flags WHERE interaction_id = OLD.id;
            INSERT INTO task_usage (
                task_key,
                interactions,
                input_total,
                input_total_calls,
                cache_read,
                cache_read_calls,
                cache_read_input,
                cache_write,
                cache_write_calls,
                output_total,
                output_total_calls,
                reasoning,
                reasoning_calls,
                reasoning_output,
                cost_usd,
                cost_calls,
                reported_tokens,
                estimated_tokens,
                partial_tokens,
                context_switches,
                flagged
            )
            SELECT coalesce(OLD.task_id, ''),
                -(1),
                -(coalesce(OLD.input_total, 0)),
                -(OLD.input_total IS NOT NULL),
                -(coalesce(OLD.cache_read, 0)),
                -(OLD.cache_read IS NOT NULL),
                -(CASE WHEN OLD.cache_read IS NOT NULL THEN coalesce(OLD.input_total, 0) ELSE 0 END),
                -(coalesce(OLD.cache_write, 0)),
                -(OLD.cache_write IS NOT NULL),
                -(coalesce(OLD.output_total, 0)),
                -(OLD.output_total IS NOT NULL),
                -(coalesce(OLD.reasoning, 0)),
                -(OLD.reasoning IS NOT NULL),
                -(CASE WHEN OLD.reasoning IS NOT NULL THEN coalesce(OLD.output_total, 0) ELSE 0 END),
                -(coalesce(OLD.cost_usd, 0)),
                -(OLD.cost_usd IS NOT NULL),
                -(CASE WHEN OLD.usage_source = 'reported' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(CASE WHEN OLD.usage_source = 'estimated' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(CASE WHEN OLD.usage_source = 'partial' THEN coalesce(OLD.input_total, 0) + coalesce(OLD.output_total, 0) ELSE 0 END),
                -(coalesce(OLD.context_switch, 0)),
                -(EXISTS (SELECT 1 FROM flags WHERE interaction_id = OLD.id))
            WHERE OLD.operation = 'generate'
            ON CONFLICT(task_key) DO UPDATE SET
                interactions = interactions + excluded.interactions,
                input_total = input_total + excluded.input_total,
                input_total_calls = input_total_calls + excluded.input_total_calls,
                cache_read = cache_read + excluded.cache_read,
                cache_read_calls = cache_read_calls + excluded.cache_read_calls,
                cache_read_input = cache_read_input + excluded.cache_read_input,
                cache_write = cache_write + excluded.cache_write,
                cache_write_calls = cache_write_calls + excluded.cache_write_calls,
                output_total = output_total + excluded.output_total,
                output_total_calls = output_total_calls + excluded.output_total_calls,
                reasoning = reasoning + excluded.reasoning,
                reasoning_calls = reasoning_calls + excluded.reasoning_calls,
                reasoning_output = reasoning_output + excluded.reasoning_output,
                cost_usd = cost_usd + excluded.cost_usd,
                cost_calls = cost_calls + excluded.cost_calls,
                reported_tokens = reported_tokens + excluded.reported_tokens,
                estimated_tokens = estimated_tokens + excluded.estimated_tokens,
                partial_tokens = partial_tokens + excluded.partial_tokens,
                context_switches = context_switches + excluded.context_switches,
                flagged = flagged + excluded.flagged;
        END;

        CREATE TRIGGER task_usage_flag AFTER INSERT ON flags
        BEGIN
            UPDATE task_usage SET flagged = flagged + 1
            WHERE task_key = (SELECT coalesce(task_id, '') FROM interactions WHERE id = NEW.interaction_id AND operation = 'generate');
        END;

        CREATE TRIGGER task_usage_unflag AFTER DELETE ON flags
        BEGIN
            UPDATE task_usage SET flagged = flagged - 1
            WHERE task_key = (SELECT coalesce(task_id, '') FROM interactions WHERE id = OLD.interaction_id AND operation = 'generate');
        END;

        INSERT INTO task_usage (
            task_key,
            interactions,
            input_total,
            input_total_calls,
            cache_read,
            cache_read_calls,
            cache_read_input,
            cache_write,
            cache_write_calls,
            output_total,
            output_total_calls,
            reasoning,
            reasoning_calls,
            reasoning_output,
            cost_usd,
            cost_calls,
            reported_tokens,
            estimated_tokens,
            partial_tokens,
            context_switches,
            flagged
        )
        SELECT coalesce(i.task_id, ''),
            sum(1),
            sum(coalesce(i.input_total, 0)),
            sum(i.input_total IS NOT NULL),
            sum(coalesce(i.cache_read, 0)),
            sum(i.cache_read IS NOT NULL),
            sum(CASE WHEN i.cache_read IS NOT NULL THEN coalesce(i.input_total, 0) ELSE 0 END),
            sum(coalesce(i.cache_write, 0)),
            sum(i.cache_write IS NOT NULL),
            sum(coalesce(i.output_total, 0)),
            sum(i.output_total IS NOT NULL),
            sum(coalesce(i.reasoning, 0)),
            sum(i.reasoning IS NOT NULL),
            sum(CASE WHEN i.reasoning IS NOT NULL THEN coalesce(i.output_total, 0) ELSE 0 END),
            sum(coalesce(i.cost_usd, 0)),
            sum(i.cost_usd IS NOT NULL),
            sum(CASE WHEN i.usage_source = 'reported' THEN coalesce(i.input_total, 0) + coalesce(i.output_total, 0) ELSE 0 END),
            sum(CASE WHEN i.usage_source = 'estimated' THEN coalesce(i.input_total, 0) + coalesce(i.output_total, 0) ELSE 0 END),
            sum(CASE WHEN i.usage_source = 'partial' THEN coalesce(i.input_total, 0) + coalesce(i.output_total, 0) ELSE 0 END),
            sum(coalesce(i.context_switch, 0)),
            sum(EXISTS (SELECT 1 FROM flags WHERE interaction_id = i.id))
        FROM interactions i WHERE i.operation = 'generate' GROUP BY 1;
        """,
    )


@migration
def m003_canonical_ids_and_recording_health(db: sqlite3.Connection) -> None:
    """Task and phase IDs in one spelling (upper case); a note column for what the
    recorder had to drop from a call; each proxy's recording health."""
    db.execute("PRAGMA defer_foreign_keys = ON")  # ids and their references change together
    run_script(
        db,
        """
        UPDATE phases SET id = upper(id) WHERE id != upper(id) COLLATE BINARY;
        UPDATE tasks SET id = upper(id) WHERE id != upper(id) COLLATE BINARY;
        UPDATE tasks SET phase_id = upper(phase_id) WHERE phase_id != upper(phase_id) COLLATE BINARY;
        UPDATE task_events SET task_id = upper(task_id) WHERE task_id != upper(task_id) COLLATE BINARY;
        UPDATE task_events SET previous_task_id = upper(previous_task_id) WHERE previous_task_id != upper(previous_task_id) COLLATE BINARY;
        UPDATE state SET value = upper(value) WHERE key = 'current_task' AND value != upper(value) COLLATE BINARY;
        -- (COLLATE BINARY: the ID columns compare without case.) The rollup
        -- triggers move each call's sums to the canonical key.
        UPDATE interactions SET task_id = upper(task_id) WHERE task_id != upper(task_id) COLLATE BINARY;
        DELETE FROM task_usage WHERE task_key != upper(task_key) COLLATE BINARY AND interactions = 0;

        ALTER TABLE interactions ADD COLUMN notes TEXT;

        ALTER TABLE proxies ADD COLUMN recording TEXT NOT NULL DEFAULT 'recording';
        ALTER TABLE proxies ADD COLUMN dropped_calls INTEGER NOT NULL DEFAULT 0;
        """,
    )


@migration
def m004_failed_calls_apart(db: sqlite3.Connection) -> None:
    """Calls that never reached a model (no response, 429, 5xx, and no usage
    stated) are counted in task_usage.failed_calls, not as AI interactions, so
    that an SDK's retries do not inflate the interaction count."""
    failed = "({r}.operation = 'generate' AND {r}.input_total IS NULL AND ({r}.outcome = 'failed' OR {r}.http_status = 429 OR {r}.http_status >= 500))"
    run_script(
        db,
        f"""
        ALTER TABLE task_usage ADD COLUMN failed_calls INTEGER NOT NULL DEFAULT 0;

        -- Besides task_usage_insert/update/delete (m002): move a failed call
        -- from `interactions` to `failed_calls`.
        CREATE TRIGGER task_usage_failed_insert AFTER INSERT ON interactions WHEN {failed.format(r="NEW")}
        BEGIN
            INSERT INTO task_usage (task_key, interactions, failed_calls) VALUES (coalesce(NEW.task_id, ''), -1, 1)
            ON CONFLICT(task_key) DO UPDATE SET interactions = interactions - 1, failed_calls = failed_calls + 1;
        END;

        CREATE TRIGGER task_usage_failed_update AFTER UPDATE OF task_id, operation, input_total, outcome, http_status ON interactions
        BEGIN
            UPDATE task_usage SET interactions = interactions + 1, failed_calls = failed_calls - 1
            WHERE task_key = coalesce(OLD.task_id, '') AND {failed.format(r="OLD")};
            INSERT INTO task_usage (task_key, interactions, failed_calls)
            SELECT coalesce(NEW.task_id, ''), -1, 1 WHERE {failed.format(r="NEW")}
            ON CONFLICT(task_key) DO UPDATE SET interactions = interactions - 1, failed_calls = failed_calls + 1;
        END;

        CREATE TRIGGER task_usage_failed_delete BEFORE DELETE ON interactions WHEN {failed.format(r="OLD")}
        BEGIN
            UPDATE task_usage SET interactions = interactions + 1, failed_calls = failed_calls - 1
            WHERE task_key = coalesce(OLD.task_id, '');
        END;

        UPDATE task_usage SET
            failed_calls = (SELECT count(*) FROM interactions i WHERE coalesce(i.task_id, '') = task_key AND {failed.format(r="i")}),
            interactions = interactions - (SELECT count(*) FROM interactions i WHERE coalesce(i.task_id, '') = task_key AND {failed.format(r="i")});
        """,
    )


@migration
def m005_call_texts(db: sqlite3.Connection) -> None:
    """What a call said, for `meter show`: the last message a person typed, the
    tool calls and results since (a line each), and the response's text. Kept
    apart from usage so `meter purge` and retention can delete it alone. And
    the client's session, so a status line can tell whether its calls are metered."""
    run_script(
        db,
        """
        CREATE TABLE call_texts (
            interaction_id TEXT PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
            prompt TEXT,
            steps TEXT,
            response TEXT
        );
        CREATE INDEX interactions_model ON interactions(model, started_at);

        -- The client's own session (Claude Code's session ID), for its status line.
        ALTER TABLE interactions ADD COLUMN client_session TEXT;
        CREATE INDEX interactions_client_session ON interactions(client_session, started_at);
        """,
    )


@migration
def m006_sessions(db: sqlite3.Connection) -> None:
    """The session each call belongs to (see docs/metrics.md, "Sessions and
    context switches"). Calls recorded before have the client's session, else
    their conversation, else themselves; their context_switch values stay as the
    earlier rule set them until a retag recomputes their task."""
    run_script(
        db,
        """
        ALTER TABLE interactions ADD COLUMN session_id TEXT;
        UPDATE interactions SET session_id = coalesce(client_session, conversation_id, id);
        CREATE INDEX interactions_session ON interactions(session_id, started_at);
        -- A conversation's last call, to tell whether it continues a session.
        CREATE INDEX interactions_conversation ON interactions(conversation_id, started_at);
        """,
    )


@migration
def m007_task_activity(db: sqlite3.Connection) -> None:
    """The minutes in which each task had an AI call, kept by triggers, so that
    working time (docs/metrics.md) never scans the calls."""
    minute = "substr({r}.started_at, 1, 16)"
    still_used = (
        "EXISTS (SELECT 1 FROM interactions i WHERE i.task_id = OLD.task_id"
        f" AND i.started_at >= {minute.format(r='OLD')} AND i.started_at < {minute.format(r='OLD')} || ':60')"
    )
    run_script(
        db,
        f"""
        CREATE TABLE task_activity (
            task_id TEXT NOT NULL,
            minute TEXT NOT NULL,
            PRIMARY KEY (task_id, minute)
        ) WITHOUT ROWID;

        INSERT OR IGNORE INTO task_activity (task_id, minute)
        SELECT task_id, {minute.format(r="interactions")} FROM interactions WHERE task_id IS NOT NULL;

        CREATE TRIGGER task_activity_insert AFTER INSERT ON interactions WHEN NEW.task_id IS NOT NULL
        BEGIN
            INSERT OR IGNORE INTO task_activity (task_id, minute) VALUES (NEW.task_id, {minute.format(r="NEW")});
        END;

        CREATE TRIGGER task_activity_update AFTER UPDATE OF task_id ON interactions
        BEGIN
            DELETE FROM task_activity WHERE task_id = OLD.task_id AND minute = {minute.format(r="OLD")} AND NOT {still_used};
            INSERT OR IGNORE INTO task_activity (task_id, minute) SELECT NEW.task_id, {minute.format(r="NEW")} WHERE NEW.task_id IS NOT NULL;
        END;

        CREATE TRIGGER task_activity_delete AFTER DELETE ON interactions WHEN OLD.task_id IS NOT NULL
        BEGIN
            DELETE FROM task_activity WHERE task_id = OLD.task_id AND minute = {minute.format(r="OLD")} AND NOT {still_used};
        END;
        """,
    )


@migration
def m008_commits_and_automatic_marks(db: sqlite3.Connection) -> None:
    """Commits the git hooks saw, and every mark the meter set by itself with its
    source (docs/automation.md). A task's commits count as activity for working time."""
    run_script(
        db,
        """
        CREATE TABLE commits (
            sha TEXT PRIMARY KEY,
            repo TEXT NOT NULL,
            branch TEXT,
            task_id TEXT REFERENCES tasks(id),
            committed_at TEXT NOT NULL,
            files INTEGER NOT NULL,
            insertions INTEGER NOT NULL,
            deletions INTEGER NOT NULL
        );
        CREATE INDEX commits_task ON commits(task_id, committed_at);

        CREATE TABLE automatic_marks (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            task_id TEXT,
            phase_id TEXT,
            milestone TEXT NOT NULL,
            value,
            source TEXT NOT NULL
        );
        """,
    )


@migration
def m009_test_runs(db: sqlite3.Connection) -> None:
    """pytest sessions the plugin reported (docs/automation.md)."""
    run_script(
        db,
        """
        CREATE TABLE test_runs (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            repo TEXT NOT NULL,
            task_id TEXT REFERENCES tasks(id),
            exit_status INTEGER NOT NULL,
            tests INTEGER,
            failed INTEGER,
            full_run INTEGER NOT NULL,
            coverage REAL,
            coverage_target REAL
        );
        CREATE INDEX test_runs_task ON test_runs(task_id, at);
        """,
    )


@migration
def m010_session_tasks(db: sqlite3.Connection) -> None:
    """Claude Code sessions bound to a task by its SessionStart hook: their calls
    go to that task, whatever `meter set-task` says in other terminals."""
    run_script(
        db,
        """
        CREATE TABLE session_tasks (
            session_id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks(id),
            bound_at TEXT NOT NULL
        );
        """,
    )


@migration
def m011_usage_quarters(db: sqlite3.Connection) -> None:
    """Usage per quarter hour (UTC), model and task, kept by triggers, so that the
    usage reports (docs/metrics.md) read a few thousand rows, not every call.
    Quarter hours, because every time zone's offset is a multiple of 15 minutes:
    local hours, days, weeks and months are whole sets of them. A count nobody
    stated stays NULL: each token column keeps how many calls stated it."""
    # The failed-call rule of m004, frozen here; a NULL status makes it NULL: not failed.
    failed = "coalesce(({r}.operation = 'generate' AND {r}.input_total IS NULL AND ({r}.outcome = 'failed' OR {r}.http_status = 429 OR {r}.http_status >= 500)), 0)"
    quarter = (
        "substr({r}.started_at, 1, 14) || CASE WHEN substr({r}.started_at, 15, 2) < '15' THEN '00'"
        " WHEN substr({r}.started_at, 15, 2) < '30' THEN '15' WHEN substr({r}.started_at, 15, 2) < '45' THEN '30' ELSE '45' END"
    )
    counted = ["input_total", "cache_read", "cache_write", "output_total", "reasoning", "cost_usd"]

    def add(r: str, sign: str, flag_too: bool = True) -> str:
        """The call `r` (NEW or OLD) added to (sign +) or taken from (sign -) its
        quarter; with its flag unless the flag's own trigger counts it."""
        flagged = f"EXISTS (SELECT 1 FROM flags WHERE interaction_id = {r}.id)" if flag_too else "0"
        values = [
            f"{sign}(NOT {failed.format(r=r)})",
            f"{sign}({failed.format(r=r)})",
            *(f"{sign}coalesce({r}.{c}, 0), {sign}({r}.{c} IS NOT NULL)" for c in counted),
            f"{sign}({r}.cost_usd IS NOT NULL AND NOT {failed.format(r=r)})",
            f"{sign}({flagged})",
        ]
        sums = ["ai_interactions", "failed_calls", *(f"{c}, {c}_calls" for c in counted), "priced", "flagged"]
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for group in sums for c in group.split(", "))
        return f"""
            INSERT INTO usage_quarters (quarter, model, task_key, {", ".join(sums)})
            SELECT {quarter.format(r=r)}, coalesce({r}.model, '?'), coalesce({r}.task_id, ''), {", ".join(values)}
            WHERE {r}.operation = 'generate'
            ON CONFLICT(quarter, model, task_key) DO UPDATE SET {updates};"""

    def flag(r: str, sign: str) -> str:
        return f"""
            UPDATE usage_quarters SET flagged = flagged {sign} 1
            WHERE (quarter, model, task_key) = (
                SELECT {quarter.format(r="i")}, coalesce(i.model, '?'), coalesce(i.task_id, '')
                FROM interactions i WHERE i.id = {r}.interaction_id AND i.operation = 'generate'
            );"""

    columns = "".join(
        f"{c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL DEFAULT 0, {c}_calls INTEGER NOT NULL DEFAULT 0, "
        for c in counted
    )
    run_script(
        db,
        f"""
        CREATE TABLE usage_quarters (
            quarter TEXT NOT NULL,
            model TEXT NOT NULL,
            task_key TEXT NOT NULL,
            ai_interactions INTEGER NOT NULL DEFAULT 0,
            failed_calls INTEGER NOT NULL DEFAULT 0,
            {columns}
            priced INTEGER NOT NULL DEFAULT 0,
            flagged INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (quarter, model, task_key)
        ) WITHOUT ROWID;
        CREATE INDEX usage_quarters_task ON usage_quarters(task_key, quarter);

        -- A call being stored has no flag yet (flags name stored calls).
        CREATE TRIGGER usage_quarters_insert AFTER INSERT ON interactions WHEN NEW.operation = 'generate'
        BEGIN {add("NEW", "+", flag_too=False)}
        END;

        CREATE TRIGGER usage_quarters_update AFTER UPDATE OF task_id, model, started_at, operation, input_total, cache_read,
            cache_write, output_total, reasoning, cost_usd, outcome, http_status ON interactions
        BEGIN {add("OLD", "-")} {add("NEW", "+")}
        END;

        -- Its flag goes by the flags' cascade, and usage_quarters_unflag.
        CREATE TRIGGER usage_quarters_delete BEFORE DELETE ON interactions
        BEGIN {add("OLD", "-", flag_too=False)}
        END;

        CREATE TRIGGER usage_quarters_flag AFTER INSERT ON flags
        BEGIN {flag("NEW", "+")}
        END;

        CREATE TRIGGER usage_quarters_unflag AFTER DELETE ON flags
        BEGIN {flag("OLD", "-")}
        END;
        """,
    )
    # The calls so far, as the triggers would have added them one by one.
    totals = ", ".join(f"sum(coalesce(i.{c}, 0)), sum(i.{c} IS NOT NULL)" for c in counted)
    db.execute(
        f"""
        INSERT INTO usage_quarters (quarter, model, task_key, ai_interactions, failed_calls,
            {", ".join(f"{c}, {c}_calls" for c in counted)}, priced, flagged)
        SELECT {quarter.format(r="i")}, coalesce(i.model, '?'), coalesce(i.task_id, ''),
            sum(NOT {failed.format(r="i")}), sum({failed.format(r="i")}), {totals},
            sum(i.cost_usd IS NOT NULL AND NOT {failed.format(r="i")}), count(f.interaction_id)
        FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id
        WHERE i.operation = 'generate'
        GROUP BY 1, 2, 3
        """
    )


@migration
def m012_budgets_and_alerts(db: sqlite3.Connection) -> None:
    """Budgets per task and phase, the alerts the recorder raised, and which calls
    the meter refused (docs/budgets.md)."""
    run_script(
        db,
        """
        CREATE TABLE budgets (
            scope TEXT NOT NULL CHECK (scope IN ('task', 'phase')),
            target TEXT NOT NULL,
            tokens INTEGER CHECK (tokens > 0),
            usd REAL CHECK (usd > 0),
            on_exceeded TEXT CHECK (on_exceeded IN ('warn', 'block')),  -- NULL: the config's
            set_at TEXT NOT NULL,
            PRIMARY KEY (scope, target),
            CHECK (tokens IS NOT NULL OR usd IS NOT NULL)
        );

        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('budget', 'loop', 'burn_rate')),
            key TEXT NOT NULL,  -- what it is about: budget:task:P1-010:80:<budget set_at>, loop:SESSION:SIGNATURE
            task_id TEXT,
            session_id TEXT,
            conversation_id TEXT,  -- a loop's, to block a client that sends no session of its own
            blocks INTEGER NOT NULL DEFAULT 0,  -- a loop alert in block mode: the session's calls are refused
            message TEXT NOT NULL,
            cleared_at TEXT
        );
        CREATE UNIQUE INDEX alerts_key ON alerts(key) WHERE cleared_at IS NULL;
        CREATE INDEX alerts_open ON alerts(cleared_at, at);

        -- Why the meter answered a call itself instead of forwarding it: budget or loop.
        ALTER TABLE interactions ADD COLUMN blocked TEXT;
        """,
    )


class _m013_ReworkSql:
    """The SQL that keeps session_rework (m013), for the calls `counted` lets in
    (a condition on a call {r}; None: every generation call)."""

    session = "coalesce({r}.session_id, {r}.id)"  # a call with no session is a session of its own

    def __init__(self, counted: str | None = None) -> None:
        self.counted = counted

    def _counts(self, r: str) -> str:
        return "" if self.counted is None else f" AND {self.counted.format(r=r)}"

    def rows(self, which: str) -> str:
        """The rows of the sessions `which` (a condition on their flagged calls g)."""
        session = self.session
        return f"""
            INSERT INTO session_rework (task_id, session_key, flagged_at, flagged_id, calls, tokens, cost_usd)
            SELECT first.task_id, first.session_key, first.started_at, first.id, count(later.id),
                coalesce(sum(coalesce(later.input_total, 0) + coalesce(later.output_total, 0)), 0),
                coalesce(sum(later.cost_usd), 0)
            FROM (
                SELECT * FROM (
                    SELECT g.task_id, {session.format(r="g")} AS session_key, g.started_at, g.id,
                        row_number() OVER (PARTITION BY g.task_id, {session.format(r="g")} ORDER BY g.started_at, g.id) AS n
                    FROM flags f JOIN interactions g ON g.id = f.interaction_id
                    WHERE g.operation = 'generate' AND g.task_id IS NOT NULL AND {which}
                ) WHERE n = 1
            ) first
            LEFT JOIN interactions later ON later.session_id = first.session_key AND later.task_id = first.task_id
                AND later.operation = 'generate' AND (later.started_at, later.id) > (first.started_at, first.id){self._counts("later")}
            GROUP BY first.task_id, first.session_key;"""

    def recompute(self, task: str, key: str) -> str:
        return f"""
            DELETE FROM session_rework WHERE task_id = {task} AND session_key = {key};
            {self.rows(f"g.task_id = {task} AND {self.session.format(r='g')} = {key}")}"""

    def of_call(self, r: str) -> str:
        return self.recompute(f"{r}.task_id", self.session.format(r=r))

    def of_flag(self, r: str) -> str:
        looked_up = "(SELECT {column} FROM interactions WHERE id = " + r + ".interaction_id)"
        return self.recompute(looked_up.format(column="task_id"), looked_up.format(column=self.session.format(r="interactions")))

    def add(self, r: str, sign: str) -> str:
        """The call `r` (NEW or OLD) added to (sign +) or taken from (sign -) the row
        of its session, when it follows the session's first flagged call."""
        return f"""
            UPDATE session_rework SET calls = calls {sign} 1,
                tokens = tokens {sign} (coalesce({r}.input_total, 0) + coalesce({r}.output_total, 0)),
                cost_usd = cost_usd {sign} coalesce({r}.cost_usd, 0)
            WHERE task_id = {r}.task_id AND session_key = {r}.session_id AND {r}.operation = 'generate'
                AND ({r}.started_at, {r}.id) > (flagged_at, flagged_id){self._counts(r)};"""

    changed = "task_id, session_id, operation, started_at, input_total, output_total, cost_usd"

    def triggers(self) -> str:
        flagged = "EXISTS (SELECT 1 FROM flags WHERE interaction_id = NEW.id)"
        add, of_call, of_flag = self.add, self.of_call, self.of_flag
        return f"""
        -- A call being stored has no flag yet (flags name stored calls).
        CREATE TRIGGER session_rework_insert AFTER INSERT ON interactions
            WHEN NEW.operation = 'generate' AND NEW.task_id IS NOT NULL
        BEGIN {add("NEW", "+")}
        END;

        -- A call that is not flagged moves no session's first flag.
        CREATE TRIGGER session_rework_update AFTER UPDATE OF {self.changed} ON interactions WHEN NOT {flagged}
        BEGIN {add("OLD", "-")} {add("NEW", "+")}
        END;

        CREATE TRIGGER session_rework_update_flagged AFTER UPDATE OF {self.changed} ON interactions WHEN {flagged}
        BEGIN {of_call("OLD")} {of_call("NEW")}
        END;

        -- A flagged call's delete also deletes its flag (foreign key cascade): session_rework_unflag.
        CREATE TRIGGER session_rework_delete AFTER DELETE ON interactions
        BEGIN {add("OLD", "-")}
        END;

        CREATE TRIGGER session_rework_flag AFTER INSERT ON flags
        BEGIN {of_flag("NEW")}
        END;

        CREATE TRIGGER session_rework_unflag AFTER DELETE ON flags
        BEGIN {of_flag("OLD")}
        END;
"""


@migration
def m013_rework_rollup(db: sqlite3.Connection) -> None:
    """Rework per (task, session), kept by triggers, so that reports never scan a
    session's calls: the calls of a session that follow its first flagged call
    (docs/metrics.md). A new call adds itself; a flag, an unflag, or a change to a
    flagged call recomputes its session's row from that session's calls alone."""
    rework = _m013_ReworkSql()
    run_script(
        db,
        f"""
        CREATE TABLE session_rework (
            task_id TEXT NOT NULL,
            session_key TEXT NOT NULL,
            flagged_at TEXT NOT NULL,  -- the session's first flagged call: its start and ID
            flagged_id TEXT NOT NULL,
            calls INTEGER NOT NULL,  -- the calls after it in the session, their tokens and cost
            tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            PRIMARY KEY (task_id, session_key)
        ) WITHOUT ROWID;
        {rework.triggers()}
        {rework.rows("1")}
        """,
    )


@migration
def m014_response_ids_and_agent_logs(db: sqlite3.Connection) -> None:
    """The provider's own ID of each response (Anthropic `msg_…`, OpenAI `chatcmpl-…`
    or `resp_…`, Gemini `responseId`), the key that pairs a call with the turn an
    agent logged (`meter reconcile`). Calls imported from the agents' own logs:
    usage_source 'agent-log', attribution 'branch' for those that went to their
    log's branch's task, and their tokens per task, so reports can show their share."""
    widen_checks(
        db,
        "interactions",
        {
            # A call imported from an agent's log, and one attributed to its log's branch.
            "usage_source IN ('reported', 'estimated', 'partial')": "usage_source IN ('reported', 'estimated', 'partial', 'agent-log')",
            "attribution IN ('path', 'header', 'current', 'none', 'retag')": (
                "attribution IN ('path', 'header', 'current', 'none', 'retag', 'branch')"
            ),
        },
    )
    agent_log = "({r}.operation = 'generate' AND {r}.usage_source = 'agent-log')"
    tokens = "coalesce({r}.input_total, 0) + coalesce({r}.output_total, 0)"

    def add(r: str, sign: str) -> str:
        return f"""
            INSERT INTO task_usage (task_key, agent_log_tokens)
            SELECT coalesce({r}.task_id, ''), {sign}({tokens.format(r=r)}) WHERE {agent_log.format(r=r)}
            ON CONFLICT(task_key) DO UPDATE SET agent_log_tokens = agent_log_tokens + excluded.agent_log_tokens;"""

    run_script(
        db,
        f"""
        ALTER TABLE interactions ADD COLUMN response_id TEXT;
        CREATE INDEX interactions_response_id ON interactions(response_id) WHERE response_id IS NOT NULL;

        ALTER TABLE task_usage ADD COLUMN agent_log_tokens INTEGER NOT NULL DEFAULT 0;

        -- Besides task_usage_insert/update/delete (m002), which count the call itself.
        CREATE TRIGGER task_usage_agent_log_insert AFTER INSERT ON interactions WHEN {agent_log.format(r="NEW")}
        BEGIN {add("NEW", "+")}
        END;

        CREATE TRIGGER task_usage_agent_log_update AFTER UPDATE OF task_id, operation, input_total, output_total, usage_source
            ON interactions
        BEGIN {add("OLD", "-")} {add("NEW", "+")}
        END;

        CREATE TRIGGER task_usage_agent_log_delete BEFORE DELETE ON interactions WHEN {agent_log.format(r="OLD")}
        BEGIN {add("OLD", "-")}
        END;
        """,
    )


@migration
def m015_price_basis(db: sqlite3.Connection) -> None:
    """Whether a call's cost is what it costs ('api') or, for a subscription login,
    its price at the API's list price ('api-equivalent'), and the latter's sum per
    task, which USD budgets leave out unless the config counts it (docs/budgets.md)."""
    equivalent = "({r}.operation = 'generate' AND {r}.price_basis = 'api-equivalent')"

    def add(r: str, sign: str) -> str:
        return f"""
            INSERT INTO task_usage (task_key, api_equivalent_usd)
            SELECT coalesce({r}.task_id, ''), {sign}coalesce({r}.cost_usd, 0) WHERE {equivalent.format(r=r)}
            ON CONFLICT(task_key) DO UPDATE SET api_equivalent_usd = api_equivalent_usd + excluded.api_equivalent_usd;"""

    run_script(
        db,
        f"""
        ALTER TABLE interactions ADD COLUMN price_basis TEXT NOT NULL DEFAULT 'api'
            CHECK (price_basis IN ('api', 'api-equivalent'));

        ALTER TABLE task_usage ADD COLUMN api_equivalent_usd REAL NOT NULL DEFAULT 0;

        -- Besides task_usage_insert/update/delete (m002), which count the call's cost in cost_usd.
        CREATE TRIGGER task_usage_api_equivalent_insert AFTER INSERT ON interactions WHEN {equivalent.format(r="NEW")}
        BEGIN {add("NEW", "+")}
        END;

        CREATE TRIGGER task_usage_api_equivalent_update AFTER UPDATE OF task_id, operation, cost_usd, price_basis ON interactions
        BEGIN {add("OLD", "-")} {add("NEW", "+")}
        END;

        CREATE TRIGGER task_usage_api_equivalent_delete BEFORE DELETE ON interactions WHEN {equivalent.format(r="OLD")}
        BEGIN {add("OLD", "-")}
        END;
        """,
    )


@migration
def m016_conversation_roots(db: sqlite3.Connection) -> None:
    """The conversation root's hash apart from the stored conversation ID, which
    now scopes it to the call's task and session (store/sessions.py): sessions
    continue a root by it, and a loop block names it to the proxy. Older rows
    stored the root's hash as their conversation ID: it is their root."""
    run_script(
        db,
        """
        ALTER TABLE interactions ADD COLUMN conversation_root TEXT;
        UPDATE interactions SET conversation_root = conversation_id;
        CREATE INDEX interactions_conversation_root ON interactions(conversation_root, started_at);
        """,
    )


# The rule of store/interactions.py FAILED_CALL_SQL as m017 made it, frozen here; NULL (no status) is not failed.
_m017_FAILED_CALL = (
    "coalesce(({r}.operation = 'generate' AND {r}.input_total IS NULL AND ({r}.outcome = 'failed' OR {r}.http_status >= 400)), 0)"
)


@migration
def m017_failed_calls_one_rule(db: sqlite3.Connection) -> None:
    """A failed call is one that got no model answer: no response, or any HTTP
    error, 4xx as well as 429 and 5xx (a 400 or 401 ran no model either). The
    rollups' failed-call triggers (m004's on task_usage, m011's on usage_quarters)
    are made again with that rule, and both rollups' counts rebuilt from
    `interactions`. A hallucination flag on a failed call judges no answer: such
    flags move to failed_call_flags, kept and shown but counted nowhere; leaving
    `flags` takes them out of every rollup through the flags' own triggers."""
    failed = _m017_FAILED_CALL
    run_script(
        db,
        f"""
        CREATE TABLE failed_call_flags (
            interaction_id TEXT PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            note TEXT,
            flagged_at TEXT NOT NULL,
            set_aside_at TEXT NOT NULL
        );
        INSERT INTO failed_call_flags (interaction_id, kind, note, flagged_at, set_aside_at)
            SELECT f.interaction_id, f.kind, f.note, f.flagged_at, '{now_stored()}'
            FROM flags f JOIN interactions i ON i.id = f.interaction_id WHERE {failed.format(r="i")};
        DELETE FROM flags WHERE interaction_id IN (SELECT interaction_id FROM failed_call_flags);

        DROP TRIGGER task_usage_failed_insert;
        DROP TRIGGER task_usage_failed_update;
        DROP TRIGGER task_usage_failed_delete;
        CREATE TRIGGER task_usage_failed_insert AFTER INSERT ON interactions WHEN {failed.format(r="NEW")}
        BEGIN
            INSERT INTO task_usage (task_key, interactions, failed_calls) VALUES (coalesce(NEW.task_id, ''), -1, 1)
            ON CONFLICT(task_key) DO UPDATE SET interactions = interactions - 1, failed_calls = failed_calls + 1;
        END;
        CREATE TRIGGER task_usage_failed_update AFTER UPDATE OF task_id, operation, input_total, outcome, http_status ON interactions
        BEGIN
            UPDATE task_usage SET interactions = interactions + 1, failed_calls = failed_calls - 1
            WHERE task_key = coalesce(OLD.task_id, '') AND {failed.format(r="OLD")};
            INSERT INTO task_usage (task_key, interactions, failed_calls)
            SELECT coalesce(NEW.task_id, ''), -1, 1 WHERE {failed.format(r="NEW")}
            ON CONFLICT(task_key) DO UPDATE SET interactions = interactions - 1, failed_calls = failed_calls + 1;
        END;
        CREATE TRIGGER task_usage_failed_delete BEFORE DELETE ON interactions WHEN {failed.format(r="OLD")}
        BEGIN
            UPDATE task_usage SET interactions = interactions + 1, failed_calls = failed_calls - 1
            WHERE task_key = coalesce(OLD.task_id, '');
        END;

        UPDATE task_usage SET
            failed_calls = (SELECT count(*) FROM interactions i WHERE i.task_id IS nullif(task_key, '') AND {failed.format(r="i")}),
            interactions = (SELECT count(*) FROM interactions i WHERE i.task_id IS nullif(task_key, '')
                AND i.operation = 'generate' AND NOT {failed.format(r="i")}),
            flagged = (SELECT count(*) FROM flags f JOIN interactions i ON i.id = f.interaction_id
                WHERE i.task_id IS nullif(task_key, '') AND i.operation = 'generate');
        """,
    )
    _m017_usage_quarters(db, failed)


def _m017_usage_quarters(db: sqlite3.Connection, failed: str) -> None:
    """m011's usage_quarters triggers with m017's failed-call rule, and the table
    refilled from `interactions` as those triggers would have filled it."""
    quarter = (
        "substr({r}.started_at, 1, 14) || CASE WHEN substr({r}.started_at, 15, 2) < '15' THEN '00'"
        " WHEN substr({r}.started_at, 15, 2) < '30' THEN '15' WHEN substr({r}.started_at, 15, 2) < '45' THEN '30' ELSE '45' END"
    )
    counted = ["input_total", "cache_read", "cache_write", "output_total", "reasoning", "cost_usd"]
    sums = ["ai_interactions", "failed_calls", *(f"{c}, {c}_calls" for c in counted), "priced", "flagged"]

    def add(r: str, sign: str, flag_too: bool = True) -> str:
        flagged = f"EXISTS (SELECT 1 FROM flags WHERE interaction_id = {r}.id)" if flag_too else "0"
        values = [
            f"{sign}(NOT {failed.format(r=r)})",
            f"{sign}({failed.format(r=r)})",
            *(f"{sign}coalesce({r}.{c}, 0), {sign}({r}.{c} IS NOT NULL)" for c in counted),
            f"{sign}({r}.cost_usd IS NOT NULL AND NOT {failed.format(r=r)})",
            f"{sign}({flagged})",
        ]
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for group in sums for c in group.split(", "))
        return f"""
            INSERT INTO usage_quarters (quarter, model, task_key, {", ".join(sums)})
            SELECT {quarter.format(r=r)}, coalesce({r}.model, '?'), coalesce({r}.task_id, ''), {", ".join(values)}
            WHERE {r}.operation = 'generate'
            ON CONFLICT(quarter, model, task_key) DO UPDATE SET {updates};"""

    totals = ", ".join(f"sum(coalesce(i.{c}, 0)), sum(i.{c} IS NOT NULL)" for c in counted)
    run_script(
        db,
        f"""
        DROP TRIGGER usage_quarters_insert;
        DROP TRIGGER usage_quarters_update;
        DROP TRIGGER usage_quarters_delete;
        CREATE TRIGGER usage_quarters_insert AFTER INSERT ON interactions WHEN NEW.operation = 'generate'
        BEGIN {add("NEW", "+", flag_too=False)}
        END;
        CREATE TRIGGER usage_quarters_update AFTER UPDATE OF task_id, model, started_at, operation, input_total, cache_read,
            cache_write, output_total, reasoning, cost_usd, outcome, http_status ON interactions
        BEGIN {add("OLD", "-")} {add("NEW", "+")}
        END;
        CREATE TRIGGER usage_quarters_delete BEFORE DELETE ON interactions
        BEGIN {add("OLD", "-", flag_too=False)}
        END;

        DELETE FROM usage_quarters;
        INSERT INTO usage_quarters (quarter, model, task_key, {", ".join(sums)})
        SELECT {quarter.format(r="i")}, coalesce(i.model, '?'), coalesce(i.task_id, ''),
            sum(NOT {failed.format(r="i")}), sum({failed.format(r="i")}), {totals},
            sum(i.cost_usd IS NOT NULL AND NOT {failed.format(r="i")}), count(f.interaction_id)
        FROM interactions i LEFT JOIN flags f ON f.interaction_id = i.id
        WHERE i.operation = 'generate'
        GROUP BY 1, 2, 3;
        """,
    )


@migration
def m018_estimate_and_approval_history(db: sqlite3.Connection) -> None:
    """Every estimate of a task, so ESTIMATED_DURATION stays the first (what was
    projected) when it is re-estimated, and the approvals `meter task ID --reopen`
    withdrew (docs/metrics.md). A task estimated before this keeps its estimate in
    force as its first: an earlier one was overwritten and is not known."""
    run_script(
        db,
        """
        CREATE TABLE task_estimates (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
            estimate_seconds INTEGER,  -- NULL: unset
            set_at TEXT NOT NULL
        );
        CREATE INDEX task_estimates_task ON task_estimates(task_id, id);
        INSERT INTO task_estimates (task_id, estimate_seconds, set_at)
        SELECT id, estimate_seconds, created_at FROM tasks WHERE estimate_seconds IS NOT NULL;

        -- Whatever writes an estimate, its history follows (set_at in the stored form).
        CREATE TRIGGER task_estimates_insert AFTER INSERT ON tasks WHEN NEW.estimate_seconds IS NOT NULL
        BEGIN
            INSERT INTO task_estimates (task_id, estimate_seconds, set_at)
            VALUES (NEW.id, NEW.estimate_seconds, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
        END;
        CREATE TRIGGER task_estimates_update AFTER UPDATE OF estimate_seconds ON tasks
            WHEN NEW.estimate_seconds IS NOT OLD.estimate_seconds
        BEGIN
            INSERT INTO task_estimates (task_id, estimate_seconds, set_at)
            VALUES (NEW.id, NEW.estimate_seconds, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
        END;

        CREATE TABLE task_approvals (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
            approved_at TEXT NOT NULL,
            reopened_at TEXT NOT NULL,
            note TEXT
        );
        CREATE INDEX task_approvals_task ON task_approvals(task_id, id);
        """,
    )


@migration
def m019_phase_marks(db: sqlite3.Connection) -> None:
    """Every phase milestone a person marked with `meter phase --mark`, and whether
    the mark confirmed the time the meter had derived or seen (docs/tracking-pattern.md)."""
    run_script(
        db,
        """
        CREATE TABLE phase_marks (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            phase_id TEXT NOT NULL,
            milestone TEXT NOT NULL,
            value TEXT NOT NULL,
            confirmed TEXT  -- what the mark confirmed (the meter's source); NULL: a time the person gave
        );
        CREATE INDEX phase_marks_phase ON phase_marks(phase_id, milestone);
        """,
    )


@migration
def m020_context_switches_as_developers_mean_them(db: sqlite3.Connection) -> None:
    """Context switches by the rule of store/sessions.py (docs/metrics.md): a
    return to a task after another one, or an agent session after the task's
    first; a new SDK conversation or a pause in one no longer counts. Every
    stored call is judged afresh, and the task_usage rollup's context_switches
    rebuilt from the calls."""
    from taskmeter.store import sessions  # the rule as it stands, applied once to the stored calls

    switches = sessions.switch_events(db)
    tasks = [row[0] for row in db.execute("SELECT DISTINCT task_id FROM interactions WHERE task_id IS NOT NULL")]
    for task_id in tasks:
        db.executemany(
            "UPDATE interactions SET context_switch = ? WHERE id = ?",
            [(value, call_id) for call_id, value, stored in sessions.context_switches(db, task_id, switches) if stored != value],
        )
    db.execute(
        "UPDATE task_usage SET context_switches = (SELECT coalesce(sum(i.context_switch), 0) FROM interactions i"
        " WHERE coalesce(i.task_id, '') = task_usage.task_key AND i.operation = 'generate')"
    )


@migration
def m021_derived_iterations_and_no_zero_coverage_target(db: sqlite3.Connection) -> None:
    """Red test runs are no longer stored as iterations: which of them are rework
    is derived when read (store/testruns.py reworking_runs), so the events
    the pytest plugin stored go, and each task's count follows the new rule.
    A coverage `fail_under` of 0 (coverage's default) is no target: runs that
    reported it keep none, and a task's TEST_COVERAGE_TARGET of 0 the meter set
    itself (its last automatic mark is that 0) is cleared; a person's is kept."""
    run_script(
        db,
        """
        DELETE FROM task_events WHERE kind = 'iteration' AND note LIKE 'automatic: pytest run at %';
        UPDATE test_runs SET coverage_target = NULL WHERE coverage_target = 0;
        UPDATE tasks SET coverage_target = NULL
        WHERE coverage_target = 0 AND (
            SELECT value FROM automatic_marks
            WHERE task_id = tasks.id AND milestone = 'coverage_target' ORDER BY id DESC LIMIT 1
        ) = 0;
        """,
    )


@migration
def m022_rework_counts_answered_calls(db: sqlite3.Connection) -> None:
    """The rework after a flagged call counts the calls a model answered: a failed
    call (m017's rule) is no AI interaction, so it is no rework either. The
    session_rework triggers are made again with that rule and the rows rebuilt."""
    rework = _m013_ReworkSql(counted=f"NOT {_m017_FAILED_CALL}")
    names = ["insert", "update", "update_flagged", "delete", "flag", "unflag"]
    run_script(
        db,
        "".join(f"DROP TRIGGER session_rework_{name};\n" for name in names)
        + f"""
        {rework.triggers()}
        DELETE FROM session_rework;
        {rework.rows("1")}
        """,
    )


# A stored moment as POSIX seconds, as analytics/history.py seconds_sql computes it.
_m024_SECONDS = "(unixepoch(substr({at}, 1, 19)) * 1000000 + CAST(substr({at}, 21, 6) AS INTEGER)) / 1e6"


@migration
def m024_working_time_rollups(db: sqlite3.Connection) -> None:
    """What working time is made of, kept by triggers so that `meter tasks` and
    the phase reports read it instead of deriving it from every switch and minute.
    `switch_spans`: each set-task switch (task_id NULL: `meter set-task --clear`) with
    its moment in POSIX seconds and the next switch's (NULL: none yet), in the
    order of (at, id). `task_activity_runs`: each task's runs of consecutive
    task_activity minutes, as POSIX seconds [start, end). An index on the kind of
    task events finds the few iterations and milestones among many switches."""
    since = _m024_SECONDS.format(at="at")
    new_since = _m024_SECONDS.format(at="NEW.at")

    def next_since(at: str, event_id: str) -> str:
        return (
            f"(SELECT n.since FROM switch_spans n WHERE (n.at, n.event_id) > ({at}, {event_id})"
            " ORDER BY n.at, n.event_id LIMIT 1)"
        )

    def previous(at: str, event_id: str) -> str:
        return (
            f"(SELECT p.event_id FROM switch_spans p WHERE (p.at, p.event_id) < ({at}, {event_id})"
            " ORDER BY p.at DESC, p.event_id DESC LIMIT 1)"
        )

    # A switch leaves: the switch before it now lasts until the one after it.
    leave = f"""
            DELETE FROM switch_spans WHERE event_id = OLD.id;
            UPDATE switch_spans SET until = {next_since("OLD.at", "OLD.id")} WHERE event_id = {previous("OLD.at", "OLD.id")};"""
    # A switch arrives (if the new row is one): it lasts until the one after it, and ends the one before it.
    arrive = f"""
            INSERT INTO switch_spans (event_id, task_id, at, since, until)
            SELECT NEW.id, NEW.task_id, NEW.at, {new_since}, {next_since("NEW.at", "NEW.id")} WHERE NEW.kind = 'switch';
            UPDATE switch_spans SET until = {new_since}
            WHERE NEW.kind = 'switch' AND event_id = {previous("NEW.at", "NEW.id")};"""
    minute = "unixepoch({r}.minute)"
    m_new, m_old = minute.format(r="NEW"), minute.format(r="OLD")
    run_script(
        db,
        f"""
        CREATE INDEX task_events_kind ON task_events(kind, at);

        CREATE TABLE switch_spans (
            event_id INTEGER PRIMARY KEY,
            task_id TEXT,
            at TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL
        );
        CREATE INDEX switch_spans_order ON switch_spans(at, event_id);
        CREATE INDEX switch_spans_task ON switch_spans(lower(task_id), at);
        INSERT INTO switch_spans (event_id, task_id, at, since, until)
        SELECT id, task_id, at, {since}, lead({since}) OVER (ORDER BY at, id) FROM task_events WHERE kind = 'switch';

        CREATE TRIGGER switch_spans_insert AFTER INSERT ON task_events WHEN NEW.kind = 'switch'
        BEGIN{arrive}
        END;

        CREATE TRIGGER switch_spans_delete AFTER DELETE ON task_events WHEN OLD.kind = 'switch'
        BEGIN{leave}
        END;

        CREATE TRIGGER switch_spans_retag AFTER UPDATE OF task_id ON task_events
        WHEN NEW.kind = 'switch' AND OLD.kind = 'switch' AND NEW.id = OLD.id AND NEW.at = OLD.at
        BEGIN
            UPDATE switch_spans SET task_id = NEW.task_id WHERE event_id = NEW.id;
        END;

        -- A switch moved in time, or a row made a switch or no longer one: it leaves, and arrives anew.
        CREATE TRIGGER switch_spans_move AFTER UPDATE OF id, kind, at ON task_events
        WHEN 'switch' IN (OLD.kind, NEW.kind) AND (NEW.kind != OLD.kind OR NEW.id != OLD.id OR NEW.at != OLD.at)
        BEGIN{leave}{arrive}
        END;

        CREATE TABLE task_activity_runs (
            task_id TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL NOT NULL,
            PRIMARY KEY (task_id, start)
        ) WITHOUT ROWID;
        CREATE INDEX task_activity_runs_end ON task_activity_runs(task_id, end);
        INSERT INTO task_activity_runs (task_id, start, end)
        SELECT task_id, min(at), max(at) + 60 FROM (
            SELECT task_id, unixepoch(minute) AS at,
                unixepoch(minute) - 60 * row_number() OVER (PARTITION BY task_id ORDER BY minute) AS run
            FROM task_activity
        ) GROUP BY task_id, run;

        -- A minute joins the run ending where it starts and the one starting where it ends.
        CREATE TRIGGER task_activity_runs_insert AFTER INSERT ON task_activity
        BEGIN
            UPDATE task_activity_runs SET end = coalesce(
                (SELECT r.end FROM task_activity_runs r WHERE r.task_id = NEW.task_id AND r.start = {m_new} + 60), {m_new} + 60
            ) WHERE task_id = NEW.task_id AND end = {m_new};
            DELETE FROM task_activity_runs WHERE task_id = NEW.task_id AND start = {m_new} + 60 AND EXISTS (
                SELECT 1 FROM task_activity_runs l WHERE l.task_id = NEW.task_id AND l.start < {m_new} AND l.end > {m_new} + 60
            );
            UPDATE task_activity_runs SET start = {m_new} WHERE task_id = NEW.task_id AND start = {m_new} + 60;
            INSERT INTO task_activity_runs (task_id, start, end) SELECT NEW.task_id, {m_new}, {m_new} + 60 WHERE NOT EXISTS (
                SELECT 1 FROM task_activity_runs r WHERE r.task_id = NEW.task_id AND r.start <= {m_new} AND r.end >= {m_new} + 60
            );
        END;

        -- A minute leaves: its run splits around it.
        CREATE TRIGGER task_activity_runs_delete AFTER DELETE ON task_activity
        BEGIN
            INSERT INTO task_activity_runs (task_id, start, end)
            SELECT task_id, {m_old} + 60, end FROM task_activity_runs
            WHERE task_id = OLD.task_id AND start <= {m_old} AND end > {m_old} + 60;
            DELETE FROM task_activity_runs WHERE task_id = OLD.task_id AND start = {m_old};
            UPDATE task_activity_runs SET end = {m_old} WHERE task_id = OLD.task_id AND start < {m_old} AND end > {m_old};
        END;
        """,
    )


@migration
def m025_attribution_session(db: sqlite3.Connection) -> None:
    """Why a call has its task, told apart: attribution 'session' for a call whose
    Claude Code session was bound to a task (`meter claude install`), stored as
    'header' before, like the x-meter-task header. A call stored so whose session
    was bound cannot be told apart any more: 'header-or-session'; the other
    'header' calls named their task in the header."""
    widen_checks(
        db,
        "interactions",
        {
            "attribution IN ('path', 'header', 'current', 'none', 'retag', 'branch')": (
                "attribution IN ('path', 'header', 'current', 'none', 'retag', 'branch', 'session', 'header-or-session')"
            ),
        },
    )
    db.execute(
        "UPDATE interactions SET attribution = 'header-or-session'"
        " WHERE attribution = 'header' AND client_session IN (SELECT session_id FROM session_tasks)"
    )


@migration
@rebuilds_tables
def m026_task_tags_and_forecast_alerts(db: sqlite3.Connection) -> None:
    """A task's tag (`meter task ID --tag api`): the reference class its forecast is
    made from before its phase's; and alerts of the kind `forecast`, an open task
    past the upper end of its forecast (analytics/forecast.py, docs/forecasts.md)."""
    run_script(
        db,
        """
        ALTER TABLE tasks ADD COLUMN tag TEXT;
        CREATE INDEX tasks_tag ON tasks(tag) WHERE tag IS NOT NULL;
        """,
    )
    rebuild_table(
        db,
        "alerts",
        {"CHECK (kind IN ('budget', 'loop', 'burn_rate'))": "CHECK (kind IN ('budget', 'loop', 'burn_rate', 'forecast'))"},
    )


def _m027_synced_tables() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """What m027 sends to a team store: (kind, table, key column) of the rows one
    device owns, and (kind, table) of the rows a team shares field by field."""
    owned = [
        ("call", "interactions", "id"),
        ("call_text", "call_texts", "interaction_id"),
        ("flag", "flags", "interaction_id"),
        ("task_event", "task_events", "id"),
        ("commit", "commits", "sha"),
        ("test_run", "test_runs", "id"),
        ("automatic_mark", "automatic_marks", "id"),
        ("phase_mark", "phase_marks", "id"),
        ("task_estimate", "task_estimates", "id"),
        ("task_approval", "task_approvals", "id"),
    ]
    return owned, [("task_field", "tasks"), ("phase_field", "phases")]


@migration
def m027_team_identity_and_outbox(db: sqlite3.Connection) -> None:
    """A device ID minted once per database, and the outbox of the team store
    (docs/team.md): while `team_sync.enabled`, triggers list every row that
    changed, so no code path can forget one. A row's team-wide ID is the
    device's ID and its own key; its revision is its outbox `seq`, which only
    grows (AUTOINCREMENT). Tasks and phases are shared: each changed field is
    listed apart (`field`), with the time it was set, so that the team merges
    them per field. Nothing is listed until the meter joins a team; joining
    lists the history once (store/outbox.py)."""
    import uuid

    owned, shared = _m027_synced_tables()
    now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    enabled = "(SELECT enabled FROM team_sync WHERE id = 1)"
    script = f"""
        CREATE TABLE team_sync (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            device_id TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 0,
            joined_at TEXT
        );
        INSERT INTO team_sync (id, device_id) VALUES (1, '{uuid.uuid4()}');
        CREATE TABLE team_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            field TEXT NOT NULL DEFAULT '',
            changed_at TEXT NOT NULL,
            UNIQUE (kind, key, field)
        );
    """
    for kind, table, key in owned:
        for event, row in (("insert", "NEW"), ("update", "NEW"), ("delete", "OLD")):
            script += f"""
        CREATE TRIGGER team_outbox_{table}_{event} AFTER {event.upper()} ON {table} WHEN {enabled} BEGIN
            INSERT OR REPLACE INTO team_outbox (kind, key, changed_at) VALUES ('{kind}', {row}.{key}, {now});
        END;"""
    for kind, table in shared:
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})") if row[1] != "id"]
        inserted = "".join(
            f"""
            INSERT OR REPLACE INTO team_outbox (kind, key, field, changed_at)
                SELECT '{kind}', NEW.id, '{column}', {now} WHERE NEW.{column} IS NOT NULL;"""
            for column in columns
        )
        updated = "".join(
            f"""
            INSERT OR REPLACE INTO team_outbox (kind, key, field, changed_at)
                SELECT '{kind}', NEW.id, '{column}', {now} WHERE NEW.{column} IS NOT OLD.{column};"""
            for column in columns
        )
        script += f"""
        CREATE TRIGGER team_outbox_{table}_insert AFTER INSERT ON {table} WHEN {enabled} BEGIN{inserted}
            INSERT OR REPLACE INTO team_outbox (kind, key, field, changed_at) VALUES ('{kind}', NEW.id, 'deleted', {now});
        END;
        CREATE TRIGGER team_outbox_{table}_update AFTER UPDATE ON {table} WHEN {enabled} BEGIN{updated}
        END;
        CREATE TRIGGER team_outbox_{table}_delete AFTER DELETE ON {table} WHEN {enabled} BEGIN
            INSERT OR REPLACE INTO team_outbox (kind, key, field, changed_at) VALUES ('{kind}', OLD.id, 'deleted', {now});
        END;"""
    run_script(db, script + "\n")


@migration
def m029_settled_working_time(db: sqlite3.Connection) -> None:
    """Each task's working time once it is settled: approved, or no longer current
    with nothing of it later than the moment it was computed, so that it stays what
    it is while nothing it is made of changes (`meter tasks` reads it instead of
    walking every switch and minute again). Rows are written by whoever computes one
    (store/settled.py) and deleted here by every change to what working time is made
    of: the task's begin and approval, its switches, activity minutes, milestones,
    iterations, commits and test runs, however their task ID is spelled (IDs are
    case-insensitive, as tasks.id is). Each such change also counts in
    settled_work_changes: what was computed from rows read before a change is not kept."""
    forget = "DELETE FROM settled_work WHERE task_id = {row}.{column};"
    counted = "UPDATE settled_work_changes SET changes = changes + 1;"
    inputs = [
        ("tasks", "id", ("UPDATE OF id, begin_at, final_approval_at", "DELETE")),
        ("switch_spans", "task_id", ("INSERT", "UPDATE", "DELETE")),
        ("task_activity_runs", "task_id", ("INSERT", "UPDATE", "DELETE")),
        ("task_events", "task_id", ("INSERT", "UPDATE", "DELETE")),
        ("commits", "task_id", ("INSERT", "UPDATE", "DELETE")),
        ("test_runs", "task_id", ("INSERT", "UPDATE", "DELETE")),
    ]
    script = """
        CREATE TABLE settled_work (
            task_id TEXT PRIMARY KEY COLLATE NOCASE,
            idle_seconds REAL NOT NULL,
            holds_from TEXT NOT NULL,  -- '' (approved): always
            working_seconds REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE settled_work_changes (id INTEGER PRIMARY KEY CHECK (id = 1), changes INTEGER NOT NULL);
        INSERT INTO settled_work_changes (id, changes) VALUES (1, 0);"""
    for table, column, events in inputs:
        for event in events:
            rows = {"INSERT": ["NEW"], "DELETE": ["OLD"]}.get(event, ["OLD", "NEW"])
            body = " ".join([*(forget.format(row=row, column=column) for row in rows), counted])
            script += f"""
        CREATE TRIGGER settled_work_{table}_{event.split()[0].lower()} AFTER {event} ON {table} BEGIN {body} END;"""
    run_script(db, script + "\n")


@migration
def m030_usage_per_model_quarter(db: sqlite3.Connection) -> None:
    """usage_quarters summed over tasks: a row per quarter hour and model, for the usage
    reports and 5-hour blocks of every task (a task's own still read usage_quarters). A
    developer who switches tasks several times an hour has several rows of usage_quarters
    per quarter hour. Kept by triggers on usage_quarters itself, so that whatever changes
    it (a call's triggers, a deleted task's rows, a team report's sums) changes this too."""
    counted = ["input_total", "cache_read", "cache_write", "output_total", "reasoning", "cost_usd"]
    sums = ["ai_interactions", "failed_calls", *(f"{c}{n}" for c in counted for n in ("", "_calls")), "priced", "flagged"]
    columns = "".join(f"{c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL DEFAULT 0, " for c in sums)

    def add(key: str, value: str) -> str:
        """Add each sum's `value` (`{c}` for the column's name) to the row of quarter `key` (NEW or OLD)."""
        return f"""
            INSERT INTO usage_model_quarters (quarter, model, {", ".join(sums)})
            VALUES ({key}.quarter, {key}.model, {", ".join(value.format(c=c) for c in sums)})
            ON CONFLICT(quarter, model) DO UPDATE SET {", ".join(f"{c} = {c} + excluded.{c}" for c in sums)};"""

    def change(key: str, value: str) -> str:
        """`add` where the row is there: a quarter's (quarter, model) row is made with its first
        usage_quarters row and never deleted. An update costs less than an upsert (most calls)."""
        return f"""
            UPDATE usage_model_quarters SET {", ".join(f"{c} = {c} + {value.format(c=c)}" for c in sums)}
            WHERE quarter = {key}.quarter AND model = {key}.model;"""

    run_script(
        db,
        f"""
        CREATE TABLE usage_model_quarters (
            quarter TEXT NOT NULL,
            model TEXT NOT NULL,
            {columns}
            PRIMARY KEY (quarter, model)
        ) WITHOUT ROWID;

        CREATE TRIGGER usage_model_quarters_insert AFTER INSERT ON usage_quarters
        BEGIN {add("NEW", "NEW.{c}")}
        END;

        -- A call's sums added to its quarter's row (the most frequent change): the difference.
        CREATE TRIGGER usage_model_quarters_update AFTER UPDATE ON usage_quarters
            WHEN NEW.quarter = OLD.quarter AND NEW.model = OLD.model
        BEGIN {change("NEW", "(NEW.{c} - OLD.{c})")}
        END;

        CREATE TRIGGER usage_model_quarters_move AFTER UPDATE ON usage_quarters
            WHEN NEW.quarter <> OLD.quarter OR NEW.model <> OLD.model
        BEGIN {change("OLD", "-OLD.{c}")} {add("NEW", "NEW.{c}")}
        END;

        CREATE TRIGGER usage_model_quarters_delete AFTER DELETE ON usage_quarters
        BEGIN {change("OLD", "-OLD.{c}")}
        END;

        INSERT INTO usage_model_quarters (quarter, model, {", ".join(sums)})
        SELECT quarter, model, {", ".join(f"sum({c})" for c in sums)} FROM usage_quarters GROUP BY 1, 2;
        """,
    )


def applied(db: sqlite3.Connection) -> list[str]:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_meter_migrations'").fetchone()
    if not exists:
        return []
    return [row[0] for row in db.execute("SELECT name FROM _meter_migrations ORDER BY rowid")]


def check_not_newer(done: list[str]) -> None:
    known = {m.__name__ for m in MIGRATIONS}
    unknown = [name for name in done if name not in known]
    if unknown:
        raise MeterError(
            f"this database was written by a newer taskmeter (it has migration {unknown[0]}); upgrade taskmeter to use it"
        )


def pending(db: sqlite3.Connection) -> list[Migration]:
    done = applied(db)
    check_not_newer(done)
    return [fn for fn in MIGRATIONS if fn.__name__ not in done]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every pending migration, each in its own immediate transaction.

    An up-to-date database is only read, so opening it never takes the write lock.
    """
    ran: list[str] = []
    if not pending(db):
        return ran
    for fn in MIGRATIONS:
        foreign_keys_off = fn.__name__ in _REBUILDING and db.execute("PRAGMA foreign_keys").fetchone()[0]
        if foreign_keys_off:
            db.execute("PRAGMA foreign_keys = OFF")  # before the transaction: SQLite ignores it inside one
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS _meter_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            if fn in pending(db):
                fn(db)
                db.execute(
                    "INSERT INTO _meter_migrations (name, applied_at) VALUES (?, ?)",
                    (fn.__name__, now_stored()),
                )
                ran.append(fn.__name__)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled it back already (a full disk): its error is the one to tell
                db.execute("ROLLBACK")
            raise
        finally:
            if foreign_keys_off:
                db.execute("PRAGMA foreign_keys = ON")
    return ran
