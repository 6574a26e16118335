"""Developers' meters for the team store's tests: each a config, a database and
`meter` commands run against them, with the password file of the test server.
The commands are forks of one preloaded meter (tests/meter_forks.py): these tests
run hundreds, each otherwise 0.1-0.3 s of CPU spent starting Python and importing."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import psycopg

from tests.meter_forks import METER
from tests.pg_server import PostgresServer
from tests.proxy_harness import RunningProxy, write_config


def setup_team(server: PostgresServer, database: str, names: list[str]) -> str:
    """`meter team setup` for `names`; their passwords go in the server's password file. Its output."""
    done = METER.run(
        ["team", "setup", "--admin-url", server.url("postgres", database)]
        + [part for name in names for part in ("--developer", name)],
        env={**os.environ, "PGPASSFILE": str(server.passfile)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for name in names:
        server.add_password(name, re.search(rf'created role "{re.escape(name)}" .*, password (\S+)', done.stdout)[1])
    return done.stdout


class Developer:
    """One developer's meter: its own folder, config and database."""

    def __init__(self, folder: Path, name: str, server: PostgresServer, upstream_port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.server = server
        self.db_path = folder / "meter.db"
        self.config = write_config(
            folder / "config.toml", folder / "ca", dict.fromkeys(("openai", "anthropic"), f"http://127.0.0.1:{upstream_port}")
        )
        self.env = {**os.environ, "PGPASSFILE": str(server.passfile)}
        self.proxy: RunningProxy | None = None

    def meter(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return METER.run([*args, "--db", str(self.db_path)], env={**self.env, "METER_CONFIG": str(self.config)}, timeout=timeout)

    def ok(self, *args: str) -> str:
        done = self.meter(*args)
        assert done.returncode == 0, f"meter {' '.join(args)}: {done.stderr}"
        return done.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def join(self, database: str) -> str:
        return self.ok("team", "join", self.server.url(self.name, database), "--config", str(self.config))

    def start_proxy(self) -> RunningProxy:
        self.proxy = RunningProxy(self.config, self.db_path, extra_env={"PGPASSFILE": str(self.server.passfile)})
        return self.proxy

    def local_call_ids(self) -> list[str]:
        import sqlite3

        db = sqlite3.connect(self.db_path)
        try:
            return [row[0] for row in db.execute("SELECT id FROM interactions ORDER BY id")]
        finally:
            db.close()

    def device(self) -> str:
        import sqlite3

        db = sqlite3.connect(self.db_path)
        try:
            return db.execute("SELECT device_id FROM team_sync").fetchone()[0]
        finally:
            db.close()


def team_calls(server: PostgresServer, database: str) -> list[tuple]:
    """(id, developer, rev) of every call in the team store."""
    with psycopg.connect(server.admin_url(database)) as conn:
        return conn.execute("SELECT id, developer, rev FROM taskmeter.calls ORDER BY id").fetchall()


def wait_for(condition, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
