"""The team store's sync, measured: `python -m bench.team [--smoke] [--out DIR]`
(`make bench-team`). A real PostgreSQL (tests/pg_server.py) on loopback:

- backlog: N calls waiting in one meter's outbox, sent by `meter team sync --once`'s
  code; calls per second (target >= 5,000);
- latency: calls stored at a steady rate while `meter team sync` runs; from each
  call's local COMMIT to its `synced_at` on the server, p50 / p99 (target p99 <= 5 s).

Writes DIR/team-benchmarks.json (default DIR: docs/) and prints a line per measure.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.measures import percentile
from taskmeter.store import connection, outbox
from taskmeter.team import schema, sync
from tests.pg_server import PostgresServer

START = "2026-01-01T00:00:00.000000Z"


def _insert_calls(db, first: int, count: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO interactions (id, task_id, started_at, ended_at, provider, protocol, operation, model,"
        " input_total, output_total, cost_usd, usage_source, http_status, outcome)"
        " VALUES (?, 'P1-001', ?, ?, 'openai', 'openai_chat', 'generate', 'gpt-4o-mini', 100, 20, 0.0001,"
        " 'reported', 200, 'complete')",
        [(f"bench{n:010d}", START, START) for n in range(first, first + count)],
    )
    db.execute("COMMIT")


# The scale row: a team store of DEVELOPERS developers over a year, built on the server
# (generate_series), shaped like the local bench's store (bench/measures.py build_history):
# PHASES phases of TASKS_PER_PHASE tasks, each developer switching between 8 of its phase's
# tasks (each task shared by 2 developers), one session and one flagged call per switch.
DEVELOPERS = 50
PHASES = 10
TASKS_PER_PHASE = 200
WORKING_DAYS = 250  # a year of them
# A call every 6.5 s while working (the full store: 1.1M calls a developer, 8 hours a day); a
# smaller store works fewer hours a day, so that its minutes and their runs are shaped alike.
CALL_GAP_SECONDS = 6.5
SWITCHES_PER_DEVELOPER = 2200  # ~9 a working day: 110,000 switches, sessions and flags in all
_STAMP = """to_char(({at}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_ORIGIN = "timestamptz '2026-01-05 00:00:00+00'"


def _build_scale_store(conn, calls: int) -> None:
    """The store's rows, then its rollups from them (ROLLUPS_FROM_ROWS and QUARTERS_FROM_ROWS's
    quarters_delta, as an upgrade makes them: set-wise, faster than 50 developers' syncs through the triggers)."""
    per_developer = calls // DEVELOPERS
    per_day = max(1, per_developer // WORKING_DAYS)
    per_switch = max(1, per_developer // SWITCHES_PER_DEVELOPER)
    phase_days = 365 / PHASES
    conn.execute("ALTER TABLE taskmeter.calls DISABLE TRIGGER USER")
    conn.execute("ALTER TABLE taskmeter.records DISABLE TRIGGER USER")
    phase_start = f"{_ORIGIN} + (p - 1) * interval '{phase_days} days'"
    conn.execute(
        f"""
        INSERT INTO taskmeter.fields (id, entity, entity_id, field, value, developer, device, rev, set_at)
        SELECT 'phase:P' || p || ':created_at', 'phase', 'P' || p, 'created_at', to_jsonb({_STAMP.format(at=phase_start)}),
            'dev00', 'bench', 1, {phase_start}
        FROM generate_series(1, {PHASES}) p"""
    )
    task = "'P' || p || '-' || lpad(j::text, 3, '0')"
    approved = f"{_ORIGIN} + p * interval '{phase_days} days' - interval '1 second'"
    conn.execute(
        f"""
        INSERT INTO taskmeter.fields (id, entity, entity_id, field, value, developer, device, rev, set_at)
        SELECT 'task:' || {task} || ':' || f.field, 'task', {task}, f.field, f.value, 'dev00', 'bench', 1, {phase_start}
        FROM generate_series(1, {PHASES}) p, generate_series(0, {TASKS_PER_PHASE - 1}) j,
        LATERAL (VALUES ('created_at', to_jsonb({_STAMP.format(at=phase_start)})), ('phase_id', to_jsonb('P' || p)),
            ('estimate_seconds', to_jsonb(3600)),
            ('final_approval_at', CASE WHEN p < {PHASES} THEN to_jsonb({_STAMP.format(at=approved)}) END)) AS f(field, value)
        WHERE f.value IS NOT NULL"""
    )
    # Call m of developer d: working day m / per_day (5 a week), from 09:00 UTC, one every CALL_GAP_SECONDS.
    at = (
        f"{_ORIGIN} + ((m / {per_day}) / 5 * 7 + (m / {per_day}) % 5) * interval '1 day' + interval '9 hours'"
        f" + (m % {per_day}) * interval '{CALL_GAP_SECONDS} seconds'"
    )
    phase = f"least({PHASES}, 1 + floor(extract(epoch FROM ({at}) - {_ORIGIN}) / 86400 / {phase_days})::int)"
    task_of = f"'P' || {phase} || '-' || lpad((((d * 4 + (m / {per_switch}) % 8)) % {TASKS_PER_PHASE})::text, 3, '0')"
    for d in range(DEVELOPERS):
        conn.execute(
            f"""
            INSERT INTO taskmeter.calls (id, developer, device, rev, task_id, started_at, model, operation,
                input_total, output_total, cost_usd, row)
            SELECT 'dev{d:02d}:' || lpad(m::text, 9, '0'), 'dev{d:02d}', 'dev{d:02d}', 1, t.task_id, t.at,
                'claude-sonnet-4-5', 'generate', 1200, 300, 0.0004,
                jsonb_build_object('id', lpad(m::text, 9, '0'), 'task_id', t.task_id, 'started_at', t.stamp,
                    'ended_at', t.stamp, 'provider', 'anthropic', 'protocol', 'anthropic', 'operation', 'generate',
                    'model', 'claude-sonnet-4-5', 'streamed', 1, 'http_status', 200, 'outcome', 'complete',
                    'input_total', 1200, 'cache_read', 800, 'cache_write', 0, 'output_total', 300, 'reasoning', 40,
                    'usage_source', 'reported', 'cost_usd', 0.0004, 'price_basis', 'api', 'attribution', 'current',
                    'session_id', 'dev{d:02d}-' || m / {per_switch}, 'context_switch', (m % {per_switch} = 0 AND m > 0)::int)
            FROM generate_series(0, {per_developer - 1}) m, LATERAL (SELECT {d} AS d) dd,
            LATERAL (SELECT {task_of} AS task_id, {at} AS at, {_STAMP.format(at=at)} AS stamp) t"""
        )
        # A switch at each interval's first call; a flag on its middle one.
        conn.execute(
            f"""
            INSERT INTO taskmeter.records (id, developer, device, rev, kind, task_id, at, row)
            SELECT 'task_event:dev{d:02d}:' || k, 'dev{d:02d}', 'dev{d:02d}', 1, 'task_event', c.task_id, c.row->>'started_at',
                jsonb_build_object('id', k, 'task_id', c.task_id, 'kind', 'switch', 'at', c.row->>'started_at')
            FROM generate_series(0, {per_developer - 1}, {per_switch}) AS s(m), LATERAL (SELECT s.m / {per_switch} AS k) kk,
            taskmeter.calls c WHERE c.id = 'dev{d:02d}:' || lpad(s.m::text, 9, '0')
            UNION ALL
            SELECT 'flag:' || c.id, 'dev{d:02d}', 'dev{d:02d}', 1, 'flag', NULL, c.row->>'started_at',
                jsonb_build_object('interaction_id', c.row->>'id', 'flagged_at', c.row->>'started_at')
            FROM generate_series({per_switch // 2}, {per_developer - 1}, {per_switch}) AS s(m),
            taskmeter.calls c WHERE c.id = 'dev{d:02d}:' || lpad(s.m::text, 9, '0')"""
        )
        conn.commit()
        print(f"  built developer {d + 1}/{DEVELOPERS}", flush=True)
    conn.execute(schema.ROLLUPS_FROM_ROWS)
    # usage_quarters a developer at a time (a range of the primary key): QUARTERS_FROM_ROWS in one
    # statement sorts every call with its JSON on disk to group them (41 GB at 55M calls).
    for d in range(DEVELOPERS):
        conn.execute(
            schema.quarters_delta(f"SELECT 1 AS sign, * FROM taskmeter.calls WHERE id >= 'dev{d:02d}:' AND id < 'dev{d:02d};'")
        )
    conn.execute("ALTER TABLE taskmeter.calls ENABLE TRIGGER USER")
    conn.execute("ALTER TABLE taskmeter.records ENABLE TRIGGER USER")
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE")
    conn.autocommit = False


def report_at_scale(calls: int, cache: Path, runs: int) -> dict:
    """`meter report --team phase P5` over a store of `calls` calls, built once and kept in
    `cache` (a server data folder); its server time: the execution time pg_stat_statements
    sums over the report's statements (the median of `runs`)."""
    folder = cache / f"team-store-{calls}-{schema.KNOWN[-1]}-v2"  # a newer schema or shape builds anew
    built_marker = folder / "built"
    server = PostgresServer(
        folder,
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "shared_buffers": "2GB",
            "maintenance_work_mem": "1GB",
            "work_mem": "64MB",
            "max_wal_size": "8GB",
            "synchronous_commit": "off",
        },
    )
    try:
        build_seconds = None
        if not built_marker.exists():
            started = time.perf_counter()
            with psycopg.connect(server.admin_url(), autocommit=True) as admin:
                admin.execute("DROP DATABASE IF EXISTS scale")
                admin.execute("CREATE DATABASE scale")
            with psycopg.connect(server.admin_url("scale")) as admin:
                schema.setup(admin, [])
                admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                admin.commit()
                _build_scale_store(admin, calls)
            build_seconds = round(time.perf_counter() - started)
            built_marker.write_text(f"{build_seconds}\n")
        else:
            build_seconds = int(built_marker.read_text())
        with psycopg.connect(server.admin_url("scale")) as admin:
            sizes: tuple = (
                admin.execute(
                    "SELECT (SELECT count(*) FROM taskmeter.calls), pg_database_size('scale'),"
                    " (SELECT count(*) FROM taskmeter.task_usage), (SELECT count(*) FROM taskmeter.task_activity_runs),"
                    " (SELECT count(*) FROM taskmeter.session_rework), (SELECT count(*) FROM taskmeter.records)"
                ).fetchone()
                or ()
            )
        url = server.admin_url("scale")
        config = cache / f"team-store-{calls}.toml"  # the meter's, beside the server's folder (postgres owns it)
        config.write_text(f'[team]\nurl = "{server.url("postgres", "scale")}"\n')
        os.environ["PGPASSFILE"] = str(server.passfile)
        env = {**os.environ, "METER_CONFIG": str(config)}
        phase_run = _time_report(url, ["report", "phase", "P5"], env, runs)
        # The overview and the usage reports read the server's rollups (t004), never the calls.
        others = {
            " ".join(words): _time_report(url, words, env, runs)
            for words in (["report"], ["report", "daily"], ["report", "models"])
        }
        report = phase_run["output"]
    finally:
        server.close()
    return {
        "calls": sizes[0],
        "developers": DEVELOPERS,
        "database_gb": round(sizes[1] / 1e9, 1),
        "rollup_rows": {"task_usage": sizes[2], "task_activity_runs": sizes[3], "session_rework": sizes[4]},
        "records": sizes[5],
        "build_seconds": build_seconds,
        "phase_calls": report["ai_interactions_total"],
        "phase_developers": len(report["developers"]),
        "report_server_seconds": phase_run["server_seconds"],
        "report_statements": phase_run["statements"],
        "report_wall_seconds": phase_run["wall_seconds"],
        "slowest_statements_ms": phase_run["slowest_statements_ms"],
        "other_reports": {
            name: {key: value for key, value in run.items() if key in ("server_seconds", "statements", "wall_seconds")}
            for name, run in others.items()
        },
    }


def _time_report(url: str, words: list[str], env: dict, runs: int) -> dict:
    """`meter WORDS --team --format json`: the median over `runs` (after a first that warms the
    server's cache) of its wall time and of the execution time pg_stat_statements sums over
    the statements it sent; its slowest statements and output (of the last run)."""
    command = [sys.executable, "-m", "taskmeter", *words, "--team", "--format", "json"]
    timings, walls, statements = [], [], 0
    for _ in range(runs + 1):
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_stat_statements_reset()")
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        with psycopg.connect(url, autocommit=True) as admin:
            total, statements = admin.execute(
                "SELECT sum(total_exec_time), sum(calls) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = 'scale' AND query NOT LIKE '%pg_stat_statements%'"
            ).fetchone() or (0, 0)
            timings.append(float(total) / 1000)
            slowest = admin.execute(
                "SELECT round(total_exec_time::numeric, 1), calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160)"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'scale'"
                " AND query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 5"
            ).fetchall()
    return {
        "server_seconds": round(statistics.median(timings[1:]), 3),
        "statements": int(statements),
        "wall_seconds": round(statistics.median(walls[1:]), 2),
        "slowest_statements_ms": [{"ms": float(ms), "calls": n, "query": query} for ms, n, query in slowest],
        "output": json.loads(done.stdout),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.team")
    parser.add_argument("--smoke", action="store_true", help="a few hundred calls: checks the harness")
    parser.add_argument("--out", default="docs", help="folder for team-benchmarks.json")
    parser.add_argument("--scale-calls", type=int, help="calls in the scale row's team store (default 55,000,000)")
    parser.add_argument("--cache", default="bench/results/cache", help="folder keeping the scale row's store between runs")
    args = parser.parse_args()
    backlog, rate, seconds = (300, 100, 2.0) if args.smoke else (50_000, 1000, 20.0)
    server = PostgresServer()
    folder = Path(tempfile.mkdtemp(prefix="taskmeter-bench-team-"))
    syncer = None
    try:
        with psycopg.connect(server.admin_url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        with psycopg.connect(server.admin_url("bench")) as admin:
            lines = schema.setup(admin, ["bench_developer"])
        server.add_password("bench_developer", re.search(r'"bench_developer" .*, password (\S+)', "\n".join(lines))[1])
        os.environ["PGPASSFILE"] = str(server.passfile)
        url = server.url("bench_developer", "bench")
        db_path = folder / "meter.db"
        db = connection.connect(db_path)
        outbox.join(db, START)
        db.execute("INSERT INTO phases (id, created_at) VALUES ('P1', ?)", (START,))
        db.execute("INSERT INTO tasks (id, phase_id, created_at) VALUES ('P1-001', 'P1', ?)", (START,))

        for first in range(0, backlog, 5000):
            _insert_calls(db, first, min(5000, backlog - first))
        started = time.perf_counter()
        sent = sync.run(db_path, url, share_text=False, once=True)
        backlog_rate = sent / (time.perf_counter() - started)

        config = folder / "config.toml"
        config.write_text(f'[team]\nurl = "{url}"\n')
        syncer = subprocess.Popen(
            [sys.executable, "-m", "taskmeter", "team", "sync", "--db", str(db_path)],
            env={**os.environ, "METER_CONFIG": str(config)},
            stderr=subprocess.DEVNULL,
        )
        committed: dict[str, float] = {}
        per_tick, tick = max(1, int(rate / 20)), 0.05
        next_id, deadline = backlog, time.monotonic() + seconds
        while time.monotonic() < deadline:
            _insert_calls(db, next_id, per_tick)
            at = time.time()
            committed.update({f"bench{n:010d}": at for n in range(next_id, next_id + per_tick)})
            next_id += per_tick
            time.sleep(tick)
        device = outbox.device_id(db)
        wait_until = time.monotonic() + 60
        with psycopg.connect(server.admin_url("bench")) as admin:
            while True:
                synced = dict(
                    admin.execute(
                        "SELECT split_part(id, ':', 2), extract(epoch FROM synced_at) FROM taskmeter.calls WHERE id >= %s",
                        (f"{device}:bench{backlog:010d}",),
                    ).fetchall()
                )
                admin.rollback()
                if len(synced) >= len(committed) or time.monotonic() > wait_until:
                    break
                time.sleep(0.2)
        latencies = sorted(float(synced[call]) - at for call, at in committed.items() if call in synced)
        results: dict[str, Any] = {
            "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "backlog_calls": sent,
            "backlog_calls_per_second": round(backlog_rate),
            "steady_rate_calls_per_second": rate,
            "steady_calls": len(committed),
            "steady_calls_synced": len(latencies),
            "latency_p50_seconds": round(percentile(latencies, 50), 3) if latencies else None,
            "latency_p99_seconds": round(percentile(latencies, 99), 3) if latencies else None,
            "latency_max_seconds": round(latencies[-1], 3) if latencies else None,
            "targets": {"backlog_calls_per_second": ">= 5000", "latency_p99_seconds": "<= 5"},
        }
        db.close()
    finally:
        if syncer is not None:
            syncer.kill()
            syncer.wait()
        server.close()
    cache = Path(tempfile.mkdtemp(prefix="taskmeter-bench-scale-")) if args.smoke else Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)  # the server's folder is inside: its postgres user must get through
    try:
        scale_calls = args.scale_calls or (20_000 if args.smoke else 55_000_000)
        results["report_at_scale"] = report_at_scale(scale_calls, cache, runs=1 if args.smoke else 5)
    finally:
        if args.smoke:
            shutil.rmtree(cache, ignore_errors=True)
    results["targets"]["report_at_scale.report_server_seconds"] = "<= 1 (55,000,000 calls, 50 developers)"
    for name, value in results.items():
        print(f"{name}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "team-benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
