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
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.team")
    parser.add_argument("--smoke", action="store_true", help="a few hundred calls: checks the harness")
    parser.add_argument("--out", default="docs", help="folder for team-benchmarks.json")
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
        results = {
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
    for name, value in results.items():
        print(f"{name}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "team-benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
